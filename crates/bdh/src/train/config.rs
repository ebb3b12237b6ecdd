//! Run configurations: a model, how to train it and on what, read from TOML.
//! The presets in `configs/` are compiled in, so `--preset small` works anywhere,
//! and any key can be overridden (`training.lr=3e-4`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::schedule::Schedule;
use std::path::PathBuf;

use super::hlop::Continual;
use super::rewire::Rewire;
use crate::data::{DataConfig, PEOPLE};
use crate::error::{Error, Result};
use crate::model::bdh::params::Init;
use crate::model::ModelConfig;

/// The built-in presets, by name, as the TOML text of `configs/<name>.toml`.
pub const PRESETS: [(&str, &str); 8] = [
    ("recall", include_str!("../../../../configs/recall.toml")),
    ("tiny", include_str!("../../../../configs/tiny.toml")),
    ("small", include_str!("../../../../configs/small.toml")),
    ("paper", include_str!("../../../../configs/paper.toml")),
    ("gpt-tiny", include_str!("../../../../configs/gpt-tiny.toml")),
    ("gpt-small", include_str!("../../../../configs/gpt-small.toml")),
    ("gpt-nanogpt", include_str!("../../../../configs/gpt-nanogpt.toml")),
    ("bdh-nanogpt", include_str!("../../../../configs/bdh-nanogpt.toml")),
];

/// Settings of a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// B: sequences per micro-batch.
    pub batch_size: usize,
    /// T: tokens per sequence.
    pub block_size: usize,
    /// Optimizer steps of the whole run.
    pub max_steps: usize,
    /// Micro-batches whose gradients are averaged into one step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the decay.
    pub min_lr: f64,
    /// Steps of linear warmup from 0 to `lr`.
    pub warmup_steps: usize,
    /// Decay after warmup.
    pub schedule: Schedule,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW's β₁: the decay of the gradient's running mean.
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    /// AdamW's β₂: the decay of the squared gradient's running mean (nanoGPT's
    /// small recipes take 0.99).
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    /// AdamW's ε, added to the root of the second moment.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    pub grad_clip: f64,
    /// Evaluate (and checkpoint) every this many steps.
    pub eval_interval: usize,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Print a sample every this many steps (0: only at the end).
    pub sample_interval: usize,
    /// Bytes per sample.
    pub sample_tokens: usize,
    /// Seed of initialisation, batches and dropout.
    pub seed: u64,
    /// Keep the model of every evaluation at a multiple of this many steps in
    /// `steps/step-NNNNNN/` of the run (0: keep none), e.g. to follow how induction
    /// heads form with `bdh inspect induction --run`.
    #[serde(default)]
    pub keep_every: usize,
    /// Start from this model's weights (a run, checkpoint directory, safetensors or
    /// `.pt`) instead of a fresh initialisation; its config must be the run's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Factors on the fresh initialisation of named parameters, e.g.
    /// `{ "embed.weight" = 50.0, lm_head = 5.0 }`: a model without norms starts with
    /// vanishing logits from bdh.py's N(0, 0.02²) everywhere. Empty: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub init_scale: BTreeMap<String, f64>,
    /// How a fresh BDH's layer matrices start: `"normal"` (bdh.py's draws) or
    /// `"lowrank:r"` (rank r per head, each entry of the same std).
    #[serde(default, skip_serializing_if = "Init::is_normal")]
    pub init: Init,
    /// With `init_from` a run's model: how to keep what it learnt (`"hlop"`: see
    /// [`super::hlop`]); `"none"`: plain fine-tuning.
    #[serde(default, skip_serializing_if = "Continual::is_none")]
    pub continual: Continual,
    /// With `model.connectivity`: rewire the masks every K steps (see
    /// [`super::rewire`]); none: the masks stay as drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewire: Option<Rewire>,
    /// Carry BDH's synapse state from batch to batch, as the paper trains: each batch
    /// row reads its own contiguous stream, the state at the end of a batch starts
    /// the next, positions keep counting, the gradient stops at the boundary.
    #[serde(default)]
    pub carry_state: bool,
    /// With `carry_state`: no gradient through the read of the carried state either.
    #[serde(default)]
    pub detach_state: bool,
    /// The products' inputs: `f32`, or `bf16` (rounded to bfloat16, summed in f32,
    /// the weights and the optimizer kept in f32: what PyTorch's bf16 autocast
    /// computes). bf16 trains on a GPU only.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

