//! `bdh bench generate`: streaming generation, and the recurrent step's latency
//! sparse against dense and at short against long context.

use std::path::PathBuf;

use std::time::Instant;

use bdh::engine::CpuReader;
use bdh::infer::{argmax, Prepared, State};
use bdh::model::bdh::NO_EDITS;
use bdh::{Model, ModelConfig};

use super::describe;
use super::measure::{generate_speed, greedy_agreement, memory_bandwidth, step_latency, StepSide};
use crate::args::StateDtypeArgs;
use crate::device::DeviceArgs;
use bdh::model::bdh::StateDtype;

/// What to generate with, and how far the long context reaches.
#[derive(clap::Args)]
pub struct Args {
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
    /// Streams generated together, each after its own copy of the prompt, one
    /// batched step for all a token (as `bdh serve` decodes): their tokens/s in all.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4096))]
    streams: u64,
    /// With a 16-bit state, how its greedy decoding agrees with f32's over this many
    /// tokens (0: not measured).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    agreement: u64,
    #[command(flatten)]
    state: StateDtypeArgs,
}

/// Measures `args.model`, or random weights of `preset`.
pub fn run(args: &Args, preset: &ModelConfig, on: &DeviceArgs) -> anyhow::Result<()> {
    let prompt_len = args.prompt_len;
    let most = bdh::model::MAX_POSITION;
    anyhow::ensure!(
        prompt_len <= most && args.tokens <= most && args.long_context <= most,
        "--prompt-len {prompt_len}, --tokens {} and --long-context {}: a stream reaches at most position {most}",
        args.tokens,
        args.long_context
    );
    bdh::memory::ensure_fits(prompt_len.saturating_mul(5), &format!("a prompt of {prompt_len} tokens"))?;
    let model = match &args.model {
        Some(p) => crate::model_args::load(p, None)?.1,
        None => Model::new(preset, 0)?,
    };
    if let Some(context) = model.config().max_context().filter(|&c| prompt_len > c) {
        anyhow::bail!("--prompt-len {prompt_len}: this GPT's context is {context} tokens (its block_size)");
    }
    if args.streams > 1 {
        return together(args, model, on);
    }
    let device = if args.state.is_f32() { on.open(&model)? } else { None };
    describe(&model.config(), "B1");
    let model = args.state.apply(Prepared::new(model)?, on)?;
    let prompt: Vec<u8> =
        b"The hatchling reads, and what it reads it keeps. ".iter().cycle().take(prompt_len.max(1)).copied().collect();
    let g = match &device {
        Some(dev) => {
            // A first generation compiles every kernel (and fills the memory pools).
            generate_speed(&mut *dev.stream(&model.state()?)?, &prompt, 4)?;
            generate_speed(&mut *dev.stream(&model.state()?)?, &prompt, args.tokens)?
        }
        None => {
            let (mut state, mut scratch) = (model.state()?, model.scratch());
            let mut reader = CpuReader { prepared: &model, state: &mut state, scratch: &mut scratch, edits: &NO_EDITS };
            generate_speed(&mut reader, &prompt, args.tokens)?
        }
    };
    let state_mib = g.state_bytes as f64 / (1 << 20) as f64;
    println!(
        "generate {} tokens after {}: {:.1} tokens/s (prefill {:.1} ms, decode {:.1} ms), state {state_mib:.2} MiB \
         (ρ in {})",
        g.tokens,
        g.prompt_tokens,
        g.tokens_per_second(),
        g.prefill_seconds * 1e3,
        g.decode_seconds * 1e3,
        model.state_dtype(),
    );
    agreement(&model, args, &prompt.iter().map(|&b| b as u32).collect::<Vec<_>>())?;
    if let Some(dev) = &device {
        // Sparse and dense steps are the CPU's; a device's steps are dense.
        println!("device memory held: {:.1} MiB", dev.held_bytes() as f64 / (1 << 20) as f64);
        return Ok(());
    }
    if model.config().max_context().is_some() {
        // A GPT's step has no sparse and dense forms, and its context is bounded.
        return Ok(());
    }
    latency(&model, args.long_context.max(256), state_mib)
}

