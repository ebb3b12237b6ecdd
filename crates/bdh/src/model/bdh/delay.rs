//! The read's mask site: synaptic delays. With `delays = [δ_h]` a token's write
//! into head h's ρ becomes readable δ_h tokens later than bdh.py's: the score of
//! positions t and τ is kept only for t − τ > δ_h (bdh.py: t − τ > 0).
//!
//! The parallel form masks the scores (the attention kernels' `Lags`). The recurrent
//! form holds each token's rotated key and value in a queue until it is due: at
//! position t the step reads ρ, then the token of t − δ_h enters ρ (times γ^δ_h
//! with a decay, so that ρ after t is `Σ_{τ ≤ t−δ} γ^(t−τ) k_τ ⊗ v_τ`), then t's
//! own joins the queue. A carried state's chunk reads the queued tokens it may see
//! ([`Queue::read`]) besides ρ, and afterwards the queued tokens now due enter ρ
//! and the chunk's last tokens are queued ([`Queue::advance`]). The queue is a ring
//! of `max δ` slots per head, position p in slot p mod max δ: per-stream state
//! beside ρ ([`super::State::queue`]).

use super::config::BdhConfig;

/// The most tokens a write may be delayed: far past any context trained on.
pub const MAX_DELAY: usize = 1 << 16;

/// A model's delays, with its retention for the weights of queued tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Queue {
    delays: Vec<usize>, // δ_h, (H)
    max: usize,         // slots per head
    n: usize,
    d: usize,
    retention: Vec<f32>, // γ_h, or empty
}

impl Queue {
    /// The queue of a model with config `cfg` and retention `retention` (γ per head, or
    /// empty); `None` without a delay.
    pub fn new(cfg: &BdhConfig, retention: Vec<f32>) -> Option<Self> {
        let max = cfg.delays.iter().copied().max().unwrap_or(0);
        (max > 0).then(|| Queue { delays: cfg.delays.clone(), max, n: cfg.n_neurons(), d: cfg.n_embd, retention })
    }

    /// Values of per-stream state per (layer, stream, head): `max δ` slots of a
    /// rotated key (N) and a value (D).
    pub fn width(cfg: &BdhConfig) -> usize {
        cfg.delays.iter().copied().max().unwrap_or(0) * (cfg.n_neurons() + cfg.n_embd)
    }

    /// δ of head `h`.
    pub fn delay(&self, h: usize) -> usize {
        self.delays[h]
    }

    /// γ^k of head `h` in f64 (1 without a decay; 0 below f32's smallest normal, as
    /// the kernels flush).
    fn weight(&self, h: usize, k: usize) -> f64 {
        match self.retention.get(h).map_or(1.0, |&g| (g as f64).powi(k as i32)) {
            f if f < f32::MIN_POSITIVE as f64 => 0.0,
            f => f,
        }
    }

