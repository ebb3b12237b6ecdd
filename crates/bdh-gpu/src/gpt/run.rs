//! A GPT on a device: the forward of batches, its loss and gradients, and
//! generation. A stream keeps its window (the last ≤ block_size tokens) on the
//! host and reads the whole window again for each token — nanoGPT's `generate`,
//! without a KV cache — so its logits are the CPU engine's, whose window slides
//! the same way.

use bdh::engine::Reader;
use bdh::infer::{Prepared, State};
use bdh::model::gpt::{Dims, Gpt};
use bdh::params::Params;
use bdh::{Error, Model, Result};
use cubecl::prelude::Runtime;

use super::{backward, forward, Pass, Scratch};
use crate::backward::ByToken;
use crate::device::Device as Dev;
use crate::guard::guard;
use crate::optim::Slots;
use crate::Engine;

/// A GPT's weights and a pass's buffers on a device of runtime `R`.
pub(crate) struct GptRunner<R: Runtime> {
    dev: Dev<R>,
    model: Gpt,
    w: Slots,
    pass: std::cell::RefCell<Option<Pass>>, // the buffers of the last shape run
}

impl<R: Runtime> GptRunner<R> {
    /// `model` on `dev`, once a first kernel has run there.
    pub(crate) fn new(dev: Dev<R>, model: Gpt) -> Result<Self> {
        dev.check_runs()?;
        let w = Slots::upload(&dev, &model.params, "the weights")?;
        Ok(GptRunner { dev, model, w, pass: std::cell::RefCell::new(None) })
    }

    /// Runs `tokens` (B, T); `read(pass)` reads what it needs of it.
    fn run<T>(&self, tokens: &[u32], b: usize, t: usize, read: impl FnOnce(&Pass) -> Result<T>) -> Result<T> {
        bdh::model::check_batch(tokens, (b, t), self.model.config.vocab_size, "forward")?;
        let mut slot = self.pass.borrow_mut();
        if slot.as_ref().is_none_or(|p| (p.dims.b, p.dims.t) != (b, t)) {
            *slot = None; // free the old buffers first
            *slot = Some(Pass::new(&self.dev, &self.model, b, t)?);
        }
        let pass = slot.as_ref().expect("just made");
        forward(&self.dev, &self.model.config, &self.w, pass, &self.dev.upload_ids(tokens)?);
        read(pass)
    }
}

impl<R: Runtime> Engine for GptRunner<R> {
    fn name(&self) -> String {
        self.dev.name.clone()
    }

    fn logits(&mut self, tokens: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        self.run(tokens, b, t, |pass| self.dev.read(&pass.logits))
    }

    fn losses(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<Vec<f32>> {
        bdh::model::check_batch(targets, (b, t), self.model.config.vocab_size, "targets")?;
        let targets = self.dev.upload_ids(targets)?;
        let v = self.model.config.vocab_size;
        self.run(tokens, b, t, |pass| {
            self.dev.cross_entropy(&pass.logits, &targets, &pass.losses, v);
            self.dev.read(&pass.losses)
        })
    }

    fn gradients(&mut self, tokens: &[u32], targets: &[u32], b: usize, t: usize) -> Result<(f32, Params)> {
        let c = &self.model.config;
        bdh::model::check_batch(targets, (b, t), c.vocab_size, "targets")?;
        let dims = Dims { b, t, d: c.n_embd, h: c.n_head, v: c.vocab_size, l: c.n_layer };
        let scratch = Scratch::new(&self.dev, dims)?;
        let mut out = self.model.params.zeros_like();
        let grads = Slots::upload(&self.dev, &out, "the gradients")?;
        let target_ids = self.dev.upload_ids(targets)?;
        let by_token = ByToken::new(&self.dev, tokens, c.vocab_size)?;
        let loss = self.run(tokens, b, t, |pass| {
            let loss = self.dev.mean_cross_entropy(&pass.logits, &target_ids, &pass.losses, c.vocab_size)?;
            backward(&self.dev, c, &self.w, &grads, pass, &scratch, &by_token, &target_ids);
            Ok(loss)
        })?;
        grads.read_into(&self.dev, &mut out)?;
        Ok((loss, out))
    }

    fn stream(&self, state: &State) -> Result<Box<dyn Reader + '_>> {
        let State::Gpt(state) = state else {
            return Err(Error::Mismatch("a BDH state for a GPT".into()));
        };
        Ok(Box::new(GptReader { runner: self, window: state.window().to_vec(), pos: state.pos, logits: Vec::new() }))
    }

    fn reserved_bytes(&self) -> u64 {
        self.dev.reserved_bytes()
    }

    fn trace(
        &mut self,
        _: &[u32],
        _: &mut bdh::model::bdh::Activations,
        _: &bdh::model::bdh::Edits,
        _: Option<&mut bdh::model::bdh::State>,
    ) -> Result<()> {
        Err(Error::Input("the microscope reads BDH models; this is a GPT".into()))
    }
}

/// A GPT stream on a device: its window on the host.
struct GptReader<'r, R: Runtime> {
    runner: &'r GptRunner<R>,
    window: Vec<u32>, // the last ≤ block_size tokens read
    pos: usize,       // tokens read in all
    logits: Vec<f32>,
}

impl<R: Runtime> Reader for GptReader<'_, R> {
    fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        let c = &self.runner.model.config;
        if tokens.is_empty() {
            return Err(Error::Input("prefill: no tokens".into()));
        }
        bdh::model::check_tokens(tokens, c.vocab_size, "prefill")?;
        let mut window = self.window.clone();
        window.extend_from_slice(tokens);
        let window = window.split_off(window.len().saturating_sub(c.block_size));
        let (r, t, v) = (self.runner, window.len(), c.vocab_size);
        let logits = guard(&r.dev.name, || r.run(&window, 1, t, |pass| r.dev.read(&pass.logits)))?;
        self.logits = logits[(t - 1) * v..].to_vec();
        (self.window, self.pos) = (window, self.pos + tokens.len());
        Ok(&self.logits)
    }

    fn step(&mut self, token: u32) -> Result<&[f32]> {
        self.prefill(&[token])
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn state_bytes(&self) -> usize {
        let c = &self.runner.model.config;
        2 * 4 * c.n_layer * c.block_size * c.n_embd
    }

    /// The CPU's state of this stream, its window read again there (the keys and
    /// values a CPU stream keeps are not made on the device).
    fn state(&self) -> Result<State> {
        let prepared = Prepared::new(Model::Gpt(self.runner.model.clone()))?;
        let mut state = prepared.state()?;
        if !self.window.is_empty() {
            prepared.prefill(&mut state, &mut prepared.scratch(), &self.window, &bdh::model::bdh::NO_EDITS)?;
        }
        if let State::Gpt(s) = &mut state {
            s.pos = self.pos;
        }
        Ok(state)
    }
}
