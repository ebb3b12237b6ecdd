//! The read's mask site: synaptic delays. With `delays = [δ_h]` a token's write
//! into head h's ρ becomes readable δ_h tokens later than bdh.py's: the score of
//! positions t and τ is weighted by `w(t − τ) = clamp(t − τ − δ_h, 0, 1)` (bdh.py:
//! kept for t − τ > 0). With `delays = "learned:M"` each δ_h = M·sigmoid(ψ_h) is
//! trained (ψ the parameter `attn.delay`, from δ = ½): a fractional δ = m + f
//! interpolates between the integer lags around it, as dilated convolutions with
//! learnable spacings place a tap, so the loss has a gradient in δ (through the lag
//! m + 1, weighted 1 − f).
//!
//! The parallel form weights the scores (the attention kernels' `Lags`). The
//! recurrent form holds each delayed head's last `hold` writes (rotated key and
//! value) in a queue, `hold` fixed by the config — δ + 1 for a fixed δ, M for
//! learned ones, so that a δ that moves in training never changes what the state
//! holds: ρ after position t holds the tokens up to t − hold, whole; the read at t
//! adds the queued tokens with their weights w(k)·γ^k, then the oldest enters ρ
//! whole and t's own write joins the queue. A carried state's chunk reads the
//! queued tokens it may see ([`Queue::read`]) besides ρ, and afterwards the queued
//! tokens now due enter ρ and the chunk's last tokens are queued
//! ([`Queue::advance`]). The queue is a ring of slots per head, position p in slot
//! p mod slots: per-stream state beside ρ ([`super::State::queue`]).

use serde::{Deserialize, Serialize};

use super::config::BdhConfig;

/// The most tokens a fixed delay may hold a write: far past any context trained on.
pub const MAX_DELAY: usize = 1 << 16;

/// The largest bound of learned delays (δ = M·sigmoid(ψ) in f32 stays below M).
pub const MAX_LEARNED_DELAY: usize = 1024;

/// Name of learned delays' logits ψ, (H): δ_h = M·sigmoid(ψ_h).
pub const DELAY_NAME: &str = "attn.delay";

/// How each head delays its writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DelaysRepr", into = "DelaysRepr")]
pub enum Delays {
    /// No delay: bdh.py's write.
    #[default]
    None,
    /// δ_h tokens per head.
    Fixed(Vec<usize>),
    /// δ_h = M·sigmoid(ψ_h) per head, in (0, M), trained.
    Learned(usize),
}

/// How [`Delays`] is written in configs: a list of δ_h, `"learned:M"` or `"none"`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum DelaysRepr {
    List(Vec<usize>),
    Name(String),
}

impl TryFrom<DelaysRepr> for Delays {
    type Error = String;
    fn try_from(r: DelaysRepr) -> Result<Self, String> {
        let expected = "expected a list of δ per head, \"learned:M\" (δ trained in (0, M)) or \"none\"";
        match r {
            DelaysRepr::List(d) => Ok(Delays::Fixed(d)),
            DelaysRepr::Name(n) if n == "none" => Ok(Delays::None),
            DelaysRepr::Name(n) => match n.strip_prefix("learned:").map(str::parse::<usize>) {
                Some(Ok(max)) => Ok(Delays::Learned(max)),
                _ => Err(format!("delays `{n}`: {expected}")),
            },
        }
    }
}

impl From<Delays> for DelaysRepr {
    fn from(d: Delays) -> Self {
        match d {
            Delays::None => DelaysRepr::Name("none".into()),
            Delays::Fixed(d) => DelaysRepr::List(d),
            Delays::Learned(max) => DelaysRepr::Name(format!("learned:{max}")),
        }
    }
}

impl Delays {
    /// Whether no head delays (bdh.py).
    pub fn is_none(&self) -> bool {
        *self == Delays::None
    }

    /// Whether δ is trained.
    pub fn is_learned(&self) -> bool {
        matches!(self, Delays::Learned(_))
    }

