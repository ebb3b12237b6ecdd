//! The state's damping site: how ρ fades from one token to the next (the decay).
//!
//! With a retention γ_h per head, the recurrent step fades ρ before each read,
//! `ρ ← γ_h ρ` ([`Damping::step`]), and the parallel form weights the score of
//! positions t−τ apart by γ_h^(t−τ) (the attention kernels take γ). With one per
//! neuron (`decay_per = "neuron"`), row i of a head's ρ fades by γ_{h,i}, and the
//! parallel form is the chunked kernel [`bdh_kernels::neuron_decay_attention`]
//! ([`DecayTable::attend`] picks it). A carried state
//! needs the powers of γ over the T positions of a pass ([`DecayTable`]): token i of
//! a chunk reads ρ₀ faded by γ^(i+1), and after the chunk
//! ρ = γ^T ρ₀ + Σ_i γ^(T−1−i) R(x_i) ⊗ v_i — what T recurrent steps of
//! `ρ ← γ ρ; read; ρ += R(x) ⊗ v` leave (each power per neuron with one γ per
//! neuron). Powers are formed in f64, then rounded.
//! The forward ([`DecayTable::weighted`]), the backward ([`DecayTable::read_backward`])
//! and the step all take the decay from here.

use bdh_kernels::{
    decay_state, keyed_attention, keyed_attention_backward, neuron_decay_attention, neuron_decay_attention_backward,
    scale_half, scale_rows, Attention, Half, KeyedSaved,
};

/// The damping of a model's recurrent step: γ_h per head, or none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Damping {
    retention: Vec<f32>, // (H) γ_h or (H, N) γ_{h,i}, or empty without decay
    per: usize,          // retentions per head: 1 or N (0 without decay)
}

impl Damping {
    /// The damping of retentions γ ([`super::Bdh::retention`]) for `heads` heads.
    pub fn new(retention: Vec<f32>, heads: usize) -> Self {
        let per = retention.len() / heads.max(1);
        Damping { retention, per }
    }

    /// ρ ← γ_h ρ of head `head` on a 16-bit ρ, each value rounded back.
    pub fn step_half(&self, head: usize, rho: &mut [u16], half: Half) {
        match self.per {
            0 => {}
            1 => {
                if let Some(&gamma) = self.retention.get(head).filter(|&&g| g != 1.0) {
                    scale_half(rho, gamma, half);
                }
            }
            per => {
                let gammas = &self.retention[head * per..(head + 1) * per];
                for (row, &g) in rho.chunks_exact_mut(rho.len() / per).zip(gammas) {
                    scale_half(row, g, half);
                }
            }
        }
    }

    /// The smallest 1 − γ of a fading retention (γ < 1), if any fades.
    pub fn slowest_fade(&self) -> Option<f32> {
        self.retention.iter().filter(|&&g| g < 1.0).map(|&g| 1.0 - g).reduce(f32::min)
    }

    /// ρ ← γ_h ρ of head `head` before its read (nothing without decay, or with
    /// γ_h = 1): every row fades, so this touches the whole (N, D) state. With one
    /// retention per neuron, row i fades by γ_{h,i}.
    pub fn step(&self, head: usize, rho: &mut [f32]) {
        match self.per {
            0 => {}
            1 => {
                if let Some(&gamma) = self.retention.get(head).filter(|&&g| g != 1.0) {
                    decay_state(rho, gamma);
                }
            }
            per => {
                let gammas = &self.retention[head * per..(head + 1) * per];
                for (row, &g) in rho.chunks_exact_mut(rho.len() / per).zip(gammas) {
                    row.iter_mut().for_each(|x| *x *= g);
                }
            }
        }
    }
}

