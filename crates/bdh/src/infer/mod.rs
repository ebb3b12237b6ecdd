//! Inference: a prepared model shared by every sequence, a per-sequence [`State`],
//! per-worker [`Scratch`], sampling and streaming generation.
//!
//! ```text
//! let prepared = Prepared::new(model)?;          // once, shared (derived layouts made here)
//! let mut state = prepared.state()?;             // per sequence: save, restore, clone to fork
//! let mut scratch = prepared.scratch();           // per worker
//! prepared.prefill(&mut state, &mut scratch, &prompt, &NO_EDITS)?;
//! prepared.step(&mut [&mut state], &mut scratch, &[token], &NO_EDITS)?;   // one stream
//! prepared.step(&mut [&mut a, &mut b], &mut scratch, &[ta, tb], &NO_EDITS)?; // BDH: B streams at once
//! ```

pub mod generate;
pub mod sampler;

pub use generate::{generate, generate_with, Decoding, Generation, GenerationStats, Output};
pub use sampler::{argmax, Sampler, SamplingConfig};

/// Largest prompt or text file read for a model to run on (64 MiB): a longer text
/// is a corpus, which `eval` scores in windows, not one prompt.
pub const MAX_PROMPT_BYTES: u64 = 64 << 20;

use crate::error::Error;
use crate::error::Result;
use crate::model::bdh::{self, Edits, StateDtype};
use crate::model::gpt;
use crate::model::{Model, ModelConfig};

/// A model ready for inference, immutable, shared by all its sequences.
// Made once per model and shared, never moved in a loop: boxing a variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum Prepared {
    /// BDH.
    Bdh(bdh::Prepared),
    /// GPT.
    Gpt(gpt::Prepared),
}

/// Everything one sequence remembers; plain data of a size fixed by the model.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// BDH's: the position and ρ of every layer.
    Bdh(bdh::State),
    /// GPT's: the window of tokens and its KV cache.
    Gpt(gpt::State),
}

/// One worker's buffers.
#[derive(Debug)]
pub enum Scratch {
    /// BDH's (each family's boxed: they hold a prefill chunk's activations).
    Bdh(Box<bdh::Scratch>),
    /// GPT's.
    Gpt(Box<gpt::Scratch>),
}

impl Scratch {
    /// Scratch that touches every row of a BDH state and its weights instead of only
    /// those of active neurons: the same numbers, a baseline for the sparse step (a
    /// GPT's is unchanged).
    pub fn dense(self) -> Self {
        match self {
            Scratch::Bdh(s) => Scratch::Bdh(Box::new(s.dense())),
            gpt => gpt,
        }
    }
}

impl Prepared {
    /// Prepares `model` for inference.
    pub fn new(model: Model) -> Result<Self> {
        match model {
            Model::Bdh(m) => bdh::Prepared::new(m).map(Prepared::Bdh),
            Model::Gpt(m) => gpt::Prepared::new(m).map(Prepared::Gpt),
        }
    }

    /// The same model, making states whose ρ is stored as `dtype` (BDH's; a GPT,
    /// whose memory is its KV cache, takes only f32).
    pub fn with_state_dtype(self, dtype: StateDtype) -> Result<Self> {
        match (self, dtype) {
            (prepared, StateDtype::F32) => Ok(prepared),
            (Prepared::Bdh(p), dtype) => Ok(Prepared::Bdh(p.with_state_dtype(dtype)?)),
            (Prepared::Gpt(_), dtype) => Err(gpt_dtype(dtype)),
        }
    }

    /// How the states it makes store ρ (f32 for a GPT's).
    pub fn state_dtype(&self) -> StateDtype {
        match self {
            Prepared::Bdh(p) => p.state_dtype(),
            Prepared::Gpt(_) => StateDtype::F32,
        }
    }

    /// The model's config.
    pub fn config(&self) -> ModelConfig {
        match self {
            Prepared::Bdh(p) => ModelConfig::Bdh(p.model().config.clone()),
            Prepared::Gpt(p) => ModelConfig::Gpt(p.model().config.clone()),
        }
    }

    /// The empty state of a new sequence.
    pub fn state(&self) -> Result<State> {
        match self {
            Prepared::Bdh(p) => p.state().map(State::Bdh),
            Prepared::Gpt(p) => p.state().map(State::Gpt),
        }
    }

    /// The empty state of a new sequence with ρ stored as `dtype` (see
    /// [`Prepared::with_state_dtype`], which refuses the same).
    pub fn state_of(&self, dtype: StateDtype) -> Result<State> {
        match (self, dtype) {
            (Prepared::Bdh(p), dtype) => p.state_of(dtype).map(State::Bdh),
            (Prepared::Gpt(p), StateDtype::F32) => p.state().map(State::Gpt),
            (Prepared::Gpt(_), dtype) => Err(gpt_dtype(dtype)),
        }
    }

    /// Bytes one state of this model occupies (constant for a model), computed from
    /// the config without making a state.
    pub fn state_bytes(&self) -> usize {
        match self {
            Prepared::Bdh(p) => p.state_bytes(),
            Prepared::Gpt(p) => p.state_bytes(),
        }
    }