    /// The writes each head holds in its queue before they enter ρ: δ + 1 for a
    /// fixed δ > 0 (0 for δ = 0: written at once), M for learned delays (δ < M).
    pub fn holds(&self, heads: usize) -> Vec<usize> {
        match self {
            Delays::None => Vec::new(),
            Delays::Fixed(d) => d.iter().map(|&x| if x > 0 { x + 1 } else { 0 }).collect(),
            Delays::Learned(max) => vec![*max; heads],
        }
    }

    /// Queue slots per head: the most any head holds.
    fn slots(&self) -> usize {
        self.holds(1).into_iter().max().unwrap_or(0)
    }

    /// The longest δ a head may have (a learned one stays below it).
    pub fn longest(&self) -> usize {
        match self {
            Delays::None => 0,
            Delays::Fixed(d) => d.iter().copied().max().unwrap_or(0),
            Delays::Learned(max) => *max,
        }
    }

    /// Checks them for `heads` heads; the message names the problem.
    pub(crate) fn validate(&self, heads: usize) -> Result<(), String> {
        match self {
            Delays::None => Ok(()),
            Delays::Fixed(d) if d.len() != heads => {
                Err(format!("delays lists {} δ for n_head = {heads} heads", d.len()))
            }
            Delays::Fixed(d) => match d.iter().find(|&&x| x > MAX_DELAY) {
                Some(far) => Err(format!("a delay of {far} tokens: at most {MAX_DELAY}")),
                None => Ok(()),
            },
            Delays::Learned(max) if !(1..=MAX_LEARNED_DELAY).contains(max) => {
                Err(format!("delays = \"learned:{max}\": the bound must be in 1..={MAX_LEARNED_DELAY}"))
            }
            Delays::Learned(_) => Ok(()),
        }
    }

    /// δ_h per head of a model whose learned logits are `psi` (H, or empty): the
    /// fixed ones, or M·sigmoid(ψ_h) (below M); empty without delays.
    pub fn per_head(&self, psi: &[f32]) -> Vec<f32> {
        match self {
            Delays::None => Vec::new(),
            Delays::Fixed(d) => d.iter().map(|&x| x as f32).collect(),
            Delays::Learned(max) => psi
                .iter()
                .map(|&p| {
                    let delta = *max as f64 / (1.0 + (-(p as f64)).exp());
                    delta.min(*max as f64 - 1e-3) as f32
                })
                .collect(),
        }
    }

    /// ψ at which a learned δ starts (½).
    pub(crate) fn initial_logit(&self) -> f32 {
        let s = 0.5 / self.longest().max(1) as f64;
        (s / (1.0 - s)).ln() as f32
    }
}

/// A model's delays, with its retention for the weights of queued tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct Queue {
    delays: Vec<f32>,  // δ_h, (H)
    holds: Vec<usize>, // writes each head queues, (H)
    slots: usize,      // per head
    n: usize,
    d: usize,
    retention: Vec<f32>, // γ_h, or empty
}

impl Queue {
    /// The queue of a model with config `cfg`, delays `delays` (δ per head:
    /// [`super::Bdh::delays`]) and retention `retention` (γ per head, or empty);
    /// `None` without a delay.
    pub fn new(cfg: &BdhConfig, delays: Vec<f32>, retention: Vec<f32>) -> Option<Self> {
        let slots = cfg.delays.slots();
        let holds = cfg.delays.holds(cfg.n_head);
        (slots > 0).then(|| Queue { delays, holds, slots, n: cfg.n_neurons(), d: cfg.n_embd, retention })
    }

    /// Values of per-stream state per (layer, stream, head): its slots of a rotated
    /// key (N) and a value (D).
    pub fn width(cfg: &BdhConfig) -> usize {
        cfg.delays.slots() * (cfg.n_neurons() + cfg.n_embd)
    }