/// The powers for one model and one T; empty without decay or delay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecayTable {
    /// γ_h per head, (H), or per neuron, (H, N); empty: no decay.
    pub gamma: Vec<f32>,
    /// Retentions per head: 1, or N with one per neuron.
    pub per: usize,
    /// The positions its tables are for (0: none made, for a pass without a carried state).
    pub t: usize,
    /// δ_h per head, (H); empty: no delay (the read's mask site, [`super::delay`]).
    pub delays: Vec<f32>,
    /// The writes each head holds in its queue, (H); empty without delays.
    pub holds: Vec<usize>,
    /// γ_h^(i+1), (H, T, per): the weight of the carried ρ₀ in the read at position i.
    pub read: Vec<f32>,
    /// γ_h^(T−1−i), (H, T, per): the weight of token i's write in ρ after the chunk
    /// (0 for the last writes a delayed head holds in its queue).
    pub write: Vec<f32>,
    /// γ_h^T, (H, per): what is left of ρ₀ after the chunk.
    pub whole: Vec<f32>,
}

impl DecayTable {
    /// The table of retentions γ_h ([`super::Bdh::retention`]), delays δ_h and the
    /// writes each head holds in its queue ([`super::delay::Delays::holds`]) for a
    /// pass of `t` positions of `heads` heads.
    pub fn new(gamma: Vec<f32>, (delays, holds): (Vec<f32>, Vec<usize>), (heads, t): (usize, usize)) -> Self {
        let per = (gamma.len() / heads.max(1)).max(1);
        if gamma.is_empty() && delays.iter().all(|&d| d == 0.0) {
            return DecayTable { gamma, per, t, delays, holds, ..DecayTable::default() };
        }
        // (0 below f32's smallest normal, as the kernels flush)
        let pow = |g: f32, k: usize| match (g as f64).powi(k as i32) {
            f if f < f32::MIN_POSITIVE as f64 => 0.0,
            f => f as f32,
        };
        // (γ of head h's neuron c, the head's own with one per head)
        let g = |h: usize, c: usize| gamma.get(h * per + c).copied().unwrap_or(1.0);
        // a delayed head's last `hold` tokens wait in its queue
        let waiting = |h: usize| holds.get(h).copied().unwrap_or(0);
        let table = |f: &dyn Fn(usize, usize, usize) -> f32| {
            (0..heads).flat_map(|h| (0..t).flat_map(move |i| (0..per).map(move |c| f(h, i, c)))).collect()
        };
        DecayTable {
            read: table(&|h, i, c| pow(g(h, c), i + 1)),
            write: table(&|h, i, c| if i + waiting(h) < t { pow(g(h, c), t - 1 - i) } else { 0.0 }),
            whole: (0..heads).flat_map(|h| (0..per).map(move |c| pow(g(h, c), t))).collect(),
            per,
            t,
            gamma: gamma.clone(),
            delays: delays.clone(),
            holds: holds.clone(),
        }
    }

    /// Whether the state decays or its writes are delayed (and the tables for a
    /// carried state are made).
    pub fn is_some(&self) -> bool {
        !self.read.is_empty()
    }

