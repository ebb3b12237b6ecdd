//! Many streams on a device, stepped together: what `bdh serve --device gpu`
//! decodes with. Every stream's ρ lives in a slot of a pool made once for the
//! server's most streams, (S, H, N, D) per layer. A prompt is read in parallel
//! chunks with the stream's state carried (copied out of its slot and back); a
//! step reads one token of every stepped stream in one pass of batched products,
//! each stream's read and write of ρ in its own slot (`kernels::serve`). Only
//! the logits come back; a state crosses to the host when its stream ends.

use bdh::engine::Streams;
use bdh::infer::State;
use bdh::model::bdh::{rope::cos_sin, Dims, State as BdhState};
use bdh::{Error, Result};
use bdh_kernels::{Batch, MatMul};
use cubecl::prelude::Runtime;

use crate::device::Buf;
use crate::forward;
use crate::guard::guard;
use crate::runner::{Runner, PREFILL_CHUNK};

/// The streams of a server on a device of runtime `R`.
pub(crate) struct Pool<R: Runtime> {
    runner: Runner<R>,
    rho: Vec<Buf>,           // (L) × (S, H, N, D)
    pos: Vec<Option<usize>>, // (S) the position of the stream in each slot; `None`: free
    lost: Vec<bool>,         // (S) whether a failed pass left the slot's state half-written
    temps: Vec<Buf>,         // (L) × (H, N, D): one stream's state on its way in or out of its slot
    pass: Option<forward::Pass>,
    step: Option<StepBuffers>,
    chunk: usize,
    logits: Vec<f32>,
}

/// The buffers of a step of B streams.
struct StepBuffers {
    b: usize,
    v: [Buf; 2], // (B, D)
    x: Buf,      // (H, B, N)
    xr: Buf,     // (H, B, N)
    y: Buf,      // (H, B, N)
    z: Buf,      // (H, B, N)
    a: Buf,      // (H, B, D)
    u: Buf,      // (B, D)
    rstd: Buf,   // (H, B)
    logits: Buf, // (B, V)
}

impl<R: Runtime> Pool<R> {
    /// Room for `slots` streams of `runner`'s model: an error naming how many fit
    /// if they do not.
    pub fn new(runner: Runner<R>, slots: usize) -> Result<Self> {
        let c = &runner.model.config;
        let per_layer = c.n_head * c.n_neurons() * c.n_embd;
        let dev = &runner.dev;
        // The pool, one state more for a stream on its way in or out, a prompt
        // chunk's pass and the buffers of a step of every stream.
        let (d, h, n, v) = (c.n_embd, c.n_head, c.n_neurons(), c.vocab_size);
        let chunk: usize = forward::buffers(&Dims::new(c, 1, PREFILL_CHUNK)).iter().map(|&(_, n)| n).sum();
        let step = 3 * d + 4 * h * n + h * d + h + v;
        let state = (c.n_layer * per_layer) as u64;
        let (fixed, each) = (4 * (state + chunk as u64), 4 * (state + step as u64));
        let bytes = |s: usize| fixed.saturating_add(each.saturating_mul(s as u64));
        let by_buffer = (dev.max_buffer() / 4 / per_layer.max(1) as u64) as usize;
        let by_memory = dev.free_bytes().map_or(usize::MAX, |free| (free.saturating_sub(fixed) / each) as usize);
        if slots > by_buffer.min(by_memory) {
            // (the limit met: one buffer holds every stream's state of a layer, or all of
            // it must fit in the device's free memory)
            let err = if by_buffer < by_memory {
                Error::TooLarge {
                    what: format!(
                        "a layer's states of {slots} streams, which the GPU keeps in one buffer ({}; {by_buffer} streams \
                         fit: lower --max-streams),",
                        dev.name
                    ),
                    need: Some(4 * (slots * per_layer) as u64),
                    have: Some(dev.max_buffer()),
                }
            } else {
                Error::TooLarge {
                    what: format!(
                        "the states of {slots} streams on the GPU ({}; {by_memory} fit in its free memory: lower \
                         --max-streams)",
                        dev.name
                    ),
                    need: Some(bytes(slots)),
                    have: dev.free_bytes(),
                }
            };
            return Err(err);
        }
        // (a slot is written whole when a stream takes it)
        let rho =
            (0..c.n_layer).map(|_| dev.scratch(slots * per_layer, "the streams' states")).collect::<Result<_>>()?;
        let temps = (0..c.n_layer).map(|_| dev.scratch(per_layer, "a stream's state")).collect::<Result<_>>()?;
        let chunk = (1..=PREFILL_CHUNK).rev().find(|&t| runner.rows_that_fit(1, t).is_ok()).unwrap_or(1);
        let (pos, lost) = (vec![None; slots], vec![false; slots]);
        Ok(Pool { runner, rho, pos, lost, temps, pass: None, step: None, chunk, logits: Vec::new() })
    }