    /// Whether head `h` queues its writes.
    pub fn delays(&self, h: usize) -> bool {
        self.holds[h] > 0
    }

    /// (m, f) of head `h`'s δ = m + f.
    fn split(&self, h: usize) -> (usize, f32) {
        let m = self.delays[h].floor();
        (m as usize, self.delays[h] - m)
    }

    /// `w(k) γ^k` of head `h` in f64 (γ = 1 without a decay; 0 below f32's smallest
    /// normal, as the kernels flush), and γ^k alone.
    fn weight(&self, h: usize, k: usize) -> (f64, f64) {
        let g = match self.retention.get(h).map_or(1.0, |&g| (g as f64).powi(k as i32)) {
            f if f < f32::MIN_POSITIVE as f64 => 0.0,
            f => f,
        };
        let (m, f) = self.split(h);
        let w = match k {
            k if k <= m => 0.0,
            k if k == m + 1 => 1.0 - f as f64,
            _ => 1.0,
        };
        (w * g, g)
    }

    /// The (key, value) in head `h`'s ring (W) of position `p`.
    fn slot<'r>(&self, ring: &'r [f32], p: usize) -> (&'r [f32], &'r [f32]) {
        let at = (p % self.slots) * (self.n + self.d);
        ring[at..at + self.n + self.d].split_at(self.n)
    }

    /// Queues (key, value) of position `p` in head `h`'s ring.
    fn put(&self, ring: &mut [f32], p: usize, key: &[f32], v: &[f32]) {
        let at = (p % self.slots) * (self.n + self.d);
        ring[at..at + self.n].copy_from_slice(key);
        ring[at + self.n..at + self.n + self.d].copy_from_slice(v);
    }

    /// The queued positions of head `h` at the start of a chunk at `pos0`.
    fn queued(&self, h: usize, pos0: usize) -> std::ops::Range<usize> {
        pos0.saturating_sub(self.holds[h])..pos0
    }

    /// One step of delayed head `h` at position `pos`, after its read of ρ (N, D) into
    /// `a` (D) with the rotated query `q` (N): the queued tokens add their weighted
    /// reads, the oldest enters ρ whole, and this one's rotated key and value v (D)
    /// are queued.
    pub(crate) fn step(
        &self,
        h: usize,
        pos: usize,
        rho: &mut [f32],
        (a, q): (&mut [f32], &[f32]),
        (key, v): (&[f32], &[f32]),
        ring: &mut [f32],
    ) {
        let hold = self.holds[h];
        for tau in self.queued(h, pos) {
            let (w, _) = self.weight(h, pos - tau);
            if w != 0.0 {
                let (k, vq) = self.slot(ring, tau);
                let dot: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                a.iter_mut().zip(vq).for_each(|(o, &x)| *o += (w * dot) as f32 * x);
            }
        }
        if pos >= hold {
            let (k, vq) = self.slot(ring, pos - hold);
            outer_add(rho, k, vq, self.weight(h, hold).1 as f32);
        }
        self.put(ring, pos, key, v);
    }

    /// A carried chunk's read of its queued tokens for one stream: `a` (H, T, D) +=
    /// `Σ_τ w(p−τ) γ^(p−τ) (q_i · k_τ) v_τ` (p = pos0 + i), from the rotated queries
    /// `q` (H, T, N) and the rings (H, W).
    pub(crate) fn read(&self, a: &mut [f32], q: &[f32], rings: &[f32], pos0: usize, t: usize) {
        self.each_pair(q, rings, pos0, t, |h, i, lag, dot, (_, v)| {
            let w = (self.weight(h, lag).0 * dot) as f32;
            let out = &mut a[(h * t + i) * self.d..(h * t + i + 1) * self.d];
            out.iter_mut().zip(v).for_each(|(o, &x)| *o += w * x);
        });
    }

    /// The gradient through [`Queue::read`] (the queue held constant): `dq` (H, T, N)
    /// += `Σ_τ w γ^k (da_i · v_τ) k_τ`, and `dlags` (H, 2, unless empty) += d loss /
    /// d ln γ_h, `Σ k w γ^k (q_i · k_τ)(da_i · v_τ)`, and d loss / d δ_h, `−Σ γ^k
    /// (q_i · k_τ)(da_i · v_τ)` over the lag k = m + 1.
    pub(crate) fn read_backward(
        &self,
        dq: &mut [f32],
        dlags: &mut [f32],
        (q, da): (&[f32], &[f32]),
        rings: &[f32],
        pos0: usize,
        t: usize,
    ) {
        let (n, d) = (self.n, self.d);
        self.each_pair(q, rings, pos0, t, |h, i, lag, dot, (k, v)| {
            let g: f64 =
                da[(h * t + i) * d..(h * t + i + 1) * d].iter().zip(v).map(|(&a, &b)| a as f64 * b as f64).sum();
            let (w, plain) = self.weight(h, lag);
            let out = &mut dq[(h * t + i) * n..(h * t + i + 1) * n];
            out.iter_mut().zip(k).for_each(|(o, &x)| *o += (w * g) as f32 * x);
            if let Some(dl) = dlags.get_mut(2 * h..2 * h + 2) {
                dl[0] += (lag as f64 * w * dot * g) as f32;
                if lag == self.split(h).0 + 1 {
                    dl[1] -= (plain * dot * g) as f32;
                }
            }
        });
    }

    /// Calls `f(h, i, lag, q_i · k_τ, (k_τ, v_τ))` for every chunk token i and queued
    /// token τ it reads (lag p − τ past the head's whole delay m, so weighted above 0).
    fn each_pair(
        &self,
        q: &[f32],
        rings: &[f32],
        pos0: usize,
        t: usize,
        mut f: impl FnMut(usize, usize, usize, f64, (&[f32], &[f32])),
    ) {
        let (n, w) = (self.n, self.slots * (self.n + self.d));
        for h in (0..self.delays.len()).filter(|&h| self.delays(h)) {
            let (ring, (m, _)) = (&rings[h * w..(h + 1) * w], self.split(h));
            for tau in self.queued(h, pos0) {
                let (k, v) = self.slot(ring, tau);
                // lag p − τ > m  ⇔  i > τ + m − pos0
                for i in (tau + m + 1).saturating_sub(pos0)..t {
                    let qi = &q[(h * t + i) * n..(h * t + i + 1) * n];
                    let dot: f64 = qi.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                    f(h, i, pos0 + i - tau, dot, (k, v));
                }
            }
        }
    }

    /// After a carried chunk of `t` tokens at `pos0` for one stream: the queued tokens
    /// now due (held `hold` tokens by the chunk's end) enter ρ (H, N, D) whole, then
    /// the chunk's last tokens — rotated keys `keys` (H, T, N), values `v` (T, D) —
    /// are queued in the rings (H, W). The chunk's own due tokens are written by the
    /// parallel form (its write powers are 0 for the last `hold`).
    pub(crate) fn advance(
        &self,
        rho: &mut [f32],
        rings: &mut [f32],
        (keys, v): (&[f32], &[f32]),
        pos0: usize,
        t: usize,
    ) {
        let (n, d, w) = (self.n, self.d, self.slots * (self.n + self.d));
        let end = pos0 + t - 1;
        for h in (0..self.delays.len()).filter(|&h| self.delays(h)) {
            let hold = self.holds[h];
            let (rho, ring) = (&mut rho[h * n * d..(h + 1) * n * d], &mut rings[h * w..(h + 1) * w]);
            for tau in self.queued(h, pos0).filter(|&tau| tau + hold <= end) {
                let (k, vq) = self.slot(ring, tau);
                outer_add(rho, k, vq, self.weight(h, end - tau).1 as f32);
            }
            for i in t.saturating_sub(self.slots)..t {
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
