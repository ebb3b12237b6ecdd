//! A BDH model on a device: its weights, the parallel forward in passes that fit,
//! its loss and gradients, streams read a token at a time, and the microscope's
//! forward (`crate::trace`).

use bdh::engine::Reader;
use bdh::infer::State;
use bdh::model::bdh::{Bdh, Dims};
use bdh::params::Params;
use bdh::{Error, Result};
use cubecl::prelude::Runtime;

use crate::device::{Buf, Device as Dev};
use crate::guard::guard;
use crate::{backward, forward, step, Engine, MAX_GRID};

/// The model's weights and a pass's buffers on a device of runtime `R`.
pub(crate) struct Runner<R: Runtime> {
    pub(crate) dev: Dev<R>,
    pub(crate) model: Bdh,
    pub(crate) weights: forward::Weights,
    pub(crate) gamma: Option<Buf>,            // (H) the retention, with a decay
    pass: Option<forward::Pass>,              // the buffers of the last shape run
    pub(crate) traced: Option<forward::Pass>, // the microscope's: every layer kept
}

impl<R: Runtime> Runner<R> {
    /// `model` on `dev`, once a first kernel has compiled, run and given the right
    /// answer there (so that a device that cannot run ours fails here, not later).
    pub(crate) fn new(dev: Dev<R>, model: Bdh) -> Result<Self> {
        dev.check_runs()?;
        let weights_bytes = 4 * model.config.param_count() as u64;
        if let Some(free) = dev.free_bytes().filter(|&free| weights_bytes > free) {
            return Err(Error::TooLarge {
                what: format!("the model's weights on the GPU ({})", dev.name),
                need: Some(weights_bytes),
                have: Some(free),
            });
        }
        let weights = forward::Weights::upload(&dev, &model)?;
        let gamma = model.retention();
        let gamma = if gamma.is_empty() { None } else { Some(dev.upload(&gamma, "retention")?) };
        Ok(Runner { dev, model, weights, gamma, pass: None, traced: None })
    }

