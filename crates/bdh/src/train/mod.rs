//! Training: one optimizer step ([`Trainer`]), the optimizer, the learning-rate
//! schedule, gradient averaging across processes (data parallelism: [`parallel`],
//! and `Mpi` with the `mpi` feature), run configs, how a run is set up from what a
//! user asks for ([`setup`]) and whole resumable runs in a run directory.
//!
//! The trainer knows nothing of the model family: it calls [`crate::model::forward`]
//! and [`crate::model::backward`], and clips, averages and updates the flat
//! parameter buffer.

pub mod accelerator;
pub mod carry;
pub mod collective;
pub mod compare;
pub mod config;
pub mod hlop;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod optimizer;
pub mod parallel;
pub mod rewire;
pub mod run;
pub mod schedule;
pub mod setup;

pub use accelerator::Accelerator;
pub use collective::{Collective, Single};
pub use config::{Precision, RunConfig, TrainingConfig};
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
pub use optimizer::{AdamW, AdamWConfig};
pub use schedule::{learning_rate, Schedule};

use crate::error::Result;
use crate::model::{backward, forward, Activations, Gradients, Mode, Model};

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
    /// The synapse state carried from batch to batch, if the run carries one.
    pub carry: Option<carry::Carry>,
    /// The device the steps run on, if not the CPU: it holds the weights, moments
    /// and carried state, which [`Trainer::sync`] copies back here.
    pub device: Option<Box<dyn Accelerator>>,
    /// Whether the device has taken steps the host's copies do not have yet.
    stale: bool,
    /// (B, T) of the batches it trains on.
    pub batch: (usize, usize),
    /// The inputs of the products (bf16 on a device only).
    pub precision: Precision,
    /// An earlier model's input subspaces, off which every gradient is projected
    /// (`training.continual = "hlop"`).
    pub projection: Option<hlop::Subspaces>,
    /// How a sparse connectivity rewires (`training.rewire`).
    pub rewire: Option<rewire::Rewire>,
}

impl Trainer {
    /// Buffers for batches of B sequences of T tokens.
    pub fn new(model: Model, opt: AdamWConfig, b: usize, t: usize) -> Result<Self> {
        Self::with_buffers(model, opt, (b, t), (b, t))
    }

    /// A trainer for batches of B sequences of T tokens whose steps run on a device:
    /// the host keeps the weights and moments, and no buffers for a step.
    pub fn lean(model: Model, opt: AdamWConfig, b: usize, t: usize) -> Result<Self> {
        Self::with_buffers(model, opt, (b, t), (1, 1))
    }

    fn with_buffers(model: Model, opt: AdamWConfig, batch: (usize, usize), (b, t): (usize, usize)) -> Result<Self> {
        if batch.0 == 0 || batch.1 == 0 {
            return Err(crate::Error::Input(format!("empty batch (B={}, T={})", batch.0, batch.1)));
        }
        let acts = Activations::new(&model, b, t)?;
        let grads = Gradients::new(&model, b, t)?;
        let moments = model.params().data().len().checked_mul(2);
        crate::memory::ensure_fits(crate::memory::f32_bytes(moments), "AdamW's two moments of every parameter")?;
        let opt = AdamW::with_decay(opt, model.params(), model.weight_decay_mask());
        Ok(Trainer {
            model,
            opt,
            acts,
            grads,
            carry: None,
            device: None,
            stale: false,
            batch,
            precision: Precision::F32,
            projection: None,
            rewire: None,
        })
    }