    fn per_layer(&self) -> usize {
        let c = &self.runner.model.config;
        c.n_head * c.n_neurons() * c.n_embd
    }

    /// The position of the stream in `slot`, or an error if none is there.
    fn at(&self, slot: usize) -> Result<usize> {
        let pos = self.pos.get(slot).copied().flatten();
        let pos = pos.ok_or_else(|| Error::Input(format!("no stream in slot {slot}")))?;
        if self.lost[slot] {
            return Err(Error::Device(format!("the state in slot {slot} was lost when a pass failed on the GPU")));
        }
        Ok(pos)
    }

    /// Marks `slots` lost if `result` is an error: a pass that failed may have
    /// written part of their states.
    fn spoil<T>(&mut self, slots: &[usize], result: Result<T>) -> Result<T> {
        if result.is_err() {
            for &s in slots {
                self.lost[s] = true;
            }
        }
        result
    }

    /// Copies the state in `slot` into `temps`, or back with `back`.
    fn shuttle(&self, slot: usize, back: bool) {
        let per = self.per_layer();
        for (pool, temp) in self.rho.iter().zip(&self.temps) {
            if back {
                self.runner.dev.copy_range(temp, 0, pool, slot * per, per);
            } else {
                self.runner.dev.copy_range(pool, slot * per, temp, 0, per);
            }
        }
    }

    fn open(&mut self, state: &State) -> Result<usize> {
        let State::Bdh(state) = state else {
            return Err(Error::Mismatch("a GPT state for a BDH model".into()));
        };
        state.check(&self.runner.model.config)?;
        let slot = self.pos.iter().position(Option::is_none);
        let slot = slot.ok_or_else(|| Error::Input(format!("all {} stream slots are taken", self.pos.len())))?;
        for (temp, layer) in self.temps.iter().zip(state.rho.f32("the GPU backend")?.chunks_exact(self.per_layer())) {
            self.runner.dev.write(temp, layer)?;
        }
        self.shuttle(slot, true);
        self.pos[slot] = Some(state.pos);
        Ok(slot)
    }

    fn close(&mut self, slot: usize) -> Result<State> {
        if self.pos.get(slot).is_some_and(Option::is_some) && self.lost[slot] {
            (self.pos[slot], self.lost[slot]) = (None, false);
            return Err(Error::Device(format!("the state in slot {slot} was lost when a pass failed on the GPU")));
        }
        let pos = self.at(slot)?;
        self.pos[slot] = None;
        self.shuttle(slot, false);
        let mut rho = Vec::new();
        for temp in &self.temps {
            rho.extend(self.runner.dev.read(temp)?);
        }
        Ok(State::Bdh(BdhState { pos, rho: rho.into(), keys: Vec::new(), queue: Vec::new() }))
    }

    /// An error unless the stream in `slot` may read `tokens`.
    fn check_prefill(&self, slot: usize, tokens: &[u32]) -> Result<()> {
        let pos = self.at(slot)?;
        if tokens.is_empty() {
            return Err(Error::Input("prefill: no tokens".into()));
        }
        bdh::model::check_tokens(tokens, self.runner.model.config.vocab_size, "prefill")?;
        bdh::model::check_positions(pos, tokens.len(), "prefill")
    }

