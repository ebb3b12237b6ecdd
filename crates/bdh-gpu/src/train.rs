//! Training on a device: a trainer's weights, gradients, AdamW moments and carried
//! state live there; each micro-batch runs the training forward (every layer kept,
//! dropout drawn as the CPU draws it) and the backward, and each step the norm,
//! the clipping and AdamW — the CPU trainer's arithmetic, in its order. The host's
//! copies are brought up to date only when the run reads them ([`Accelerator::store`]).

use bdh::engine::Forward;
use bdh::model::bdh::{Bdh, Dims};
use bdh::params::Params;
use bdh::train::{carry::Carry, AdamW, Collective, Precision, Trainer};
use bdh::{Error, Model, Result};
use cubecl::prelude::Runtime;
use rand_chacha::rand_core::SeedableRng;

use crate::backward::{self, Scratch};
use crate::device::{Buf, Device as Dev};
use crate::forward::{self, Extras, Pass, Tables, Weights};
use crate::guard::guard;
use crate::optim::Moments;

/// A carried state on the device.
struct Carried {
    rho: Vec<Buf>, // (L) × (B, H, N, D)
    pos: usize,    // the position of the next token
}

/// A trainer's work on a device of runtime `R`.
pub(crate) struct DeviceTrainer<R: Runtime> {
    dev: Dev<R>,
    model: Bdh,       // config and RoPE frequencies (the host's weights may lag)
    w: Weights,       // the weights
    g: Weights,       // their gradients, summed over micro-batches
    moments: Moments, // AdamW's
    pass: Pass,       // the training forward's buffers
    scratch: Scratch,
    tables: Tables, // positions 0..T
    carried: Option<Carried>,
    eval: Option<Pass>, // an inference pass of another shape, to evaluate
}

/// Values the device holds to train `model` on batches of `dims`: the weights four
/// times over (weights, gradients, two moments), the training forward's buffers,
/// the backward's scratch, and a carried state (and its value before each layer's
/// write, kept unless detached).
pub(crate) fn values_needed(model: &Bdh, dims: &Dims, carry: bool, detach: bool, dropout: bool) -> Option<usize> {
    let Dims { b, t, d, h, n, v, l } = *dims;
    let m = |xs: &[usize]| xs.iter().try_fold(1usize, |p, &x| p.checked_mul(x));
    let per_layer = m(&[b, h, t, (3 + dropout as usize) * n + t + d + 1])?.checked_add(m(&[b, t, d + 1])?)?;
    let rho = m(&[l, b, h, n, d])?.checked_mul(if !carry {
        0
    } else if detach {
        1
    } else {
        2
    })?;
    [
        model.config.param_count().checked_mul(4)?,
        per_layer.checked_mul(l)?,
        m(&[l + 1, b, t, d + 1])?,
        m(&[b, h, t, n])?,
        m(&[b, t, v + 1])?,
        backward::scratch_values(dims)?,
        rho,
    ]
    .iter()
    .try_fold(0usize, |a, &x| a.checked_add(x))
}

