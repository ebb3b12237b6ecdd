//! Model families and the few `match`es that dispatch to them.
//!
//! Each family is a folder with the same pieces — config, parameter layout, parallel
//! forward and backward, inference step. [`Model`], [`ModelConfig`],
//! [`Activations`] and [`Gradients`] are enums over the families; code that does not
//! care which family runs (training, evaluation, checkpoints, generation) uses them,
//! and the parameters are one flat [`Params`] buffer whatever the family.

pub mod bdh;
pub mod dropout;
pub mod gpt;
pub mod graph;
pub mod loss;

use serde::{Deserialize, Deserializer, Serialize};

use self::bdh::{Bdh, BdhConfig};
use self::gpt::{Gpt, GptConfig};
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
/// the `family` field (`"bdh"` or `"gpt"`). When it is absent, a config with
/// nanoGPT's `GPTConfig` fields (`block_size`, `bias`) is a GPT and any other is
/// BDH, so bdh.py's and nanoGPT's `config.json` read as they are.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum ModelConfig {
    /// BDH, with bdh.py's `BDHConfig` fields.
    Bdh(BdhConfig),
    /// The GPT-2-architecture baseline, with nanoGPT's `GPTConfig` fields.
    Gpt(GptConfig),
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut fields = serde_json::Map::deserialize(d)?;
        let family = match fields.remove("family") {
            None if fields.contains_key("block_size") && fields.contains_key("bias") => "gpt".to_string(),
            None => "bdh".to_string(),
            Some(serde_json::Value::String(s)) => s,
            Some(other) => return Err(D::Error::custom(format!("family must be a string, not {other}"))),
        };
        match family.as_str() {
            "bdh" => serde_json::from_value(serde_json::Value::Object(fields))
                .map(ModelConfig::Bdh)
                .map_err(|e| D::Error::custom(format!("BDH config: {e}"))),
            "gpt" => serde_json::from_value(serde_json::Value::Object(fields))
                .map(ModelConfig::Gpt)
                .map_err(|e| D::Error::custom(format!("GPT config: {e}"))),
            other => Err(D::Error::custom(format!("unknown model family `{other}` (have: bdh, gpt)"))),
        }
    }
}

impl ModelConfig {
    /// Checks that the sizes describe a model we can build and run.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Bdh(c) => c.validate(),
            ModelConfig::Gpt(c) => c.validate(),
        }
    }

    /// V: vocabulary size.
    pub fn vocab_size(&self) -> usize {
        match self {
            ModelConfig::Bdh(c) => c.vocab_size,
            ModelConfig::Gpt(c) => c.vocab_size,
        }
    }

    /// Sets V, as a tokenizer's vocabulary decides it.
    pub fn set_vocab_size(&mut self, v: usize) {
        match self {
            ModelConfig::Bdh(c) => c.vocab_size = v,
            ModelConfig::Gpt(c) => c.vocab_size = v,
        }
    }

    /// The names of the trained parameters, in the order they are laid out.
    pub fn param_names(&self) -> Vec<String> {
        match self {
            ModelConfig::Bdh(c) => bdh::params::layout(c).into_iter().map(|(n, _)| n.to_string()).collect(),
            ModelConfig::Gpt(c) => gpt::params::layout(c).into_iter().map(|(n, _)| n).collect(),
        }
    }

    /// Number of trained parameters.
    pub fn param_count(&self) -> usize {
        match self {
            ModelConfig::Bdh(c) => c.param_count(),
            ModelConfig::Gpt(c) => c.param_count(),
        }
    }

    /// Model FLOPs of one forward pass per token, averaged over a window of `t` tokens.
    pub fn forward_flops_per_token(&self, t: usize) -> f64 {
        match self {
            ModelConfig::Bdh(c) => c.forward_flops_per_token(t),
            ModelConfig::Gpt(c) => c.forward_flops_per_token(t),
        }
    }

    /// One line naming the family and its sizes, e.g. `BDH L4 D128 H4 N1024`.
    pub fn describe(&self) -> String {
        match self {
            ModelConfig::Bdh(c) => format!("BDH L{} D{} H{} N{}", c.n_layer, c.n_embd, c.n_head, c.n_neurons()),
            ModelConfig::Gpt(c) => format!("GPT L{} D{} H{} context {}", c.n_layer, c.n_embd, c.n_head, c.block_size),
        }
    }

    /// The longest input a forward takes, if the family has one (GPT: `block_size`).
    pub fn max_context(&self) -> Option<usize> {
        match self {
            ModelConfig::Bdh(_) => None,
            ModelConfig::Gpt(c) => Some(c.block_size),
        }
    }

    /// Reads and validates a `config.json` (a model's, or bdh.py's).
    pub fn from_json_file(path: &std::path::Path) -> Result<Self> {
        let text = crate::io::read_text_bounded(path, crate::io::MAX_CONFIG_BYTES)?;
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
    /// The GPT baseline.
    Gpt(Gpt),
}

