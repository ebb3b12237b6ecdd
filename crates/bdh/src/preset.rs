//! Run configurations: a model config plus training settings, read from TOML.
//! The presets in `configs/` are compiled in, so `--preset small` works anywhere.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::BdhConfig;
use crate::error::{Error, Result};

/// The built-in presets, by name, as the TOML text of `configs/<name>.toml`.
pub const PRESETS: [(&str, &str); 3] = [
    ("tiny", include_str!("../../../configs/tiny.toml")),
    ("small", include_str!("../../../configs/small.toml")),
    ("paper", include_str!("../../../configs/paper.toml")),
];

/// Settings of a training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    /// B: sequences per optimizer micro-batch.
    pub batch_size: usize,
    /// T: tokens per sequence.
    pub block_size: usize,
    /// Seed of initialisation, batches and dropout.
    pub seed: u64,
    /// Peak learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
}

/// A model and how to train it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The model's hyper-parameters.
    pub model: BdhConfig,
    /// The training settings.
    pub training: TrainingConfig,
}

impl RunConfig {
    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let cfg: RunConfig =
            toml::from_str(text).map_err(|e| Error::format(origin, format!("not a run config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// A built-in preset by name (`tiny`, `small`, `paper`).
    pub fn preset(name: &str) -> Result<Self> {
        let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            Error::Config(format!("no preset `{name}` (have: {})", names.join(", ")))
        })?;
        RunConfig::from_toml(text, Path::new(&format!("configs/{name}.toml")))
    }

    /// A preset name, or the path of a TOML file.
    pub fn resolve(name_or_path: &str) -> Result<Self> {
        let path = Path::new(name_or_path);
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
            RunConfig::from_toml(&text, path)
        } else {
            RunConfig::preset(name_or_path)
        }
    }

    /// Checks the model and the training settings.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let t = &self.training;
        if t.batch_size == 0 || t.block_size == 0 {
            return Err(Error::Config("training.batch_size and training.block_size must be > 0".into()));
        }
        if !(t.lr.is_finite() && t.lr > 0.0) || !(t.weight_decay.is_finite() && t.weight_decay >= 0.0) {
            return Err(Error::Config("training.lr must be > 0 and training.weight_decay ≥ 0".into()));
        }
        Ok(())
    }
}
