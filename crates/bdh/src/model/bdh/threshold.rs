//! The threshold of x: where a neuron starts to fire. bdh.py's neurons are
//! `x = relu(v · encoder_h)`, all firing above 0. Two mechanisms give each neuron j
//! its own threshold θ_j, `x = relu(v · encoder_h − θ_j)` (θ (H, N) is the tensor
//! `attn.threshold`, starting at 0: a fresh model is bdh.py's):
//!
//! - **Learned** (`threshold = "learned"`): θ is trained by backprop as any
//!   parameter (never weight-decayed).
//! - **Homeostatic** (`threshold = { target = 0.05 }`): during training θ is steered
//!   so that each neuron fires at the target rate. A running estimate of each
//!   neuron's firing rate `r_j ← (1 − rate) r_j + rate · f_j` (f_j the fraction of
//!   the step's tokens, rows and layers where j fires; `attn.firing`, (H, N),
//!   starting at the target) moves the threshold by
//!   `θ_j ← θ_j + step · (r_j − target)`: a neuron firing too often rises, one too
//!   rarely sinks. Both are kept with the model, so a run resumes exactly; at
//!   inference they are frozen.
//! - **Gain** (`threshold = { target = 0.05, gain = true }`, with the homeostatic
//!   rule): each neuron's output is divided by its running mean activity relative to
//!   its head's, `x_j = g_j relu(v · encoder_h − θ_j)`, `g_j = ā / max(a_j, ā / 10)`
//!   (a_j the running mean of relu(v · encoder_h − θ_j), `attn.activity`, starting at 1;
//!   ā its head's mean): a neuron active far more than its peers is turned down, one
//!   active less turned up (at most tenfold), so that no few neurons carry a head.
//!   Equal activities give g = 1: a fresh model is bdh.py's.
//!
//! The forward ([`ThresholdSite::encode`]), the step (the same call on one token),
//! the backward ([`ThresholdSite::backward`]: `d θ_j = −Σ d latent_j` over the tokens
//! where j fired) and the training rule ([`homeostasis`]) take it from here. The
//! homeostatic rule rides on the gradient buffer: the backward adds each step's
//! firing fractions to the slot of `attn.firing`, so micro-batches and processes
//! average them as they average gradients, and [`homeostasis`] turns them into the
//! update and clears both slots before the optimizer runs (a slot with no gradient
//! is left as it is by AdamW).

use bdh_kernels::MatMul;
use serde::{Deserialize, Serialize};

use super::config::BdhConfig;
use crate::params::Params;

/// Name of the thresholds θ, (H, N).
pub const THRESHOLD_NAME: &str = "attn.threshold";
/// Name of a homeostatic threshold's running firing rates, (H, N).
pub const FIRING_NAME: &str = "attn.firing";
/// Name of a homeostatic gain's running mean activities, (H, N).
pub const ACTIVITY_NAME: &str = "attn.activity";
/// The most a gain turns a neuron up.
const MAX_GAIN: f32 = 10.0;

/// Where the neurons of x start to fire.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ThresholdRepr", into = "ThresholdRepr")]
pub enum Threshold {
    /// At 0 (bdh.py).
    #[default]
    None,
    /// θ per neuron, trained by backprop.
    Learned,
    /// θ per neuron, steered to a firing rate during training.
    Homeostatic(Homeostasis),
}

/// A homeostatic threshold's rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Homeostasis {
    /// The firing rate each neuron is steered to, in (0, 1).
    pub target: f32,
    /// The weight of each step's firing in the running rate, in (0, 1].
    #[serde(default = "default_rate")]
    pub rate: f32,
    /// How far θ moves in a step per unit of (rate − target), > 0.
    #[serde(default = "default_step")]
    pub step: f32,
    /// Whether each neuron's output is divided by its running mean activity
    /// relative to its head's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gain: bool,
}

fn default_rate() -> f32 {
    0.1
}

fn default_step() -> f32 {
    0.02
}

/// How [`Threshold`] is written in configs: `"none"`, `"learned"` or the rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged, expecting = "\"none\", \"learned\" or a rule { target, rate, step, gain } (only these fields)")]
enum ThresholdRepr {
    Name(String),
    Rule(Homeostasis),
}

impl TryFrom<ThresholdRepr> for Threshold {
    type Error = String;
    fn try_from(r: ThresholdRepr) -> Result<Self, String> {
        match r {
            ThresholdRepr::Name(n) if n == "none" => Ok(Threshold::None),
            ThresholdRepr::Name(n) if n == "learned" => Ok(Threshold::Learned),
            ThresholdRepr::Name(n) => {
                Err(format!("threshold `{n}`: expected \"none\", \"learned\" or a rule {{ target, rate, step, gain }}"))
            }
            ThresholdRepr::Rule(h) => Ok(Threshold::Homeostatic(h)),
        }
    }
}

