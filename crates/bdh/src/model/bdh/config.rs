//! Model configuration with bdh.py's field names, derived sizes and validation.

use serde::{Deserialize, Serialize};

pub use super::connectivity::Connectivity;
pub use super::delay::Delays;
pub use super::key::{Astrocyte, Trace};
pub use super::norm::Norm;
pub use super::threshold::{Homeostasis, Threshold};
pub use super::variant::{Position, Residual};
use crate::error::{Error, Result};

/// The largest value of any size in a config: far past any model that fits a machine,
/// small enough that products of two sizes cannot overflow.
pub const MAX_SIZE: usize = 1 << 24;

/// The hyper-parameters of a BDH model, named as bdh.py's `BDHConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdhConfig {
    /// L: number of layers (all share one set of weights).
    pub n_layer: usize,
    /// D: embedding (residual stream) width.
    pub n_embd: usize,
    /// H: number of heads.
    pub n_head: usize,
    /// N·H / D: neurons per head are `mlp_internal_dim_multiplier · D / H`.
    pub mlp_internal_dim_multiplier: usize,
    /// V: vocabulary size (256 for bytes).
    pub vocab_size: usize,
    /// Dropout probability on x⊙y during training.
    pub dropout: f32,
    /// How the synapse state forgets: not at all (bdh.py), or by a retention γ_h per
    /// head (the paper's damping).
    #[serde(default, skip_serializing_if = "Decay::is_none")]
    pub decay: Decay,
    /// Whether a learned decay has one retention per head (the default) or one per
    /// neuron.
    #[serde(default, skip_serializing_if = "DecayPer::is_head")]
    pub decay_per: DecayPer,
    /// The normalisation: bdh.py's LayerNorm or none.
    #[serde(default, skip_serializing_if = "Norm::is_layer")]
    pub norm: Norm,
    /// The residual: in the D-dimensional stream (bdh.py) or in the neurons (the paper's Eq. 4).
    #[serde(default, skip_serializing_if = "Residual::is_d")]
    pub residual: Residual,
    /// The position encoding: bdh.py's RoPE or none.
    #[serde(default, skip_serializing_if = "Position::is_rope")]
    pub position: Position,
    /// The write's key: x (bdh.py), or a presynaptic trace of x (see [`super::key`]).
    #[serde(default, skip_serializing_if = "Trace::is_none")]
    pub trace: Trace,
    /// An astrocyte's gate on the write's key, or none (bdh.py).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub astrocyte: Option<Astrocyte>,
    /// How each head delays its writes: not at all (bdh.py), δ_h tokens, or learned.
    #[serde(default, skip_serializing_if = "Delays::is_none")]
    pub delays: Delays,
    /// Where the neurons of x start to fire: at 0 (bdh.py), or at a threshold per
    /// neuron, learned or homeostatic (see [`super::threshold`]).
    #[serde(default, skip_serializing_if = "Threshold::is_none")]
    pub threshold: Threshold,
    /// Which weights of `encoder`, `encoder_v` and `decoder` exist: all (bdh.py), or
    /// modular and sparse (see [`super::connectivity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connectivity: Option<Connectivity>,
}

/// The synapse state's decay. With a retention γ_h the attention scores become
/// `(q_t · q_τ) γ_h^(t−τ)` for τ < t, and the recurrent state `ρ ← γ_h ρ` before
/// each read: old tokens fade geometrically, as ALiBi's linear bias on softmax
/// logits, `−m_h (t−τ)`, is the multiplicative decay `e^(−m_h)` here.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "DecayRepr", into = "DecayRepr")]
pub enum Decay {
    /// No decay: bdh.py's model.
    #[default]
    None,
    /// γ_h = e^(−m_h), with m_h ALiBi's geometric slopes for H heads.
    Alibi,
    /// γ_h given per head, each in (0, 1].
    Retention(Vec<f32>),
    /// γ_h = sigmoid(θ_h) per head, θ trained by backprop (the parameter
    /// `attn.decay`), starting from ALiBi's γ_h.
    Learned,
}

/// How [`Decay`] is written in configs: `"none"`, `"alibi"` or a list of γ_h.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged, expecting = "\"none\", \"alibi\" or a list of γ per head")]
enum DecayRepr {
    Name(String),
    List(Vec<f32>),
}

