//! Training on a device other than the CPU (the `bdh-gpu` crate): the trainer hands
//! its steps to an [`Accelerator`], which holds the weights, the gradients, the
//! optimizer's moments and a carried state on the device, and writes them back into
//! the trainer whenever the run reads them there — to evaluate, sample or save — so
//! that checkpoints are the same files whichever device wrote them, and a run goes
//! on on the other.

use super::carry::Carry;
use super::{AdamW, Collective, Trainer};
use crate::engine::Forward;
use crate::error::Result;
use crate::model::Model;

/// A trainer's steps on a device.
pub trait Accelerator {
    /// Where it runs, e.g. `GPU (CUDA: NVIDIA H200)`.
    fn device(&self) -> String;
    /// [`Trainer::accumulate`]: forward and backward of one micro-batch, dropout
    /// drawn from `dropout_seed` as the CPU draws it, a carried state read and moved
    /// on; adds to the gradients and returns the loss.
    fn accumulate(&mut self, tokens: &[u32], targets: &[u32], dropout_seed: u64) -> Result<f32>;
    /// [`Trainer::apply`]: the mean over `micro_batches`, averaged over `collective`,
    /// clipped to `clip` (0: not), one AdamW step at `lr`; the norm before clipping.
    fn apply(&mut self, micro_batches: usize, clip: f64, lr: f64, collective: &dyn Collective) -> Result<f64>;
    /// Empties the carried state (its streams start over).
    fn restart(&mut self) -> Result<()>;
    /// Writes the weights, the optimizer's moments and step, and the carried state
    /// into the host's copies.
    fn store(&mut self, model: &mut Model, opt: &mut AdamW, carry: Option<&mut Carry>) -> Result<()>;
    /// The forward of the weights being trained, on the device (to evaluate).
    fn forward(&mut self) -> &mut dyn Forward;
    /// Bytes this process holds on the device now (its buffers and their pools).
    fn held_bytes(&self) -> u64;
}

impl std::fmt::Debug for dyn Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Accelerator({})", self.device())
    }
}

/// Puts a trainer's work on a device: called with the trainer as a run starts or
/// resumes (its model, moments, step and carried state are where the device starts).
pub type Open<'a> = dyn Fn(&Trainer) -> Result<Box<dyn Accelerator>> + 'a;
