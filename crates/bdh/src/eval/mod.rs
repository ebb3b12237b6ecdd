//! Evaluation: validation batches during training ([`evaluate`]), and a whole file
//! afterwards (the `files` module).

use crate::data::{Batch, Corpus};
use crate::engine::Forward;
use crate::error::Result;
use crate::infer::argmax;
use crate::model::loss::cross_entropy;
use crate::model::{forward, Activations, Mode, Model};

mod files;
pub use files::*;

/// Validation numbers at one step.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalMetrics {
    /// Steps completed.
    pub step: usize,
    /// Mean cross-entropy on the validation batches (nats per token: per byte for
    /// a byte-level model).
    pub val_loss: f64,
    /// The loss summed over the tokens, divided by the bytes they decode to, in
    /// bits: comparable across tokenizers (`val_loss / ln 2` for bytes).
    pub bits_per_byte: f64,
    /// Fraction of answers predicted exactly, every byte (built-in corpus only).
    pub answer_accuracy: Option<f64>,
    /// What guessing at random scores on a task's answers (a task of the built-in
    /// generator only; the language's bars are in `answer_groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_chance: Option<f64>,
    /// Answers scored.
    pub answers: usize,
    /// Answer accuracy by kind of document and number of facts, with what copying
    /// a stated value of the right kind at random would score (built-in corpus only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answer_groups: Vec<AnswerGroup>,
    /// During training: the mean training loss of the last (up to) 20 steps
    /// before the evaluation (nats per token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    /// During training with a learned decay: each head's retention γ_h at this step
    /// (the median of its neurons' with `decay_per = "neuron"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retention: Vec<f32>,
    /// During training with a homeostatic threshold: the neurons' mean running firing
    /// rate, and its target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firing: Option<(f64, f64)>,
    /// During a run that keeps models: how far each layer matrix moved from the start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<crate::microscope::weights::WeightChange>,
    /// With a retention per neuron: each head's 10%, 50% and 90% quantiles of its
    /// neurons' γ (a line of bounded length, whatever N).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retention_spread: Vec<[f32; 3]>,
    /// During training with learned delays: each head's δ_h at this step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delays: Vec<f32>,
}

/// The answers of one kind of document with one number of facts.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnswerGroup {
    /// Lists (else stories).
    pub list: bool,
    /// Facts per document.
    pub facts: usize,
    /// Answers scored.
    pub answers: usize,
    /// Answers predicted exactly.
    pub correct: usize,
    /// Expected accuracy of copying, at random, one of the values of the answer's
    /// kind stated in its document: the bar a model must clear to show it binds
    /// each value to its key.
    pub copy_baseline: f64,
    /// Expected accuracy of copying at random a stated value of the right kind
    /// that no earlier answer gave: binds nothing, but the last question of each
    /// kind is always right.
    #[serde(default)]
    pub eliminate_baseline: f64,
    /// Answers where no earlier answer of the document was of the same kind, so
    /// that elimination cannot help: the test of binding.
    #[serde(default)]
    pub first_answers: usize,
    /// Of those, answered exactly.
    #[serde(default)]
    pub first_correct: usize,
    /// What copying at random scores on them (chance for a strategy that binds
    /// nothing).
    #[serde(default)]
    pub first_chance: f64,
    /// The chance that copying at random would answer as many of them or more
    /// (one-sided, exact): small when the model binds.
    #[serde(default = "one")]
    pub first_p_value: f64,
}

fn one() -> f64 {
    1.0
}

impl AnswerGroup {
    /// Answer accuracy.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.answers.max(1) as f64
    }

    /// Answer accuracy on the first answers of their kind.
    pub fn first_accuracy(&self) -> f64 {
        self.first_correct as f64 / self.first_answers.max(1) as f64
    }
}

impl EvalMetrics {
    /// The expected accuracy of copying a stated value of the right kind at random,
    /// over all answers.
    pub fn copy_baseline(&self) -> Option<f64> {
        self.mean_over_answers(|g| g.copy_baseline)
    }

    /// The expected accuracy of copying at random a stated value not given yet,
    /// over all answers.
    pub fn eliminate_baseline(&self) -> Option<f64> {
        self.mean_over_answers(|g| g.eliminate_baseline)
    }

    /// The better of the two strategies that bind nothing, over all answers: the
    /// bar the answer accuracy has to clear.
    pub fn best_non_binding(&self) -> Option<f64> {
        Some(self.copy_baseline()?.max(self.eliminate_baseline()?))
    }

