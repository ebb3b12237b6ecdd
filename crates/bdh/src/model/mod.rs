//! Model families and the few `match`es that dispatch to them.
//!
//! Each family is a folder with the same pieces — config, parameter layout, parallel
//! forward and backward, inference step. [`Model`], [`ModelConfig`],
//! [`Activations`] and [`Gradients`] are enums over the families; code that does not
//! care which family runs (training, evaluation, checkpoints, generation) uses them,
//! and the parameters are one flat [`Params`] buffer whatever the family.

pub mod bdh;
pub(crate) mod loss;

use serde::{Deserialize, Deserializer, Serialize};

use self::bdh::{Bdh, BdhConfig};
use crate::error::{Error, Result};
use crate::params::Params;

/// Whether dropout is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `model.eval()`: no dropout.
    Eval,
    /// `model.train()`: dropout with masks drawn from `seed` (one stream per layer,
    /// batch row and head, so the masks do not depend on the thread count).
    Train {
        /// Seed of this step's dropout masks.
        seed: u64,
    },
}

/// The hyper-parameters of a model of some family. In TOML and JSON, the family is
/// the `family` field (`"bdh"`, also when absent, so bdh.py's `config.json` reads as is).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum ModelConfig {
    /// BDH, with bdh.py's `BDHConfig` fields.
    Bdh(BdhConfig),
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut fields = serde_json::Map::deserialize(d)?;
        let family = match fields.remove("family") {
            None => "bdh".to_string(),
            Some(serde_json::Value::String(s)) => s,
            Some(other) => return Err(D::Error::custom(format!("family must be a string, not {other}"))),
        };
        match family.as_str() {
            "bdh" => serde_json::from_value(serde_json::Value::Object(fields))
                .map(ModelConfig::Bdh)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("unknown model family `{other}` (have: bdh)"))),
        }
    }
}

impl ModelConfig {
    /// Checks that the sizes describe a model we can build and run.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Bdh(c) => c.validate(),
        }
    }

    /// V: vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Bdh(c) => c.vocab_size,
        }
    }

    /// Number of trained parameters.
    pub fn param_count(&self) -> usize {
        match self {
            ModelConfig::Bdh(c) => c.param_count(),
        }
    }

    /// Model FLOPs of one forward pass per token, averaged over a window of `t` tokens.
    pub fn forward_flops_per_token(&self, t: usize) -> f64 {
        match self {
            ModelConfig::Bdh(c) => c.forward_flops_per_token(t),
        }
    }

    /// One line naming the family and its sizes, e.g. `BDH L4 D128 H4 N1024`.
    pub fn describe(&self) -> String {
        match self {
            ModelConfig::Bdh(c) => format!("BDH L{} D{} H{} N{}", c.n_layer, c.n_embd, c.n_head, c.n_neurons()),
        }
    }

    /// Reads and validates a `config.json` (a model's, or bdh.py's).
    pub fn from_json_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let cfg: ModelConfig =
            serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not a model config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as pretty JSON, as a checkpoint's `config.json` holds it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a model config always serialises")
    }
}

/// A model of some family.
#[derive(Clone, Debug, PartialEq)]
pub enum Model {
    /// BDH.
    Bdh(Bdh),
}

impl Model {
    /// A freshly initialised model of `config`, drawn from `seed`.
    pub fn new(config: &ModelConfig, seed: u64) -> Result<Self> {
        match config {
            ModelConfig::Bdh(c) => Bdh::new(c.clone(), seed).map(Model::Bdh),
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> ModelConfig {
        match self {
            Model::Bdh(m) => ModelConfig::Bdh(m.config.clone()),
        }
    }

    /// The trained parameters.
    pub fn params(&self) -> &Params {
        match self {
            Model::Bdh(m) => &m.params,
        }
    }

    /// The trained parameters, mutably (their layout is fixed).
    pub fn params_mut(&mut self) -> &mut Params {
        match self {
            Model::Bdh(m) => &mut m.params,
        }
    }
}

/// The activations of a forward pass of some family, kept for its backward.
#[derive(Debug)]
pub enum Activations {
    /// BDH's.
    Bdh(bdh::Activations),
}

impl Activations {
    /// Buffers for a (B, T) pass of `model`.
    pub fn new(model: &Model, b: usize, t: usize) -> Result<Self> {
        match model {
            Model::Bdh(m) => bdh::Activations::new(m, b, t).map(Activations::Bdh),
        }
    }

    /// The logits of the last forward, (B, T, V).
    pub fn logits(&self) -> &[f32] {
        match self {
            Activations::Bdh(a) => &a.logits,
        }
    }

    /// (B, T, V) of these buffers.
    pub fn shape(&self) -> (usize, usize, usize) {
        match self {
            Activations::Bdh(a) => (a.dims.b, a.dims.t, a.dims.v),
        }
    }
}

/// Runs `model` on `tokens` (B, T) and fills `acts`, logits included.
pub fn forward(model: &Model, tokens: &[u32], acts: &mut Activations, mode: Mode) -> Result<()> {
    match (model, acts) {
        (Model::Bdh(m), Activations::Bdh(a)) => bdh::forward(m, tokens, a, bdh::Pass::mode(mode)),
    }
}

/// Mean cross-entropy of the last forward's logits against `targets` (B, T).
pub fn loss(acts: &Activations, targets: &[u32]) -> Result<f32> {
    match acts {
        Activations::Bdh(a) => bdh::backward::loss(a, targets),
    }
}

/// Gradients of a model's parameters (laid out as them) and the scratch of its backward.
#[derive(Debug)]
pub struct Gradients {
    /// d loss / d each parameter, accumulated by [`backward`] (zero it between steps).
    pub params: Params,
    scratch: BackwardScratch,
}

#[derive(Debug)]
enum BackwardScratch {
    Bdh(bdh::Backward),
}

impl Gradients {
    /// Zeroed gradients and scratch for a (B, T) backward of `model`.
    pub fn new(model: &Model, b: usize, t: usize) -> Result<Self> {
        let scratch = match model {
            Model::Bdh(m) => BackwardScratch::Bdh(bdh::Backward::new(m, b, t)?),
        };
        Ok(Gradients { params: model.params().zeros_like(), scratch })
    }

    /// Sets every gradient to zero.
    pub fn zero(&mut self) {
        self.params.data_mut().fill(0.0);
    }
}

/// Adds d loss / d parameters of the last forward (in `acts`) to `grads.params`,
/// for the mean cross-entropy against `targets` (B, T). Returns the loss.
pub fn backward(model: &Model, acts: &Activations, targets: &[u32], grads: &mut Gradients) -> Result<f32> {
    match (model, acts, &mut grads.scratch) {
        (Model::Bdh(m), Activations::Bdh(a), BackwardScratch::Bdh(s)) => {
            bdh::backward(m, a, targets, &mut grads.params, s)
        }
    }
}

/// A zeroed buffer of `dims` values, or an error (not an abort) if its size
/// overflows or cannot be allocated. Callers check the memory a whole set of
/// buffers needs against the machine first ([`crate::memory::ensure_fits`]).
pub(crate) fn zeroed(dims: &[usize]) -> Result<Vec<f32>> {
    let too_big = || Error::Input(format!("a buffer of shape {dims:?} does not fit in memory"));
    let len = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(too_big)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| too_big())?;
    v.resize(len, 0.0);
    Ok(v)
}
