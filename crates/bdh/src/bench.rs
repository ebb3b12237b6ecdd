//! Throughput measurements of whole training steps and forward passes.

use std::time::Instant;

use crate::config::BdhConfig;
use crate::error::Result;
use crate::forward::{forward, Activations, Mode};
use crate::optim::AdamWConfig;
use crate::params::Model;
use crate::train::Trainer;

/// What to run and how often.
#[derive(Clone, Debug)]
pub struct BenchSpec {
    /// The model.
    pub config: BdhConfig,
    /// B.
    pub batch: usize,
    /// T.
    pub block: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Timed runs.
    pub iters: usize,
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
            ((s >> 33) % spec.config.vocab_size as u64) as u32
        })
        .collect()
}

/// Times full training steps (forward with dropout, backward, AdamW) on random tokens.
pub fn train_step(spec: &BenchSpec) -> Result<BenchResult> {
    let model = Model::new(spec.config.clone(), 0)?;
    let mut trainer = Trainer::new(model, AdamWConfig::default(), spec.batch, spec.block);
    let (tokens, targets) = (batch(spec, 1), batch(spec, 2));
    let mut seconds = Vec::new();
    let mut phase = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..spec.warmup + spec.iters {
        let t0 = Instant::now();
        forward(&trainer.model, &tokens, &mut trainer.acts, Mode::Train { seed: i as u64 })?;
        let t1 = Instant::now();
        crate::backward(&trainer.model, &trainer.acts, &targets, &mut trainer.grads)?;
        let t2 = Instant::now();
        trainer.apply(1, 0.0, 1e-3);
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
    })
}

/// Times eval-mode forward passes on random tokens.
pub fn forward_pass(spec: &BenchSpec) -> Result<BenchResult> {
    let model = Model::new(spec.config.clone(), 0)?;
    let mut acts = Activations::new(&model, spec.batch, spec.block);
    let tokens = batch(spec, 1);
    let mut seconds = Vec::new();
    for i in 0..spec.warmup + spec.iters {
        let t0 = Instant::now();
        forward(&model, &tokens, &mut acts, Mode::Eval)?;
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
    })
}