    /// Scratch for one worker.
    pub fn scratch(&self) -> Scratch {
        match self {
            Prepared::Bdh(p) => Scratch::Bdh(Box::new(p.scratch())),
            Prepared::Gpt(p) => Scratch::Gpt(Box::new(p.scratch())),
        }
    }

    /// Consumes `tokens` after what `state` has seen (in chunks of bounded memory)
    /// and returns the logits after the last one.
    pub fn prefill<'s>(
        &self,
        state: &mut State,
        scratch: &'s mut Scratch,
        tokens: &[u32],
        edits: &Edits,
    ) -> Result<&'s [f32]> {
        match (self, state, scratch) {
            (Prepared::Bdh(p), State::Bdh(st), Scratch::Bdh(sc)) => p.prefill(st, sc, tokens, edits),
            (Prepared::Gpt(p), State::Gpt(st), Scratch::Gpt(sc)) => {
                no_edits(edits)?;
                p.prefill(st, sc, tokens)
            }
            _ => Err(other_family()),
        }
    }

    /// Checks, for one stream, what [`Prepared::step`] checks of every stream: that
    /// `state` is one of this model's, that `token` is in its vocabulary and that
    /// the state may read one more position. A caller stepping many streams
    /// together checks each first, so that one stream at fault leaves alone.
    pub fn check_step(&self, state: &State, token: u32) -> Result<()> {
        crate::model::check_tokens(&[token], self.config().vocab_size(), "step")?;
        match (self, state) {
            (Prepared::Bdh(p), State::Bdh(s)) => {
                s.check(&p.model().config)?;
                crate::model::check_positions(s.pos, 1, "step")
            }
            // (a GPT reads a sliding window: its positions never pass its block)
            (Prepared::Gpt(_), State::Gpt(_)) => Ok(()),
            _ => Err(other_family()),
        }
    }

    /// Consumes one token per stream (`tokens[b]` after what `states[b]` has read)
    /// and returns the logits for the next token of every stream, (B, V); one stream
    /// is a one-element call. BDH steps 0…B streams together (see
    /// [`bdh::Prepared::step`]); a GPT takes exactly one stream per call (its KV
    /// caches differ in length from stream to stream), anything else is refused.
    pub fn step<'s>(
        &self,
        states: &mut [&mut State],
        scratch: &'s mut Scratch,
        tokens: &[u32],
        edits: &Edits,
    ) -> Result<&'s [f32]> {
        match (self, scratch) {
            (Prepared::Bdh(p), Scratch::Bdh(sc)) => {
                let mut rows = Vec::with_capacity(states.len());
                for st in states.iter_mut() {
                    match st {
                        State::Bdh(s) => rows.push(s),
                        State::Gpt(_) => return Err(other_family()),
                    }
                }
                p.step(&mut rows, sc, tokens, edits)
            }
            (Prepared::Gpt(p), Scratch::Gpt(sc)) => {
                no_edits(edits)?;
                match (states, tokens) {
                    ([State::Gpt(st)], &[token]) => p.step(st, sc, token),
                    ([_], [_]) => Err(other_family()),
                    (states, tokens) if states.len() == 1 || tokens.len() == 1 => {
                        Err(Error::Input(format!("step: {} states for {} tokens", states.len(), tokens.len())))
                    }
                    _ => {
                        Err(Error::Input("a GPT's streams step one at a time; batched steps are for BDH models".into()))
                    }
                }
            }
            _ => Err(other_family()),
        }
    }
}

impl State {
    /// How ρ is stored (f32 for a GPT's KV cache).
    pub fn dtype(&self) -> StateDtype {
        match self {
            State::Bdh(s) => s.rho.dtype(),
            State::Gpt(_) => StateDtype::F32,
        }
    }

    /// Tokens consumed so far.
    pub fn pos(&self) -> usize {
        match self {
            State::Bdh(s) => s.pos,
            State::Gpt(s) => s.pos,
        }
    }

    /// Bytes the state occupies (constant for a model).
    pub fn bytes(&self) -> usize {
        match self {
            State::Bdh(s) => s.bytes(),
            State::Gpt(s) => s.bytes(),
        }
    }
}

/// Empty states made by this process so far.
static STATES_MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts one empty state made (each family's constructor calls it).
pub(crate) fn count_state() {
    STATES_MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// How many empty states (of any family) this process has made: a cheap count that
/// lets a caller check that an operation made none (a server listing its sessions,
/// say), where timing it would not tell.
pub fn states_made() -> usize {
    STATES_MADE.load(std::sync::atomic::Ordering::Relaxed)
}

/// Interventions act on BDH's neurons and synapses.
fn no_edits(edits: &Edits) -> Result<()> {
    if edits.is_empty() {
        Ok(())
    } else {
        Err(Error::Input("interventions (edits) are for BDH models; this is a GPT".into()))
    }
}

fn other_family() -> Error {
    Error::Mismatch("the state or scratch belongs to a model of another family".into())
}

/// The refusal of a 16-bit state for a GPT.
fn gpt_dtype(dtype: StateDtype) -> Error {
    Error::Input(format!("a {dtype} synapse state is for BDH models: a GPT's memory is its KV cache, kept in f32"))
}
