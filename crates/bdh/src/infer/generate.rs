//! Sampling and streaming generation: prefill with the parallel forward, then one
//! recurrent step per token in constant memory.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::params::Model;
use crate::recurrent::Recurrent;

/// Index of the largest value, the first one on ties (as `torch.argmax`): the
/// greedy choice.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// How the next token is chosen from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 is greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: none).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of tokens already seen by this (1: off).
    pub repetition_penalty: f32,
    /// Seed of the sampler's random numbers.
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig { temperature: 0.8, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingConfig {
    /// Checks that every knob is in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Input(m.into()));
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad("temperature must be ≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top-p must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min-p must be in [0, 1]");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad("repetition penalty must be > 0");
        }
        Ok(())
    }
}

/// Chooses tokens from logits.
#[derive(Clone, Debug)]
pub struct Sampler {
    config: SamplingConfig,
    rng: ChaCha8Rng,
    logits: Vec<f32>,
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler; the same config and seed give the same choices.
    pub fn new(config: SamplingConfig) -> Result<Self> {
        config.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Ok(Sampler { config, rng, logits: Vec::new(), candidates: Vec::new() })
    }

    /// The next token after `history`, given its `logits`.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let c = &self.config;
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        if c.repetition_penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &t in history {
                if let Some(s) = seen.get_mut(t as usize) {
                    *s = true;
                }
            }
            for (l, _) in self.logits.iter_mut().zip(&seen).filter(|(_, &s)| s) {
                *l = if *l > 0.0 { *l / c.repetition_penalty } else { *l * c.repetition_penalty };
            }
        }
        if c.temperature == 0.0 {
            return argmax(&self.logits);
        }
        // Softmax at temperature, most likely first.
        let max = self.logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        self.candidates.clear();
        self.candidates
            .extend(self.logits.iter().enumerate().map(|(i, &l)| (((l - max) / c.temperature).exp(), i as u32)));
        self.candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let total: f32 = self.candidates.iter().map(|p| p.0).sum();
        self.candidates.iter_mut().for_each(|p| p.0 /= total);
        let mut keep = self.candidates.len();
        if c.top_k > 0 {
            keep = keep.min(c.top_k);
        }
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            let nucleus = self.candidates.iter().take_while(|p| {
                let inside = cum < c.top_p;
                cum += p.0;
                inside
            });
            keep = keep.min(nucleus.count().max(1));
        }
        if c.min_p > 0.0 {
            let floor = c.min_p * self.candidates[0].0;
            keep = keep.min(self.candidates.iter().take_while(|p| p.0 >= floor).count().max(1));
        }
        let kept = &self.candidates[..keep];
        let mass: f32 = kept.iter().map(|p| p.0).sum();
        let mut u = self.rng.random::<f32>() * mass;
        for &(p, tok) in kept {
            if u < p {
                return tok;
            }
            u -= p;
        }
        kept[keep - 1].1
    }
}

/// What a generation did.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens generated (a stop string's included).
    pub generated: usize,
    /// Seconds of the prefill.
    pub prefill_seconds: f64,
    /// Seconds of the recurrent steps.
    pub decode_seconds: f64,
    /// Bytes of the recurrent state.
    pub state_bytes: usize,
    /// The stop string that ended it, if one did.
    pub stopped_by: Option<String>,
}

/// Generates up to `max_tokens` bytes after `prompt`, calling `emit` with text as
/// soon as it is whole UTF-8 and cannot be the start of a stop string. Generation
/// ends early at a stop string, which is not emitted.
pub fn generate(
    model: &Model,
    prompt: &[u8],
    max_tokens: usize,
    sampler: &mut Sampler,
    stops: &[String],
    mut emit: impl FnMut(&str),
) -> Result<(Vec<u8>, GenerationStats)> {
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    let mut history: Vec<u32> = prompt.iter().map(|&b| b as u32).collect();
    let mut rec = Recurrent::new(model);
    let t0 = Instant::now();
    let mut logits = rec.prefill(&history)?.to_vec();
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut out: Vec<u8> = Vec::with_capacity(max_tokens);
    let mut emitted = 0;
    let mut stopped_by = None;
    for i in 0..max_tokens {
        let tok = sampler.sample(&logits, &history);
        history.push(tok);
        out.push(tok as u8);
        if let Some(s) = stops.iter().find(|s| !s.is_empty() && out.ends_with(s.as_bytes())) {
            out.truncate(out.len() - s.len());
            stopped_by = Some(s.clone());
            break;
        }
        let held = stops.iter().map(|s| held_back(&out, s.as_bytes())).max().unwrap_or(0);
        emitted += emit_utf8(&out[emitted..out.len() - held.min(out.len() - emitted)], &mut emit);
        if i + 1 < max_tokens {
            logits.copy_from_slice(rec.step(tok)?);
        }
    }
    if emitted < out.len() {
        emit(&String::from_utf8_lossy(&out[emitted..]));
    }
    let stats = GenerationStats {
        prompt_tokens: prompt.len(),
        generated: history.len() - prompt.len(),
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
        state_bytes: rec.state.bytes(),
        stopped_by,
    };
    Ok((out, stats))
}

/// Length of the longest suffix of `out` that is a proper prefix of `stop`.
fn held_back(out: &[u8], stop: &[u8]) -> usize {
    (1..stop.len().min(out.len() + 1)).rev().find(|&k| out.ends_with(&stop[..k])).unwrap_or(0)
}

/// Emits the longest prefix of `bytes` that is whole UTF-8 (replacing invalid
/// sequences, keeping an incomplete one at the end for later); returns bytes used.
fn emit_utf8(bytes: &[u8], emit: &mut impl FnMut(&str)) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            if !s.is_empty() {
                emit(s);
            }
            bytes.len()
        }
        Err(e) if e.error_len().is_none() => {
            let n = e.valid_up_to();
            if n > 0 {
                emit(std::str::from_utf8(&bytes[..n]).expect("valid up to n"));
            }
            n
        }
        Err(e) => {
            let n = e.valid_up_to() + e.error_len().unwrap_or(1);
            emit(&String::from_utf8_lossy(&bytes[..n]));
            n
        }
    }
}
