//! `bdh bench serve`: decoding after a long context, BDH against the GPT baseline at
//! matched parameters — BDH's state is of fixed size, the GPT's KV cache grows with the
//! context it has read.

use std::path::PathBuf;
use std::time::Instant;

use bdh::infer::{argmax, Prepared, State};
use bdh::model::bdh::NO_EDITS;
use bdh::model::gpt::GptConfig;
use bdh::{Model, ModelConfig};

use crate::args::StateDtypeArgs;
use crate::device::DeviceArgs;

/// Contexts, streams and the BDH model to decode with.
#[derive(clap::Args)]
pub struct Args {
    /// A trained BDH model (run dir, checkpoint dir, .safetensors or .pt); default:
    /// random weights of the preset. The GPT always has random weights: its step's
    /// work does not depend on them, a BDH step's does (how many neurons fire).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tokens of context read before decoding, each measured in turn (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096, 16384])]
    contexts: Vec<usize>,
    /// Streams decoded together, each after its own copy of the context (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16])]
    streams: Vec<usize>,
    /// Tokens decoded per stream, timed.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    #[command(flatten)]
    state: StateDtypeArgs,
}

/// Most streams a measurement may ask for (each holds a copy of the context's state).
const MAX_STREAMS: usize = 256;

pub fn run(args: &Args, preset: &ModelConfig, on: &DeviceArgs) -> anyhow::Result<()> {
    on.cpu_only("bench serve")?;
    let most = args.contexts.iter().copied().max().unwrap_or(0);
    anyhow::ensure!(
        !args.contexts.is_empty() && args.contexts.iter().all(|&c| c > 0) && most <= bdh::model::MAX_POSITION / 2,
        "--contexts: give lengths from 1 to {}",
        bdh::model::MAX_POSITION / 2
    );
    anyhow::ensure!(
        !args.streams.is_empty() && args.streams.iter().all(|&s| (1..=MAX_STREAMS).contains(&s)),
        "--streams: give counts from 1 to {MAX_STREAMS}"
    );
    anyhow::ensure!((1..=4096).contains(&args.tokens), "--tokens: give 1 to 4096");
    let bdh_model = match &args.model {
        Some(p) => crate::model_args::load(p, None)?.1,
        None => Model::new(preset, 0)?,
    };
    let Model::Bdh(b) = &bdh_model else { anyhow::bail!("--model: a BDH model (the GPT is made to match it)") };
    let gpt = matched_gpt(&b.config, most + args.tokens);
    // The states that read the context, the GPT's weights (its position table grows
    // with the block) and the copies of one model's state at a time, one a stream:
    // bounded before any is made.
    let bdh_prep = args.state.apply(Prepared::new(bdh_model.clone())?, on)?;
    let streams = args.streams.iter().copied().max().unwrap_or(1);
    let cache = [2, gpt.n_layer, gpt.block_size, gpt.n_embd, 4].into_iter().try_fold(1usize, usize::checked_mul);
    let need = cache.and_then(|kv| {
        let (one, weights) = (kv.max(bdh_prep.state_bytes()), gpt.param_count().checked_mul(4)?);
        one.checked_mul(streams)?.checked_add(kv)?.checked_add(bdh_prep.state_bytes())?.checked_add(weights)
    });
    bdh::memory::ensure_fits(need.unwrap_or(usize::MAX), &format!("{streams} streams' copies of the states"))?;
    let gpt_model = Model::new(&ModelConfig::Gpt(gpt.clone()), 0)?;
    let (bdh_p, gpt_p) = (b.config.param_count(), gpt.param_count());
    let position = gpt.block_size * gpt.n_embd;
    println!(
        "{} ({:.2} M params, {:.2} M without embed and lm_head); {} ({:.2} M without its embeddings, {:.2} M with \
         its position table of {} rows), {}",
        bdh_model.config().describe(),
        bdh_p as f64 / 1e6,
        (bdh_p - 2 * b.config.vocab_size * b.config.n_embd) as f64 / 1e6,
        ModelConfig::Gpt(gpt.clone()).describe(),
        (gpt_p - position - gpt.vocab_size * gpt.n_embd) as f64 / 1e6,
        (gpt_p - gpt.vocab_size * gpt.n_embd) as f64 / 1e6,
        gpt.block_size,
        crate::count(rayon::current_num_threads(), "thread", "threads")
    );
    let gpt_prep = Prepared::new(gpt_model)?;
    let text: Vec<u32> =
        b"The hatchling reads, and what it reads it keeps. ".iter().cycle().take(most).map(|&t| t as u32).collect();
    println!(
        "{:>8} {:>8} {:>14} {:>14} {:>13} {:>13}",
        "context", "streams", "BDH tokens/s", "GPT tokens/s", "BDH MiB/str", "GPT MiB/str"
    );
    let (mut bdh_state, mut gpt_state) = (bdh_prep.state()?, gpt_prep.state()?);
    let mut contexts = args.contexts.clone();
    contexts.sort_unstable();
    let (mut bdh_scratch, mut gpt_scratch) = (bdh_prep.scratch(), gpt_prep.scratch());
    for &context in &contexts {
        // Both read the context once, then each stream decodes from a copy of it.
        let read = bdh_state.pos()..context;
        if !read.is_empty() {
            bdh_prep.prefill(&mut bdh_state, &mut bdh_scratch, &text[read.clone()], &NO_EDITS)?;
            gpt_prep.prefill(&mut gpt_state, &mut gpt_scratch, &text[read], &NO_EDITS)?;
        }
        for &streams in &args.streams {
            let bdh_rate = decode(&bdh_prep, &bdh_state, streams, args.tokens, true)?;
            let gpt_rate = decode(&gpt_prep, &gpt_state, streams, args.tokens, false)?;
            // The KV cache a GPT needs at this context (ours holds block_size rows from the start).
            let kv = 2 * gpt.n_layer * context * gpt.n_embd * 4;
            println!(
                "{context:>8} {streams:>8} {bdh_rate:>14.1} {gpt_rate:>14.1} {:>13.2} {:>13.2}",
                bdh_prep.state_bytes() as f64 / (1 << 20) as f64,
                kv as f64 / (1 << 20) as f64
            );
        }
    }
    Ok(())
}