    /// Runs `tokens` (B, T) in passes of as many rows as the device's largest
    /// buffer allows; `each(pass, rows)` reads each pass's results.
    fn run(
        &mut self,
        tokens: &[u32],
        b: usize,
        t: usize,
        each: &mut dyn FnMut(&Self, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        bdh::model::check_tokens(tokens, self.model.config.vocab_size, "forward")?;
        if tokens.len() != b * t || b == 0 || t == 0 {
            return Err(Error::Input(format!("forward: {} ids for a batch of B={b} × T={t}", tokens.len())));
        }
        bdh::model::check_positions(0, t, "forward")?;
        let rows = self.rows_that_fit(b, t)?;
        let tables = forward::Tables::new(&self.dev, &self.model, 0, t)?;
        for r0 in (0..b).step_by(rows) {
            let r = rows.min(b - r0);
            let dims = Dims::new(&self.model.config, r, t);
            if self.pass.as_ref().is_none_or(|p| p.dims != dims) {
                self.pass = None; // free the old buffers first
                self.pass = Some(forward::Pass::new(&self.dev, dims)?);
            }
            let ids = self.dev.upload_ids(&tokens[r0 * t..(r0 + r) * t])?;
            let pass = self.pass.as_ref().expect("just made");
            forward::forward(&self.dev, &self.weights, pass, &ids, &tables, forward::Extras::default());
            each(self, r0..r0 + r)?;
        }
        Ok(())
    }

    /// The most batch rows (≤ `b`) whose pass fits the device: every buffer within
    /// its largest buffer, all of them within its free memory (where the device says
    /// how much it has), and every launch within its grid.
    pub(crate) fn rows_that_fit(&self, b: usize, t: usize) -> Result<usize> {
        let h = self.model.config.n_head;
        let refuse = |what: String, need: u64, have: u64| Error::TooLarge {
            what: format!("{what} of one sequence of T={t} on the GPU ({})", self.dev.name),
            need: Some(need),
            have: Some(have),
        };
        let fits = |rows: usize| -> Result<()> {
            let buffers = forward::buffers(&Dims::new(&self.model.config, rows, t));
            if let Some(&(what, n)) = buffers.iter().find(|&&(_, n)| !self.dev.fits(n)) {
                let largest = self.dev.max_buffer() as f64 / (1u64 << 20) as f64;
                return Err(Error::TooLarge {
                    what: format!(
                        "{what} of one sequence of T={t}, in one buffer of the GPU ({}; its largest holds {largest:.0} \
                         MiB: use a shorter window),",
                        self.dev.name
                    ),
                    need: Some(4 * n as u64),
                    have: None,
                });
            }
            let total: u64 = buffers.iter().map(|&(_, n)| 4 * n as u64).sum();
            if let Some(free) = self.dev.free_bytes().filter(|&free| total > free) {
                return Err(refuse("the activations".into(), total, free));
            }
            let cubes = [rows * h, (rows * t).div_ceil(64), t.div_ceil(64)];
            if cubes.iter().any(|&c| c > MAX_GRID) {
                let what =
                    format!("a launch grid of {} cubes (at most {MAX_GRID} a side)", cubes.iter().max().unwrap_or(&0));
                return Err(Error::Device(format!(
                    "{what} for T={t} on the GPU ({}): use a shorter window",
                    self.dev.name
                )));
            }
            Ok(())
        };
        fits(1)?;
        // (fitting is monotone in the rows: the largest that fits, by bisection)
        let (mut lo, mut hi) = (1, b.max(1));
        while lo < hi {
            let mid = hi - (hi - lo) / 2;
            if fits(mid).is_ok() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(lo)
    }
}

impl<R: Runtime> Engine for Runner<R> {
    fn name(&self) -> String {
        self.dev.name.clone()
    }

    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.run(tokens, b, t, &mut |me, _| {
            out.extend(me.dev.read(&me.pass.as_ref().expect("run").logits)?);
            Ok(())
        })?;
        Ok(out)
    }

    fn losses(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        bdh::model::check_tokens(targets, self.model.config.vocab_size, "targets")?;
        if targets.len() != tokens.len() {
            return Err(Error::Input(format!("{} targets for {} tokens", targets.len(), tokens.len())));
        }
        let mut out = Vec::new();
        self.run(tokens, b, t, &mut |me, rows| {
            let pass = me.pass.as_ref().expect("run");
            out.extend(forward::losses(&me.dev, pass, &targets[rows.start * t..rows.end * t])?);
            Ok(())
        })?;
        Ok(out)
    }

    fn stream(&self, state: &State) -> Result<Box<dyn Reader + '_>> {
        let State::Bdh(state) = state else {
            return Err(Error::Mismatch("a GPT state for a BDH model".into()));
        };
        let bytes = 4 * state.rho.len() as u64;
        if let Some(free) = self.dev.free_bytes().filter(|&free| bytes > free) {
            return Err(Error::TooLarge {
                what: format!("a stream's state ρ on the GPU ({})", self.dev.name),
                need: Some(bytes),
                have: Some(free),
            });
        }
        let stream = step::Stream::new(&self.dev, &self.model, state)?;
        let chunk = (1..=PREFILL_CHUNK).rev().find(|&t| self.rows_that_fit(1, t).is_ok()).unwrap_or(1);
        Ok(Box::new(GpuReader { runner: self, stream, logits: Vec::new(), pass: None, chunk }))
    }

    fn reserved_bytes(&self) -> u64 {
        self.dev.reserved_bytes()
    }

