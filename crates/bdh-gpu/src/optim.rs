//! AdamW on a device for any model's tensors, a buffer per tensor of its parameter
//! buffer: the mean over micro-batches, the norm and the clipping, and the update —
//! the CPU optimizer's arithmetic in its order (`bdh::train::AdamW`).

use bdh::params::Params;
use bdh::train::{AdamW, AdamWConfig, Collective};
use bdh::Result;
use cubecl::prelude::Runtime;

use crate::device::{AdamStep, Buf, Device};

/// One buffer per tensor of a parameter buffer, in its slots' order (weights, their
/// gradients, or AdamW's moments).
pub struct Slots(pub Vec<Buf>);

impl Slots {
    /// `params`, a tensor a buffer.
    pub fn upload<R: Runtime>(dev: &Device<R>, params: &Params, what: &str) -> Result<Self> {
        let data = params.data();
        Ok(Slots(params.slots().iter().map(|s| dev.upload(&data[s.range.clone()], what)).collect::<Result<_>>()?))
    }

    /// The buffers, in the slots' order.
    pub fn parts(&self) -> Vec<&Buf> {
        self.0.iter().collect()
    }

    /// Reads every tensor back into `params` (laid out alike).
    pub fn read_into<R: Runtime>(&self, dev: &Device<R>, params: &mut Params) -> Result<()> {
        read_into(dev, &self.parts(), params)
    }
}

/// Reads `bufs`, a tensor each in the slots' order, back into `params`.
pub fn read_into<R: Runtime>(dev: &Device<R>, bufs: &[&Buf], params: &mut Params) -> Result<()> {
    let slots = params.slots().to_vec();
    for (slot, buf) in slots.iter().zip(bufs) {
        let values = dev.read(buf)?;
        params.data_mut()[slot.range.clone()].copy_from_slice(&values);
    }
    Ok(())
}

/// AdamW's state on a device.
pub struct Moments {
    m: Slots,
    v: Slots,
    decays: Vec<bool>, // per tensor: whether weight decay applies
    config: AdamWConfig,
    step: u64, // steps taken
}

impl Moments {
    /// `opt`'s moments and step, uploaded.
    pub fn upload<R: Runtime>(dev: &Device<R>, opt: &AdamW) -> Result<Self> {
        Ok(Moments {
            m: Slots::upload(dev, &opt.m, "AdamW's moments")?,
            v: Slots::upload(dev, &opt.v, "AdamW's moments")?,
            decays: opt.decay.clone(),
            config: opt.config.clone(),
            step: opt.step,
        })
    }

    /// The gradients `g` (summed over `micro_batches`) averaged, averaged over
    /// `collective`, clipped to `clip` (0: not), and one AdamW step of the weights
    /// `w` at `lr`, which zeroes `g`: the norm before clipping.
    #[allow(clippy::too_many_arguments)]
    pub fn apply<R: Runtime>(
        &mut self,
        dev: &Device<R>,
        w: &[&Buf],
        g: &[&Buf],
        micro_batches: usize,
        clip: f64,
        lr: f64,
        collective: &dyn Collective,
    ) -> Result<f64> {
        let mut scale = 1.0 / micro_batches as f32;
        if collective.size() > 1 {
            // The processes average on the host: the gradients go there and back.
            let mut all = Vec::new();
            for g in g {
                all.extend(dev.read(g)?);
            }
            all.iter_mut().for_each(|x| *x *= scale);
            collective.all_reduce_mean(&mut all)?;
            let mut rest = &all[..];
            for g in g {
                let (mine, after) = rest.split_at(g.len());
                dev.write(g, mine)?;
                rest = after;
            }
            scale = 1.0;
        }
        let norm = dev.sum_squares(g, scale)?.sqrt();
        let clip = if clip > 0.0 && norm > clip { (clip / (norm + 1e-6)) as f32 } else { 1.0 };
        self.step += 1;
        // torch forms every scalar in Python floats (f64), then applies it in f32.
        let AdamWConfig { betas: (b1, b2), eps, weight_decay, .. } = self.config;
        let t = self.step as i32;
        let s = AdamStep {
            scale,
            clip,
            decay: (1.0 - lr * weight_decay) as f32,
            w1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            w2: (1.0 - b2) as f32,
            bc2: (1.0 - b2.powi(t)).sqrt() as f32,
            eps: eps as f32,
            step: (lr / (1.0 - b1.powi(t))) as f32,
        };
        let parts = w.iter().zip(g).zip(self.m.parts()).zip(self.v.parts());
        for ((((p, g), m), v), &decays) in parts.zip(&self.decays) {
            dev.adamw(p, g, m, v, AdamStep { decay: if decays { s.decay } else { 1.0 }, ..s });
        }
        Ok(norm)
    }

    /// The moments and the step into `opt`.
    pub fn store<R: Runtime>(&self, dev: &Device<R>, opt: &mut AdamW) -> Result<()> {
        self.m.read_into(dev, &mut opt.m)?;
        self.v.read_into(dev, &mut opt.v)?;
        opt.step = self.step;
        Ok(())
    }
}