impl TryFrom<DecayRepr> for Decay {
    type Error = String;
    fn try_from(r: DecayRepr) -> std::result::Result<Self, String> {
        match r {
            DecayRepr::Name(n) if n == "none" => Ok(Decay::None),
            DecayRepr::Name(n) if n == "alibi" => Ok(Decay::Alibi),
            DecayRepr::Name(n) if n == "learned" => Ok(Decay::Learned),
            DecayRepr::Name(n) => {
                Err(format!("decay `{n}`: expected \"none\", \"alibi\", \"learned\" or a list of γ per head"))
            }
            DecayRepr::List(g) => Ok(Decay::Retention(g)),
        }
    }
}

impl From<Decay> for DecayRepr {
    fn from(d: Decay) -> Self {
        match d {
            Decay::None => DecayRepr::Name("none".into()),
            Decay::Alibi => DecayRepr::Name("alibi".into()),
            Decay::Learned => DecayRepr::Name("learned".into()),
            Decay::Retention(g) => DecayRepr::List(g),
        }
    }
}

/// What a learned decay's retentions belong to: each head (γ_h, the default) or each
/// neuron (γ_{h,i}: the synapses of neuron i fade at their own rate).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecayPer {
    /// One retention per head.
    #[default]
    Head,
    /// One retention per neuron of each head.
    Neuron,
}

impl DecayPer {
    /// Whether this is one retention per head (the default).
    pub fn is_head(&self) -> bool {
        *self == DecayPer::Head
    }
}

impl Decay {
    /// As a config writes it: `"none"`, `"alibi"` or the list.
    pub fn describe(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{self:?}"))
    }

    /// Whether this is no decay (the reference model).
    pub fn is_none(&self) -> bool {
        *self == Decay::None
    }

    /// Whether γ is trained (a parameter of the model, not of its config).
    pub fn is_learned(&self) -> bool {
        *self == Decay::Learned
    }

    /// γ_h for `heads` heads a fresh model starts from, which a fixed decay keeps
    /// (ALiBi's for a learned one, which trains it: [`super::Bdh::retention`] has
    /// every model's); empty for no decay.
    pub fn initial(&self, heads: usize) -> Vec<f32> {
        match self {
            Decay::None => Vec::new(),
            Decay::Alibi | Decay::Learned => alibi_slopes(heads).into_iter().map(|m| (-m).exp() as f32).collect(),
            Decay::Retention(g) => g.clone(),
        }
    }
}

/// ALiBi's head slopes (Press et al., 2022, as its reference code computes them): for
/// H a power of two, `m_h = 2^(−8h/H)`, h = 1..H; otherwise those of the power of two
/// below H, then every other slope of the one above.
pub fn alibi_slopes(heads: usize) -> Vec<f64> {
    let pow2 = |k: usize| -> Vec<f64> {
        let start = 2f64.powf(-8.0 / k as f64);
        (1..=k).map(|i| start.powi(i as i32)).collect()
    };
    if heads == 0 || heads.is_power_of_two() {
        return pow2(heads);
    }
    let below = 1usize << heads.ilog2();
    let mut slopes = pow2(below);
    slopes.extend(pow2(2 * below).into_iter().step_by(2).take(heads - below));
    slopes
}

impl Default for BdhConfig {
    /// bdh.py's defaults: L6 D256 H4 mult 128, V256, dropout 0.1.
    fn default() -> Self {
        BdhConfig {
            n_layer: 6,
            n_embd: 256,
            n_head: 4,
            mlp_internal_dim_multiplier: 128,
            vocab_size: 256,
            dropout: 0.1,
            decay: Decay::None,
            decay_per: DecayPer::Head,
            norm: Norm::Layer,
            residual: Residual::D,
            position: Position::Rope,
            trace: Trace::None,
            astrocyte: None,
            delays: Delays::None,
            threshold: Threshold::None,
            connectivity: None,
        }
    }
}

impl BdhConfig {
    /// N: neurons per head, `mlp_internal_dim_multiplier · D / H` (integer division, as bdh.py).
    pub fn n_neurons(&self) -> usize {
        self.mlp_internal_dim_multiplier * self.n_embd / self.n_head
    }

