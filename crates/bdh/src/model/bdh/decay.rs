//! The state's damping site: how ρ fades from one token to the next (the decay).
//!
//! With a retention γ_h per head, the recurrent step fades ρ before each read,
//! `ρ ← γ_h ρ` ([`Damping::step`]), and the parallel form weights the score of
//! positions t−τ apart by γ_h^(t−τ) (the attention kernels take γ). A carried state
//! needs the powers of γ over the T positions of a pass ([`DecayTable`]): token i of
//! a chunk reads ρ₀ faded by γ^(i+1), and after the chunk
//! ρ = γ^T ρ₀ + Σ_i γ^(T−1−i) R(x_i) ⊗ v_i — what T recurrent steps of
//! `ρ ← γ ρ; read; ρ += R(x) ⊗ v` leave. Powers are formed in f64, then rounded.
//! The forward ([`DecayTable::weighted`]), the backward ([`DecayTable::read_backward`])
//! and the step all take the decay from here.

use bdh_kernels::{decay_state, scale_rows};

/// The damping of a model's recurrent step: γ_h per head, or none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Damping {
    retention: Vec<f32>, // (H) γ_h, or empty without decay
}

impl Damping {
    /// The damping of retentions γ_h ([`super::Bdh::retention`]).
    pub fn new(retention: Vec<f32>) -> Self {
        Damping { retention }
    }

    /// ρ ← γ_h ρ of head `head` before its read (nothing without decay, or with
    /// γ_h = 1): every row fades, so this touches the whole (N, D) state.
    pub fn step(&self, head: usize, rho: &mut [f32]) {
        if let Some(&gamma) = self.retention.get(head).filter(|&&g| g != 1.0) {
            decay_state(rho, gamma);
        }
    }
}

/// The powers for one model and one T; empty without decay or delay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecayTable {
    /// γ_h per head, (H); empty: no decay.
    pub gamma: Vec<f32>,
    /// δ_h per head, (H); empty: no delay (the read's mask site, [`super::delay`]).
    pub delays: Vec<f32>,
    /// The writes each head holds in its queue, (H); empty without delays.
    pub holds: Vec<usize>,
    /// γ_h^(i+1), (H, T): the weight of the carried ρ₀ in the read at position i.
    pub read: Vec<f32>,
    /// γ_h^(T−1−i), (H, T): the weight of token i's write in ρ after the chunk (0 for
    /// the last writes a delayed head holds in its queue).
    pub write: Vec<f32>,
    /// γ_h^T, (H): what is left of ρ₀ after the chunk.
    pub whole: Vec<f32>,
}

impl DecayTable {
    /// The table of retentions γ_h ([`super::Bdh::retention`]), delays δ_h and the
    /// writes each head holds in its queue ([`super::delay::Delays::holds`]) for a
    /// pass of `t` positions.
    pub fn new(gamma: Vec<f32>, (delays, holds): (Vec<f32>, Vec<usize>), t: usize) -> Self {
        if gamma.is_empty() && delays.iter().all(|&d| d == 0.0) {
            return DecayTable { gamma, delays, holds, ..DecayTable::default() };
        }
        // (0 below f32's smallest normal, as the kernels flush)
        let pow = |g: f32, k: usize| match (g as f64).powi(k as i32) {
            f if f < f32::MIN_POSITIVE as f64 => 0.0,
            f => f as f32,
        };
        let heads = gamma.len().max(delays.len());
        let g = |h: usize| gamma.get(h).copied().unwrap_or(1.0);
        // a delayed head's last `hold` tokens wait in its queue
        let waiting = |h: usize| holds.get(h).copied().unwrap_or(0);
        let table = |f: &dyn Fn(usize, usize) -> f32| (0..heads).flat_map(|h| (0..t).map(move |i| f(h, i))).collect();
        DecayTable {
            read: table(&|h, i| pow(g(h), i + 1)),
            write: table(&|h, i| if i + waiting(h) < t { pow(g(h), t - 1 - i) } else { 0.0 }),
            whole: (0..heads).map(|h| pow(g(h), t)).collect(),
            gamma: gamma.clone(),
            delays: delays.clone(),
            holds: holds.clone(),
        }
    }

    /// Whether the state decays or its writes are delayed.
    pub fn is_some(&self) -> bool {
        !self.read.is_empty()
    }

    /// The attention kernels' argument: each head's decay and delay.
    pub fn lags(&self) -> bdh_kernels::Lags<'_> {
        bdh_kernels::Lags { decay: &self.gamma, delays: &self.delays }
    }

    /// The rotated neurons `xr` (B, H, T, N) with row i of head h times
    /// `powers[h, i]` (the table's `read` or `write`), made in `buf`; `xr` itself
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
        scale_rows(buf, powers, h, t, n);
        buf
    }

    /// The gradient through [`DecayTable::weighted`] with the `read` powers:
    /// `dq` (H, T, N) of the weighted queries becomes that of `xr`.
    pub fn read_backward(&self, dq: &mut [f32], (h, t, n): (usize, usize, usize)) {
        if self.is_some() {
            scale_rows(dq, &self.read, h, t, n);
        }
    }

    /// ρ₀ ← γ^T ρ₀ (B, H, N, D): what is left of a carried state after the chunk.
    pub fn fade_whole(&self, rho: &mut [f32], (h, nd): (usize, usize)) {
        if self.is_some() {
            scale_rows(rho, &self.whole, h, 1, nd);
        }
    }
}