/// The GPT of `bdh`'s width and heads with as many parameters in its blocks (12·D²
/// each) as BDH's shared layer has (3·H·N·D), and a block of `block` positions.
fn matched_gpt(bdh: &bdh::model::bdh::BdhConfig, block: usize) -> GptConfig {
    let d = bdh.n_embd;
    let layer = 3 * bdh.n_head * bdh.n_neurons() * d;
    let n_layer = ((layer as f64 / (12 * d * d) as f64).round() as usize).max(1);
    GptConfig {
        block_size: block,
        vocab_size: bdh.vocab_size,
        n_layer,
        n_head: bdh.n_head,
        n_embd: d,
        dropout: 0.0,
        bias: false,
    }
}

/// Tokens/s of `streams` copies of `state` decoding `tokens` greedy tokens each: BDH's
/// stepped together (`batched`, as `bdh serve` does), a GPT's one after another (its
/// step reads each stream's own cache; its shared weights stay in cache between them).
fn decode(prepared: &Prepared, state: &State, streams: usize, tokens: usize, batched: bool) -> anyhow::Result<f64> {
    let mut states: Vec<State> = (0..streams).map(|_| state.clone()).collect();
    let mut scratch = prepared.scratch();
    let mut next = vec![b'\n' as u32; streams];
    let v = prepared.config().vocab_size();
    let start = Instant::now();
    for _ in 0..tokens {
        if batched {
            let mut rows: Vec<&mut State> = states.iter_mut().collect();
            let logits = prepared.step(&mut rows, &mut scratch, &next, &NO_EDITS)?;
            next = logits.chunks_exact(v).map(argmax).collect();
        } else {
            for (s, t) in states.iter_mut().zip(next.iter_mut()) {
                *t = argmax(prepared.step(&mut [s], &mut scratch, &[*t], &NO_EDITS)?);
            }
        }
    }
    Ok((streams * tokens) as f64 / start.elapsed().as_secs_f64())
}