impl<R: Runtime> DeviceTrainer<R> {
    /// `trainer`'s model, moments, step and carried state on `dev`, with buffers for
    /// its batches. An error, before anything large is allocated, if they do not fit,
    /// naming the bytes needed and the largest batch that fits.
    pub(crate) fn new(mut dev: Dev<R>, trainer: &Trainer) -> Result<Self> {
        crate::trains(&trainer.model)?;
        let Model::Bdh(model) = &trainer.model else { unreachable!("the caller matched a BDH model") };
        dev.check_runs()?;
        dev.set_bf16(trainer.precision == Precision::Bf16);
        let (b, t) = trainer.batch;
        let dims = Dims::new(&model.config, b, t);
        let dropout = model.config.dropout > 0.0;
        let (carry, detach) = match &trainer.carry {
            Some(c) => (true, c.detach),
            None => (false, false),
        };
        check_fits(&dev, model, dims, carry, detach, dropout)?;
        let p = trainer.model.params();
        let up = |params: &Params, what: &str| Weights::upload_params(&dev, params, what);
        let carried = match &trainer.carry {
            None => None,
            Some(c) => {
                let per_layer = c.state.rho.len() / dims.l;
                let rho = c.state.rho.f32("training")?.chunks_exact(per_layer).map(|r| dev.upload(r, "the carried ρ"));
                Some(Carried { rho: rho.collect::<Result<_>>()?, pos: c.state.pos })
            }
        };
        Ok(DeviceTrainer {
            w: up(p, "the weights")?,
            g: up(&p.zeros_like(), "the gradients")?,
            moments: Moments::upload(&dev, &trainer.opt)?,
            pass: Pass::training(&dev, dims, dropout, carry && !detach)?,
            scratch: Scratch::new(&dev, dims)?,
            tables: Tables::new(&dev, model, 0, t)?,
            carried,
            eval: None,
            model: model.clone(),
            dev,
        })
    }

    fn accumulate(&mut self, tokens: &[u32], targets: &[u32], dropout_seed: u64) -> Result<f32> {
        let Dims { b, t, v, .. } = self.pass.dims;
        bdh::model::check_batch(tokens, (b, t), v, "forward")?;
        bdh::model::check_batch(targets, (b, t), v, "targets")?;
        let (ids, targets) = (self.dev.upload_ids(tokens)?, self.dev.upload_ids(targets)?);
        let prob = self.model.config.dropout;
        let key = if prob > 0.0 { Some(self.dev.upload_ids(&chacha_key(dropout_seed))?) } else { None };
        let dropout = key.as_ref().map(|k| (k, prob));
        let moved;
        let (tables, rho) = match &self.carried {
            None => (&self.tables, None),
            Some(c) => {
                bdh::model::check_positions(c.pos, t, "forward")?;
                moved = Tables::new(&self.dev, &self.model, c.pos, t)?;
                (&moved, Some(&c.rho[..]))
            }
        };
        forward::forward(&self.dev, &self.w, &self.pass, &ids, tables, Extras { rho, dropout, edit: None });
        let loss = forward::mean_loss(&self.dev, &self.pass, &targets)?;
        let by_token = backward::ByToken::new(&self.dev, tokens, v)?;
        backward::backward(&self.dev, &self.w, &self.g, &self.pass, &self.scratch, &by_token, &targets, tables)?;
        if let Some(c) = &mut self.carried {
            c.pos += t;
        }
        Ok(loss)
    }

    fn apply(&mut self, micro_batches: usize, clip: f64, lr: f64, collective: &dyn Collective) -> Result<f64> {
        let (w, g) = (self.w.parts(), self.g.parts());
        self.moments.apply(&self.dev, &w, &g, micro_batches, clip, lr, collective)
    }

    fn store(&mut self, model: &mut Model, opt: &mut AdamW, carry: Option<&mut Carry>) -> Result<()> {
        self.w.read_into(&self.dev, model.params_mut())?;
        self.moments.store(&self.dev, opt)?;
        if let (Some(c), Some(host)) = (&self.carried, carry) {
            let mut rho = Vec::with_capacity(host.state.rho.len());
            for layer in &c.rho {
                rho.extend(self.dev.read(layer)?);
            }
            host.state.rho = rho.into();
            host.state.pos = c.pos;
        }
        Ok(())
    }

    fn restart(&mut self) {
        if let Some(c) = &mut self.carried {
            c.rho.iter().for_each(|r| self.dev.zero(r));
            c.pos = 0;
        }
    }

