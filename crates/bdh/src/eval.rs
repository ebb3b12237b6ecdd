//! Evaluation: validation batches during training, and a whole file afterwards.

use crate::data::{windows, Corpus};
use crate::error::{Error, Result};
use crate::infer::argmax;
use crate::model::loss::cross_entropy;
use crate::model::{forward, Activations, Mode, Model};

/// Validation numbers at one step.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EvalMetrics {
    /// Steps completed.
    pub step: usize,
    /// Mean cross-entropy on the validation batches (nats per byte).
    pub val_loss: f64,
    /// `val_loss / ln 2`.
    pub bits_per_byte: f64,
    /// Fraction of answers predicted exactly, every byte (built-in corpus only).
    pub answer_accuracy: Option<f64>,
    /// Answers scored.
    pub answers: usize,
    /// Answer accuracy by kind of document and number of facts, with what copying
    /// a stated value of the right kind at random would score (built-in corpus only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answer_groups: Vec<AnswerGroup>,
    /// During training: the mean training loss of the last (up to) 20 steps
    /// before the evaluation (nats per byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
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
}

impl EvalMetrics {
    /// The expected accuracy of copying a stated value of the right kind at random,
    /// over all answers.
    pub fn copy_baseline(&self) -> Option<f64> {
        let n: usize = self.answer_groups.iter().map(|g| g.answers).sum();
        (n > 0).then(|| self.answer_groups.iter().map(|g| g.copy_baseline * g.answers as f64).sum::<f64>() / n as f64)
    }
}

/// Validation loss, bits per byte and answer accuracy over `batches` fixed batches
/// of the size `acts` holds. An answer counts when every byte of it is the argmax
/// prediction given the text before it.
pub fn evaluate(
    model: &Model,
    corpus: &Corpus,
    acts: &mut Activations,
    batches: usize,
    step: usize,
) -> Result<EvalMetrics> {
    let (b, t, v) = acts.shape();
    let (mut loss, mut correct, mut answers) = (0.0f64, 0usize, 0usize);
    let mut groups: Vec<AnswerGroup> = Vec::new();
    for i in 0..batches {
        let batch = corpus.val_batch(i, batches, b, t);
        forward(model, &batch.tokens, acts, Mode::Eval)?;
        let logits = acts.logits();
        loss += cross_entropy(logits, &batch.targets, v) as f64;
        for (row, a) in &batch.answers {
            answers += 1;
            let hit = a.range.clone().all(|pos| {
                let at = row * t + pos;
                argmax(&logits[at * v..(at + 1) * v]) == batch.targets[at]
            });
            correct += usize::from(hit);
            let g = match groups.iter().position(|g| g.list == a.list && g.facts == a.facts) {
                Some(i) => &mut groups[i],
                None => {
                    groups.push(AnswerGroup {
                        list: a.list,
                        facts: a.facts,
                        answers: 0,
                        correct: 0,
                        copy_baseline: 0.0,
                    });
                    groups.last_mut().expect("just pushed")
                }
            };
            g.answers += 1;
            g.correct += usize::from(hit);
            g.copy_baseline += 1.0 / a.choices.max(1) as f64;
        }
    }
    let val_loss = loss / batches as f64;
    Ok(EvalMetrics {
        step,
        val_loss,
        bits_per_byte: val_loss / std::f64::consts::LN_2,
        answer_accuracy: corpus.has_answers().then(|| correct as f64 / answers.max(1) as f64),
        answers,
        answer_groups: {
            groups.iter_mut().for_each(|g| g.copy_baseline /= g.answers as f64);
            groups.sort_by_key(|g| (g.list, g.facts));
            groups
        },
        train_loss: None,
    })
}

/// Loss over every byte of a file.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileEval {
    /// Bytes predicted (all but the first).
    pub tokens: usize,
    /// Windows the file was cut into.
    pub windows: usize,
    /// Tokens per window (the model's context is reset at each window).
    pub window: usize,
    /// Mean cross-entropy, nats per byte.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// `loss / ln 2`.
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
    if data.len() < 2 {
        return Err(Error::Input(format!("{} bytes is too little to evaluate: need 2", data.len())));
    }
    let v = model.config().vocab_size();
    if let Some(&bad) = data.iter().find(|&&byte| byte as usize >= v) {
        return Err(Error::Input(format!("byte {bad} of the text is past this model's vocabulary of {v}")));
    }
    let all: Vec<(&[u8], &[u8])> = windows(data, t).collect();
    let (mut total, mut tokens, mut done) = (0.0f64, 0usize, 0usize);
    let mut acts: Option<Activations> = None;
    for group in all.chunks(b) {
        done += group.len();
        // Windows of one pass share a length: the full ones, then the short tail alone.
        for same in group.chunk_by(|a, b| a.0.len() == b.0.len()) {
            let len = same[0].0.len();
            let fits = acts.as_ref().is_some_and(|a| a.shape().0 == same.len() && a.shape().1 == len);
            if !fits {
                drop(acts.take()); // free the old buffers before the new ones
                acts = Some(Activations::new(model, same.len(), len)?);
            }
            let acts = acts.as_mut().expect("just set");
            let ids: Vec<u32> = same.iter().flat_map(|w| w.0.iter().map(|&x| x as u32)).collect();
            let targets: Vec<u32> = same.iter().flat_map(|w| w.1.iter().map(|&x| x as u32)).collect();
            forward(model, &ids, acts, Mode::Eval)?;
            total += cross_entropy(acts.logits(), &targets, v) as f64 * targets.len() as f64;
            tokens += targets.len();
        }
        progress(done, all.len());
    }
    let loss = total / tokens as f64;
    Ok(FileEval {
        tokens,
        windows: all.len(),
        window: t,
        loss,
        perplexity: loss.exp(),
        bits_per_byte: loss / std::f64::consts::LN_2,
    })
}
