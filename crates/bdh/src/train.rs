//! One optimizer step: forward in training mode, backward, AdamW.

use crate::backward::{backward, Gradients};
use crate::error::Result;
use crate::forward::{forward, Activations, Mode};
use crate::optim::{AdamW, AdamWConfig};
use crate::params::Model;

/// A model with its optimizer and every buffer a (B, T) step needs, allocated once.
#[derive(Debug)]
pub struct Trainer {
    /// The model being trained.
    pub model: Model,
    /// Optimizer state.
    pub opt: AdamW,
    /// Activations of the last forward.
    pub acts: Activations,
    /// Gradients of the last step.
    pub grads: Gradients,
}

impl Trainer {
    /// Buffers for batches of B sequences of T tokens.
    pub fn new(model: Model, opt: AdamWConfig, b: usize, t: usize) -> Self {
        let acts = Activations::new(&model, b, t);
        let grads = Gradients::new(&model, b, t);
        let opt = AdamW::new(opt, &model.config);
        Trainer { model, opt, acts, grads }
    }

    /// Forward and backward of one micro-batch (B, T); adds to the gradients and
    /// returns the loss. `dropout_seed` draws this micro-batch's dropout masks.
    pub fn accumulate(&mut self, tokens: &[u32], targets: &[u32], dropout_seed: u64) -> Result<f32> {
        forward(&self.model, tokens, &mut self.acts, Mode::Train { seed: dropout_seed })?;
        backward(&self.model, &self.acts, targets, &mut self.grads)
    }

    /// Applies the accumulated gradients with AdamW and zeroes them.
    pub fn apply(&mut self) {
        self.opt.update(&mut self.model.params, &self.grads.params);
        self.grads.zero();
    }
}