impl Model {
    /// A freshly initialised model of `config`, drawn from `seed`.
    pub fn new(config: &ModelConfig, seed: u64) -> Result<Self> {
        match config {
            ModelConfig::Bdh(c) => Bdh::new(c.clone(), seed).map(Model::Bdh),
            ModelConfig::Gpt(c) => Gpt::new(c.clone(), seed).map(Model::Gpt),
        }
    }

    /// The hyper-parameters.
    pub fn config(&self) -> ModelConfig {
        match self {
            Model::Bdh(m) => ModelConfig::Bdh(m.config.clone()),
            Model::Gpt(m) => ModelConfig::Gpt(m.config.clone()),
        }
    }

    /// The trained parameters.
    pub fn params(&self) -> &Params {
        match self {
            Model::Bdh(m) => &m.params,
            Model::Gpt(m) => &m.params,
        }
    }

    /// The trained parameters, mutably (their layout is fixed).
    pub fn params_mut(&mut self) -> &mut Params {
        match self {
            Model::Bdh(m) => &mut m.params,
            Model::Gpt(m) => &mut m.params,
        }
    }

    /// Per parameter slot, whether AdamW's weight decay applies: every tensor of
    /// bdh.py's for BDH (as the reference trains; not the layer mechanisms' few
    /// values, which it would pull to their midpoints: γ = ½, λ = ½, no gate),
    /// tensors of two or more dimensions for GPT (as nanoGPT configures its optimizer).
    pub fn weight_decay_mask(&self) -> Vec<bool> {
        match self {
            Model::Bdh(m) => m.params.slots().iter().map(|s| bdh::PARAM_NAMES.contains(&s.name.as_str())).collect(),
            Model::Gpt(m) => m.params.slots().iter().map(|s| gpt::params::decays(&s.shape)).collect(),
        }
    }
}

/// The activations of a forward pass of some family, kept for its backward.
// Made once per (B, T) and reused, never moved in a loop: boxing a variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Activations {
    /// BDH's.
    Bdh(bdh::Activations),
    /// GPT's.
    Gpt(gpt::Activations),
}

impl Activations {
    /// Buffers for a (B, T) pass of `model`.
    pub fn new(model: &Model, b: usize, t: usize) -> Result<Self> {
        match model {
            Model::Bdh(m) => bdh::Activations::new(m, b, t).map(Activations::Bdh),
            Model::Gpt(m) => gpt::Activations::new(m, b, t).map(Activations::Gpt),
        }
    }

    /// The logits of the last forward, (B, T, V).
    pub fn logits(&self) -> &[f32] {
        match self {
            Activations::Bdh(a) => &a.logits,
            Activations::Gpt(a) => &a.logits,
        }
    }

    /// (B, T, V) of these buffers.
    pub fn shape(&self) -> (usize, usize, usize) {
        match self {
            Activations::Bdh(a) => (a.dims.b, a.dims.t, a.dims.v),
            Activations::Gpt(a) => (a.dims.b, a.dims.t, a.dims.v),
        }
    }
}

