//! Evaluation: validation batches during training, and a whole file afterwards.

use crate::data::{windows, Batch, Corpus, Tokenizer};
use crate::engine::{Cpu, Forward};
use crate::error::{Error, Result};
use crate::infer::argmax;
use crate::model::loss::cross_entropy;
use crate::model::{forward, Activations, Mode, Model};

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

/// Loss over every token of a file.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileEval {
    /// Tokens predicted (all but the first).
    pub tokens: usize,
    /// Bytes the predicted tokens decode to (as many as tokens for bytes).
    pub bytes: usize,
    /// Windows the file was cut into.
    pub windows: usize,
    /// Tokens per window (the model's context is reset at each window).
    pub window: usize,
    /// Mean cross-entropy, nats per token (per byte for bytes).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// The summed loss over the bytes, in bits (see [`bits_per_byte`]).
    pub bits_per_byte: f64,
}

/// Mean loss over every byte of `data`, cut into independent windows of `t`
/// tokens (each starts with an empty state), `b` windows per forward pass;
/// `progress(done, total)` is called after each pass, in windows.
pub fn evaluate_bytes(
    model: &Model,
    data: &[u8],
    t: usize,
    b: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FileEval> {
    evaluate_windows(model, data, &Tokenizer::Bytes, t, b, progress)
}

/// [`evaluate_bytes`] of a text that `tokenizer` made the token ids `tokens` of.
pub fn evaluate_tokens(
    model: &Model,
    tokens: &[u32],
    tokenizer: &Tokenizer,
    t: usize,
    b: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FileEval> {
    tokenizer.check(&model.config())?;
    evaluate_windows(model, tokens, tokenizer, t, b, progress)
}

/// An error unless `data` holds 2 to `max` tokens, all in the vocabulary of `v`.
fn check_text<T: Copy + Into<u32>>(data: &[T], max: usize, v: usize) -> Result<()> {
    let unit = if std::mem::size_of::<T>() == 1 { "bytes" } else { "tokens" };
    if data.len() < 2 {
        return Err(Error::Input(format!("{} {unit} is too little to evaluate: need 2", data.len())));
    }
    if data.len() > max {
        return Err(Error::Input(format!(
            "{} {unit} read as one stream: at most {max} (positions past 2^24 are not exact in f32)",
            data.len()
        )));
    }
    if let Some(bad) = data.iter().map(|&x| x.into()).find(|&x| x as usize >= v) {
        let unit = unit.trim_end_matches('s');
        return Err(Error::Input(format!("{unit} {bad} of the text is past this model's vocabulary of {v}")));
    }
    Ok(())
}

fn evaluate_windows<T: Copy + Into<u32>>(
    model: &Model,
    data: &[T],
    tokenizer: &Tokenizer,
    t: usize,
    b: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FileEval> {
    windows_on(&mut Cpu::new(model), model.config().vocab_size(), data, tokenizer, (b, t), progress)
}

/// [`evaluate_tokens`] on any device (`vocab`: the model's).
pub fn evaluate_tokens_on(
    fwd: &mut dyn Forward,
    vocab: usize,
    tokens: &[u32],
    tokenizer: &Tokenizer,
    (b, t): (usize, usize),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FileEval> {
    windows_on(fwd, vocab, tokens, tokenizer, (b, t), progress)
}

/// [`evaluate_bytes`] on any device (`vocab`: the model's).
pub fn evaluate_bytes_on(
    fwd: &mut dyn Forward,
    vocab: usize,
    data: &[u8],
    (b, t): (usize, usize),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FileEval> {
    windows_on(fwd, vocab, data, &Tokenizer::Bytes, (b, t), progress)
}

fn windows_on<T: Copy + Into<u32>>(
    fwd: &mut dyn Forward,
    v: usize,
    data: &[T],
    tokenizer: &Tokenizer,
    (b, t): (usize, usize),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<FileEval> {
    check_text(data, usize::MAX, v)?;
    let all: Vec<(&[T], &[T])> = windows(data, t).collect();
    let (mut total, mut tokens, mut bytes, mut done) = (0.0f64, 0usize, 0usize, 0usize);
    for group in all.chunks(b) {
        done += group.len();
        // Windows of one pass share a length: the full ones, then the short tail alone.
        for same in group.chunk_by(|a, b| a.0.len() == b.0.len()) {
            let len = same[0].0.len();
            let ids: Vec<u32> = same.iter().flat_map(|w| w.0.iter().map(|&x| x.into())).collect();
            let targets: Vec<u32> = same.iter().flat_map(|w| w.1.iter().map(|&x| x.into())).collect();
            total += fwd.loss_sum(&ids, &targets, same.len(), len)?;
            tokens += targets.len();
            bytes += tokenizer.bytes_of(&targets);
        }
        progress(done, all.len());
    }
    let loss = total / tokens as f64;
    Ok(FileEval {
        tokens,
        bytes,
        windows: all.len(),
        window: t,
        loss,
        perplexity: loss.exp(),
        bits_per_byte: bits_per_byte(loss, tokens, bytes),
    })
}

/// The loss of the positions in one bucket of a stream.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Bucket {
    /// First position (the position of the token predicted from).
    pub from: usize,
    /// One past the last.
    pub to: usize,
    /// Tokens predicted there.
    pub tokens: usize,
    /// Their mean cross-entropy, nats per token (per byte for bytes).
    pub loss: f64,
}

/// Loss over a whole text read as one stream.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StreamEval {
    /// Tokens predicted (all but the first).
    pub tokens: usize,
    /// Bytes the predicted tokens decode to (as many as tokens for bytes).
    pub bytes: usize,
    /// Tokens per parallel chunk (the synapse state carries the text between them).
    pub chunk: usize,
    /// Mean cross-entropy, nats per token (per byte for bytes).
    pub loss: f64,
    /// The summed loss over the bytes, in bits (see [`bits_per_byte`]).
    pub bits_per_byte: f64,
    /// Loss by position: 0–256, 256–1k, 1k–4k, … (×4 each).
    pub buckets: Vec<Bucket>,
}

/// Mean loss over every byte of `data` read by a BDH model as one stream: chunks of
/// `chunk` tokens through the parallel forward with the synapse state carried
/// between them, so memory stays constant whatever the length and every position
/// sees everything before it; RoPE phases count from the text's first byte.
pub fn evaluate_stream(
    model: &crate::model::bdh::Bdh,
    data: &[u8],
    chunk: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StreamEval> {
    stream(model, data, &Tokenizer::Bytes, chunk, progress)
}

/// [`evaluate_stream`] of a text that `tokenizer` made the token ids `tokens` of.
pub fn evaluate_stream_tokens(
    model: &crate::model::bdh::Bdh,
    tokens: &[u32],
    tokenizer: &Tokenizer,
    chunk: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StreamEval> {
    tokenizer.check(&crate::ModelConfig::Bdh(model.config.clone()))?;
    stream(model, tokens, tokenizer, chunk, progress)
}

fn stream<T: Copy + Into<u32>>(
    model: &crate::model::bdh::Bdh,
    data: &[T],
    tokenizer: &Tokenizer,
    chunk: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StreamEval> {
    use crate::model::bdh::{forward as bdh_forward, Activations as BdhActivations, Pass, State};
    if chunk == 0 {
        return Err(Error::Input("a stream read in chunks of 0 tokens: need a chunk > 0".into()));
    }
    // Positions past 2^24 are not exact in f32.
    check_text(data, crate::model::MAX_POSITION, model.config.vocab_size)?;
    let v = model.config.vocab_size;
    let tokens: Vec<u32> = data[..data.len() - 1].iter().map(|&b| b.into()).collect();
    let targets: Vec<u32> = data[1..].iter().map(|&b| b.into()).collect();
    let mut state = State::new(&model.config)?;
    let mut acts: Option<BdhActivations> = None;
    let mut bounds = vec![0usize, 256];
    while *bounds.last().expect("non-empty") < tokens.len() {
        let next = bounds.last().expect("non-empty") * 4;
        bounds.push(next);
    }
    let mut buckets: Vec<Bucket> =
        bounds.windows(2).map(|w| Bucket { from: w[0], to: w[1].min(tokens.len()), tokens: 0, loss: 0.0 }).collect();
    let mut total = 0.0f64;
    for (k, (part, want)) in tokens.chunks(chunk).zip(targets.chunks(chunk)).enumerate() {
        let t = part.len();
        let a = BdhActivations::reuse(&mut acts, model, 1, t)?;
        bdh_forward(model, part, a, Pass { mode: Mode::Eval, state: Some(&mut state), ..Pass::default() })?;
        for (i, (row, &target)) in a.logits.chunks_exact(v).zip(want).enumerate() {
            let loss = cross_entropy(row, &[target], v) as f64;
            total += loss;
            let pos = k * chunk + i;
            let b = buckets.iter_mut().find(|b| pos < b.to).expect("the buckets cover every position");
            b.tokens += 1;
            b.loss += loss;
        }
        progress((k * chunk + t).min(tokens.len()), tokens.len());
    }
    buckets.iter_mut().for_each(|b| b.loss /= b.tokens.max(1) as f64);
    let loss = total / tokens.len() as f64;
    let bytes = tokenizer.bytes_of(&targets);
    let bits_per_byte = bits_per_byte(loss, tokens.len(), bytes);
    Ok(StreamEval { tokens: tokens.len(), bytes, chunk, loss, bits_per_byte, buckets })
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
