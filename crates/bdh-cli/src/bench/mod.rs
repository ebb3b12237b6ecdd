//! `bdh bench`: tokens/s, model GFLOP/s and % of the measured peak of training
//! steps, forward passes and generation.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::args::ThreadsArgs;
use bdh::infer::Prepared;
use bdh::{Model, ModelConfig, RunConfig};
use measure::{forward_pass, generate_speed, peak_gflops, step_latency, train_step, BenchResult, BenchSpec, StepSide};

mod measure;

/// Measures speed for a preset or config file (random weights) or a trained model.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// Preset name (recall, tiny, small, paper, gpt-tiny, gpt-small) or a run-config TOML file.
    #[arg(long, global = true, default_value = "small")]
    preset: String,
    /// Override a config key, e.g. `--set model.n_layer=6` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// B: sequences per batch (default: the preset's).
    #[arg(long, global = true)]
    batch: Option<usize>,
    /// T: tokens per sequence (default: the preset's).
    #[arg(long, global = true)]
    block: Option<usize>,
    /// Untimed iterations first.
    #[arg(long, global = true, default_value_t = 2)]
    warmup: usize,
    /// Timed iterations.
    #[arg(long, global = true, default_value_t = 10)]
    iters: usize,
    #[command(flatten)]
    threads: ThreadsArgs,
}

#[derive(clap::Subcommand)]
enum Mode {
    /// Full training steps: forward with dropout, backward, AdamW.
    Train,
    /// Eval-mode forward passes.
    Forward,
    /// Streaming generation, sparse against dense recurrent steps, and step
    /// latency at short and long context.
    Generate {
        /// A trained model (run dir, checkpoint dir, .safetensors or .pt); default:
        /// random weights of the preset.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Prompt bytes (prefilled in parallel).
        #[arg(long, default_value_t = 16)]
        prompt_len: usize,
        /// Tokens to generate.
        #[arg(long, default_value_t = 256)]
        tokens: usize,
        /// Compare step latency at this context with that at 256.
        #[arg(long, default_value_t = 8192)]
        long_context: usize,
    },
    /// The fp32 multiply-add peak of the threads, measured.
    Peak,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.threads.size_pool()?;
    let run = RunConfig::resolve(&args.preset, &args.set)?;
    let threads = rayon::current_num_threads();
    let peak = peak_gflops(0.3);
    println!("measured fp32 FMA peak: {peak:.1} GFLOP/s on {threads} threads");
    let spec = BenchSpec {
        config: run.model.clone(),
        batch: args.batch.unwrap_or(run.training.batch_size),
        block: args.block.unwrap_or(run.training.block_size),
        warmup: args.warmup,
        iters: args.iters.max(1),
    };
    match args.mode {
        Mode::Peak => {}
        Mode::Train => {
            describe(&spec.config, &format!("B{} T{}", spec.batch, spec.block));
            print_result("train step", &train_step(&spec)?, peak);
        }
        Mode::Forward => {
            describe(&spec.config, &format!("B{} T{}", spec.batch, spec.block));
            print_result("forward", &forward_pass(&spec)?, peak);
        }
        Mode::Generate { model, prompt_len, tokens, long_context } => {
            bdh::memory::ensure_fits(prompt_len.saturating_mul(5), &format!("a prompt of {prompt_len} tokens"))?;
            let model = match model {
                Some(p) => crate::model_args::load(&p, None)?.1,
                None => Model::new(&run.model, 0)?,
            };
            describe(&model.config(), "B1");
            let model = Prepared::new(model)?;
            let prompt: Vec<u8> = b"The hatchling reads, and what it reads it keeps. "
                .iter()
                .cycle()
                .take(prompt_len.max(1))
                .copied()
                .collect();
            let g = generate_speed(&model, &prompt, tokens)?;
            println!(
                "generate {} tokens after {}: {:.1} tokens/s (prefill {:.1} ms, decode {:.1} ms), state {:.2} MiB",
                g.tokens,
                g.prompt_tokens,
                g.tokens_per_second(),
                g.prefill_seconds * 1e3,
                g.decode_seconds * 1e3,
                g.state_bytes as f64 / (1 << 20) as f64
            );
            if model.config().max_context().is_some() {
                // A GPT's step has no sparse and dense forms, and its context is bounded.
                return Ok(ExitCode::SUCCESS);
            }
            // Each pair is measured in alternation, the same tokens to both runners.
            let side = |context, dense| StepSide { context, dense };
            let long = long_context.max(256);
            let (sparse, dense) = step_latency(&model, [side(256, false), side(256, true)], 256)?;
            println!(
                "step at context 256: sparse {:.3} ms ({:.0} tokens/s), dense {:.3} ms; sparse is {:.2}× faster",
                sparse * 1e3,
                1.0 / sparse,
                dense * 1e3,
                dense / sparse
            );
            // The sparse step's work follows the text (how many neurons fire); the
            // dense step's does not, so it shows what context length alone costs.
            let (d0, d1) = step_latency(&model, [side(256, true), side(long, true)], 256)?;
            let (s0, s1) = step_latency(&model, [side(256, false), side(long, false)], 256)?;
            println!(
                "latency at {long} / at 256: dense {:.3}× ({:.3} / {:.3} ms), sparse {:.3}×; state {:.2} MiB at both",
                d1 / d0,
                d1 * 1e3,
                d0 * 1e3,
                s1 / s0,
                g.state_bytes as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(m: &ModelConfig, shape: &str) {
    println!(
        "model {} ({:.2} M params), {shape}, {} threads",
        m.describe(),
        m.param_count() as f64 / 1e6,
        rayon::current_num_threads()
    );
}

fn print_result(what: &str, r: &BenchResult, peak: f64) {
    let min = r.seconds.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{what}: median {:.1} ms (min {:.1} ms over {}), {:.0} tokens/s, {:.1} model GFLOP/s = {:.0}% of peak",
        r.median() * 1e3,
        min * 1e3,
        r.seconds.len(),
        r.tokens_per_second(),
        r.gflops(),
        100.0 * r.gflops() / peak
    );
    for (name, s) in &r.phases {
        println!("  {name:<9} {:.1} ms", s * 1e3);
    }
}
