//! Streaming generation: prefill the prompt in chunks, then one recurrent step per
//! token in constant memory, continuing whatever the state has already read.

use std::ops::ControlFlow;
use std::time::Instant;

use super::{Prepared, Sampler, Scratch, State};
use crate::data::Tokenizer;
use crate::engine::{CpuReader, Reader};
use crate::error::{Error, Result};
use crate::model::bdh::Edits;

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
    /// Whether the output callback ended it.
    pub cancelled: bool,
}

/// What to generate after a prompt.
#[derive(Clone, Debug, Default)]
pub struct Generation {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// End at the first of these strings (it is not emitted).
    pub stops: Vec<String>,
    /// Interventions during the prompt and the generation.
    pub edits: Edits,
    /// How tokens become text.
    pub tokenizer: Tokenizer,
}

/// Reads `prompt` into `state` (after whatever it holds), then generates up to
/// `g.max_tokens` tokens, calling `emit` with text as soon as it is whole UTF-8 and
/// cannot be the start of a stop string. Generation ends early at a stop string
/// (not emitted) or when `emit` returns [`ControlFlow::Break`] (a reader that went
/// away). On return `state` has read the prompt and every generated token, so a
/// later call continues the text.
pub fn generate(
    prepared: &Prepared,
    state: &mut State,
    scratch: &mut Scratch,
    prompt: &[u32],
    g: &Generation,
    sampler: &mut Sampler,
    emit: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Output> {
    if let Some(context) = prepared.config().max_context() {
        if prompt.len() > context {
            return Err(Error::Input(format!(
                "the prompt's {} tokens do not fit this model's context of {context} (its block_size): \
                 give at most {context} (generation past it slides the window)",
                prompt.len()
            )));
        }
    }
    let mut reader = CpuReader { prepared, state, scratch, edits: &g.edits };
    generate_with(&mut reader, prompt, g, sampler, emit)
}

/// [`generate`] on any [`Reader`] (a stream on the CPU or on a device); the
/// reader's own interventions apply, not `g.edits`.
pub fn generate_with(
    reader: &mut dyn Reader,
    prompt: &[u32],
    g: &Generation,
    sampler: &mut Sampler,
    mut emit: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Output> {
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    let t0 = Instant::now();
    let mut d = Decoding::new(prompt, g, reader.prefill(prompt)?);
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut cancelled = false;
    while let Some(tok) = d.next_token(sampler) {
        let Some(text) = d.read(reader.step(tok)?) else { break };
        if !text.is_empty() && emit(&text).is_break() {
            cancelled = true;
            break;
        }
    }
    if let (Some(rest), false) = (d.rest(), cancelled) {
        let _ = emit(&rest);
    }
    let stats = GenerationStats {
        prompt_tokens: prompt.len(),
        generated: d.tokens.len(),
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
        state_bytes: reader.state_bytes(),
        stopped_by: d.stopped_by,
        cancelled,
    };
    Ok(Output { tokens: d.tokens, text: d.text, stats })
}

/// One sequence's decoding after its prompt, a token at a time, for a caller that
/// runs the model itself (a server stepping many sequences together): choose a
/// token, have the model read it, hand its logits back, emit the text that is
/// ready. [`generate`] is this loop around [`Prepared::step`].
#[derive(Clone, Debug)]
pub struct Decoding {
    history: Vec<u32>, // the prompt and every generated token: the sampler's view
    tokens: Vec<u32>,  // generated tokens
    text: Vec<u8>,     // their text (without a stop string, once one ended it)
    emitted: usize,    // bytes of `text` handed out
    logits: Vec<f32>,  // (V) for the next token
    max_tokens: usize,
    stops: Vec<String>,
    tokenizer: Tokenizer,
    stopped_by: Option<String>,
}

impl Decoding {
    /// Decoding after `prompt`, whose last token's logits are `logits`.
    pub fn new(prompt: &[u32], g: &Generation, logits: &[f32]) -> Self {
        Decoding {
            history: prompt.to_vec(),
            tokens: Vec::new(),
            text: Vec::new(),
            emitted: 0,
            logits: logits.to_vec(),
            max_tokens: g.max_tokens,
            stops: g.stops.clone(),
            tokenizer: g.tokenizer.clone(),
            stopped_by: None,
        }
    }

    /// The next token, for the model to read; `None` once `max_tokens` are generated
    /// or a stop string has ended the text.
    pub fn next_token(&mut self, sampler: &mut Sampler) -> Option<u32> {
        if self.tokens.len() >= self.max_tokens || self.stopped_by.is_some() {
            return None;
        }
        let tok = sampler.sample(&self.logits, &self.history);
        self.history.push(tok);
        self.tokens.push(tok);
        self.tokenizer.decode_into(tok, &mut self.text);
        Some(tok)
    }

    /// Takes the logits after the model read the last token, and returns the text
    /// that became ready: whole UTF-8 that cannot be the start of a stop string
    /// (possibly empty). `None` when a stop string ended the text (it is dropped).
    pub fn read(&mut self, logits: &[f32]) -> Option<String> {
        self.logits.copy_from_slice(logits);
        let text = &mut self.text;
        if let Some(s) = self.stops.iter().find(|s| !s.is_empty() && text.ends_with(s.as_bytes())) {
            text.truncate(text.len() - s.len());
            self.stopped_by = Some(s.clone());
            return None;
        }
        let held = self.stops.iter().map(|s| held_back(text, s.as_bytes())).max().unwrap_or(0);
        let ready = &text[self.emitted..text.len() - held.min(text.len() - self.emitted)];
        let n = whole_utf8(ready);
        self.emitted += n;
        Some(String::from_utf8_lossy(&ready[..n]).into_owned())
    }

    /// The text not yet handed out (held back for a stop string that did not come,
    /// or an incomplete UTF-8 sequence), once decoding is over.
    pub fn rest(&mut self) -> Option<String> {
        let rest = &self.text[self.emitted..];
        self.emitted = self.text.len();
        (!rest.is_empty()).then(|| String::from_utf8_lossy(rest).into_owned())
    }

    /// The tokens generated so far (a stop string's included).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The stop string that ended the text, if one did.
    pub fn stopped_by(&self) -> Option<&str> {
        self.stopped_by.as_deref()
    }
}

/// What a generation produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Every generated token (a stop string's included).
    pub tokens: Vec<u32>,
    /// Their text, without the stop string.
    pub text: Vec<u8>,
    /// Counts and timings.
    pub stats: GenerationStats,
}

/// Length of the longest suffix of `out` that is a proper prefix of `stop`.
fn held_back(out: &[u8], stop: &[u8]) -> usize {
    (1..stop.len().min(out.len() + 1)).rev().find(|&k| out.ends_with(&stop[..k])).unwrap_or(0)
}

/// Length of the longest prefix of `bytes` that is whole UTF-8, an invalid
/// sequence counting as whole (it is replaced) and an incomplete one at the end not
/// (it is kept for later).
fn whole_utf8(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(e) => e.valid_up_to() + e.error_len().unwrap_or(1),
    }
}
