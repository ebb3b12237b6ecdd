//! How every subcommand names the model it runs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bdh::data::Tokenizer;
use bdh::{Model, ModelConfig};

/// `--model` and `--config`, shared by the subcommands that load a model.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// A run directory (its best checkpoint), a checkpoint directory, a
    /// model.safetensors or a PyTorch .pt state_dict.
    #[arg(long)]
    pub model: PathBuf,
    /// The bdh.py config (JSON); defaults to config.json beside the weights.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ModelArgs {
    /// Loads the model, with the path in the error if it fails.
    pub fn load(&self) -> anyhow::Result<Model> {
        Ok(load(&self.model, self.config.as_deref())?.1)
    }

    /// The tokenizer the model reads and writes with: `explicit` if given, else the
    /// `tokenizer.json` of its checkpoint or run, else bytes; refused unless its
    /// vocabulary is the model's.
    pub fn tokenizer(&self, explicit: Option<&Path>, model: &ModelConfig) -> anyhow::Result<Tokenizer> {
        let path = explicit.map(Path::to_path_buf).or_else(|| bdh::io::checkpoint::tokenizer_path(&self.model));
        let tokenizer = match &path {
            Some(p) => Tokenizer::load(p)?,
            None => Tokenizer::Bytes,
        };
        let with = path.map_or(String::new(), |p| format!(" with tokenizer {}", p.display()));
        tokenizer.check(model).with_context(|| format!("model {}{with}", self.model.display()))?;
        Ok(tokenizer)
    }
}

/// `--tokenizer`, for the subcommands that run a model.
#[derive(clap::Args)]
pub struct TokenizerArgs {
    /// The model's BPE tokenizer (a tokenizer.json); by default the one of its run
    /// or checkpoint directory, else bytes.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
}

impl TokenizerArgs {
    /// The tokenizer `model` reads and writes with (see [`ModelArgs::tokenizer`]).
    pub fn load(&self, model: &ModelArgs, config: &ModelConfig) -> anyhow::Result<Tokenizer> {
        model.tokenizer(self.tokenizer.as_deref(), config)
    }
}

/// Loads the model a user named (a run directory, a checkpoint directory or a
/// weights file; its config `config`, else the one beside the weights), with the
/// path in the error if it fails; returns the checkpoint or file it was read from
/// beside it.
pub fn load(model: &Path, config: Option<&Path>) -> anyhow::Result<(PathBuf, Model)> {
    anyhow::ensure!(
        !(model.is_file() && bdh::io::state::is_state(model)),
        "{} is a saved state (a text's synapse state ρ, from `--save-state` or a session's save), not a model: \
         give it to `bdh generate --load-state`, with the model it was saved from as --model",
        model.display()
    );
    let path = bdh::io::checkpoint::model_path(model)?;
    let loaded =
        bdh::io::checkpoint::load(&path, config).with_context(|| format!("loading model {}", path.display()))?;
    Ok((path, loaded))
}