impl From<Threshold> for ThresholdRepr {
    fn from(t: Threshold) -> Self {
        match t {
            Threshold::None => ThresholdRepr::Name("none".into()),
            Threshold::Learned => ThresholdRepr::Name("learned".into()),
            Threshold::Homeostatic(h) => ThresholdRepr::Rule(h),
        }
    }
}

impl Threshold {
    /// Whether the neurons fire above 0 (bdh.py).
    pub fn is_none(&self) -> bool {
        *self == Threshold::None
    }

    /// The tensors it adds to the model, with their values at the start: θ = 0, a
    /// homeostatic threshold's running rates at the target, and a gain's running
    /// activities at 1 (all equal: every gain 1).
    pub(crate) fn tensors(&self) -> Vec<(&'static str, f32)> {
        match self {
            Threshold::None => vec![],
            Threshold::Learned => vec![(THRESHOLD_NAME, 0.0)],
            Threshold::Homeostatic(h) if h.gain => {
                vec![(THRESHOLD_NAME, 0.0), (FIRING_NAME, h.target), (ACTIVITY_NAME, 1.0)]
            }
            Threshold::Homeostatic(h) => vec![(THRESHOLD_NAME, 0.0), (FIRING_NAME, h.target)],
        }
    }

    /// Whether each neuron's output is divided by its running mean activity.
    pub fn has_gain(&self) -> bool {
        matches!(self, Threshold::Homeostatic(h) if h.gain)
    }

    /// An error naming what is wrong with the rule's numbers.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let Threshold::Homeostatic(Homeostasis { target, rate, step, .. }) = *self else { return Ok(()) };
        if !(target > 0.0 && target < 1.0) {
            return Err(format!("threshold.target = {target} must be a firing rate in (0, 1)"));
        }
        if !(rate > 0.0 && rate <= 1.0) {
            return Err(format!("threshold.rate = {rate} must be in (0, 1]"));
        }
        if !(step > 0.0 && step.is_finite()) {
            return Err(format!("threshold.step = {step} must be > 0"));
        }
        Ok(())
    }
}

/// A model's thresholds as the paths use them.
#[derive(Clone, Debug)]
pub(crate) struct ThresholdSite<'a> {
    /// θ, (H, N); empty: bdh.py's neurons.
    theta: &'a [f32],
    /// Whether the backward adds firing fractions (homeostatic) rather than d θ (learned).
    homeostatic: bool,
    /// Each neuron's gain g, (H, N); empty without a gain.
    gain: Vec<f32>,
}

impl<'a> ThresholdSite<'a> {
    /// The site of `cfg`'s model with θ (empty without thresholds) and a gain's
    /// running activities (empty without a gain).
    pub(crate) fn new(cfg: &BdhConfig, theta: &'a [f32], activity: &[f32]) -> Self {
        let n = cfg.n_neurons();
        let mut gain = Vec::new();
        for head in activity.chunks_exact(n.max(1)) {
            let mean = head.iter().map(|&a| a as f64).sum::<f64>() as f32 / n as f32;
            gain.extend(head.iter().map(|&a| if mean > 0.0 { mean / a.max(mean / MAX_GAIN) } else { 1.0 }));
        }
        ThresholdSite { theta, homeostatic: matches!(cfg.threshold, Threshold::Homeostatic(_)), gain }
    }

    /// The encoder's product: with its ReLU fused, or without when a threshold
    /// comes first ([`ThresholdSite::encode`]).
    pub(crate) fn product(&self, m: MatMul) -> MatMul {
        if self.theta.is_empty() {
            m.relu()
        } else {
            m
        }
    }

    /// `x ← g relu(x − θ)` on the encoder's product `x`, (…, N) rows of `n` whose
    /// head is `head(row)` (nothing without thresholds: the product's ReLU did it).
    pub(crate) fn encode(&self, x: &mut [f32], n: usize, head: impl Fn(usize) -> usize) {
        if self.theta.is_empty() {
            return;
        }
        for (i, row) in x.chunks_exact_mut(n).enumerate() {
            let h = head(i);
            for (x, &th) in row.iter_mut().zip(&self.theta[h * n..(h + 1) * n]) {
                *x = (*x - th).max(0.0);
            }
            if !self.gain.is_empty() {
                row.iter_mut().zip(&self.gain[h * n..(h + 1) * n]).for_each(|(x, &g)| *x *= g);
            }
        }
    }