/// The inputs of a training run's products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats throughout.
    #[default]
    F32,
    /// bfloat16 inputs with f32 sums.
    Bf16,
}

impl Precision {
    fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
}

fn default_beta1() -> f64 {
    0.9
}

fn default_beta2() -> f64 {
    0.999
}

fn default_eps() -> f64 {
    1e-8
}

/// A model, how to train it, and on what.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The model's family and hyper-parameters.
    pub model: ModelConfig,
    /// The training settings.
    pub training: TrainingConfig,
    /// What to train on: a file, or the built-in synthetic language.
    #[serde(default)]
    pub data: DataConfig,
}

impl RunConfig {
    /// Parses TOML text, applies `overrides` (`section.key=value`, the value in
    /// TOML syntax or a bare string) and validates; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path, overrides: &[String]) -> Result<Self> {
        let bad = |m: String| Error::format(origin, m);
        let mut table: toml::Table = toml::from_str(text).map_err(|e| bad(format!("not a run config: {e}")))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let mut cfg: RunConfig = table.try_into().map_err(|e| match overrides {
            [] => bad(format!("not a run config: {e}")),
            _ => bad(format!("not a run config with the overrides `--set {}`: {e}", overrides.join("` `--set "))),
        })?;
        cfg.data = cfg.data.explicit();
        cfg.validate()?;
        Ok(cfg)
    }

    /// A preset name (`tiny`, `small`, `paper`) or the path of a TOML file, with overrides.
    pub fn resolve(name_or_path: &str, overrides: &[String]) -> Result<Self> {
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "toml") {
            let text = crate::io::read_text_bounded(path, crate::io::MAX_CONFIG_BYTES)?;
            return RunConfig::from_toml(&text, path, overrides);
        }
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name_or_path).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            Error::Config(format!("no preset `{name_or_path}` (have: {}, or a .toml file)", names.join(", ")))
        })?;
        RunConfig::from_toml(text, Path::new(&format!("configs/{name_or_path}.toml")), overrides)
    }

    /// The config as TOML, as saved in a run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a run config always serialises")
    }

    /// The settings that differ from `before`'s, as `section.key: old → new`.
    pub fn changes(&self, before: &RunConfig) -> Vec<String> {
        fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
            match v.as_object() {
                Some(map) => map.iter().for_each(|(k, v)| flatten(&format!("{prefix}{k}."), v, out)),
                None => out.push((prefix.trim_end_matches('.').to_string(), v.to_string())),
            }
        }
        let mut old = Vec::new();
        let mut new = Vec::new();
        flatten("", &serde_json::to_value(before).expect("serialises"), &mut old);
        flatten("", &serde_json::to_value(self).expect("serialises"), &mut new);
        // A key written only when not its default reads as its default where absent.
        for (key, default) in OMITTED {
            for side in [&mut old, &mut new] {
                if !side.iter().any(|(k, _)| k == key) {
                    side.push((key.to_string(), default.to_string()));
                }
            }
        }
        let old: std::collections::BTreeMap<_, _> = old.into_iter().collect();
        new.into_iter()
            .filter_map(|(k, v)| {
                let was = old.get(&k).map_or("(unset)", String::as_str);
                (was != v).then(|| format!("{k}: {was} → {v}"))
            })
            .collect()
    }

    /// Checks the model and the training settings.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let t = &self.training;
        let positive = [
            ("batch_size", t.batch_size),
            ("block_size", t.block_size),
            ("max_steps", t.max_steps),
            ("grad_accum", t.grad_accum),
            ("eval_interval", t.eval_interval),
            ("eval_batches", t.eval_batches),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("training.{name} must be > 0")));
        }
        let finite = [("lr", t.lr), ("min_lr", t.min_lr), ("weight_decay", t.weight_decay), ("grad_clip", t.grad_clip)];
        if let Some((name, v)) = finite.iter().find(|(_, v)| !v.is_finite() || *v < 0.0) {
            return Err(Error::Config(format!("training.{name} = {v} must be finite and ≥ 0")));
        }
        if let Some((name, v)) =
            [("beta1", t.beta1), ("beta2", t.beta2)].into_iter().find(|(_, v)| !(0.0..1.0).contains(v))
        {
            return Err(Error::Config(format!("training.{name} = {v} must be in [0, 1)")));
        }
        if !t.init_scale.is_empty() && t.init_from.is_some() {
            return Err(Error::Config(
                "training.init_scale scales a fresh initialisation, and training.init_from starts from trained \
                 weights: give one of them"
                    .into(),
            ));
        }
        match (&self.model, t.init) {
            (_, Init::Normal) => {}
            (_, _) if t.init_from.is_some() => {
                return Err(Error::Config(
                    "training.init draws a fresh initialisation, and training.init_from starts from trained \
                     weights: give one of them"
                        .into(),
                ))
            }
            (ModelConfig::Bdh(m), init) => init.validate(m).map_err(Error::Config)?,
            (ModelConfig::Gpt(_), _) => {
                return Err(Error::Config(
                    "training.init = \"lowrank:r\" draws BDH's layer matrices; this is a GPT".into(),
                ))
            }
        }
        if let Some(r) = t.rewire {
            r.validate().map_err(Error::Config)?;
            if !matches!(&self.model, ModelConfig::Bdh(m) if m.connectivity.is_some()) {
                return Err(Error::Config(
                    "training.rewire moves the masks of a sparse connectivity: set model.connectivity too".into(),
                ));
            }
        }
        match (&self.model, t.continual) {
            (_, Continual::None) => {}
            (ModelConfig::Gpt(_), _) => {
                return Err(Error::Config(
                    "training.continual = \"hlop\" projects BDH's gradients; this is a GPT".into(),
                ))
            }
            (ModelConfig::Bdh(m), Continual::Hlop { components }) if components > m.n_embd => {
                return Err(Error::Config(format!(
                    "training.continual = \"hlop:{components}\": more components than the inputs' n_embd = {}",
                    m.n_embd
                )))
            }
            _ => {}
        }
        if let ModelConfig::Bdh(m) = &self.model {
            // a fixed δ is read from lag δ + 1; a learned one stays below its bound
            let far = m.delays.longest() + usize::from(!m.delays.is_learned());
            if far >= t.block_size {
                return Err(Error::Config(format!(
                    "model.delays reads from {far} tokens back, not less than training.block_size = {}: a write \
                     delayed past the context is never read in training",
                    t.block_size
                )));
            }
        }
        let names = self.model.param_names();
        for (name, &f) in &t.init_scale {
            if !names.contains(name) {
                return Err(Error::Config(format!(
                    "training.init_scale names `{name}`, which is not a parameter of this model ({})",
                    names.join(", ")
                )));
            }
            if !(f.is_finite() && f > 0.0 && f <= 1e4) {
                return Err(Error::Config(format!("training.init_scale.{name} = {f} must be in (0, 10⁴]")));
            }
        }
        if !(t.eps.is_finite() && t.eps > 0.0) {
            return Err(Error::Config(format!("training.eps = {} must be finite and > 0", t.eps)));
        }
        if t.lr == 0.0 || t.min_lr > t.lr {
            return Err(Error::Config(format!(
                "need 0 < training.min_lr ≤ training.lr, have {} and {}",
                t.min_lr, t.lr
            )));
        }
        if let Some(context) = self.model.max_context() {
            if t.block_size > context {
                return Err(Error::Config(format!(
                    "training.block_size = {} is longer than the model's context (block_size = {context})",
                    t.block_size
                )));
            }
        }
        if t.carry_state && !matches!(self.model, ModelConfig::Bdh(_)) {
            return Err(Error::Config(format!(
                "training.carry_state carries BDH's synapse state; a {} has none",
                self.model.describe()
            )));
        }
        if t.carry_state && t.grad_accum != 1 {
            return Err(Error::Config(
                "training.carry_state reads one batch of streams per step: grad_accum must be 1".into(),
            ));
        }
        if t.detach_state && !t.carry_state {
            return Err(Error::Config("training.detach_state needs training.carry_state".into()));
        }
        let d = self.data.synthetic();
        if d.facts == 0 || d.min_facts == 0 || d.min_facts > d.facts {
            return Err(Error::Config(format!(
                "need 1 ≤ data.min_facts ≤ data.facts, have {} and {}",
                d.min_facts, d.facts
            )));
        }
        if d.facts.saturating_add(d.distractors.saturating_mul(2)) > PEOPLE {
            return Err(Error::Config(format!(
                "data.facts + 2 × data.distractors = {} + 2 × {}: the built-in language names {PEOPLE} people, \
                 one per fact",
                d.facts, d.distractors
            )));
        }
        if d.min_distractors > d.distractors {
            return Err(Error::Config(format!(
                "need data.min_distractors ≤ data.distractors, have {} and {}",
                d.min_distractors, d.distractors
            )));
        }
        if d.distance > MAX_DISTANCE {
            return Err(Error::Config(format!(
                "data.distance = {}: at most {MAX_DISTANCE} filler sentences between facts and questions",
                d.distance
            )));
        }
        if !(0.0..=1.0).contains(&d.lists) {
            return Err(Error::Config(format!("data.lists = {} must be in [0, 1]", d.lists)));
        }
        Ok(())
    }
}

