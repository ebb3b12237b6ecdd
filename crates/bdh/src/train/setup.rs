//! A run's config from what a user asks for: a preset with overrides, data, a
//! tokenizer and perhaps a model to start from; or a run directory to continue,
//! perhaps with overrides. Settings the run takes from elsewhere (a resumed run's
//! model, the model it starts from, the vocabulary of its tokenizer) refuse an
//! override.

use std::path::{Path, PathBuf};

use super::RunConfig;
use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::io::checkpoint;
use crate::io::run_dir::RunDir;
use crate::model::{Model, ModelConfig};

/// A new run as asked for.
#[derive(Clone, Debug, Default)]
pub struct NewRun {
    /// A preset name or a run-config TOML file.
    pub preset: String,
    /// Overrides, `section.key=value` (see [`RunConfig::from_toml`]).
    pub overrides: Vec<String>,
    /// Train on this file instead of the built-in corpus.
    pub data: Option<PathBuf>,
    /// Validate on this file instead of the last 10% of `data`.
    pub val_data: Option<PathBuf>,
    /// Read `data` with this tokenizer file (default: the one of `init_from`, else bytes).
    pub tokenizer: Option<PathBuf>,
    /// Start from this model's weights and config (a run directory, checkpoint,
    /// safetensors or `.pt`) instead of fresh weights of the preset's model.
    pub init_from: Option<PathBuf>,
}

/// A run ready to train.
#[derive(Clone, Debug)]
pub struct Setup {
    /// Its config.
    pub run: RunConfig,
    /// The tokenizer its data is read with.
    pub tokenizer: Tokenizer,
    /// For a run that continues: its directory and its config before the overrides.
    pub resumed: Option<(RunDir, RunConfig)>,
}

impl NewRun {
    /// The new run's config and tokenizer. The model is the preset's (its
    /// vocabulary that of the tokenizer), or that of `init_from`.
    pub fn setup(&self) -> Result<Setup> {
        let mut run = RunConfig::resolve(&self.preset, &self.overrides)?;
        if let Some(d) = &self.data {
            run.data.path = Some(d.clone());
            run.data.val_path = self.val_data.clone();
        }
        // A model to start from brings its tokenizer, unless another is given.
        run.data.tokenizer =
            self.tokenizer.clone().or_else(|| self.init_from.as_deref().and_then(checkpoint::tokenizer_path));
        if let Some(m) = &self.init_from {
            refuse_override(&self.overrides, "model.", |s| {
                format!("--init-from takes the model's config from the model; `--set {s}` cannot change it")
            })?;
            run.model = init_config(m)?;
            run.training.init_from = Some(m.clone());
            run.validate()?;
        }
        if !run.training.continual.is_none() && run.training.init_from.is_none() {
            return Err(Error::Config(
                "training.continual keeps what an earlier model learnt: give that model with --init-from (a run or \
                 one of its checkpoints)"
                    .into(),
            ));
        }
        let tokenizer = load_tokenizer(&run)?;
        if self.init_from.is_none() && tokenizer != Tokenizer::Bytes {
            refuse_override(&self.overrides, "model.vocab_size", |s| {
                format!(
                    "the vocabulary size follows the tokenizer ({}); `--set {s}` cannot change it",
                    tokenizer.vocab_size()
                )
            })?;
            run.model.set_vocab_size(tokenizer.vocab_size());
            run.validate()?;
        }
        Ok(Setup { run, tokenizer, resumed: None })
    }
}

/// The run in `dir`, to continue where its last checkpoint left off, with
/// `overrides` applied to its config; its model cannot change.
pub fn resume(dir: &Path, overrides: &[String]) -> Result<Setup> {
    refuse_override(overrides, "model.", |s| {
        format!(
            "a run's model is fixed: --resume cannot change it (`--set {s}`); start a new run, or one --init-from \
             this one"
        )
    })?;
    let run_dir = RunDir::open_to_resume(dir)?;
    let mut before = run_dir.config(&[])?;
    let mut run = run_dir.config(overrides)?;
    // The run's own copy of its tokenizer, whatever became of the original.
    if let Some(own) = run_dir.tokenizer() {
        before.data.tokenizer = Some(own.clone());
        run.data.tokenizer = Some(own);
    }
    let tokenizer = load_tokenizer(&run)?;
    Ok(Setup { run, tokenizer, resumed: Some((run_dir, before)) })
}

/// The config of the model a run starts from.
fn init_config(model: &Path) -> Result<ModelConfig> {
    let path = checkpoint::model_path(model)?;
    checkpoint::load_config(&path, None)
        .map_err(|e| e.context(format!("reading the config of the model to start from, {}", path.display())))
}

fn load_tokenizer(run: &RunConfig) -> Result<Tokenizer> {
    run.data.load_tokenizer().map_err(|e| e.context("loading the tokenizer"))
}

/// An error, worded by `refusal`, if an override sets a key starting with `prefix`.
fn refuse_override(overrides: &[String], prefix: &str, refusal: impl Fn(&str) -> String) -> Result<()> {
    match overrides.iter().find(|s| s.trim_start().starts_with(prefix)) {
        Some(s) => Err(Error::Refused(refusal(s))),
        None => Ok(()),
    }
}

/// A fresh model of the run's config, from its seed, with `training.init` and
/// `training.init_scale` applied.
pub(crate) fn fresh(run: &RunConfig) -> Result<Model> {
    let mut model = Model::new(&run.model, run.training.seed)?;
    if let Model::Bdh(m) = &mut model {
        run.training.init.apply(&mut m.params, &m.config, run.training.seed);
    }
    for (name, &factor) in &run.training.init_scale {
        let p = model.params_mut().get_mut(name).ok_or_else(|| Error::Config(format!("no parameter `{name}`")))?;
        p.iter_mut().for_each(|x| *x *= factor as f32);
    }
    Ok(model)
}
