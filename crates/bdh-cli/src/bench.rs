//! `bdh bench`: tokens/s and model GFLOP/s of training steps and forward passes.

use std::process::ExitCode;

use bdh::bench::{forward_pass, train_step, BenchResult, BenchSpec};
use bdh::RunConfig;

/// Measures speed on random tokens for a preset or config file.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// Preset name (tiny, small, paper) or a run-config TOML file.
    #[arg(long, global = true, default_value = "small")]
    preset: String,
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
    /// Override a config key, e.g. `--set model.n_layer=6` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(clap::Subcommand)]
enum Mode {
    /// Full training steps: forward with dropout, backward, AdamW.
    Train,
    /// Eval-mode forward passes.
    Forward,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::set_threads(args.threads)?;
    let run = RunConfig::resolve(&args.preset, &args.set)?;
    let spec = BenchSpec {
        config: run.model.clone(),
        batch: args.batch.unwrap_or(run.training.batch_size),
        block: args.block.unwrap_or(run.training.block_size),
        warmup: args.warmup,
        iters: args.iters.max(1),
    };
    let m = &spec.config;
    println!(
        "model L{} D{} H{} N{} ({:.2} M params), B{} T{}, {} threads",
        m.n_layer,
        m.n_embd,
        m.n_head,
        m.n_neurons(),
        m.param_count() as f64 / 1e6,
        spec.batch,
        spec.block,
        rayon::current_num_threads()
    );
    let (what, result) = match args.mode {
        Mode::Train => ("train step", train_step(&spec)?),
        Mode::Forward => ("forward", forward_pass(&spec)?),
    };
    print_result(what, &result);
    Ok(ExitCode::SUCCESS)
}

fn print_result(what: &str, r: &BenchResult) {
    let min = r.seconds.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{what}: median {:.1} ms (min {:.1} ms over {}), {:.0} tokens/s, {:.1} model GFLOP/s",
        r.median() * 1e3,
        min * 1e3,
        r.seconds.len(),
        r.tokens_per_second(),
        r.gflops()
    );
    for (name, s) in &r.phases {
        println!("  {name:<9} {:.1} ms", s * 1e3);
    }
}