    /// Reads `tokens` (checked) after the state in `slot`, a parallel pass per chunk.
    fn prefill(&mut self, slot: usize, tokens: &[u32]) -> Result<()> {
        let pos = self.at(slot)?;
        let r = &self.runner;
        self.shuttle(slot, false);
        let mut at = pos;
        for ids in tokens.chunks(self.chunk) {
            let t = ids.len();
            let dims = Dims::new(&r.model.config, 1, t);
            if self.pass.as_ref().is_none_or(|p| p.dims != dims) {
                self.pass = None;
                self.pass = Some(forward::Pass::new(&r.dev, dims)?);
            }
            let pass = self.pass.as_ref().expect("just made");
            let tables = forward::Tables::new(&r.dev, &r.model, at, t)?;
            let extras = forward::Extras { rho: Some(&self.temps), ..Default::default() };
            forward::forward(&r.dev, &r.weights, pass, &r.dev.upload_ids(ids)?, &tables, extras);
            at += t;
            if at == pos + tokens.len() {
                let logits = r.dev.read(&pass.logits)?;
                self.logits = logits[(t - 1) * dims.v..].to_vec();
            }
        }
        self.shuttle(slot, true);
        self.pos[slot] = Some(at);
        Ok(())
    }

    fn check_step(&self, slot: usize, token: u32) -> Result<()> {
        bdh::model::check_tokens(&[token], self.runner.model.config.vocab_size, "step")?;
        bdh::model::check_positions(self.at(slot)?, 1, "step")
    }

    /// An error unless each stream of `slots` may read its token of `tokens`.
    fn check_batch(&self, slots: &[usize], tokens: &[u32]) -> Result<()> {
        if slots.len() != tokens.len() {
            return Err(Error::Input(format!("step: {} streams for {} tokens", slots.len(), tokens.len())));
        }
        let mut seen = vec![false; self.pos.len()];
        for (&slot, &token) in slots.iter().zip(tokens) {
            self.check_step(slot, token)?;
            if std::mem::replace(&mut seen[slot], true) {
                return Err(Error::Input(format!("step: slot {slot} twice")));
            }
        }
        Ok(())
    }

