//! The write's key site: what the write into ρ uses as its key. bdh.py writes
//! `ρ += R_t x_t ⊗ v_t`, the key equal to the query. Two mechanisms from
//! neuroscience shape the key instead, each alone or both (their product):
//!
//! - **A presynaptic trace** (spike-timing-dependent plasticity): the key is
//!   `c_t = λ ⊙ c_{t−1} + x_t`, x filtered over past tokens with a time constant
//!   per neuron, so a synapse also strengthens when pre- and post-activity are a
//!   few tokens apart (`trace = λ`, fixed, or `"learned"`: λ = sigmoid(φ) per
//!   neuron, φ the parameter `attn.trace` (H, N), starting at λ = ½).
//! - **An astrocyte's gate**: a slow per-neuron trace of activity
//!   `s_t = α s_{t−1} + (1 − α) x_t` gates the write, key `g(s_t) ⊙ c_t` with
//!   `g(s) = 2·sigmoid(β_h s)`, a monotone gate per head with β the parameter
//!   `attn.astrocyte` (H), starting at 0 (g = 1, no gate): trained, heavily used
//!   synapses write less (β < 0) or more (β > 0).
//!
//! The key is rotated at its own position, `k_t = R_t key_t`; the read still
//! uses `R_t x_t`, so the parallel form is linear attention with keys other than
//! its queries (`bdh_kernels::keyed_attention`). A stream's traces c and s are
//! per-stream state beside ρ ([`super::State::keys`]), carried from chunk to chunk
//! and step to step. The module gives each path its part: the parallel forward
//! ([`KeySite::forward`]), its backward ([`KeySite::backward`]) and the step
//! ([`KeySite::step`]).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::config::BdhConfig;
use super::params::sigmoid;

/// Name of a learned trace's logits φ, (H, N): λ = sigmoid(φ).
pub const TRACE_NAME: &str = "attn.trace";
/// Name of the astrocyte gate's slopes β, (H).
pub const ASTROCYTE_NAME: &str = "attn.astrocyte";

/// The presynaptic trace of the write's key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TraceRepr", into = "TraceRepr")]
pub enum Trace {
    /// No trace: the key is x (bdh.py).
    #[default]
    None,
    /// λ for every neuron, in [0, 1).
    Fixed(f32),
    /// λ = sigmoid(φ) per neuron, φ trained (`attn.trace`), from λ = ½.
    Learned,
}

/// How [`Trace`] is written in configs: `"none"`, `"learned"` or λ.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum TraceRepr {
    Name(String),
    Value(f32),
}

impl TryFrom<TraceRepr> for Trace {
    type Error = String;
    fn try_from(r: TraceRepr) -> Result<Self, String> {
        match r {
            TraceRepr::Name(n) if n == "none" => Ok(Trace::None),
            TraceRepr::Name(n) if n == "learned" => Ok(Trace::Learned),
            TraceRepr::Name(n) => Err(format!("trace `{n}`: expected \"none\", \"learned\" or a λ in [0, 1)")),
            TraceRepr::Value(l) => Ok(Trace::Fixed(l)),
        }
    }
}

impl From<Trace> for TraceRepr {
    fn from(t: Trace) -> Self {
        match t {
            Trace::None => TraceRepr::Name("none".into()),
            Trace::Learned => TraceRepr::Name("learned".into()),
            Trace::Fixed(l) => TraceRepr::Value(l),
        }
    }
}

impl Trace {
    /// Whether there is no trace (bdh.py).
    pub fn is_none(&self) -> bool {
        *self == Trace::None
    }
}

/// Astrocyte-gated plasticity: the rate of the slow activity trace.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Astrocyte {
    /// α in (0, 1): `s_t = α s_{t−1} + (1 − α) x_t`.
    pub alpha: f32,
}

/// Checks the key site's fields of `cfg`; the message names the field.
pub(crate) fn validate(cfg: &BdhConfig) -> Result<(), String> {
    if let Trace::Fixed(l) = cfg.trace {
        if !(0.0..1.0).contains(&l) {
            return Err(format!("trace λ = {l} must be in [0, 1)"));
        }
    }
    if let Some(Astrocyte { alpha }) = cfg.astrocyte {
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(format!("astrocyte.alpha = {alpha} must be in (0, 1)"));
        }
    }
    Ok(())
}

/// The key site of a model, resolved from its config and weights: λ per neuron
/// and β per head. `None` for bdh.py's key (x itself).
#[derive(Clone, Debug, PartialEq)]
pub struct KeySite {
    n: usize,
    /// λ per (head, neuron), (H, N); empty without a trace.
    lambda: Vec<f32>,
    /// α of the astrocyte's trace, with β per head, (H).
    astrocyte: Option<(f32, Vec<f32>)>,
    /// Whether λ is trained (its gradient wanted).
    learned: bool,
}

/// What the forward keeps for the backward, (B, H, T, N) each.
pub(crate) struct KeyBuffers<'a> {
    /// The key before rotation.
    pub key: &'a mut [f32],
    /// The trace c (empty without one).
    pub trace: &'a mut [f32],
    /// The astrocyte's trace s (empty without one).
    pub glia: &'a mut [f32],
}