    /// Logits of `tokens` (B, T) from empty states with the current weights, eval mode.
    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        bdh::model::check_batch(tokens, (b, t), self.model.config.vocab_size, "forward")?;
        let dims = Dims::new(&self.model.config, b, t);
        let ids = self.dev.upload_ids(tokens)?;
        if dims == self.pass.dims {
            forward::forward(&self.dev, &self.w, &self.pass, &ids, &self.tables, Extras::default());
            return self.dev.read(&self.pass.logits);
        }
        if self.eval.as_ref().is_none_or(|p| p.dims != dims) {
            self.eval = None;
            self.eval = Some(Pass::new(&self.dev, dims)?);
        }
        let pass = self.eval.as_ref().expect("just made");
        let tables = Tables::new(&self.dev, &self.model, 0, t)?;
        forward::forward(&self.dev, &self.w, pass, &ids, &tables, Extras::default());
        self.dev.read(&pass.logits)
    }
}

/// An error unless training `model` on batches of `dims` fits `dev`: every buffer
/// within its largest, every launch within its grid, all of it within its memory
/// where the device says how much it has — naming the limit and the largest batch
/// that fits.
fn check_fits<R: Runtime>(
    dev: &Dev<R>,
    model: &Bdh,
    dims: Dims,
    carry: bool,
    detach: bool,
    dropout: bool,
) -> Result<()> {
    let bytes = |b: usize| values_needed(model, &Dims { b, ..dims }, carry, detach, dropout)?.checked_mul(4);
    // Why a batch of b rows does not fit, if it does not.
    let refused = |b: usize| -> Option<String> {
        let Dims { t, d, h, n, v, .. } = dims;
        let m = |xs: &[usize]| xs.iter().try_fold(1usize, |p, &x| p.checked_mul(x)).unwrap_or(usize::MAX);
        let mut largest = vec![m(&[b, h, t, n]), m(&[b, h, t, t]), m(&[b, h, t, d]), m(&[b, t, v])];
        if carry {
            largest.push(m(&[b, h, n, d]));
        }
        if let Some(&n) = largest.iter().find(|&&n| !dev.fits(n)) {
            let (need, max) = (size(m(&[n, 4]) as u64), size(dev.max_buffer()));
            return Some(format!("one of its buffers would hold {need}, the device's largest buffer {max}"));
        }
        if b * dims.h > crate::MAX_GRID || (b * dims.t).div_ceil(64) > crate::MAX_GRID {
            return Some(format!("a launch would take more than {} cubes a side", crate::MAX_GRID));
        }
        match (bytes(b), dev.free_bytes()) {
            (None, _) => Some("its size is not a number".into()),
            (Some(need), Some(free)) if need as u64 > free => {
                Some(format!("it needs {} and the device has {} free", size(need as u64), size(free)))
            }
            _ => None,
        }
    };
    let Some(why) = refused(dims.b) else { return Ok(()) };
    let (mut lo, mut hi) = (0, dims.b - 1);
    while lo < hi {
        let mid = hi - (hi - lo) / 2;
        if refused(mid).is_none() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let largest = if lo == 0 {
        format!("not even one sequence of T={} fits: use a shorter training.block_size", dims.t)
    } else {
        let accum = dims.b.div_ceil(lo);
        format!(
            "the largest batch that fits is training.batch_size={lo} (training.grad_accum ×{accum} keeps the step's \
             tokens)"
        )
    };
    Err(Error::TooLarge {
        // (the error ends with the bytes needed in all)
        what: format!("training B={} T={} on the GPU ({}): {why}; {largest};", dims.b, dims.t, dev.name),
        need: bytes(dims.b).map(|b| b as u64),
        have: dev.free_bytes(),
    })
}

/// Bytes in MiB below a GiB (whole), in GiB above (one decimal).
fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1 << 30 => format!("{} MiB", b.div_ceil(1 << 20)),
        b => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
    }
}

/// The 8 key words of ChaCha8 seeded from `seed` as `rand` seeds it from a u64.
fn chacha_key(seed: u64) -> [u32; 8] {
    let bytes = rand_chacha::ChaCha8Rng::seed_from_u64(seed).get_seed();
    std::array::from_fn(|i| u32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]]))
}

