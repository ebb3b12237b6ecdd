//! Throughput measurements of whole training steps, forward passes and generation.

use std::ops::ControlFlow;
use std::time::Instant;

use bdh::data::Tokenizer;
use bdh::engine::{Forward, Reader};
use bdh::infer::{argmax, generate_with, Generation, Prepared, Sampler, SamplingConfig, Scratch, State};
use bdh::model::bdh::{StateDtype, NO_EDITS};
use bdh::train::Single;
use bdh::{backward, forward, Activations, AdamWConfig, Mode, Model, ModelConfig, Result, Trainer};
use bdh_kernels::profile::{self, KernelTime};
use rayon::prelude::*;

/// What to run and how often.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// The model.
    pub config: ModelConfig,
    /// B.
    pub batch: usize,
    /// T.
    pub block: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs.
    pub iters: usize,
    /// The inputs of a training step's products.
    pub precision: bdh::Precision,
    /// Time each kernel over the timed iterations (CPU only).
    pub profile: bool,
}

/// Timings of one benchmark, in seconds per iteration.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// Every timed iteration, in order.
    pub seconds: Vec<f64>,
    /// Named phases of an iteration and their median seconds.
    pub phases: Vec<(&'static str, f64)>,
    /// Tokens processed per iteration (B·T).
    pub tokens: usize,
    /// Model FLOPs per iteration, counted analytically.
    pub flops: f64,
    /// Each kernel's time over the timed iterations, with `--profile`.
    pub kernels: Vec<KernelTime>,
}

impl BenchResult {
    /// Median seconds per iteration.
    pub fn median(&self) -> f64 {
        median(&self.seconds)
    }
    /// Tokens per second at the median.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.median()
    }
    /// Model GFLOP/s at the median.
    pub fn gflops(&self) -> f64 {
        self.flops / self.median() / 1e9
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn batch(spec: &BenchSpec, seed: u64) -> Vec<u32> {
    let mut s = seed;
    (0..spec.batch * spec.block)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % spec.config.vocab_size() as u64) as u32
        })
        .collect()
}

/// Times full training steps (forward with dropout, backward, AdamW) on random tokens.
pub fn train_step(spec: &BenchSpec) -> Result<BenchResult> {
    let model = Model::new(&spec.config, 0)?;
    let mut trainer = Trainer::new(model, AdamWConfig::default(), spec.batch, spec.block)?;
    let (tokens, targets) = (batch(spec, 1), batch(spec, 2));
    let mut seconds = Vec::new();
    let mut phase = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..spec.warmup + spec.iters {
        if i == spec.warmup && spec.profile {
            profile::start();
        }
        let t0 = Instant::now();
        forward(&trainer.model, &tokens, &mut trainer.acts, Mode::Train { seed: i as u64 })?;
        let t1 = Instant::now();
        backward(&trainer.model, &trainer.acts, &targets, &mut trainer.grads)?;
        let t2 = Instant::now();
        trainer.apply(1, 0.0, 1e-3, &Single)?;
        let t3 = Instant::now();
        if i >= spec.warmup {
            seconds.push((t3 - t0).as_secs_f64());
            for (p, d) in phase.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2]) {
                p.push(d.as_secs_f64());
            }
        }
    }
    let tokens = spec.batch * spec.block;
    Ok(BenchResult {
        seconds,
        phases: vec![("forward", median(&phase[0])), ("backward", median(&phase[1])), ("adamw", median(&phase[2]))],
        tokens,
        flops: 3.0 * spec.config.forward_flops_per_token(spec.block) * tokens as f64,
        kernels: if spec.profile { profile::stop() } else { Vec::new() },
    })
}

/// Times full training steps on a device (forward with dropout, backward, the norm,
/// AdamW; each step ends when its gradient norm is back on the host). Also returns
/// the bytes the device holds after them.
pub fn train_step_on(spec: &BenchSpec, open: &bdh::train::accelerator::Open) -> Result<(BenchResult, u64)> {
    let model = Model::new(&spec.config, 0)?;
    let mut trainer = Trainer::lean(model, AdamWConfig::default(), spec.batch, spec.block)?;
    trainer.precision = spec.precision;
    trainer.device = Some(open(&trainer)?);
    let (tokens, targets) = (batch(spec, 1), batch(spec, 2));
    let mut seconds = Vec::new();
    for i in 0..spec.warmup + spec.iters {
        let t0 = Instant::now();
        trainer.accumulate(&tokens, &targets, i as u64)?;
        trainer.apply(1, 0.0, 1e-3, &Single)?;
        if i >= spec.warmup {
            seconds.push(t0.elapsed().as_secs_f64());
        }
    }
    let held = trainer.device.as_ref().map_or(0, |d| d.held_bytes());
    let tokens = spec.batch * spec.block;
    let flops = 3.0 * spec.config.forward_flops_per_token(spec.block) * tokens as f64;
    Ok((BenchResult { seconds, phases: Vec::new(), tokens, flops, kernels: Vec::new() }, held))
}

