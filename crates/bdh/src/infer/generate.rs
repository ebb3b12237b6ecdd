//! Streaming generation: prefill the prompt in chunks, then one recurrent step per
//! token in constant memory, continuing whatever the state has already read.

use std::ops::ControlFlow;
use std::time::Instant;

use super::{Prepared, Sampler, Scratch, State};
use crate::data::Tokenizer;
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
    mut emit: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Output> {
    if prompt.is_empty() {
        return Err(Error::Input("the prompt is empty".into()));
    }
    if let Some(context) = prepared.config().max_context() {
        if prompt.len() > context {
            return Err(Error::Input(format!(
                "the prompt's {} tokens do not fit this model's context of {context} (its block_size): \
                 give at most {context} (generation past it slides the window)",
                prompt.len()
            )));
        }
    }
    let t0 = Instant::now();
    let mut logits = prepared.prefill(state, scratch, prompt, &g.edits)?.to_vec();
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut history = prompt.to_vec();
    let (mut tokens, mut text): (Vec<u32>, Vec<u8>) = (Vec::new(), Vec::new());
    let (mut emitted, mut stopped_by, mut cancelled) = (0, None, false);
    while tokens.len() < g.max_tokens {
        let tok = sampler.sample(&logits, &history);
        history.push(tok);
        tokens.push(tok);
        g.tokenizer.decode_into(tok, &mut text);
        logits.copy_from_slice(prepared.step(state, scratch, tok, &g.edits)?);
        if let Some(s) = g.stops.iter().find(|s| !s.is_empty() && text.ends_with(s.as_bytes())) {
            text.truncate(text.len() - s.len());
            stopped_by = Some(s.clone());
            break;
        }
        let held = g.stops.iter().map(|s| held_back(&text, s.as_bytes())).max().unwrap_or(0);
        let ready = &text[emitted..text.len() - held.min(text.len() - emitted)];
        let (used, flow) = emit_utf8(ready, &mut emit);
        emitted += used;
        if flow.is_break() {
            cancelled = true;
            break;
        }
    }
    if emitted < text.len() && !cancelled {
        let _ = emit(&String::from_utf8_lossy(&text[emitted..]));
    }
    let stats = GenerationStats {
        prompt_tokens: prompt.len(),
        generated: tokens.len(),
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
        state_bytes: state.bytes(),
        stopped_by,
        cancelled,
    };
    Ok(Output { tokens, text, stats })
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

/// Emits the longest prefix of `bytes` that is whole UTF-8 (replacing invalid
/// sequences, keeping an incomplete one at the end for later); returns the bytes
/// used and what `emit` said.
fn emit_utf8(bytes: &[u8], emit: &mut impl FnMut(&str) -> ControlFlow<()>) -> (usize, ControlFlow<()>) {
    let n = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(e) => e.valid_up_to() + e.error_len().unwrap_or(1),
    };
    if n == 0 {
        return (0, ControlFlow::Continue(()));
    }
    (n, emit(&String::from_utf8_lossy(&bytes[..n])))
}
