//! `bdh bench`: tokens/s, model GFLOP/s and % of the measured peak of training
//! steps, forward passes and generation.

use std::process::ExitCode;

use bdh::{Model, ModelConfig, RunConfig};
use measure::{forward_pass, peak_gflops, train_step, train_step_on, BenchResult, BenchSpec};

use crate::args::ThreadsArgs;
use crate::device::DeviceArgs;

mod generate;
mod measure;
mod serve;

/// Measures speed for a preset or config file (random weights) or a trained model.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    mode: Mode,
    /// Preset name (recall, tiny, small, paper, gpt-tiny, gpt-small, gpt-nanogpt, bdh-nanogpt) or a run-config TOML file.
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
    /// With `train` and `forward` on the CPU: each kernel's time per step (at each
    /// shape), its share of the step and, for products and attentions, its GFLOP/s.
    #[arg(long, global = true)]
    profile: bool,
    #[command(flatten)]
    threads: ThreadsArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(clap::Subcommand)]
enum Mode {
    /// Full training steps: forward with dropout, backward, AdamW.
    Train,
    /// Eval-mode forward passes.
    Forward,
    /// Streaming generation, sparse against dense recurrent steps, and step
    /// latency at short and long context.
    Generate(generate::Args),
    /// Decoding after 1k, 4k and 16k tokens of context, BDH against the GPT baseline at
    /// matched parameters, 1 and 16 streams: tokens/s and memory per stream.
    Serve(serve::Args),
    /// The fp32 multiply-add peak of the threads, measured.
    Peak,
    /// The memory bandwidth of the threads, measured (reading, and reading and
    /// writing back a buffer far beyond the caches).
    Memory,
}

