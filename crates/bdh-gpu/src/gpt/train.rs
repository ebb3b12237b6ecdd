//! The GPT baseline's training steps on a device: its weights, gradients and AdamW
//! moments live there; each micro-batch runs the forward and the backward, each
//! step the norm, the clipping and AdamW (`crate::optim`).

use bdh::model::gpt::{Dims, Gpt};
use bdh::train::{carry::Carry, AdamW, Collective, Precision, Trainer};
use bdh::{Error, Model, Result};
use cubecl::prelude::Runtime;

use super::{backward, forward, Pass, Scratch};
use crate::backward::ByToken;
use crate::device::Device as Dev;
use crate::optim::{Moments, Slots};
use crate::train::Steps;

/// A GPT trainer's work on a device of runtime `R`.
pub(crate) struct GptTrainer<R: Runtime> {
    dev: Dev<R>,
    model: Gpt, // its config (the host's weights may lag)
    w: Slots,
    g: Slots,
    moments: Moments,
    pass: Pass,
    scratch: Scratch,
    eval: Option<Pass>, // a pass of another shape, to evaluate
}

/// An error unless the device trains `model`: a GPT without dropout (nanoGPT's
/// attention dropout is drawn on the CPU only).
pub(crate) fn trains(model: &Gpt) -> Result<()> {
    if model.config.dropout > 0.0 {
        return Err(Error::Device(format!(
            "a GPT with dropout ({}) trains on the CPU (its attention's dropout is drawn there only): use --device cpu",
            model.config.dropout
        )));
    }
    Ok(())
}

impl<R: Runtime> GptTrainer<R> {
    /// `trainer`'s GPT, moments and step on `dev`, with buffers for its batches.
    pub(crate) fn new(dev: Dev<R>, trainer: &Trainer) -> Result<Self> {
        let Model::Gpt(model) = &trainer.model else { unreachable!("the caller matched a GPT") };
        trains(model)?;
        if trainer.precision == Precision::Bf16 {
            return Err(Error::Device("bf16 training on the GPU is for BDH models; the GPT trains in f32".into()));
        }
        dev.check_runs()?;
        let (b, t) = trainer.batch;
        let c = &model.config;
        let dims = Dims { b, t, d: c.n_embd, h: c.n_head, v: c.vocab_size, l: c.n_layer };
        let weights = (c.param_count() as u64).saturating_mul(16); // weights, gradients, two moments
        let need = super::values(&dims).map(|n| (n as u64).saturating_mul(4).saturating_add(weights));
        if let (Some(free), Some(need)) = (dev.free_bytes(), need) {
            if need > free {
                let what = format!("training the GPT at B={b} T={t} on the GPU ({}): use a smaller batch", dev.name);
                return Err(Error::TooLarge { what, need: Some(need), have: Some(free) });
            }
        }
        let p = trainer.model.params();
        Ok(GptTrainer {
            w: Slots::upload(&dev, p, "the weights")?,
            g: Slots::upload(&dev, &p.zeros_like(), "the gradients")?,
            moments: Moments::upload(&dev, &trainer.opt)?,
            pass: Pass::new(&dev, model, b, t)?,
            scratch: Scratch::new(&dev, dims)?,
            eval: None,
            model: model.clone(),
            dev,
        })
    }
}

impl<R: Runtime> Steps for GptTrainer<R> {
    fn name(&self) -> &str {
        &self.dev.name
    }

    fn accumulate(&mut self, tokens: &[u32], targets: &[u32], _dropout_seed: u64) -> Result<f32> {
        let Dims { b, t, v, .. } = self.pass.dims;
        bdh::model::check_batch(tokens, (b, t), v, "forward")?;
        bdh::model::check_batch(targets, (b, t), v, "targets")?;
        let (ids, target_ids) = (self.dev.upload_ids(tokens)?, self.dev.upload_ids(targets)?);
        let c = &self.model.config;
        forward(&self.dev, c, &self.w, &self.pass, &ids);
        let loss = self.dev.mean_cross_entropy(&self.pass.logits, &target_ids, &self.pass.losses, v)?;
        let by_token = ByToken::new(&self.dev, tokens, v)?;
        backward(&self.dev, c, &self.w, &self.g, &self.pass, &self.scratch, &by_token, &target_ids);
        Ok(loss)
    }

    fn apply(&mut self, micro_batches: usize, clip: f64, lr: f64, collective: &dyn Collective) -> Result<f64> {
        let (w, g) = (self.w.parts(), self.g.parts());
        self.moments.apply(&self.dev, &w, &g, micro_batches, clip, lr, collective)
    }

    fn restart(&mut self) {}

    fn store(&mut self, model: &mut Model, opt: &mut AdamW, _carry: Option<&mut Carry>) -> Result<()> {
        self.w.read_into(&self.dev, model.params_mut())?;
        self.moments.store(&self.dev, opt)
    }

    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        bdh::model::check_batch(tokens, (b, t), self.model.config.vocab_size, "forward")?;
        let ids = self.dev.upload_ids(tokens)?;
        let pass = if (b, t) == (self.pass.dims.b, self.pass.dims.t) {
            &self.pass
        } else {
            if self.eval.as_ref().is_none_or(|p| (p.dims.b, p.dims.t) != (b, t)) {
                self.eval = None;
                self.eval = Some(Pass::new(&self.dev, &self.model, b, t)?);
            }
            self.eval.as_ref().expect("just made")
        };
        forward(&self.dev, &self.model.config, &self.w, pass, &ids);
        self.dev.read(&pass.logits)
    }

    fn vocab(&self) -> usize {
        self.model.config.vocab_size
    }

    fn reserved_bytes(&self) -> u64 {
        self.dev.reserved_bytes()
    }
}
