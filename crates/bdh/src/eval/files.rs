//! Evaluation of a whole text: a file cut into windows, or read as one stream with a
//! carried state.

use super::bits_per_byte;
use crate::data::{windows, Tokenizer};
use crate::engine::{Cpu, Forward};
use crate::error::{Error, Result};
use crate::model::bdh::StateDtype;
use crate::model::loss::cross_entropy;
use crate::model::{Mode, Model};

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
/// sees everything before it; RoPE phases count from the text's first byte. With ρ
/// stored in 16 bits (`dtype`), the recurrent step reads the text a token at a time,
/// as decoding does, each write rounded: the loss a 16-bit state costs.
pub fn evaluate_stream(
    model: &crate::model::bdh::Bdh,
    data: &[u8],
    (chunk, dtype): (usize, StateDtype),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StreamEval> {
    stream(model, data, &Tokenizer::Bytes, (chunk, dtype), progress)
}

/// [`evaluate_stream`] of a text that `tokenizer` made the token ids `tokens` of.
pub fn evaluate_stream_tokens(
    model: &crate::model::bdh::Bdh,
    tokens: &[u32],
    tokenizer: &Tokenizer,
    (chunk, dtype): (usize, StateDtype),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StreamEval> {
    tokenizer.check(&crate::ModelConfig::Bdh(model.config.clone()))?;
    stream(model, tokens, tokenizer, (chunk, dtype), progress)
}

fn stream<T: Copy + Into<u32>>(
    model: &crate::model::bdh::Bdh,
    data: &[T],
    tokenizer: &Tokenizer,
    (chunk, dtype): (usize, StateDtype),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<StreamEval> {
    use crate::model::bdh::{forward as bdh_forward, Activations as BdhActivations, Pass, Prepared, NO_EDITS};
    if chunk == 0 {
        return Err(Error::Input("a stream read in chunks of 0 tokens: need a chunk > 0".into()));
    }
    // Positions past 2^24 are not exact in f32.
    check_text(data, crate::model::MAX_POSITION, model.config.vocab_size)?;
    let v = model.config.vocab_size;
    let tokens: Vec<u32> = data[..data.len() - 1].iter().map(|&b| b.into()).collect();
    let targets: Vec<u32> = data[1..].iter().map(|&b| b.into()).collect();
    // (f32: chunks through the parallel forward; 16 bits: token by token)
    let stepper = match dtype {
        StateDtype::F32 => None,
        _ => Some(Prepared::new(model.clone())?.with_state_dtype(dtype)?),
    };
    let mut state = crate::model::bdh::State::with_dtype(&model.config, dtype)?;
    let mut scratch = stepper.as_ref().map(Prepared::scratch);
    let mut stepped = Vec::new();
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
        let logits = match (&stepper, &mut scratch) {
            (Some(p), Some(scratch)) => {
                stepped.clear();
                for &token in part {
                    stepped.extend_from_slice(p.step(&mut [&mut state], scratch, &[token], &NO_EDITS)?);
                }
                &stepped[..]
            }
            _ => {
                let a = BdhActivations::reuse(&mut acts, model, 1, t)?;
                bdh_forward(model, part, a, Pass { mode: Mode::Eval, state: Some(&mut state), ..Pass::default() })?;
                &a.logits[..]
            }
        };
        for (i, (row, &target)) in logits.chunks_exact(v).zip(want).enumerate() {
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
