//! `bdh eval`: loss, perplexity and bits per byte over a whole file, or answer
//! accuracy on the built-in corpus.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bdh::data::DataConfig;
use bdh::eval::{evaluate, evaluate_bytes};
use bdh::{Activations, RunConfig};

use crate::model_args::ModelArgs;

/// Evaluates a model on a file, or on the built-in corpus's validation documents.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Evaluate on every byte of this file (default: the built-in corpus).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    block: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Built-in corpus: validation batches to score.
    #[arg(long, default_value_t = 16)]
    batches: usize,
    /// Print the numbers as JSON.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::set_threads(args.threads)?;
    anyhow::ensure!(args.block > 0 && args.batch > 0 && args.batches > 0, "--block, --batch and --batches must be > 0");
    let model = args.model.load()?;
    if let Some(file) = &args.data {
        let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let r = evaluate_bytes(&model, &data, args.block, args.batch)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "{}: {} bytes predicted in {} independent windows of {} tokens (state reset per window)",
                file.display(),
                r.tokens,
                r.windows,
                r.window
            );
            println!("loss {:.4} nats/byte, perplexity {:.3}, {:.4} bits/byte", r.loss, r.perplexity, r.bits_per_byte);
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The built-in corpus with the knobs the model was trained with, if known.
    let run_config = args.model.model.join("config.toml");
    let data = match std::fs::read_to_string(&run_config) {
        Ok(text) => RunConfig::from_toml(&text, &run_config, &[])?.data,
        Err(_) => DataConfig::default(),
    };
    let data = DataConfig { path: None, val_path: None, ..data };
    let corpus = data.corpus(args.block)?;
    let mut acts = Activations::new(&model, args.batch, args.block)?;
    let m = evaluate(&model, &corpus, &mut acts, args.batches, 0)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!(
            "built-in corpus (facts {}, distance {}): {} windows of {} tokens, independent",
            data.facts,
            data.distance,
            args.batches * args.batch,
            args.block
        );
        println!(
            "loss {:.4} nats/byte, perplexity {:.3}, {:.4} bits/byte, answer accuracy {:.1}% of {} answers",
            m.val_loss,
            m.val_loss.exp(),
            m.bits_per_byte,
            m.answer_accuracy.unwrap_or(0.0) * 100.0,
            m.answers
        );
    }
    Ok(ExitCode::SUCCESS)
}