/// Runs `model` on `tokens` (B, T) and fills `acts`, logits included.
pub fn forward(model: &Model, tokens: &[u32], acts: &mut Activations, mode: Mode) -> Result<()> {
    match (model, acts) {
        (Model::Bdh(m), Activations::Bdh(a)) => bdh::forward(m, tokens, a, bdh::Pass::mode(mode)),
        (Model::Gpt(m), Activations::Gpt(a)) => gpt::forward(m, tokens, a, mode),
        _ => Err(Error::Mismatch("forward: activations of another model family".into())),
    }
}

/// Mean cross-entropy of the last forward's logits against `targets` (B, T).
pub fn loss(acts: &Activations, targets: &[u32]) -> Result<f32> {
    match acts {
        Activations::Bdh(a) => bdh::backward::loss(a, targets),
        Activations::Gpt(a) => gpt::backward::loss(a, targets),
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
    Bdh(Box<bdh::Backward>),
    Gpt(gpt::Backward),
}

impl Gradients {
    /// Zeroed gradients and scratch for a (B, T) backward of `model`.
    pub fn new(model: &Model, b: usize, t: usize) -> Result<Self> {
        let scratch = match model {
            Model::Bdh(m) => BackwardScratch::Bdh(Box::new(bdh::Backward::new(m, b, t)?)),
            Model::Gpt(m) => BackwardScratch::Gpt(gpt::Backward::new(m, b, t)?),
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
        (Model::Gpt(m), Activations::Gpt(a), BackwardScratch::Gpt(s)) => {
            gpt::backward(m, a, targets, &mut grads.params, s)
        }
        _ => Err(Error::Mismatch("backward: buffers of another model family".into())),
    }
}

/// Positions a stream may reach: past 2²⁴ a position is no longer exact in f32,
/// and with it the RoPE phases, so a state refuses to read further.
pub const MAX_POSITION: usize = 1 << 24;

/// Checks token ids against a vocabulary of `vocab`: the one check of every entry
/// point that takes tokens (`what` names it in the error).
pub fn check_tokens(tokens: &[u32], vocab: usize, what: &str) -> Result<()> {
    match tokens.iter().find(|&&tok| tok as usize >= vocab) {
        Some(bad) => Err(Error::Input(format!("{what}: token id {bad} ≥ vocab_size {vocab}"))),
        None => Ok(()),
    }
}

/// Checks a (B, T) batch of token ids: its length and every id.
pub fn check_batch(tokens: &[u32], (b, t): (usize, usize), vocab: usize, what: &str) -> Result<()> {
    if tokens.len() != b * t {
        return Err(Error::Input(format!("{what}: {} ids for a batch of B={b} × T={t}", tokens.len())));
    }
    check_tokens(tokens, vocab, what)
}

/// Checks that a stream at position `pos` may read `more` tokens without passing
/// [`MAX_POSITION`]: the one position bound of every path that reads tokens.
pub fn check_positions(pos: usize, more: usize, what: &str) -> Result<()> {
    if pos.saturating_add(more) > MAX_POSITION {
        return Err(Error::Input(format!(
            "{what}: a state at position {pos} cannot read {more} more token(s): past 2^24 ({MAX_POSITION}) \
             positions are no longer exact in f32"
        )));
    }
    Ok(())
}

/// A zeroed buffer of `dims` values, or an error (not an abort) if its size
/// overflows or cannot be allocated. Callers check the memory a whole set of
/// buffers needs against the machine first ([`crate::memory::ensure_fits`]).
pub(crate) fn zeroed(dims: &[usize]) -> Result<Vec<f32>> {
    let len = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let too_big = || Error::TooLarge {
        what: format!("a buffer of shape {dims:?}"),
        need: len.and_then(|l| l.checked_mul(4)).map(|b| b as u64),
        have: None,
    };
    let len = len.ok_or_else(too_big)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| too_big())?;
    v.resize(len, 0.0);
    Ok(v)
}