    /// One token (checked) for the stream in each of `slots`: the logits (B, V).
    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<()> {
        let b = slots.len();
        if b == 0 {
            self.logits.clear();
            return Ok(());
        }
        let (r, c) = (&self.runner, &self.runner.model.config);
        let (d, h, n, vocab) = (c.n_embd, c.n_head, c.n_neurons(), c.vocab_size);
        if self.step.as_ref().is_none_or(|s| s.b != b) {
            self.step = None;
            let s = |len: usize, what: &str| r.dev.scratch(len, what);
            self.step = Some(StepBuffers {
                b,
                v: [s(b * d, "v")?, s(b * d, "v")?],
                x: s(h * b * n, "x")?,
                xr: s(h * b * n, "R(x)")?,
                y: s(h * b * n, "y")?,
                z: s(h * b * n, "x ⊙ y")?,
                a: s(h * b * d, "a")?,
                u: s(b * d, "u")?,
                rstd: s(h * b, "LayerNorm statistics")?,
                logits: s(b * vocab, "logits")?,
            });
        }
        let s = self.step.as_ref().expect("just made");
        // RoPE at each stream's own position, as the CPU makes it: (B, N/2).
        let (mut cos, mut sin) = (Vec::with_capacity(b * n / 2), Vec::with_capacity(b * n / 2));
        for &slot in slots {
            let pos = self.pos[slot].expect("checked");
            for j in 0..n / 2 {
                let (cj, sj) = cos_sin(pos, r.model.freqs[2 * j]);
                cos.push(cj);
                sin.push(sj);
            }
        }
        let (cos, sin) = (r.dev.upload(&cos, "RoPE rows")?, r.dev.upload(&sin, "RoPE rows")?);
        let ids: Vec<u32> = slots.iter().map(|&s| s as u32).collect();
        let slot_ids = r.dev.upload_ids(&ids)?;
        let (dev, w, gamma) = (&r.dev, &r.weights, r.gamma.as_ref());
        let per_head = |a: usize, wt: usize| Batch { count: [1, h], a: [0, a], b: [0, wt], c: [0, b * n] };

        // v = LN(embed[token])                                                  (B, D)
        dev.gather(&w.embed, &dev.upload_ids(tokens)?, &s.v[0], d);
        dev.layer_norm(&s.v[0], &s.rstd, d);
        for (l, rho) in self.rho.iter().enumerate() {
            let (v_in, v_out) = (&s.v[l % 2], &s.v[(l + 1) % 2]);
            // x = relu(v · encoder_h); R(x) at each stream's position           (H, B, N)
            dev.matmul(&s.x, v_in, &w.encoder, MatMul::new(b, d, n).relu(), per_head(0, d * n), false);
            dev.rope(&s.x, &cos, &sin, &s.xr, b, n, false);
            // ρ ← γ ρ; a = ρᵀ R(x); ρ += R(x) ⊗ v, each stream in its slot       (H, B, D)
            dev.read_slots(rho, &slot_ids, &s.xr, gamma, &s.a, [h, n, d]);
            dev.write_slots(rho, &slot_ids, &s.xr, v_in, gamma, [h, n, d]);
            // y = relu(LN(a) · encoder_v_h) ⊙ x                                 (H, B, N)
            dev.layer_norm(&s.a, &s.rstd, d);
            dev.matmul(&s.y, &s.a, &w.encoder_v, MatMul::new(b, d, n).relu(), per_head(b * d, d * n), false);
            dev.mul(&s.x, &s.y, None, &s.z);
            // v = LN(v + LN(Σ_h z_h · decoder_h))                               (B, D)
            let heads = Batch { count: [1, h], a: [0, b * n], b: [0, n * d], c: [0, 0] };
            dev.matmul(&s.u, &s.z, &w.decoder, MatMul::new(b, n, d), heads, false);
            dev.layer_norm(&s.u, &s.rstd, d);
            dev.add(v_in, &s.u, v_out);
            dev.layer_norm(v_out, &s.rstd, d);
        }
        let one = Batch { count: [1, 1], a: [0, 0], b: [0, 0], c: [0, 0] };
        dev.matmul(&s.logits, &s.v[self.rho.len() % 2], &w.lm_head, MatMul::new(b, d, vocab), one, false);
        self.logits = dev.read(&s.logits)?;
        for &slot in slots {
            self.pos[slot] = self.pos[slot].map(|p| p + 1);
        }
        Ok(())
    }
}

impl<R: Runtime> Streams for Pool<R> {
    fn device(&self) -> String {
        format!("GPU ({})", self.runner.dev.name)
    }

    fn slots(&self) -> usize {
        self.pos.len()
    }

    fn chunk(&self) -> usize {
        self.chunk
    }

    fn open(&mut self, state: &State) -> Result<usize> {
        let name = self.runner.dev.name.clone();
        guard(&name, || Pool::open(self, state))
    }

    fn position(&self, slot: usize) -> Result<usize> {
        self.at(slot)
    }

    fn check_step(&self, slot: usize, token: u32) -> Result<()> {
        Pool::check_step(self, slot, token)
    }

    fn prefill(&mut self, slot: usize, tokens: &[u32]) -> Result<&[f32]> {
        self.check_prefill(slot, tokens)?;
        let name = self.runner.dev.name.clone();
        let done = guard(&name, || Pool::prefill(self, slot, tokens));
        self.spoil(&[slot], done)?;
        Ok(&self.logits)
    }

    fn step(&mut self, slots: &[usize], tokens: &[u32]) -> Result<&[f32]> {
        self.check_batch(slots, tokens)?;
        let name = self.runner.dev.name.clone();
        let done = guard(&name, || Pool::step(self, slots, tokens));
        self.spoil(slots, done)?;
        Ok(&self.logits)
    }

    fn close(&mut self, slot: usize) -> Result<State> {
        let name = self.runner.dev.name.clone();
        guard(&name, || Pool::close(self, slot))
    }

    fn held_bytes(&self) -> u64 {
        self.runner.dev.reserved_bytes()
    }
}
