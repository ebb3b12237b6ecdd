//! One optimizer step: forward in training mode, backward, clipping, AdamW; and
//! the learning-rate schedule.

use crate::backward::{backward, Gradients};
use crate::error::Result;
use crate::forward::{forward, Activations, Mode};
use crate::optim::{AdamW, AdamWConfig};
use crate::params::Model;
use crate::preset::{Schedule, TrainingConfig};

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

    /// Scales the accumulated gradients by `1/micro_batches`, clips their global
    /// norm to `clip` (0: no clipping; as `clip_grad_norm_`), applies AdamW at
    /// learning rate `lr` and zeroes them. Returns the norm before clipping.
    pub fn apply(&mut self, micro_batches: usize, clip: f64, lr: f64) -> f64 {
        let scale = 1.0 / micro_batches as f32;
        let mut sq = 0.0f64;
        for (_, g) in self.grads.params.tensors_mut() {
            for x in g.iter_mut() {
                *x *= scale;
                sq += (*x as f64) * (*x as f64);
            }
        }
        let norm = sq.sqrt();
        if clip > 0.0 && norm > clip {
            let c = (clip / (norm + 1e-6)) as f32;
            for (_, g) in self.grads.params.tensors_mut() {
                g.iter_mut().for_each(|x| *x *= c);
            }
        }
        self.opt.config.lr = lr;
        self.opt.update(&mut self.model.params, &self.grads.params);
        self.grads.zero();
        norm
    }
}

/// Learning rate at `step` (0-based): linear warmup to `lr`, then the schedule's
/// decay to `min_lr` at `max_steps`.
pub fn learning_rate(cfg: &TrainingConfig, step: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    let span = cfg.max_steps.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
    let shape = match cfg.schedule {
        Schedule::Constant => return cfg.lr,
        Schedule::Linear => 1.0 - progress,
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    };
    cfg.min_lr + (cfg.lr - cfg.min_lr) * shape
}