impl KeySite {
    /// The key site of a model with config `cfg` and trained tensors `trace` (φ,
    /// (H, N), or empty) and `astrocyte` (β, (H), or empty).
    pub fn new(cfg: &BdhConfig, trace: &[f32], astrocyte: &[f32]) -> Option<Self> {
        let (h, n) = (cfg.n_head, cfg.n_neurons());
        if cfg.trace.is_none() && cfg.astrocyte.is_none() {
            return None;
        }
        let lambda = match cfg.trace {
            Trace::None => Vec::new(),
            Trace::Fixed(l) => vec![l; h * n],
            Trace::Learned => sigmoid(trace),
        };
        let astrocyte = cfg.astrocyte.map(|a| (a.alpha, astrocyte.to_vec()));
        Some(KeySite { n, lambda, astrocyte, learned: cfg.trace == Trace::Learned })
    }

    /// Values of per-stream state per (layer, stream, head): c and s, N each.
    pub fn width(cfg: &BdhConfig) -> usize {
        cfg.n_neurons() * (usize::from(!cfg.trace.is_none()) + usize::from(cfg.astrocyte.is_some()))
    }

    /// Its trained parameters' values: φ (H·N) if learned, then β (H) if gated.
    pub fn param_count(cfg: &BdhConfig) -> usize {
        let (h, n) = (cfg.n_head, cfg.n_neurons());
        h * n * usize::from(cfg.trace == Trace::Learned) + h * usize::from(cfg.astrocyte.is_some())
    }

    fn has_trace(&self) -> bool {
        !self.lambda.is_empty()
    }

    /// The keys of a pass: from x (B, H, T, N), into `out.key` (and the traces the
    /// backward needs), starting from the carried traces `state` ((B, H, W), left
    /// holding those after the last token) or from zero.
    pub(crate) fn forward(&self, x: &[f32], state: Option<&mut [f32]>, out: KeyBuffers, (h, t): (usize, usize)) {
        let n = self.n;
        let per = t * n;
        let w = self.state_width();
        let rows = x.len() / per;
        let mut empty = Vec::new();
        let state: &mut [f32] = match state {
            Some(s) => s,
            None => {
                empty.resize(rows * w, 0.0);
                &mut empty
            }
        };
        let KeyBuffers { key, trace, glia } = out;
        let (traces, glias) = (per_row(trace, rows, per), per_row(glia, rows, per));
        (key.par_chunks_mut(per), x.par_chunks(per), state.par_chunks_mut(w), traces, glias)
            .into_par_iter()
            .enumerate()
            .for_each(|(bh, (key, x, st, tr, gl))| {
                let head = bh % h;
                let (c0, s0) = st.split_at_mut(if self.has_trace() { n } else { 0 });
                for i in 0..t {
                    let xi = &x[i * n..(i + 1) * n];
                    let ki = &mut key[i * n..(i + 1) * n];
                    self.advance(head, xi, c0, s0, ki);
                    if !tr.is_empty() {
                        tr[i * n..(i + 1) * n].copy_from_slice(c0);
                    }
                    if !gl.is_empty() {
                        gl[i * n..(i + 1) * n].copy_from_slice(s0);
                    }
                }
            });
    }

    /// The keys (H, T, N), before rotation, of one stream's x (H, T, N) read from
    /// empty traces: what the parallel forward writes with.
    pub fn keys_of(&self, x: &[f32], t: usize) -> Vec<f32> {
        let h = x.len() / (t * self.n);
        let mut key = vec![0.0; x.len()];
        let kept = |on: bool| vec![0.0; if on { x.len() } else { 0 }];
        let (mut trace, mut glia) = (kept(self.has_trace()), kept(self.astrocyte.is_some()));
        let out = KeyBuffers { key: &mut key, trace: &mut trace, glia: &mut glia };
        self.forward(x, None, out, (h, t));
        key
    }

    /// Per-stream state values per head.
    fn state_width(&self) -> usize {
        self.n * (usize::from(self.has_trace()) + usize::from(self.astrocyte.is_some()))
    }

    /// One token of one head: the traces `c` and `s` (each empty without its
    /// mechanism) advance by x, and `key` = g(s) ⊙ c.
    fn advance(&self, head: usize, x: &[f32], c: &mut [f32], s: &mut [f32], key: &mut [f32]) {
        let n = self.n;
        if self.has_trace() {
            let lambda = &self.lambda[head * n..(head + 1) * n];
            for ((c, &l), &x) in c.iter_mut().zip(lambda).zip(x) {
                *c = l * *c + x;
            }
            key.copy_from_slice(c);
        } else {
            key.copy_from_slice(x);
        }
        if let Some((alpha, beta)) = &self.astrocyte {
            for ((s, k), &x) in s.iter_mut().zip(key.iter_mut()).zip(x) {
                *s = alpha * *s + (1.0 - alpha) * x;
                *k *= gate(beta[head], *s);
            }
        }
    }