/// Most filler sentences between a story's facts and its questions: a document
/// of this many is already about 400 KB, far past any context trained on.
pub const MAX_DISTANCE: usize = 10_000;

/// The keys a config writes only when they are not their default, with the default
/// (in TOML, which for these is also its JSON).
const OMITTED: &[(&str, &str)] = &[
    ("training.precision", "\"f32\""),
    ("model.norm", "\"layer\""),
    ("model.residual", "\"d\""),
    ("model.position", "\"rope\""),
    ("training.init_scale", "{}"),
    ("training.init", "\"normal\""),
    ("training.continual", "\"none\""),
    ("training.rewire", "{}"),
    ("model.connectivity", "{}"),
    ("data.task", "\"language\""),
    ("model.trace", "\"none\""),
    ("model.astrocyte", "{}"),
    ("model.delays", "\"none\""),
    ("model.decay_per", "\"head\""),
    ("model.threshold", "\"none\""),
];

/// The default of a key that a config writes only when it is not that default.
fn omitted_default(path: &str) -> Option<toml::Value> {
    let (_, default) = OMITTED.iter().find(|(key, _)| *key == path)?;
    toml::from_str::<toml::Table>(&format!("v = {default}")).ok()?.remove("v")
}

/// Sets `section.key` of `table` to `value`; the key must already exist (or be one
/// written only when not its default).
fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<()> {
    let bad = |m: String| Error::Config(format!("override `{assignment}`: {m}"));
    let (path, raw) = assignment.split_once('=').ok_or_else(|| bad("expected section.key=value".into()))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    let (last, parents) = keys.split_last().expect("split gives at least one part");
    // The sections that hold a key of this name, for a key given without its own.
    let holders: Vec<String> = table
        .iter()
        .filter(|(_, v)| v.as_table().is_some_and(|t| t.contains_key(*last)))
        .map(|(section, _)| format!("`{section}.{last}`"))
        .collect();
    let mut node = table;
    for k in parents {
        node = node.get_mut(*k).and_then(|v| v.as_table_mut()).ok_or_else(|| bad(format!("no section `{k}`")))?;
    }
    let old = node.get(*last).cloned().or_else(|| omitted_default(path.trim()));
    let old = old.ok_or_else(|| match holders.as_slice() {
        [] => bad(format!("unknown key `{path}`")),
        _ => bad(format!("unknown key `{path}`; did you mean {}?", holders.join(" or "))),
    })?;
    let raw = raw.trim();
    let parsed = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    // An integer where a float is expected (lr=1) is still a number; model.decay
    // takes a name or a list.
    let name_or_list = |v: &toml::Value| matches!(v, toml::Value::String(_) | toml::Value::Array(_));
    let value = match (&old, parsed) {
        (toml::Value::Float(_), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
        (old, new)
            if ["model.decay", "model.delays"].contains(&path.trim()) && name_or_list(old) && name_or_list(&new) =>
        {
            new
        }
        // model.trace takes a name or λ
        (_, toml::Value::Integer(i)) if path.trim() == "model.trace" => toml::Value::Float(i as f64),
        (_, new @ (toml::Value::String(_) | toml::Value::Float(_))) if path.trim() == "model.trace" => new,
        // model.threshold takes a name or its rule
        (_, new @ (toml::Value::String(_) | toml::Value::Table(_))) if path.trim() == "model.threshold" => new,
        (_, new) if path.trim() == "model.decay" => {
            return Err(bad(format!(
                "`model.decay` takes \"none\", \"alibi\", \"learned\" or a list of γ per head, not {new}"
            )))
        }
        (old, new) if std::mem::discriminant(old) != std::mem::discriminant(&new) => {
            let kind = old.type_str();
            let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
            return Err(bad(format!("`{path}` takes {article} {kind}, not {new}")));
        }
        (_, new) => new,
    };
    node.insert(last.to_string(), value);
    Ok(())
}