    /// The attention kernels' argument: each head's decay and delay (a decay per
    /// neuron is [`DecayTable::attend`]'s own kernel's).
    pub fn lags(&self) -> bdh_kernels::Lags<'_> {
        let decay = if self.per == 1 { &self.gamma[..] } else { &[] };
        bdh_kernels::Lags { decay, delays: &self.delays }
    }

    /// Whether each neuron has its own retention (the keys-equal-queries kernel,
    /// [`bdh_kernels::causal_linear_attention`], has one per head only).
    pub fn per_neuron(&self) -> bool {
        self.per > 1
    }

    /// The attention of rotated queries `q` and keys `k` (B, H, T, N) over the values
    /// `v` (B, T, D) into `out` (B, H, T, D): by each neuron's retention, or by the
    /// scores `tril₋₁(q kᵀ)` weighted by each head's decay and delay (kept in `scores`,
    /// (B, H, T, T), which a decay per neuron leaves as they are).
    pub fn attend(&self, out: &mut [f32], scores: &mut [f32], (q, k, v): (&[f32], &[f32], &[f32]), shape: Attention) {
        match self.per_neuron() {
            true => neuron_decay_attention(out, q, k, v, &self.gamma, shape),
            false => keyed_attention(out, scores, q, k, v, self.lags(), shape),
        }
    }

    /// The backward of [`DecayTable::attend`] from `da`: `dq`, `dk` (B, H, T, N), `dv`
    /// per head (B, H, T, D), and what a learned decay trains by: d ln γ into `dlags`
    /// (B, H, 2, with d δ) per head, or into `dneurons` (B, H, N) per neuron.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_backward(
        &self,
        (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
        (dscores, dlags, dneurons): (&mut [f32], &mut [f32], &mut [f32]),
        da: &[f32],
        (q, k, v, scores): (&[f32], &[f32], &[f32], &[f32]),
        shape: Attention,
    ) {
        match self.per_neuron() {
            true => neuron_decay_attention_backward(dq, dk, dv, dneurons, da, (q, k, v, &self.gamma), shape),
            false => {
                let saved = KeyedSaved { q, k, v, scores, lags: self.lags() };
                keyed_attention_backward(dq, dk, dv, dscores, dlags, da, saved, shape);
            }
        }
    }

    /// d ln γ of a carried state's read `γ^(i+1) R(x_i) · ρ₀`, from `xr` and the
    /// gradient `dq` (H, T, N) of its weighted queries: `Σ_i (i+1) γ^(i+1) xr_i ⊙ dq_i`,
    /// added per head to `dlags` (H, 2) or per neuron to `dneurons` (H, N).
    pub fn read_log_grads(
        &self,
        (dlags, dneurons): (&mut [f32], &mut [f32]),
        xr: &[f32],
        dq: &[f32],
        (h, t, n): (usize, usize, usize),
    ) {
        let per = self.per;
        for hi in 0..h {
            let rows = xr[hi * t * n..(hi + 1) * t * n].chunks_exact(n).zip(dq[hi * t * n..].chunks_exact(n));
            let mut sums = vec![0.0f64; per];
            for (i, (q, g)) in rows.enumerate() {
                let powers = &self.read[(hi * t + i) * per..(hi * t + i + 1) * per];
                for (c, (&a, &b)) in q.iter().zip(g).enumerate() {
                    sums[c % per] += (i + 1) as f64 * powers[c % per] as f64 * a as f64 * b as f64;
                }
            }
            match per {
                1 => dlags[2 * hi] += sums[0] as f32,
                _ => dneurons[hi * n..(hi + 1) * n].iter_mut().zip(sums).for_each(|(o, s)| *o += s as f32),
            }
        }
    }

    /// The rotated neurons `xr` (B, H, T, N) with row i of head h times
    /// `powers[h, i]` (the table's `read` or `write`; elementwise, per neuron), made in `buf`; `xr` itself
    /// without decay: the queries of a carried state's read and the keys of the
    /// chunk's write into it.
    pub fn weighted<'a>(
        &self,
        buf: &'a mut [f32],
        xr: &'a [f32],
        powers: &[f32],
        (h, t, n): (usize, usize, usize),
    ) -> &'a [f32] {
        if !self.is_some() {
            return xr;
        }
        buf.copy_from_slice(xr);
        scale_rows(buf, powers, h, t * self.per, n / self.per);
        buf
    }

    /// The gradient through [`DecayTable::weighted`] with the `read` powers:
    /// `dq` (H, T, N) of the weighted queries becomes that of `xr`.
    pub fn read_backward(&self, dq: &mut [f32], (h, t, n): (usize, usize, usize)) {
        if self.is_some() {
            scale_rows(dq, &self.read, h, t * self.per, n / self.per);
        }
    }

    /// ρ₀ ← γ^T ρ₀ (B, H, N, D): what is left of a carried state after the chunk.
    pub fn fade_whole(&self, rho: &mut [f32], (h, nd): (usize, usize)) {
        if self.is_some() {
            scale_rows(rho, &self.whole, h, self.per, nd / self.per);
        }
    }
}