    /// The (key, value) in head `h`'s ring (W) of position `p`.
    fn slot<'r>(&self, ring: &'r [f32], p: usize) -> (&'r [f32], &'r [f32]) {
        let at = (p % self.max) * (self.n + self.d);
        ring[at..at + self.n + self.d].split_at(self.n)
    }

    /// Queues (key, value) of position `p` in head `h`'s ring.
    fn put(&self, ring: &mut [f32], p: usize, key: &[f32], v: &[f32]) {
        let at = (p % self.max) * (self.n + self.d);
        ring[at..at + self.n].copy_from_slice(key);
        ring[at + self.n..at + self.n + self.d].copy_from_slice(v);
    }

    /// The queued positions of head `h` at the start of a chunk at `pos0`.
    fn queued(&self, h: usize, pos0: usize) -> std::ops::Range<usize> {
        pos0.saturating_sub(self.delays[h])..pos0
    }

    /// One step's write of head `h` at position `pos`, after its read: the token
    /// δ back enters ρ (N, D), and this one's rotated key (N) and value v (D) are
    /// queued. δ = 0: written at once, as bdh.py does.
    pub(crate) fn step(&self, h: usize, pos: usize, rho: &mut [f32], (key, v): (&[f32], &[f32]), ring: &mut [f32]) {
        let delay = self.delays[h];
        if delay == 0 {
            return outer_add(rho, key, v, 1.0);
        }
        if pos >= delay {
            let (k, vq) = self.slot(ring, pos - delay);
            outer_add(rho, k, vq, self.weight(h, delay) as f32);
        }
        self.put(ring, pos, key, v);
    }

    /// A carried chunk's read of its queued tokens for one stream: `a` (H, T, D) +=
    /// `Σ_τ γ^(p−τ) (q_i · k_τ) v_τ` over the queued τ with p − τ > δ (p = pos0 + i),
    /// from the rotated queries `q` (H, T, N) and the rings (H, W).
    pub(crate) fn read(&self, a: &mut [f32], q: &[f32], rings: &[f32], pos0: usize, t: usize) {
        self.each_pair(q, rings, pos0, t, |h, i, p, tau, dot, (_, v)| {
            let w = (self.weight(h, p - tau) * dot) as f32;
            let out = &mut a[(h * t + i) * self.d..(h * t + i + 1) * self.d];
            out.iter_mut().zip(v).for_each(|(o, &x)| *o += w * x);
        });
    }

    /// The gradient through [`Queue::read`] (the queue held constant): `dq` (H, T, N)
    /// += `Σ_τ γ^(p−τ) (da_i · v_τ) k_τ` and `dlog` (H, unless empty) += d loss /
    /// d ln γ_h, `Σ (p−τ) γ^(p−τ) (q_i · k_τ)(da_i · v_τ)`.
    pub(crate) fn read_backward(
        &self,
        dq: &mut [f32],
        dlog: &mut [f32],
        (q, da): (&[f32], &[f32]),
        rings: &[f32],
        pos0: usize,
        t: usize,
    ) {
        let (n, d) = (self.n, self.d);
        self.each_pair(q, rings, pos0, t, |h, i, p, tau, dot, (k, v)| {
            let g: f64 =
                da[(h * t + i) * d..(h * t + i + 1) * d].iter().zip(v).map(|(&a, &b)| a as f64 * b as f64).sum();
            let w = self.weight(h, p - tau);
            let out = &mut dq[(h * t + i) * n..(h * t + i + 1) * n];
            out.iter_mut().zip(k).for_each(|(o, &x)| *o += (w * g) as f32 * x);
            if let Some(l) = dlog.get_mut(h) {
                *l += ((p - tau) as f64 * w * dot * g) as f32;
            }
        });
    }

    /// Calls `f(h, i, p, τ, q_i · k_τ, (k_τ, v_τ))` for every chunk token i (position
    /// p) and queued token τ it reads.
    fn each_pair(
        &self,
        q: &[f32],
        rings: &[f32],
        pos0: usize,
        t: usize,
        mut f: impl FnMut(usize, usize, usize, usize, f64, (&[f32], &[f32])),
    ) {
        let (n, w) = (self.n, self.max * (self.n + self.d));
        for (h, &delay) in self.delays.iter().enumerate() {
            let ring = &rings[h * w..(h + 1) * w];
            for tau in self.queued(h, pos0) {
                let (k, v) = self.slot(ring, tau);
                // p − τ > δ  ⇔  i > τ + δ − pos0
                for i in (tau + delay + 1 - pos0)..t {
                    let qi = &q[(h * t + i) * n..(h * t + i + 1) * n];
                    let dot: f64 = qi.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                    f(h, i, pos0 + i, tau, dot, (k, v));
                }
            }
        }
    }

    /// After a carried chunk of `t` tokens at `pos0` for one stream: the queued tokens
    /// now due enter ρ (H, N, D) with their weights at the chunk's end, then the
    /// chunk's last tokens — rotated keys `keys` (H, T, N), values `v` (T, D) — are
    /// queued in the rings (H, W). The chunk's own due tokens are written by the
    /// parallel form (its write powers are 0 for the last δ).
    pub(crate) fn advance(
        &self,
        rho: &mut [f32],
        rings: &mut [f32],
        (keys, v): (&[f32], &[f32]),
        pos0: usize,
        t: usize,
    ) {
        let (n, d, w) = (self.n, self.d, self.max * (self.n + self.d));
        let end = pos0 + t - 1;
        for (h, &delay) in self.delays.iter().enumerate().filter(|(_, &dl)| dl > 0) {
            let (rho, ring) = (&mut rho[h * n * d..(h + 1) * n * d], &mut rings[h * w..(h + 1) * w]);
            for tau in self.queued(h, pos0).filter(|&tau| tau + delay <= end) {
                let (k, vq) = self.slot(ring, tau);
                outer_add(rho, k, vq, self.weight(h, end - tau) as f32);
            }
            for i in t.saturating_sub(self.max)..t {
                self.put(ring, pos0 + i, &keys[(h * t + i) * n..(h * t + i + 1) * n], &v[i * d..(i + 1) * d]);
            }
        }
    }
}

/// `ρ += w · k ⊗ v` over the rows where k ≠ 0.
fn outer_add(rho: &mut [f32], k: &[f32], v: &[f32], w: f32) {
    let d = v.len();
    for (row, &c) in rho.chunks_exact_mut(d).zip(k).filter(|(_, &c)| c != 0.0) {
        row.iter_mut().zip(v).for_each(|(r, &x)| *r += w * c * x);
    }
}