    /// Turns d loss / d x into d loss / d (x before the gain), in place: `g ⊙ dx` on
    /// (…, N) rows of `n` whose head is `head(row)` (nothing without a gain).
    pub(crate) fn gain_backward(&self, dx: &mut [f32], n: usize, head: impl Fn(usize) -> usize) {
        if self.gain.is_empty() {
            return;
        }
        for (i, row) in dx.chunks_exact_mut(n).enumerate() {
            let h = head(i);
            row.iter_mut().zip(&self.gain[h * n..(h + 1) * n]).for_each(|(d, &g)| *d *= g);
        }
    }

    /// What the thresholds train by, from one layer's `latent` gradient (the
    /// encoder's, already through the ReLU and the gain) and its `fired` neurons (x
    /// after the gain), (B, H, T, N) each: a learned θ's `d θ_j −= Σ d latent_j`; a
    /// homeostatic one's firing fraction, `+= #fired_j / (B·T·layers)` in the slot of
    /// [`FIRING_NAME`], and a gain's mean activity before the gain in that of
    /// [`ACTIVITY_NAME`].
    pub(crate) fn backward(
        &self,
        (dtheta, dfiring, dactivity): (&mut [f32], &mut [f32], &mut [f32]),
        (latent, fired): (&[f32], &[f32]),
        (h, t, n, layers): (usize, usize, usize, usize),
    ) {
        if self.theta.is_empty() {
            return;
        }
        let rows = latent.len() / (h * t * n);
        if self.homeostatic {
            let weight = 1.0 / (rows * t * layers) as f64;
            let mut counts = vec![0u32; h * n];
            let mut sums = vec![0.0f64; if self.gain.is_empty() { 0 } else { h * n }];
            for (i, row) in fired.chunks_exact(n).enumerate() {
                let hi = (i / t) % h;
                counts[hi * n..(hi + 1) * n].iter_mut().zip(row).filter(|(_, &x)| x > 0.0).for_each(|(c, _)| *c += 1);
                if !sums.is_empty() {
                    let (gain, sum) = (&self.gain[hi * n..(hi + 1) * n], &mut sums[hi * n..(hi + 1) * n]);
                    sum.iter_mut().zip(row.iter().zip(gain)).for_each(|(s, (&x, &g))| *s += (x / g) as f64);
                }
            }
            dfiring.iter_mut().zip(counts).for_each(|(o, c)| *o += (c as f64 * weight) as f32);
            dactivity.iter_mut().zip(sums).for_each(|(o, s)| *o += (s * weight) as f32);
        } else {
            let mut sums = vec![0.0f64; h * n];
            for (i, row) in latent.chunks_exact(n).enumerate() {
                let hi = (i / t) % h;
                sums[hi * n..(hi + 1) * n].iter_mut().zip(row).for_each(|(s, &g)| *s += g as f64);
            }
            dtheta.iter_mut().zip(sums).for_each(|(o, s)| *o -= s as f32);
        }
    }
}

/// A homeostatic threshold's step, before the optimizer's: the firing fractions (and
/// a gain's activities) the backward left in `grads` (averaged over micro-batches and
/// processes) update the running rates (and activities) and the thresholds of
/// `params`, and their slots of `grads` are cleared (the optimizer then leaves them
/// alone). Nothing for other models.
pub fn homeostasis(cfg: &BdhConfig, params: &mut Params, grads: &mut Params) {
    let Threshold::Homeostatic(Homeostasis { target, rate, step, .. }) = cfg.threshold else { return };
    let Some(fired) = grads.get(FIRING_NAME).map(<[f32]>::to_vec) else { return };
    let active = grads.get(ACTIVITY_NAME).map(<[f32]>::to_vec);
    for name in [FIRING_NAME, THRESHOLD_NAME, ACTIVITY_NAME] {
        if let Some(g) = grads.get_mut(name) {
            g.fill(0.0);
        }
    }
    if let (Some(active), Some(running)) = (active, params.get_mut(ACTIVITY_NAME)) {
        running.iter_mut().zip(&active).for_each(|(r, &a)| *r += rate * (a - *r));
    }
    let Some(running) = params.get_mut(FIRING_NAME) else { return };
    running.iter_mut().zip(&fired).for_each(|(r, &f)| *r += rate * (f - *r));
    let running = running.to_vec();
    if let Some(theta) = params.get_mut(THRESHOLD_NAME) {
        theta.iter_mut().zip(running).for_each(|(th, r)| *th += step * (r - target));
    }
}