    /// The variants of bdh.py's layer this config asks for, as its fields write them
    /// (`norm = "none"`, …); `None` for bdh.py's layer (any decay).
    pub fn variant(&self) -> Option<String> {
        let fields = [
            (!self.norm.is_layer()).then(|| format!("norm = \"{}\"", self.norm.name())),
            (!self.residual.is_d()).then(|| "residual = \"n\"".into()),
            (!self.position.is_rope()).then(|| "position = \"none\"".into()),
        ];
        let set: Vec<String> = fields.into_iter().flatten().collect();
        (!set.is_empty()).then(|| set.join(", "))
    }

    /// Whether the norm and the residual are bdh.py's (any position, any decay): the
    /// layer a GPU's fused kernels compute.
    pub fn has_bdhpy_norm_and_residual(&self) -> bool {
        self.norm.is_layer() && self.residual.is_d()
    }

    /// H·N: neurons in all heads.
    pub fn total_neurons(&self) -> usize {
        self.n_head * self.n_neurons()
    }

    /// Number of trained parameters: embed, encoder, encoder_v, decoder, lm_head, and
    /// the layer mechanisms' that train (θ, φ, β, ψ, thresholds, an E/I norm's
    /// logits); the masks of a sparse connectivity are not subtracted.
    pub fn param_count(&self) -> usize {
        let (d, v, hn) = (self.n_embd, self.vocab_size, self.total_neurons());
        v * d
            + 3 * hn * d
            + d * v
            + self.decay_params()
            + super::key::KeySite::param_count(self)
            + self.delay_params()
            + self.threshold_params()
            + self.norm_params().unwrap_or(usize::MAX)
    }

    /// The values of an E/I norm's logits, (4, 4, D); 0 for other norms.
    fn norm_params(&self) -> Option<usize> {
        self.norm.tensors(self.n_embd).iter().try_fold(0usize, |sum, (_, shape, _)| {
            sum.checked_add(shape.iter().try_fold(1usize, |p, &x| p.checked_mul(x))?)
        })
    }

    /// The values of the thresholds θ, (H, N), with thresholds.
    pub fn threshold_params(&self) -> usize {
        usize::from(!self.threshold.is_none()) * self.total_neurons()
    }

    /// The values the model holds besides its parameters: a homeostatic threshold's
    /// running rates (H, N) and the connectivity's masks (3·H·N·D).
    fn held_values(&self) -> Option<usize> {
        let hn = self.mlp_internal_dim_multiplier.checked_mul(self.n_embd)?;
        let rates = hn * self.threshold.tensors().len().saturating_sub(1);
        let masks = hn.checked_mul(self.n_embd)?.checked_mul(3 * usize::from(self.connectivity.is_some()))?;
        rates.checked_add(masks)
    }

    /// Whether the layer has mechanisms beyond bdh.py's and a fixed decay: a learned
    /// decay, delays, a trace, an astrocyte's gate, thresholds or a sparse
    /// connectivity (none of which a device runs).
    pub fn has_synapse_mechanisms(&self) -> bool {
        self.decay.is_learned()
            || !self.delays.is_none()
            || !self.trace.is_none()
            || self.astrocyte.is_some()
            || !self.threshold.is_none()
            || self.connectivity.is_some()
    }

    /// The values of `attn.delay`: ψ_h per head with learned delays, else none.
    pub fn delay_params(&self) -> usize {
        if self.delays.is_learned() {
            self.n_head
        } else {
            0
        }
    }

    /// The values of `attn.decay`: θ per head, or per neuron, with a learned decay;
    /// else none.
    pub fn decay_params(&self) -> usize {
        match (self.decay.is_learned(), self.decay_per) {
            (false, _) => 0,
            (true, DecayPer::Head) => self.n_head,
            (true, DecayPer::Neuron) => self.total_neurons(),
        }
    }

    /// Whether a learned decay has one retention per neuron.
    pub fn per_neuron_decay(&self) -> bool {
        self.decay.is_learned() && self.decay_per == DecayPer::Neuron
    }

    /// Retentions per head: 1, or N with `decay_per = "neuron"`.
    pub fn retentions_per_head(&self) -> usize {
        match self.decay_per {
            DecayPer::Head => 1,
            DecayPer::Neuron => self.n_neurons(),
        }
    }