    /// `of(group)` averaged over the answers of every group.
    fn mean_over_answers(&self, of: impl Fn(&AnswerGroup) -> f64) -> Option<f64> {
        let n: usize = self.answer_groups.iter().map(|g| g.answers).sum();
        (n > 0).then(|| self.answer_groups.iter().map(|g| of(g) * g.answers as f64).sum::<f64>() / n as f64)
    }
}

/// The chance that independent trials, the i-th a success with probability `p[i]`,
/// give `k` successes or more (the Poisson binomial's upper tail, exact).
pub fn at_least(p: &[f64], k: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > p.len() {
        return 0.0;
    }
    // dist[j]: the chance of j successes so far (j < k), the last slot holding "k or more".
    let mut dist = vec![0.0f64; k + 1];
    dist[0] = 1.0;
    for &q in p {
        let q = q.clamp(0.0, 1.0);
        dist[k] += dist[k - 1] * q;
        for j in (1..k).rev() {
            dist[j] = dist[j] * (1.0 - q) + dist[j - 1] * q;
        }
        dist[0] *= 1.0 - q;
    }
    dist[k].clamp(0.0, 1.0)
}

/// Whether the answer at target positions `range` of the row starting at `row0`
/// is predicted exactly: every byte the argmax of the logits, (·, V), given the
/// text before it.
pub(crate) fn answered(logits: &[f32], targets: &[u32], row0: usize, range: &std::ops::Range<usize>, v: usize) -> bool {
    range.clone().all(|pos| {
        let at = row0 + pos;
        argmax(&logits[at * v..(at + 1) * v]) == targets[at]
    })
}

/// Validation loss, bits per byte and answer accuracy over `batches` fixed batches
/// of the size `acts` holds. An answer counts when every byte of it is the argmax
/// prediction given the text before it. Bits per byte divide the loss summed over
/// the targets by the bytes they decode to.
pub fn evaluate(
    model: &Model,
    corpus: &Corpus,
    acts: &mut Activations,
    batches: usize,
    step: usize,
) -> Result<EvalMetrics> {
    Ok(evaluate_until(model, corpus, acts, batches, step, &|| false)?.expect("never stopped"))
}

/// [`evaluate`], or `None` if `stopped` says so before a batch.
pub fn evaluate_until(
    model: &Model,
    corpus: &Corpus,
    acts: &mut Activations,
    batches: usize,
    step: usize,
    stopped: &dyn Fn() -> bool,
) -> Result<Option<EvalMetrics>> {
    let (b, t, _) = acts.shape();
    let mut tally = Tally::new(model.config().vocab_size(), t);
    for i in 0..batches {
        if stopped() {
            return Ok(None);
        }
        let batch = corpus.val_batch(i, batches, b, t);
        forward(model, &batch.tokens, acts, Mode::Eval)?;
        tally.add(acts.logits(), &batch, corpus);
    }
    Ok(Some(tally.finish(corpus, step, batches * b * t)))
}

/// [`evaluate`] on any device: `batches` batches of (B, T) = (`b`, `t`).
pub fn evaluate_on(
    fwd: &mut dyn Forward,
    corpus: &Corpus,
    vocab: usize,
    (b, t): (usize, usize),
    batches: usize,
) -> Result<EvalMetrics> {
    Ok(evaluate_on_until(fwd, corpus, vocab, (b, t), batches, 0, &|| false)?.expect("never stopped"))
}

/// [`evaluate_on`] at training step `step`, or `None` if `stopped` says so before a batch.
pub fn evaluate_on_until(
    fwd: &mut dyn Forward,
    corpus: &Corpus,
    vocab: usize,
    (b, t): (usize, usize),
    batches: usize,
    step: usize,
    stopped: &dyn Fn() -> bool,
) -> Result<Option<EvalMetrics>> {
    let mut tally = Tally::new(vocab, t);
    for i in 0..batches {
        if stopped() {
            return Ok(None);
        }
        let batch = corpus.val_batch(i, batches, b, t);
        tally.add(&fwd.logits(&batch.tokens, b, t)?, &batch, corpus);
    }
    Ok(Some(tally.finish(corpus, step, batches * b * t)))
}

/// Loss and answers summed over validation batches.
struct Tally {
    v: usize,
    t: usize,
    loss: f64,
    correct: usize,
    answers: usize,
    bytes: usize,
    batches: usize,
    groups: Vec<AnswerGroup>,
    // Per group, the chance of each first-of-its-kind answer under copying.
    chances: Vec<Vec<f64>>,
}

impl Tally {
    fn new(v: usize, t: usize) -> Self {
        Tally { v, t, loss: 0.0, correct: 0, answers: 0, bytes: 0, batches: 0, groups: Vec::new(), chances: Vec::new() }
    }