/// What a trainer on a device does (the BDH's and the GPT's), unguarded.
pub(crate) trait Steps {
    /// The device's name.
    fn name(&self) -> &str;
    fn accumulate(&mut self, tokens: &[u32], targets: &[u32], dropout_seed: u64) -> Result<f32>;
    fn apply(&mut self, micro_batches: usize, clip: f64, lr: f64, collective: &dyn Collective) -> Result<f64>;
    fn restart(&mut self);
    fn store(&mut self, model: &mut Model, opt: &mut AdamW, carry: Option<&mut Carry>) -> Result<()>;
    /// Logits of `tokens` (B, T) with the current weights, eval mode.
    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>>;
    fn vocab(&self) -> usize;
    fn reserved_bytes(&self) -> u64;
}

impl<R: Runtime> Steps for DeviceTrainer<R> {
    fn name(&self) -> &str {
        &self.dev.name
    }
    fn accumulate(&mut self, tokens: &[u32], targets: &[u32], dropout_seed: u64) -> Result<f32> {
        DeviceTrainer::accumulate(self, tokens, targets, dropout_seed)
    }
    fn apply(&mut self, micro_batches: usize, clip: f64, lr: f64, collective: &dyn Collective) -> Result<f64> {
        DeviceTrainer::apply(self, micro_batches, clip, lr, collective)
    }
    fn restart(&mut self) {
        DeviceTrainer::restart(self)
    }
    fn store(&mut self, model: &mut Model, opt: &mut AdamW, carry: Option<&mut Carry>) -> Result<()> {
        DeviceTrainer::store(self, model, opt, carry)
    }
    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        DeviceTrainer::logits(self, tokens, b, t)
    }
    fn vocab(&self) -> usize {
        self.model.config.vocab_size
    }
    fn reserved_bytes(&self) -> u64 {
        self.dev.reserved_bytes()
    }
}

/// A trainer on a device behind the engine's traits, every call guarded (a device
/// thread's panic becomes an error).
pub(crate) struct Guarded<T: Steps>(pub T);

impl<T: Steps> bdh::train::Accelerator for Guarded<T> {
    fn device(&self) -> String {
        format!("GPU ({})", self.0.name())
    }

    fn accumulate(&mut self, tokens: &[u32], targets: &[u32], dropout_seed: u64) -> Result<f32> {
        let name = self.0.name().to_string();
        guard(&name, || self.0.accumulate(tokens, targets, dropout_seed))
    }

    fn apply(&mut self, micro_batches: usize, clip: f64, lr: f64, collective: &dyn Collective) -> Result<f64> {
        let name = self.0.name().to_string();
        guard(&name, || self.0.apply(micro_batches, clip, lr, collective))
    }

    fn restart(&mut self) -> Result<()> {
        let name = self.0.name().to_string();
        guard(&name, || {
            self.0.restart();
            Ok(())
        })
    }

    fn store(&mut self, model: &mut Model, opt: &mut AdamW, carry: Option<&mut Carry>) -> Result<()> {
        let name = self.0.name().to_string();
        guard(&name, || self.0.store(model, opt, carry))
    }

    fn forward(&mut self) -> &mut dyn Forward {
        self
    }

    fn held_bytes(&self) -> u64 {
        self.0.reserved_bytes()
    }
}

impl<T: Steps> Forward for Guarded<T> {
    fn device(&self) -> String {
        format!("GPU ({})", self.0.name())
    }

    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        let name = self.0.name().to_string();
        guard(&name, || self.0.logits(tokens, b, t))
    }

    fn loss_sum(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f64> {
        let v = self.0.vocab();
        let logits = self.logits(tokens, b, t)?;
        Ok(bdh::model::loss::cross_entropy(&logits, targets, v) as f64 * targets.len() as f64)
    }
}
