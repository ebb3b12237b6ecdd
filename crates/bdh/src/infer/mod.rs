//! Inference: a prepared model shared by every sequence, a per-sequence [`State`],
//! per-worker [`Scratch`], sampling and streaming generation.
//!
//! ```text
//! let prepared = Prepared::new(model)?;          // once, shared (derived layouts made here)
//! let mut state = prepared.state()?;             // per sequence: save, restore, clone to fork
//! let mut scratch = prepared.scratch(false);     // per worker
//! prepared.prefill(&mut state, &mut scratch, &prompt, &NO_EDITS)?;
//! prepared.step(&mut state, &mut scratch, token, &NO_EDITS)?;
//! prepared.step_batch(&mut [&mut a, &mut b], &mut batch_scratch, &[ta, tb])?; // BDH: B streams at once
//! ```

pub mod generate;
pub mod sampler;

pub use generate::{generate, Decoding, Generation, GenerationStats, Output};
pub use sampler::{argmax, Sampler, SamplingConfig};

use crate::error::Error;
use crate::error::Result;
pub use crate::model::bdh::BatchScratch;
use crate::model::bdh::{self, Edits};
use crate::model::gpt;
use crate::model::{Model, ModelConfig};

/// A model ready for inference, immutable, shared by all its sequences.
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

impl Prepared {
    /// Prepares `model` for inference.
    pub fn new(model: Model) -> Result<Self> {
        match model {
            Model::Bdh(m) => bdh::Prepared::new(m).map(Prepared::Bdh),
            Model::Gpt(m) => gpt::Prepared::new(m).map(Prepared::Gpt),
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

    /// Bytes one state of this model occupies (constant for a model), computed from
    /// the config without making a state.
    pub fn state_bytes(&self) -> usize {
        match self {
            Prepared::Bdh(p) => p.state_bytes(),
            Prepared::Gpt(p) => p.state_bytes(),
        }
    }

    /// Scratch for one worker; `dense` touches every row of the state and weights
    /// instead of only those of active neurons (a baseline for the sparse step).
    pub fn scratch(&self, dense: bool) -> Scratch {
        match self {
            Prepared::Bdh(p) if dense => Scratch::Bdh(Box::new(p.scratch().dense())),
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

    /// Consumes one token and returns the logits for the next.
    pub fn step<'s>(
        &self,
        state: &mut State,
        scratch: &'s mut Scratch,
        token: u32,
        edits: &Edits,
    ) -> Result<&'s [f32]> {
        match (self, state, scratch) {
            (Prepared::Bdh(p), State::Bdh(st), Scratch::Bdh(sc)) => p.step(st, sc, token, edits),
            (Prepared::Gpt(p), State::Gpt(st), Scratch::Gpt(sc)) => {
                no_edits(edits)?;
                p.step(st, sc, token)
            }
            _ => Err(other_family()),
        }
    }

    /// [`Prepared::step`] of many streams at once, logits (B, V): see
    /// [`bdh::Prepared::step_batch`]. A GPT is refused (its KV caches differ in length
    /// from stream to stream).
    pub fn step_batch<'s>(
        &self,
        states: &mut [&mut State],
        scratch: &'s mut BatchScratch,
        tokens: &[u32],
    ) -> Result<&'s [f32]> {
        let Prepared::Bdh(p) = self else {
            return Err(Error::Input("batched steps are for BDH models; a GPT's streams step one at a time".into()));
        };
        let mut rows = Vec::with_capacity(states.len());
        for st in states.iter_mut() {
            match st {
                State::Bdh(s) => rows.push(s),
                State::Gpt(_) => return Err(other_family()),
            }
        }
        p.step_batch(&mut rows, scratch, tokens)
    }
}

impl State {
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
    Error::Input("the state or scratch belongs to a model of another family".into())
}