/// Times eval-mode forward passes of `model` on random tokens: on the CPU engine,
/// or, given a device, there (each pass then ends with its logits back on the host).
pub fn forward_pass(spec: &BenchSpec, model: &Model, device: Option<&mut dyn Forward>) -> Result<BenchResult> {
    let mut acts = if device.is_none() { Some(Activations::new(model, spec.batch, spec.block)?) } else { None };
    let mut device = device;
    let tokens = batch(spec, 1);
    let mut seconds = Vec::new();
    for i in 0..spec.warmup + spec.iters {
        if i == spec.warmup && spec.profile && device.is_none() {
            profile::start();
        }
        let t0 = Instant::now();
        match (&mut device, &mut acts) {
            (Some(dev), _) => drop(dev.logits(&tokens, spec.batch, spec.block)?),
            (None, Some(acts)) => forward(model, &tokens, acts, Mode::Eval)?,
            (None, None) => unreachable!("buffers made for the CPU"),
        }
        if i >= spec.warmup {
            seconds.push(t0.elapsed().as_secs_f64());
        }
    }
    let tokens = spec.batch * spec.block;
    Ok(BenchResult {
        seconds,
        phases: Vec::new(),
        tokens,
        flops: spec.config.forward_flops_per_token(spec.block) * tokens as f64,
        kernels: if spec.profile { profile::stop() } else { Vec::new() },
    })
}

/// Measured fp32 FMA peak of all threads of the current pool, in GFLOP/s: every
/// thread runs a multiply-add loop at once for about `seconds`.
pub fn peak_gflops(seconds: f64) -> f64 {
    let threads = rayon::current_num_threads();
    // Calibrate on one thread, then run all of them together.
    let t0 = Instant::now();
    let probe = 2_000_000;
    bdh_kernels::fma_loop(probe);
    let iters = ((probe as f64) * seconds / t0.elapsed().as_secs_f64()).max(1.0) as u64;
    let t1 = Instant::now();
    let flops: f64 = (0..threads).into_par_iter().map(|_| bdh_kernels::fma_loop(iters)).sum();
    flops / t1.elapsed().as_secs_f64() / 1e9
}

/// Speed of streaming generation.
#[derive(Clone, Debug)]
pub struct GenerateResult {
    /// Prompt tokens (prefilled in parallel).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub tokens: usize,
    /// Seconds of the prefill.
    pub prefill_seconds: f64,
    /// Seconds of the recurrent steps.
    pub decode_seconds: f64,
    /// Bytes of the recurrent state.
    pub state_bytes: usize,
}

impl GenerateResult {
    /// Generated tokens per second, prefill included.
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / (self.prefill_seconds + self.decode_seconds)
    }
}

/// Greedy generation of `tokens` after a `prompt` by `reader` (on the CPU: sparse
/// recurrent steps).
pub fn generate_speed(reader: &mut dyn Reader, prompt: &[u8], tokens: usize) -> Result<GenerateResult> {
    let mut sampler = Sampler::new(SamplingConfig { temperature: 0.0, ..SamplingConfig::default() })?;
    let (tok, g) = (Tokenizer::Bytes, Generation { max_tokens: tokens, ..Generation::default() });
    let ids = tok.encode(prompt);
    let out = generate_with(reader, &ids, &g, &mut sampler, |_| ControlFlow::Continue(()))?;
    let s = out.stats;
    Ok(GenerateResult {
        prompt_tokens: s.prompt_tokens,
        tokens: s.generated,
        prefill_seconds: s.prefill_seconds,
        decode_seconds: s.decode_seconds,
        state_bytes: s.state_bytes,
    })
}

/// One side of a paired latency measurement: how much context the sequence has
/// seen, and whether its steps touch every row (`dense`) or only active ones.
#[derive(Clone, Copy, Debug)]
pub struct StepSide {
    /// Tokens consumed before timing starts.
    pub context: usize,
    /// Touch every row as if every neuron had fired (the work then does not depend
    /// on the text).
    pub dense: bool,
}