    /// One step's key of head `head` for one stream: its traces `state` (W)
    /// advance by `x` (N), and `key` (N) is written.
    pub(crate) fn step(&self, head: usize, x: &[f32], state: &mut [f32], key: &mut [f32]) {
        let (c, s) = state.split_at_mut(if self.has_trace() { self.n } else { 0 });
        self.advance(head, x, c, s, key);
    }

    /// The gradient through [`KeySite::forward`] for one batch row: `dkey` (H, T, N),
    /// d loss / d key, is turned into contributions added to `dx` (H, T, N, before
    /// x's ReLU), and into `dparams` (this row's d loss / d φ (H·N, if learned)
    /// then d β (H, if gated), overwritten). `saved`: the row's key, trace c and s;
    /// `start`: its carried traces at the pass's start (W per head), or empty.
    pub(crate) fn backward(
        &self,
        dkey: &[f32],
        dx: &mut [f32],
        dparams: &mut [f32],
        (x, trace, glia): (&[f32], &[f32], &[f32]),
        start: &[f32],
        t: usize,
    ) {
        let n = self.n;
        let h = dkey.len() / (t * n);
        let w = self.state_width();
        dparams.fill(0.0);
        let (dphi, dbeta) = dparams.split_at_mut(if self.learned { h * n } else { 0 });
        let mut run = vec![0.0f32; n]; // the reverse scan's carry
        let mut dc = vec![0.0f32; n];
        let mut dcs = vec![0.0f32; t * n];
        for head in 0..h {
            let block = |buf| head_block(buf, head, t * n);
            let (dk, xh, c, s) = (block(dkey), block(x), block(trace), block(glia));
            let dxh = &mut dx[head * t * n..(head + 1) * t * n];
            let c_of = |i: usize| if c.is_empty() { &xh[i * n..(i + 1) * n] } else { &c[i * n..(i + 1) * n] };
            let c_start = if self.has_trace() && !start.is_empty() { &start[head * w..head * w + n] } else { &[][..] };
            // the astrocyte's gate: key = g(s) ⊙ c, g = 2 sigmoid(β s), s = α s' + (1 − α) x
            //   ⇒ dc = dkey ⊙ g;  dβ = Σ dkey ⊙ c ⊙ g(1 − g/2) ⊙ s;  ds = dkey ⊙ c ⊙ g(1 − g/2) β, scanned back by α
            run.fill(0.0);
            for i in (0..t).rev() {
                let dki = &dk[i * n..(i + 1) * n];
                let dci = &mut dcs[i * n..(i + 1) * n];
                match &self.astrocyte {
                    None => dci.copy_from_slice(dki),
                    Some((alpha, beta)) => {
                        let b = beta[head];
                        let mut db = 0.0f64;
                        for j in 0..n {
                            let si = s[i * n + j];
                            let g = gate(b, si);
                            dci[j] = dki[j] * g;
                            let dz = dki[j] * c_of(i)[j] * g * (1.0 - 0.5 * g);
                            db += (dz * si) as f64;
                            run[j] = dz * b + alpha * run[j];
                            dxh[i * n + j] += (1.0 - alpha) * run[j];
                        }
                        dbeta[head] += db as f32;
                    }
                }
            }
            // the trace: c_t = λ c_{t−1} + x_t  ⇒  C_t = dc_t + λ C_{t+1}, dx_t += C_t, dλ += C_t ⊙ c_{t−1}
            if self.has_trace() {
                let lambda = &self.lambda[head * n..(head + 1) * n];
                run.fill(0.0);
                dc.fill(0.0);
                for i in (0..t).rev() {
                    for j in 0..n {
                        run[j] = dcs[i * n + j] + lambda[j] * run[j];
                        dxh[i * n + j] += run[j];
                        let before = if i > 0 { c[(i - 1) * n + j] } else { c_start.get(j).copied().unwrap_or(0.0) };
                        dc[j] += run[j] * before;
                    }
                }
                if self.learned {
                    // λ = sigmoid(φ)  ⇒  dφ = dλ λ (1 − λ)
                    for ((d, &g), &l) in dphi[head * n..(head + 1) * n].iter_mut().zip(&dc).zip(lambda) {
                        *d = g * l * (1.0 - l);
                    }
                }
            } else {
                dxh.iter_mut().zip(&dcs).for_each(|(d, &g)| *d += g);
            }
        }
    }
}

/// The astrocyte's gate g(s) = 2 sigmoid(β s): 1 at β = 0, monotone in s.
fn gate(beta: f32, s: f32) -> f32 {
    2.0 / (1.0 + (-beta * s).exp())
}

/// `buf` cut into `rows` parts of `per` values, or `rows` empty parts if it is empty.
fn per_row(buf: &mut [f32], rows: usize, per: usize) -> Vec<&mut [f32]> {
    match buf.is_empty() {
        true => (0..rows).map(|_| &mut [][..]).collect(),
        false => buf.chunks_mut(per).collect(),
    }
}

/// Head `head`'s (T, N) block (`per` values) of `buf`, or `buf` itself if empty.
fn head_block(buf: &[f32], head: usize, per: usize) -> &[f32] {
    if buf.is_empty() {
        buf
    } else {
        &buf[head * per..(head + 1) * per]
    }
}