    /// Adds a batch scored by `logits` (B, T, V).
    fn add(&mut self, logits: &[f32], batch: &Batch, corpus: &Corpus) {
        let (v, t) = (self.v, self.t);
        self.batches += 1;
        self.loss += cross_entropy(logits, &batch.targets, v) as f64;
        self.bytes += corpus.tokenizer().bytes_of(&batch.targets);
        for &(row, pos) in &batch.scored {
            self.answers += 1;
            self.correct += usize::from(answered(logits, &batch.targets, row * t, &(pos..pos + 1), v));
        }
        for (row, a) in &batch.answers {
            self.answers += 1;
            let hit = answered(logits, &batch.targets, row * t, &a.range, v);
            self.correct += usize::from(hit);
            let at = self.groups.iter().position(|g| g.list == a.list && g.facts == a.facts).unwrap_or_else(|| {
                self.groups.push(AnswerGroup {
                    list: a.list,
                    facts: a.facts,
                    answers: 0,
                    correct: 0,
                    copy_baseline: 0.0,
                    eliminate_baseline: 0.0,
                    first_answers: 0,
                    first_correct: 0,
                    first_chance: 0.0,
                    first_p_value: 1.0,
                });
                self.chances.push(Vec::new());
                self.groups.len() - 1
            });
            let g = &mut self.groups[at];
            let chance = a.copy_chance();
            g.answers += 1;
            g.correct += usize::from(hit);
            g.copy_baseline += chance;
            g.eliminate_baseline += a.eliminate;
            if a.first_of_kind {
                g.first_answers += 1;
                g.first_correct += usize::from(hit);
                g.first_chance += chance;
                self.chances[at].push(chance);
            }
        }
    }

    /// The metrics of `tokens` tokens scored, at training step `step`.
    fn finish(mut self, corpus: &Corpus, step: usize, tokens: usize) -> EvalMetrics {
        for (g, chances) in self.groups.iter_mut().zip(&self.chances) {
            g.first_p_value = at_least(chances, g.first_correct);
            g.copy_baseline /= g.answers as f64;
            g.eliminate_baseline /= g.answers as f64;
            g.first_chance /= g.first_answers.max(1) as f64;
        }
        let val_loss = self.loss / self.batches as f64;
        self.groups.sort_by_key(|g| (g.list, g.facts));
        EvalMetrics {
            step,
            val_loss,
            bits_per_byte: bits_per_byte(val_loss, tokens, self.bytes),
            answer_accuracy: corpus.has_answers().then(|| self.correct as f64 / self.answers.max(1) as f64),
            answer_chance: corpus.task_chance(),
            answers: self.answers,
            answer_groups: self.groups,
            train_loss: None,
            retention: Vec::new(),
            retention_spread: Vec::new(),
            firing: None,
            weights: Vec::new(),
            delays: Vec::new(),
        }
    }
}

/// Bits per byte of a mean loss `loss` (nats) over `tokens` tokens that decode
/// to `bytes` bytes: the summed loss over the bytes, in bits. For bytes (as many
/// as tokens) it is exactly `loss / ln 2`.
pub fn bits_per_byte(loss: f64, tokens: usize, bytes: usize) -> f64 {
    loss / std::f64::consts::LN_2 * (tokens as f64 / bytes.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::at_least;

    /// Equal chances: the binomial tail, summed term by term.
    #[test]
    fn the_tail_of_equal_chances_is_the_binomial_tail() {
        let (n, q) = (12usize, 0.3f64);
        let choose = |n: usize, k: usize| (0..k).fold(1.0f64, |c, i| c * (n - i) as f64 / (i + 1) as f64);
        for k in 0..=n + 1 {
            let want: f64 = (k..=n).map(|j| choose(n, j) * q.powi(j as i32) * (1.0 - q).powi((n - j) as i32)).sum();
            let got = at_least(&vec![q; n], k);
            assert!((got - want).abs() < 1e-12, "k = {k}: {got} against {want}");
        }
    }

    /// Unequal chances: every outcome of five trials enumerated.
    #[test]
    fn the_tail_of_unequal_chances_counts_every_outcome() {
        let p = [0.5, 0.25, 1.0 / 3.0, 0.9, 0.05];
        for k in 0..=6 {
            let mut want = 0.0;
            for outcome in 0u32..(1 << p.len()) {
                if outcome.count_ones() as usize >= k {
                    want += p
                        .iter()
                        .enumerate()
                        .map(|(i, &q)| if outcome >> i & 1 == 1 { q } else { 1.0 - q })
                        .product::<f64>();
                }
            }
            assert!((at_least(&p, k) - want).abs() < 1e-12, "k = {k}");
        }
    }
}