    /// [`BdhConfig::param_count`], or `None` if it overflows.
    fn checked_param_count(&self) -> Option<usize> {
        let (d, v, hn) = (self.n_embd, self.vocab_size, self.mlp_internal_dim_multiplier.checked_mul(self.n_embd)?);
        v.checked_mul(d)?
            .checked_mul(2)?
            .checked_add(hn.checked_mul(d)?.checked_mul(3)?)?
            .checked_add(self.decay_params())?
            .checked_add(super::key::KeySite::param_count(self))?
            .checked_add(self.delay_params())?
            .checked_add(hn.checked_mul(usize::from(!self.threshold.is_none()))?)?
            .checked_add(self.norm_params()?)?
            .checked_add(self.held_values()?)
    }

    /// The sizes a user sets, by name.
    fn sizes(&self) -> [(&'static str, usize); 5] {
        [
            ("n_layer", self.n_layer),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            ("mlp_internal_dim_multiplier", self.mlp_internal_dim_multiplier),
            ("vocab_size", self.vocab_size),
        ]
    }

    /// Model FLOPs of one forward pass, per token, averaged over a window of `t` tokens:
    /// per layer the three projections (`encoder`, `encoder_v`, `decoder`: 6·D·H·N)
    /// plus causal attention (scores and values over on average t/2 past tokens:
    /// H·t·(N + D)), then `lm_head` (2·D·V). A training step costs three times this.
    pub fn forward_flops_per_token(&self, t: usize) -> f64 {
        let (d, h, n) = (self.n_embd as f64, self.n_head as f64, self.n_neurons() as f64);
        let layer = 6.0 * d * h * n + h * t as f64 * (n + d);
        self.n_layer as f64 * layer + 2.0 * d * self.vocab_size as f64
    }

    /// Checks that the sizes describe a model bdh.py could build and we can run.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if let Some((name, _)) = self.sizes().into_iter().find(|&(_, v)| v == 0) {
            return bad(format!("{name} must be > 0"));
        }
        if let Some((name, v)) = self.sizes().into_iter().find(|&(_, v)| v > MAX_SIZE) {
            return bad(format!("{name} = {v} is past the largest size this engine takes ({MAX_SIZE})"));
        }
        let hn = self.mlp_internal_dim_multiplier * self.n_embd; // < 2⁴⁸: both ≤ 2²⁴
        if !hn.is_multiple_of(self.n_head) || hn < 2 * self.n_head {
            return bad(format!(
                "mlp_internal_dim_multiplier·n_embd = {hn} must be divisible by n_head = {}, giving N ≥ 2 neurons per head",
                self.n_head
            ));
        }
        let params = self.checked_param_count();
        crate::memory::ensure_fits(crate::memory::f32_bytes(params), &format!("the parameters of {self:?}"))?;
        let n = self.n_neurons();
        if !n.is_multiple_of(2) {
            return bad(format!("neurons per head N = {n} must be even (RoPE rotates pairs)"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        if let Err(e) = super::key::validate(self) {
            return bad(e);
        }
        if let Err(e) = self.delays.validate(self.n_head) {
            return bad(e);
        }
        if let Err(e) = self.threshold.validate() {
            return bad(e);
        }
        if let Some(Err(e)) = self.connectivity.map(|c| c.validate(self)) {
            return bad(e);
        }
        if self.decay_per == DecayPer::Neuron {
            if !self.decay.is_learned() {
                return bad(format!(
                    "decay_per = \"neuron\" needs decay = \"learned\" (decay = {} has one retention per head)",
                    self.decay.describe()
                ));
            }
            if !self.delays.is_none() {
                return bad("decay_per = \"neuron\" does not combine with delays: its chunked kernel reads every \
                    past write at once, not one lag at a time"
                    .into());
            }
        }
        if let Decay::Retention(g) = &self.decay {
            if g.len() != self.n_head {
                let s = if g.len() == 1 { "" } else { "s" };
                return bad(format!("decay lists {} retention{s} γ for n_head = {} heads", g.len(), self.n_head));
            }
            if let Some(bad_g) = g.iter().find(|&&g| !(g > 0.0 && g <= 1.0)) {
                return bad(format!("decay γ = {bad_g} must be in (0, 1]"));
            }
        }
        Ok(())
    }
}