/// `args.streams` streams of `model`, each prefilled with the prompt and then
/// greedily stepped together for `args.tokens` tokens: the aggregate tokens/s.
fn together(args: &Args, model: Model, on: &DeviceArgs) -> anyhow::Result<()> {
    let n = args.streams as usize;
    anyhow::ensure!(matches!(model, Model::Bdh(_)), "--streams steps BDH streams together; this is a GPT");
    let mut device = if args.state.is_f32() { on.streams(&model, n)? } else { None };
    if let Some(d) = &device {
        eprintln!("running on the {}", d.device());
    }
    describe(&model.config(), &format!("B{n}"));
    let model = args.state.apply(Prepared::new(model)?, on)?;
    let prompt: Vec<u32> =
        b"The hatchling reads. ".iter().cycle().take(args.prompt_len.max(1)).map(|&b| b as u32).collect();
    let (mut states, mut scratch) = (Vec::new(), model.scratch());
    let mut slots = Vec::new();
    let mut next = Vec::with_capacity(n);
    let v = model.config().vocab_size();
    let greedy = |logits: &[f32]| logits.chunks_exact(v).map(argmax).collect::<Vec<u32>>();
    let start = Instant::now();
    for i in 0..n {
        // (each stream's prompt differs in its last byte, so the streams differ)
        let mut mine = prompt.clone();
        *mine.last_mut().expect("a prompt") = 97 + (i % 26) as u32;
        let logits = match &mut device {
            Some(d) => {
                slots.push(d.open(&model.state()?)?);
                d.prefill(slots[i], &mine)?
            }
            None => {
                states.push(model.state()?);
                model.prefill(&mut states[i], &mut scratch, &mine, &NO_EDITS)?
            }
        };
        next.extend(greedy(logits));
    }
    let prefill = start.elapsed().as_secs_f64();
    // (the first step, untimed, compiles a device's kernels)
    let mut start = Instant::now();
    for k in 0..=args.tokens {
        if k == 1 {
            start = Instant::now();
        }
        let logits = match &mut device {
            Some(d) => d.step(&slots, &next)?,
            None => {
                let mut rows: Vec<&mut State> = states.iter_mut().collect();
                model.step(&mut rows, &mut scratch, &next, &NO_EDITS)?
            }
        };
        next = greedy(logits);
    }
    let decode = start.elapsed().as_secs_f64();
    println!(
        "generate {} tokens × {n} streams after {}: {:.1} tokens/s in all (prefill {:.1} ms, decode {:.1} ms, {:.2} ms a \
         step)",
        args.tokens,
        prompt.len(),
        (n * args.tokens) as f64 / decode,
        prefill * 1e3,
        decode * 1e3,
        decode * 1e3 / args.tokens.max(1) as f64,
    );
    if let Some(d) = &device {
        println!("device memory held: {:.1} MiB", d.held_bytes() as f64 / (1 << 20) as f64);
        return Ok(());
    }
    // What the states' traffic could be: each step reads and writes the ρ rows of its
    // active neurons, at most every row.
    let (bytes, rate) = (model.state_bytes() as f64, (n * args.tokens) as f64 / decode);
    let (read, both) = memory_bandwidth()?;
    println!(
        "state {:.2} MiB a stream (ρ in {}), {:.1} MiB for all; were every row read and written each token: {:.2} GB/s; \
         memory bandwidth measured now: {read:.1} GB/s reading, {both:.1} GB/s reading and writing",
        bytes / (1 << 20) as f64,
        model.state_dtype(),
        n as f64 * bytes / (1 << 20) as f64,
        2.0 * bytes * rate / 1e9,
    );
    Ok(())
}

/// With a 16-bit state, its greedy decoding against f32's (`--agreement` tokens).
fn agreement(model: &Prepared, args: &Args, prompt: &[u32]) -> anyhow::Result<()> {
    let dtype = model.state_dtype();
    if dtype == StateDtype::F32 || args.agreement == 0 || !matches!(model, Prepared::Bdh(_)) {
        return Ok(());
    }
    let tokens = args.agreement as usize;
    let (alike, same) = greedy_agreement(model, dtype, prompt, tokens)?;
    println!(
        "greedy over {tokens} tokens, {dtype} against f32: the same {alike} tokens before the first difference; \
         reading f32's text, the same next token at {:.1}% of positions",
        100.0 * same
    );
    Ok(())
}

/// The recurrent step's latency, sparse against dense at context 256, and at
/// context `long` against 256. Each pair is measured in alternation, the same
/// tokens to both runners.
fn latency(model: &Prepared, long: usize, state_mib: f64) -> anyhow::Result<()> {
    let side = |context, dense| StepSide { context, dense };
    let (sparse, dense) = step_latency(model, [side(256, false), side(256, true)], 256)?;
    println!(
        "step at context 256: sparse {:.3} ms ({:.0} tokens/s), dense {:.3} ms; sparse is {:.2}× faster",
        sparse * 1e3,
        1.0 / sparse,
        dense * 1e3,
        dense / sparse
    );
    // The sparse step's work follows the text (how many neurons fire); the dense
    // step's does not, so it shows what context length alone costs.
    let (d0, d1) = step_latency(model, [side(256, true), side(long, true)], 256)?;
    let (s0, s1) = step_latency(model, [side(256, false), side(long, false)], 256)?;
    println!(
        "latency at {long} / at 256: dense {:.3}× ({:.3} / {:.3} ms), sparse {:.3}×; state {state_mib:.2} MiB at both",
        d1 / d0,
        d1 * 1e3,
        d0 * 1e3,
        s1 / s0,
    );
    Ok(())
}
