//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p and
//! a repetition penalty.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

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
            // A value past f32's range arrives here as infinity: say what was wrong with it.
            return Err(Error::Input(format!("temperature must be a finite number ≥ 0, not {}", self.temperature)));
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