/// Median seconds per recurrent step of two runners, measured in alternation
/// (16 steps of one, then the same 16 tokens to the other, and again) so that a
/// busy machine slows both alike, while each keeps its state warm in cache.
pub fn step_latency(prepared: &Prepared, sides: [StepSide; 2], window: usize) -> Result<(f64, f64)> {
    // Each side reads `context` greedy tokens first; the timed steps then feed both the
    // tokens side a chooses.
    let prime = |side: StepSide| -> Result<(State, Scratch, u32)> {
        let scratch = prepared.scratch();
        let (mut state, mut scratch) = (prepared.state()?, if side.dense { scratch.dense() } else { scratch });
        let mut tok = b'\n' as u32;
        while state.pos() < side.context {
            tok = argmax(prepared.step(&mut [&mut state], &mut scratch, &[tok], &NO_EDITS)?);
        }
        Ok((state, scratch, tok))
    };
    let (mut sa, mut ca, mut tok) = prime(sides[0])?;
    let (mut sb, mut cb, _) = prime(sides[1])?;
    const ROUND: usize = 16;
    let (mut ta, mut tb) = (Vec::with_capacity(window), Vec::with_capacity(window));
    let mut fed = Vec::with_capacity(ROUND);
    while ta.len() < window {
        fed.clear();
        for _ in 0..ROUND {
            fed.push(tok);
            let t0 = Instant::now();
            tok = argmax(prepared.step(&mut [&mut sa], &mut ca, &[tok], &NO_EDITS)?);
            ta.push(t0.elapsed().as_secs_f64());
        }
        for &t in &fed {
            let t0 = Instant::now();
            prepared.step(&mut [&mut sb], &mut cb, &[t], &NO_EDITS)?;
            tb.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok((median(&ta), median(&tb)))
}

/// Bytes of the buffer [`memory_bandwidth`] streams: far beyond any cache.
const BANDWIDTH_BYTES: usize = 256 << 20;

/// The memory bandwidth the threads draw, measured on a buffer far beyond the caches
/// (256 MiB), best of five: (reading, GB/s; reading and writing back, GB/s counting
/// both directions).
pub fn memory_bandwidth() -> Result<(f64, f64)> {
    bdh::memory::ensure_fits(BANDWIDTH_BYTES, "the memory bandwidth's buffer")?;
    let mut buf = vec![1.0f32; BANDWIDTH_BYTES / 4];
    const CHUNK: usize = 1 << 16;
    let (mut read, mut both) = (0.0f64, 0.0f64);
    for _ in 0..5 {
        let t = Instant::now();
        // (sixteen partial sums, so the loop is bound by memory, not by one adder)
        let sum: f32 = buf
            .par_chunks(CHUNK)
            .map(|c| {
                c.chunks_exact(16).fold([0.0f32; 16], |mut acc, x| {
                    acc.iter_mut().zip(x).for_each(|(a, &b)| *a += b);
                    acc
                })
            })
            .map(|acc| acc.iter().sum::<f32>())
            .sum();
        std::hint::black_box(sum);
        read = read.max(BANDWIDTH_BYTES as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        buf.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|x| *x = -*x));
        both = both.max(2.0 * BANDWIDTH_BYTES as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    Ok((read, both))
}

/// How greedy decoding with a `dtype` state agrees with f32's over `tokens` tokens
/// after `prompt`: the tokens the two generate alike before their first difference,
/// and the fraction of positions where, reading f32's own text, the `dtype` state's
/// next-token choice is f32's.
pub fn greedy_agreement(model: &Prepared, dtype: StateDtype, prompt: &[u32], tokens: usize) -> Result<(usize, f64)> {
    let wide = model.clone().with_state_dtype(StateDtype::F32)?;
    let narrow = model.clone().with_state_dtype(dtype)?;
    let reader = |p: &Prepared| -> Result<(State, Scratch, Vec<f32>)> {
        let (mut state, mut scratch) = (p.state()?, p.scratch());
        let logits = p.prefill(&mut state, &mut scratch, prompt, &NO_EDITS)?.to_vec();
        Ok((state, scratch, logits))
    };
    let (mut sw, mut cw, mut lw) = reader(&wide)?;
    let (mut sn, mut cn, mut ln) = reader(&narrow)?; // reads f32's text
    let (mut sf, mut cf, mut lf) = reader(&narrow)?; // reads its own
    let (mut same, mut alike, mut diverged) = (0usize, 0usize, false);
    for _ in 0..tokens {
        let (t, own) = (argmax(&lw), argmax(&lf));
        same += usize::from(argmax(&ln) == t);
        diverged |= own != t;
        alike += usize::from(!diverged);
        lw = wide.step(&mut [&mut sw], &mut cw, &[t], &NO_EDITS)?.to_vec();
        ln = narrow.step(&mut [&mut sn], &mut cn, &[t], &NO_EDITS)?.to_vec();
        lf = narrow.step(&mut [&mut sf], &mut cf, &[own], &NO_EDITS)?.to_vec();
    }
    Ok((alike, same as f64 / tokens.max(1) as f64))
}