/// Most iterations `--iters` and `--warmup` may each ask for.
const MAX_ITERS: usize = 1_000_000;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.threads.size_pool()?;
    anyhow::ensure!(
        args.iters <= MAX_ITERS && args.warmup <= MAX_ITERS,
        "--iters {} and --warmup {}: each at most {MAX_ITERS}",
        args.iters,
        args.warmup
    );
    let run = RunConfig::resolve(&args.preset, &args.set)?;

    let spec = BenchSpec {
        config: run.model.clone(),
        batch: args.batch.unwrap_or(run.training.batch_size),
        block: args.block.unwrap_or(run.training.block_size),
        warmup: args.warmup,
        iters: args.iters.max(1),
        precision: run.training.precision,
        profile: args.profile,
    };
    anyhow::ensure!(
        !args.profile || matches!(args.mode, Mode::Train | Mode::Forward),
        "--profile is for `bench train` and `bench forward`"
    );
    match args.mode {
        Mode::Peak => {
            cpu_peak();
        }
        Mode::Memory => {
            let (read, both) = measure::memory_bandwidth()?;
            let threads = crate::count(rayon::current_num_threads(), "thread", "threads");
            println!("memory bandwidth: {read:.1} GB/s reading, {both:.1} GB/s reading and writing, on {threads}");
        }
        Mode::Train => match args.device.trainer(&spec.config, false)? {
            Some(open) => {
                anyhow::ensure!(!spec.profile, "--profile times the CPU's kernels: leave out --device");
                describe(&spec.config, &format!("B{} T{}", spec.batch, spec.block));
                let (result, held) = train_step_on(&spec, open.as_ref())?;
                let what = format!("train step on the device ({:?})", spec.precision).to_lowercase();
                print_device_result(&what, &result);
                println!("device memory held: {:.0} MiB", held as f64 / (1u64 << 20) as f64);
            }
            None => {
                anyhow::ensure!(
                    spec.precision == bdh::Precision::F32,
                    "training.precision = \"bf16\" trains on a GPU: add --device gpu, or measure f32 on the CPU with \
                     --set training.precision=f32"
                );
                describe(&spec.config, &format!("B{} T{}", spec.batch, spec.block));
                let peak = cpu_peak();
                print_result("train step", &train_step(&spec)?, peak);
            }
        },
        Mode::Forward => {
            let model = Model::new(&spec.config, 0)?;
            let mut device = args.device.open(&model)?;
            describe(&spec.config, &format!("B{} T{}", spec.batch, spec.block));
            match device.as_deref_mut() {
                Some(dev) => {
                    anyhow::ensure!(!spec.profile, "--profile times the CPU's kernels: leave out --device");
                    let on = dev.device();
                    print_device_result(
                        &format!("forward on the {on}"),
                        &forward_pass(&spec, &model, Some(dev.as_forward()))?,
                    );
                }
                None => {
                    let peak = cpu_peak();
                    print_result("forward", &forward_pass(&spec, &model, None)?, peak)
                }
            }
        }
        Mode::Generate(g) => generate::run(&g, &run.model, &args.device)?,
        Mode::Serve(s) => serve::run(&s, &run.model, &args.device)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(m: &ModelConfig, shape: &str) {
    println!(
        "model {} ({:.2} M params), {shape}, {}",
        m.describe(),
        m.param_count() as f64 / 1e6,
        crate::count(rayon::current_num_threads(), "thread", "threads")
    );
}

/// The CPU's measured FMA peak (what a run there is measured against), said.
fn cpu_peak() -> f64 {
    let threads = crate::count(rayon::current_num_threads(), "thread", "threads");
    let peak = peak_gflops(0.3);
    println!("measured fp32 FMA peak: {peak:.1} GFLOP/s on {threads}");
    peak
}

/// A result on a device: its time and rate (the CPU's peak does not apply).
fn print_device_result(what: &str, r: &BenchResult) {
    let min = r.seconds.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{what}: median {:.2} ms (min {:.2} ms over {}), {:.0} tokens/s, {:.1} model GFLOP/s",
        r.median() * 1e3,
        min * 1e3,
        r.seconds.len(),
        r.tokens_per_second(),
        r.gflops(),
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
    if !r.kernels.is_empty() {
        print_kernels(r, peak);
    }
}

/// The `--profile` table: each kernel's wall-time equivalent per iteration (its
/// thread-seconds over the threads), its share, and a product's rate.
fn print_kernels(r: &BenchResult, peak: f64) {
    let (iters, threads) = (r.seconds.len() as f64, rayon::current_num_threads() as f64);
    let mean = r.seconds.iter().sum::<f64>() / iters;
    let per_iter = |seconds: f64| seconds / threads / iters;
    println!(
        "kernels, per iteration (ms: thread-time over the {threads} threads; GFLOP/s: all {threads} at the kernel's \
         rate; mean iteration {:.1} ms):",
        mean * 1e3
    );
    println!(
        "  {:<28} {:>16} {:>6} {:>9} {:>6} {:>8} {:>6}",
        "kernel", "shape", "calls", "ms", "share", "GFLOP/s", "peak"
    );
    println!("  (an attention's FLOPs: the model's count, the causal products; its backward's twice its forward's)");
    let mut listed = 0.0;
    for k in &r.kernels {
        let ms = per_iter(k.seconds) * 1e3;
        listed += ms;
        let shape = match k.shape {
            [m, 0, 0] => format!("{m}"),
            [m, k, 0] => format!("{m}×{k}"),
            [m, k, n] => format!("{m}×{k}×{n}"),
        };
        let rate = if k.flops > 0.0 {
            let gflops = k.flops / (k.seconds / threads) / 1e9;
            format!("{gflops:>8.1} {:>5.0}%", 100.0 * gflops / peak)
        } else {
            format!("{:>8} {:>6}", "", "")
        };
        let share = 100.0 * ms / (mean * 1e3);
        println!("  {:<28} {shape:>16} {:>6.0} {ms:>9.2} {share:>5.1}% {rate}", k.name, k.calls as f64 / iters);
    }
    let rest = mean * 1e3 - listed;
    println!("  {:<28} {:>16} {:>6} {rest:>9.2} {:>5.1}%", "outside the kernels", "", "", 100.0 * rest / (mean * 1e3));
}
