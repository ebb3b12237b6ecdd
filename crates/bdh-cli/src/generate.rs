//! `bdh generate`: stream text from a prompt, one recurrent step per token.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bdh::generate::{generate, Sampler, SamplingConfig};

use crate::model_args::ModelArgs;

/// Generates text after a prompt, streamed to stdout; speed and state size on stderr.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from this file.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Bytes to generate at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample from the k most likely bytes only (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling: the smallest set of bytes with this much probability (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Drop bytes less likely than this fraction of the most likely one (0: off).
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    /// Penalise bytes already in the text (1: off).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this string is generated (repeatable); it is not printed.
    #[arg(long)]
    stop: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let model = args.model.load()?;
    let prompt = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let mut sampler = Sampler::new(SamplingConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
    })?;
    let mut stdout = std::io::stdout().lock();
    let (_, stats) = generate(&model, &prompt, args.max_tokens, &mut sampler, &args.stop, |text| {
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    })?;
    let _ = writeln!(stdout);
    let decode_rate = stats.generated as f64 / stats.decode_seconds.max(1e-9);
    eprintln!(
        "{} prompt tokens in {:.1} ms, {} generated at {:.1} tokens/s; state {:.2} MiB{}",
        stats.prompt_tokens,
        stats.prefill_seconds * 1e3,
        stats.generated,
        decode_rate,
        stats.state_bytes as f64 / (1 << 20) as f64,
        stats.stopped_by.map_or(String::new(), |s| format!("; stopped at {s:?}"))
    );
    Ok(ExitCode::SUCCESS)
}
