//! Induction: does a head look back to the token after the previous occurrence of
//! the current one, and copy it? Measured on random letter sequences repeated once
//! (`r r`, letters distinct within a copy of up to 26), where the second copy can
//! only be predicted from the first.
//!
//! BDH's attention has no softmax, so a head's "attention" to an earlier position s
//! from t is the score `R(x_t)·R(x_s)`; a head's share at an offset is the magnitude
//! of that score over the sum of magnitudes over every earlier position.

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::ablate::NeuronId;
use super::Scope;
use crate::error::{Error, Result};
use crate::model::bdh::{Activations, Edit, Edits, Pass, Site};
use crate::model::loss::cross_entropy;
use crate::model::Mode;

/// Longest repeated sequence (the pass holds (B, H, T, T) scores per layer).
pub const MAX_LENGTH: usize = 1024;

/// One head's induction numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeadInduction {
    /// Layer.
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// Mean share of the score magnitude, over the second copy, at the position
    /// right after the previous occurrence of the current token.
    pub induction: f64,
    /// The same at the previous position (previous-token heads feed induction).
    pub previous: f64,
    /// Rise of the loss on the second copy when the head's neurons are zeroed.
    pub ablation: f64,
}

/// Induction over repeated random sequences.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InductionReport {
    /// Tokens per copy.
    pub length: usize,
    /// Sequences.
    pub sequences: usize,
    /// Mean loss on the first copy (nats per token; unpredictable text).
    pub first_loss: f64,
    /// Mean loss on the second copy (predictable by copying).
    pub second_loss: f64,
    /// What a head that spreads its scores evenly would give as share at one
    /// offset, averaged over the second copy.
    pub uniform_share: f64,
    /// Per layer and head.
    pub heads: Vec<HeadInduction>,
}

/// Random lowercase-letter sequences of `length` repeated once, seeded by `seed`:
/// (B, 2·length − 1) inputs and the next-token targets. Up to 26 tokens the letters
/// of a copy are distinct, so each token's previous occurrence is exactly one
/// copy back; longer copies repeat letters.
fn repeated(length: usize, sequences: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut tokens, mut targets) = (Vec::new(), Vec::new());
    let letters: Vec<u32> = (u32::from(b'a')..=u32::from(b'z')).collect();
    for _ in 0..sequences {
        let r: Vec<u32> = if length <= letters.len() {
            letters.choose_multiple(&mut rng, length).copied().collect()
        } else {
            (0..length).map(|_| *letters.choose(&mut rng).expect("26 letters")).collect()
        };
        let full: Vec<u32> = r.iter().chain(&r).copied().collect();
        tokens.extend_from_slice(&full[..2 * length - 1]);
        targets.extend_from_slice(&full[1..]);
    }
    (tokens, targets)
}

/// Mean loss over positions `range` of every row.
fn loss_over(logits: &[f32], targets: &[u32], t: usize, v: usize, range: std::ops::Range<usize>) -> f64 {
    let rows = targets.len() / t;
    let (mut sum, mut count) = (0.0, 0);
    for r in 0..rows {
        let at = r * t + range.start..r * t + range.end;
        sum += cross_entropy(&logits[at.start * v..at.end * v], &targets[at.clone()], v) as f64 * at.len() as f64;
        count += at.len();
    }
    sum / count.max(1) as f64
}

/// One head's mean induction and previous-token shares over positions
/// `length..t` of its (T, T) strictly causal scores, row t, column s: the
/// magnitude at s = t − length + 1 (and at s = t − 1) over the row's total (a row
/// of zeros counts as 0).
pub fn shares(scores: &[f32], t: usize, length: usize) -> (f64, f64) {
    if length < 2 || scores.len() < t.saturating_mul(t) {
        return (0.0, 0.0);
    }
    let (mut ind, mut prev) = (0.0, 0.0);
    for ti in length..t {
        let row = &scores[ti * t..ti * t + ti];
        let total: f64 = row.iter().map(|x| x.abs() as f64).sum();
        if total > 0.0 {
            ind += row[ti + 1 - length].abs() as f64 / total;
            prev += row[ti - 1].abs() as f64 / total;
        }
    }
    let count = t.saturating_sub(length).max(1) as f64;
    (ind / count, prev / count)
}

/// Induction and previous-token shares and ablation effects of every head.
pub fn induction(model: &Scope, length: usize, sequences: usize, seed: u64) -> Result<InductionReport> {
    if !(2..=MAX_LENGTH).contains(&length) || sequences == 0 || sequences > 256 {
        return Err(Error::Input(format!(
            "induction needs a length in 2..={MAX_LENGTH} and 1..=256 sequences; got {length} and {sequences}"
        )));
    }
    let c = &model.config;
    if c.per_neuron_decay() {
        return Err(Error::Input(
            "induction reads each head's attention scores, and a model with a retention per neuron \
             (decay_per = \"neuron\") has none: each neuron weighs its part of a score by its own γ"
                .into(),
        ));
    }
    let (t, v, h) = (2 * length - 1, c.vocab_size, c.n_head);
    let (tokens, targets) = repeated(length, sequences, seed);
    let mut acts = Activations::new(model, sequences, t)?;
    model.forward(&tokens, &mut acts, Pass::default())?;
    // Targets of positions length−1.. are the second copy; its first token is the
    // one an induction head cannot know, so the second copy is scored from `length`.
    let second = length..t;
    let first_loss = loss_over(&acts.logits, &targets, t, v, 0..length - 1);
    let second_loss = loss_over(&acts.logits, &targets, t, v, second.clone());
    let uniform_share = second.clone().map(|ti| 1.0 / ti as f64).sum::<f64>() / second.len() as f64;
    let mut heads = Vec::new();
    for l in 0..c.n_layer {
        for hi in 0..h {
            let (mut ind, mut prev) = (0.0, 0.0);
            for b in 0..sequences {
                let (i, p) = shares(&acts.scores(l)[((b * h + hi) * t) * t..][..t * t], t, length);
                ind += i / sequences as f64;
                prev += p / sequences as f64;
            }
            heads.push(HeadInduction { layer: l, head: hi, induction: ind, previous: prev, ablation: 0.0 });
        }
    }
    for head in &mut heads {
        let mut edits = Edits::new();
        let id = NeuronId { layer: head.layer, head: head.head, neuron: 0 };
        edits.push(Edit { neuron: None, ..id.zero(Site::X) });
        model.forward(&tokens, &mut acts, Pass { mode: Mode::Eval, edits: &edits, state: None })?;
        head.ablation = loss_over(&acts.logits, &targets, t, v, second.clone()) - second_loss;
    }
    debug_assert!(heads.iter().all(|h| h.induction.is_finite()));
    Ok(InductionReport { length, sequences, first_loss, second_loss, uniform_share, heads })
}