    /// Forward and backward of one micro-batch (B, T); adds to the gradients and
    /// returns the loss. `dropout_seed` draws this micro-batch's dropout masks.
    /// With a carried state, the batch continues it (and the state moves on).
    pub fn accumulate(&mut self, tokens: &[u32], targets: &[u32], dropout_seed: u64) -> Result<f32> {
        if let Some(device) = &mut self.device {
            self.stale = true;
            return device.accumulate(tokens, targets, dropout_seed);
        }
        let mode = Mode::Train { seed: dropout_seed };
        match (&mut self.carry, &self.model, &mut self.acts) {
            (None, ..) => forward(&self.model, tokens, &mut self.acts, mode)?,
            (Some(c), Model::Bdh(m), Activations::Bdh(a)) => {
                let pass = crate::model::bdh::Pass { mode, state: Some(&mut c.state), ..Default::default() };
                crate::model::bdh::forward(m, tokens, a, pass)?;
                if c.detach {
                    // no gradient through the carried state: its read, its traces, its queue
                    a.rho0.clear();
                    a.keys0.clear();
                    a.queue0.clear();
                }
            }
            (Some(_), ..) => return Err(crate::Error::Config("a carried state needs a BDH model".into())),
        }
        backward(&self.model, &self.acts, targets, &mut self.grads)
    }

    /// Scales the accumulated gradients by `1/micro_batches`, averages them over the
    /// processes of `collective`, clips their global norm to `clip` (0: no clipping;
    /// as `clip_grad_norm_`), applies AdamW at learning rate `lr` and zeroes them.
    /// Returns the norm before clipping.
    pub fn apply(&mut self, micro_batches: usize, clip: f64, lr: f64, collective: &dyn Collective) -> Result<f64> {
        if let Some(device) = &mut self.device {
            self.stale = true;
            return device.apply(micro_batches, clip, lr, collective);
        }
        let scale = 1.0 / micro_batches as f32;
        let g = self.grads.params.data_mut();
        g.iter_mut().for_each(|x| *x *= scale);
        collective.all_reduce_mean(g)?;
        if let Model::Bdh(m) = &mut self.model {
            // a homeostatic threshold's rule, from the firing it left in the gradients
            crate::model::bdh::threshold::homeostasis(&m.config, &mut m.params, &mut self.grads.params);
            // a sparse connectivity's dropped weights get no gradient
            crate::model::bdh::connectivity::mask_grads(&m.params, &mut self.grads.params);
        }
        if let Some(spaces) = &self.projection {
            // continual learning: off the earlier model's input subspaces
            spaces.project(&mut self.grads.params);
        }
        let g = self.grads.params.data_mut();
        let norm = g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        if clip > 0.0 && norm > clip {
            let c = (clip / (norm + 1e-6)) as f32;
            g.iter_mut().for_each(|x| *x *= c);
        }
        self.opt.config.lr = lr;
        let before = self.projection.as_ref().map(|p| p.weights_of(self.model.params()));
        self.opt.update(self.model.params_mut(), &self.grads.params);
        if let (Some(spaces), Some(before)) = (&self.projection, &before) {
            spaces.project_step(self.model.params_mut(), before);
        }
        if let Model::Bdh(m) = &mut self.model {
            // (and take no step: AdamW's moments of a weight just dropped may not be 0)
            crate::model::bdh::connectivity::apply(&mut m.params);
            if let (Some(r), Activations::Bdh(acts)) = (self.rewire, &self.acts) {
                if self.opt.step.is_multiple_of(r.every) {
                    let reduce = |buf: &mut [f32]| collective.all_reduce_mean(buf);
                    rewire::rewire(m, acts, &mut self.opt, r.fraction, &reduce)?;
                }
            }
        }
        self.grads.zero();
        Ok(norm)
    }

    /// Brings the host's model, moments and carried state up to the device's steps
    /// (nothing to do on the CPU).
    pub fn sync(&mut self) -> Result<()> {
        if let (Some(device), true) = (&mut self.device, self.stale) {
            device.store(&mut self.model, &mut self.opt, self.carry.as_mut())?;
            self.stale = false;
        }
        Ok(())
    }

    /// Empties the carried state, wherever it is.
    pub fn restart_carry(&mut self) -> Result<()> {
        if let Some(carry) = &mut self.carry {
            carry.restart();
        }
        match &mut self.device {
            Some(device) => device.restart(),
            None => Ok(()),
        }
    }
}