    fn gradients(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<(f32, Params)> {
        let v = self.model.config.vocab_size;
        bdh::model::check_batch(tokens, (b, t), v, "forward")?;
        bdh::model::check_batch(targets, (b, t), v, "targets")?;
        if self.rows_that_fit(b, t)? < b {
            let what = format!("the backward of B={b} T={t} on the GPU ({}): use fewer rows", self.dev.name);
            return Err(Error::TooLarge { what, need: None, have: None });
        }
        let (dev, dims) = (&self.dev, Dims::new(&self.model.config, b, t));
        let pass = forward::Pass::training(dev, dims, false, false)?;
        let scratch = backward::Scratch::new(dev, dims)?;
        let mut out = self.model.params.zeros_like();
        let grads = forward::Weights::upload_params(dev, &out, "the gradients")?;
        let tables = forward::Tables::new(dev, &self.model, 0, t)?;
        let (ids, target_ids) = (dev.upload_ids(tokens)?, dev.upload_ids(targets)?);
        forward::forward(dev, &self.weights, &pass, &ids, &tables, forward::Extras::default());
        let loss = forward::mean_loss(dev, &pass, &target_ids)?;
        let by_token = backward::ByToken::new(dev, tokens, v)?;
        backward::backward(dev, &self.weights, &grads, &pass, &scratch, &by_token, &target_ids, &tables)?;
        grads.read_into(dev, &mut out)?;
        Ok((loss, out))
    }

    fn trace(
        &mut self,
        tokens: &[u32],
        acts: &mut bdh::model::bdh::Activations,
        edits: &bdh::model::bdh::Edits,
        state: Option<&mut bdh::model::bdh::State>,
    ) -> Result<()> {
        Runner::trace(self, tokens, acts, edits, state)
    }
}

/// Tokens a stream's prefill reads per parallel pass (fewer if the device's
/// buffers cannot hold that many).
pub(crate) const PREFILL_CHUNK: usize = 256;

/// A stream on a device.
struct GpuReader<'r, R: Runtime> {
    runner: &'r Runner<R>,
    stream: step::Stream,
    logits: Vec<f32>,
    pass: Option<forward::Pass>, // a prefill chunk's buffers
    chunk: usize,                // tokens per prefill pass
}

impl<R: Runtime> GpuReader<'_, R> {
    /// Reads `ids` in one parallel pass with the stream's state carried; the logits
    /// after the last.
    fn prefill_chunk(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let (r, t) = (self.runner, ids.len());
        let dims = Dims::new(&r.model.config, 1, t);
        if self.pass.as_ref().is_none_or(|p| p.dims != dims) {
            self.pass = None;
            self.pass = Some(forward::Pass::new(&r.dev, dims)?);
        }
        let pass = self.pass.as_ref().expect("just made");
        let tables = forward::Tables::new(&r.dev, &r.model, self.stream.pos, t)?;
        let ids = r.dev.upload_ids(ids)?;
        let extras = forward::Extras { rho: Some(self.stream.layers()), ..Default::default() };
        forward::forward(&r.dev, &r.weights, pass, &ids, &tables, extras);
        self.stream.pos += t;
        let logits = r.dev.read(&pass.logits)?;
        Ok(logits[(t - 1) * dims.v..].to_vec())
    }
}

impl<R: Runtime> Reader for GpuReader<'_, R> {
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        if tokens.is_empty() {
            return Err(Error::Input("prefill: no tokens".into()));
        }
        bdh::model::check_tokens(tokens, self.runner.model.config.vocab_size, "prefill")?;
        bdh::model::check_positions(self.stream.pos, tokens.len(), "prefill")?;
        let name = self.runner.dev.name.clone();
        for chunk in tokens.chunks(self.chunk) {
            self.logits = guard(&name, || self.prefill_chunk(chunk))?;
        }
        Ok(&self.logits)
    }

    fn step(&mut self, token: u32) -> Result<&[f32]> {
        let r = self.runner;
        self.logits = guard(&r.dev.name, || self.stream.step(&r.dev, &r.model, &r.weights, r.gamma.as_ref(), token))?;
        Ok(&self.logits)
    }

    fn position(&self) -> usize {
        self.stream.pos
    }

    fn state_bytes(&self) -> usize {
        4 * bdh::model::bdh::State::shape(&self.runner.model.config).iter().product::<usize>()
    }

    fn state(&self) -> Result<State> {
        let dev = &self.runner.dev;
        guard(&dev.name, || Ok(State::Bdh(self.stream.state(dev)?)))
    }
}
