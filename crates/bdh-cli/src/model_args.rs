//! How every subcommand names the model it runs.

use std::path::PathBuf;

use anyhow::Context;
use bdh::Model;

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
        let path = bdh::io::checkpoint::model_path(&self.model);
        bdh::io::checkpoint::load(&path, self.config.as_deref())
            .with_context(|| format!("loading model {}", path.display()))
    }
}
