//! What runs a model: this crate's CPU engine, or a device backend (the `bdh-gpu`
//! crate). Evaluation, verification and generation take these two traits, so they
//! run unchanged on either.
//!
//! - [`Forward`]: the parallel forward of a (B, T) batch read from empty states —
//!   its logits, or its summed loss (which a device computes without sending the
//!   logits back).
//! - [`Reader`]: one stream read a token at a time, as generation reads it.
//! - [`Device`]: both, for a model held on a device.
//! - [`Streams`]: many streams on a device, stepped together, as a server runs them.
//! - [`Traced`]: the parallel forward that hands back every layer's activations,
//!   with edits applied, as the microscope reads them.

use crate::error::Result;
use crate::infer::{Prepared, Scratch, State};
use crate::model::bdh::{Activations as BdhActivations, Edits, Pass as BdhPass};
use crate::model::loss::cross_entropy;
use crate::model::{forward, Activations, Mode, Model};
use crate::params::Params;

/// A model's parallel forward, eval mode, from empty states.
pub trait Forward {
    /// Where it runs, e.g. `CPU` or `GPU (CUDA: NVIDIA H200)`.
    fn device(&self) -> String;
    /// Logits (B, T, V) of `tokens` (B, T).
    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>>;
    /// The cross-entropy of the logits of `tokens` (B, T) against `targets` (B, T),
    /// summed over the B·T positions, in nats.
    fn loss_sum(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f64>;
}

/// One stream of text read by a model, a token at a time after a prompt.
pub trait Reader {
    /// Reads `tokens` (one or more) after what the stream has read; the logits (V)
    /// after the last.
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]>;
    /// Reads one token; the logits (V) after it.
    fn step(&mut self, token: u32) -> Result<&[f32]>;
    /// Tokens read so far.
    fn position(&self) -> usize;
    /// Bytes of the state the stream carries.
    fn state_bytes(&self) -> usize;
    /// The state reached, in host memory: to save, fork, or go on elsewhere.
    fn state(&self) -> Result<State>;
}

/// A device that runs a model: its forward, and streams on it.
pub trait Device: Forward {
    /// Its forward (the same object, as the trait it extends).
    fn as_forward(&mut self) -> &mut dyn Forward;
    /// Bytes this process holds on the device now (its buffers and their pools).
    fn held_bytes(&self) -> u64;
    /// A stream on the device continuing `state` (its position and ρ); an empty
    /// state starts a new text.
    fn stream(&self, state: &State) -> Result<Box<dyn Reader + '_>>;
    /// Its forward that hands back every layer's activations (the microscope's).
    fn traced(&mut self) -> &mut dyn Traced;
    /// The mean loss of `tokens` (B, T) against `targets` and the gradient of every
    /// weight, eval mode, laid out as the model's parameters.
    fn gradients(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<(f32, Params)>;
}

/// Many streams held on a device, each in a slot from [`Streams::open`] to
/// [`Streams::close`], read together: what a server decodes with. The host keeps
/// only tokens and logits; a state crosses over when its stream starts and ends.
pub trait Streams: Send {
    /// Where they run, e.g. `GPU (CUDA: NVIDIA H200)`.
    fn device(&self) -> String;
    /// Streams it holds at most.
    fn slots(&self) -> usize;
    /// Prompt tokens a stream reads per parallel pass.
    fn chunk(&self) -> usize;
    /// A stream continuing `state` (an empty one starts a new text): its slot.
    fn open(&mut self, state: &State) -> Result<usize>;
    /// Tokens the stream in `slot` has read.
    fn position(&self, slot: usize) -> Result<usize>;
    /// Checks what [`Streams::step`] checks of one stream, so that a caller
    /// stepping many can leave out one at fault.
    fn check_step(&self, slot: usize, token: u32) -> Result<()>;
    /// Reads `tokens` (one or more) after what the stream in `slot` has read; the
    /// logits (V) after the last.
    fn prefill(&mut self, slot: usize, tokens: &[u32]) -> Result<&[f32]>;
    /// Reads `tokens[i]` in the stream of `slots[i]`, all at once; the logits (B, V).
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<&[f32]>;
    /// The state the stream in `slot` reached, in host memory; the slot is free again.
    fn close(&mut self, slot: usize) -> Result<State>;
    /// Bytes this process holds on the device now.
    fn held_bytes(&self) -> u64;
}

/// The parallel forward of the BDH model a device holds, filling host
/// [`BdhActivations`] (what their accessors read: every layer's x, R(x), scores, y
/// and residual stream, and the logits), edits applied and a carried state read
/// and written as [`crate::model::bdh::forward`] does in eval mode: what the
/// microscope runs on a device.
pub trait Traced {
    /// Where it runs, e.g. `GPU (CUDA: NVIDIA H200)`.
    fn device(&self) -> String;
    /// The forward of `tokens` into `acts` (made for the device's model; eval mode only).
    fn forward(&mut self, tokens: &[u32], acts: &mut BdhActivations, pass: BdhPass<'_>) -> Result<()>;
}

/// The CPU engine's forward: `model` with buffers kept between batches of one shape.
pub struct Cpu<'m> {
    model: &'m Model,
    acts: Option<Activations>,
}

impl<'m> Cpu<'m> {
    /// The forward of `model` on the CPU.
    pub fn new(model: &'m Model) -> Self {
        Cpu { model, acts: None }
    }

    fn run(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<&Activations> {
        let fits = self.acts.as_ref().is_some_and(|a| a.shape().0 == b && a.shape().1 == t);
        if !fits {
            drop(self.acts.take()); // free the old buffers before the new ones
            self.acts = Some(Activations::new(self.model, b, t)?);
        }
        let acts = self.acts.as_mut().expect("just set");
        forward(self.model, tokens, acts, Mode::Eval)?;
        Ok(acts)
    }
}

impl Forward for Cpu<'_> {
    fn device(&self) -> String {
        "CPU".into()
    }

    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        Ok(self.run(tokens, b, t)?.logits().to_vec())
    }

    fn loss_sum(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f64> {
        let v = self.model.config().vocab_size();
        let acts = self.run(tokens, b, t)?;
        Ok(cross_entropy(acts.logits(), targets, v) as f64 * targets.len() as f64)
    }
}

/// A stream on the CPU engine: a prepared model, the stream's state, a worker's
/// scratch and the interventions to apply.
pub struct CpuReader<'a> {
    /// The model.
    pub prepared: &'a Prepared,
    /// The stream's state, advanced by every read.
    pub state: &'a mut State,
    /// Buffers.
    pub scratch: &'a mut Scratch,
    /// Interventions while reading.
    pub edits: &'a Edits,
}

impl Reader for CpuReader<'_> {
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.prepared.prefill(self.state, self.scratch, tokens, self.edits)
    }

    fn step(&mut self, token: u32) -> Result<&[f32]> {
        self.prepared.step(&mut [&mut *self.state], self.scratch, &[token], self.edits)
    }

    fn position(&self) -> usize {
        self.state.pos()
    }

    fn state_bytes(&self) -> usize {
        self.state.bytes()
    }

    fn state(&self) -> Result<State> {
        Ok(self.state.clone())
    }
}
