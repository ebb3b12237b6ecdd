//! The recurrent form: one token at a time with a synapse state ρ per layer.
//!
//! Attention is strictly causal and has no softmax, so
//! `a_t = Σ_{τ<t} (R_t x_t · R_τ x_τ) v_τ = ρ_tᵀ R_t x_t` with `ρ_t = Σ_{τ<t} R_τ x_τ ⊗ v_τ`:
//! read `a_t` from ρ, then write `ρ += R_t x_t ⊗ v_t`. This equals the parallel
//! forward at every position, in memory that does not grow with the context. With a
//! decay, `ρ ← γ_h ρ` before each read gives the parallel form's `γ_h^(t−τ)`.
//!
//! Three pieces, so that many sequences can share one model: a [`Prepared`] model
//! (immutable, with derived layouts made once), a per-sequence [`State`] (plain
//! data: clone it to fork a sequence, save and restore it), and per-worker
//! [`Scratch`].

use bdh_kernels::{
    active_pairs, decay_state, gate_listed, gather_dot, layer_norm, matmul, parallel_heads, rho_read_write, rope,
    sparse_row_sum, transpose, MatMul, RopeDirection,
};

use super::edit::{Edits, Region, Site};
use super::forward::{forward, Activations, Pass};
use super::rope::{cos_sin, MAX_POSITION};
use super::{Bdh, BdhConfig};
use crate::error::{Error, Result};
use crate::model::{zeroed, Mode};

/// Everything a running sequence remembers: its position and ρ of each layer. A
/// state of B rows (for a batch of streams that advance together, as training with a
/// carried state reads them) holds (L, B, H, N, D); one sequence is B = 1.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// Tokens consumed so far (the position of the next one).
    pub pos: usize,
    /// ρ per layer, row and head, (L, B, H, N, D): `Σ_τ R_τ x_τ ⊗ v_τ`.
    pub rho: Vec<f32>,
}

impl State {
    /// The empty state of a sequence that has seen nothing.
    pub fn new(cfg: &BdhConfig) -> Result<Self> {
        let count = Self::shape(cfg).iter().try_fold(1usize, |p, &x| p.checked_mul(x));
        crate::memory::ensure_fits(crate::memory::f32_bytes(count), "the state ρ of a sequence")?;
        crate::infer::count_state();
        Ok(State { pos: 0, rho: zeroed(&Self::shape(cfg))? })
    }

    /// The empty state of `rows` streams read side by side.
    pub fn rows(cfg: &BdhConfig, rows: usize) -> Result<Self> {
        let count = Self::shape(cfg).iter().try_fold(rows, |p, &x| p.checked_mul(x));
        crate::memory::ensure_fits(crate::memory::f32_bytes(count), "the state ρ of a batch of streams")?;
        crate::infer::count_state();
        Ok(State { pos: 0, rho: zeroed(&[rows, cfg.n_layer, cfg.n_head, cfg.n_neurons(), cfg.n_embd])? })
    }

    /// The shape of one sequence's ρ for `cfg`: (L, H, N, D).
    pub fn shape(cfg: &BdhConfig) -> [usize; 4] {
        [cfg.n_layer, cfg.n_head, cfg.n_neurons(), cfg.n_embd]
    }

    /// Checks that this state holds `rows` streams of a model of config `cfg`.
    pub fn check_rows(&self, cfg: &BdhConfig, rows: usize) -> Result<()> {
        let one: usize = Self::shape(cfg).iter().product();
        if self.rho.len() != one.saturating_mul(rows) {
            return Err(Error::Input(format!(
                "a state of {} values is not ρ {:?} for {rows} stream(s)",
                self.rho.len(),
                Self::shape(cfg)
            )));
        }
        Ok(())
    }

    /// Bytes the state occupies.
    pub fn bytes(&self) -> usize {
        self.rho.len() * std::mem::size_of::<f32>()
    }

    /// Checks that this state belongs to a model of config `cfg`.
    pub fn check(&self, cfg: &BdhConfig) -> Result<()> {
        let want: usize = Self::shape(cfg).iter().product();
        if self.rho.len() != want {
            return Err(Error::Input(format!(
                "a state of {} values does not fit this model's ρ {:?}",
                self.rho.len(),
                Self::shape(cfg)
            )));
        }
        Ok(())
    }
}

/// A model ready for inference, shared by every sequence that runs on it.
#[derive(Clone, Debug)]
pub struct Prepared {
    model: Bdh,
    encoder_v_t: Vec<f32>, // (H, N, D) encoder_v with each neuron's weights contiguous
    retention: Vec<f32>,   // (H) γ_h, or empty without decay
}

/// Per-head scratch of one step.
#[derive(Clone, Debug)]
pub(super) struct Head {
    x: Vec<f32>,      // (N) neurons
    xr: Vec<f32>,     // (N) rotated neurons
    a: Vec<f32>,      // (D) attention readout
    y: Vec<f32>,      // (|cols|) y on the active neurons
    z: Vec<f32>,      // (N) x ⊙ y, valid on `z_rows`
    u: Vec<f32>,      // (D) this head's share of the decoder output
    rows: Vec<u32>,   // rows of the active RoPE pairs
    cols: Vec<u32>,   // active neurons
    z_rows: Vec<u32>, // non-zero entries of z
}

impl Head {
    /// Scratch of one head of a model with `d` embedding dimensions and `n` neurons.
    pub(super) fn new(d: usize, n: usize) -> Self {
        Head {
            x: vec![0.0; n],
            xr: vec![0.0; n],
            a: vec![0.0; d],
            y: Vec::with_capacity(n),
            z: vec![0.0; n],
            u: vec![0.0; d],
            rows: Vec::with_capacity(n),
            cols: Vec::with_capacity(n),
            z_rows: Vec::with_capacity(n),
        }
    }

    /// This head's share of the decoder output (D).
    pub(super) fn u(&self) -> &[f32] {
        &self.u
    }
}

/// What one worker needs to run steps: buffers reused from token to token, and the
/// activations of a prefill chunk.
#[derive(Debug)]
pub struct Scratch {
    v: Vec<f32>,      // (D) residual stream
    u: Vec<f32>,      // (D) decoder output
    heads: Vec<Head>, // (H)
    logits: Vec<f32>, // (V)
    cos: Vec<f32>,    // (N/2) RoPE rotation of the current position, per pair
    sin: Vec<f32>,    // (N/2)
    dense: bool,      // touch every row, not only those of active neurons
    chunk: Option<Activations>,
}

impl Scratch {
    /// Scratch that reads and writes every row of ρ, `encoder_v` and `decoder`
    /// whether its neuron fired or not: the same numbers, without the sparse
    /// savings, as a baseline for them.
    pub fn dense(self) -> Self {
        Scratch { dense: true, ..self }
    }
}

/// Bytes of activations a prefill chunk may take; longer prompts run in several chunks.
const PREFILL_BYTES: usize = 256 << 20;

impl Prepared {
    /// Prepares `model`: the transposed `encoder_v` the sparse step reads.
    pub fn new(model: Bdh) -> Result<Self> {
        let c = &model.config;
        let (d, n) = (c.n_embd, c.n_neurons());
        let mut encoder_v_t = zeroed(&[c.n_head, n, d])?;
        for (src, dst) in model.weights().encoder_v.chunks_exact(d * n).zip(encoder_v_t.chunks_exact_mut(n * d)) {
            transpose(dst, src, d, n);
        }
        let retention = c.decay.retention(c.n_head);
        Ok(Prepared { model, encoder_v_t, retention })
    }

    /// The model.
    pub fn model(&self) -> &Bdh {
        &self.model
    }

    /// The empty state of a new sequence.
    pub fn state(&self) -> Result<State> {
        State::new(&self.model.config)
    }

    /// Bytes a state of this model occupies (ρ: L·H·N·D values), without making one.
    pub fn state_bytes(&self) -> usize {
        let shape = State::shape(&self.model.config);
        shape.iter().try_fold(4usize, |p, &x| p.checked_mul(x)).unwrap_or(usize::MAX)
    }

    /// ρ ← γ_h ρ of head `hi` before its read (nothing without decay, or with
    /// γ_h = 1): every row fades, so this touches the whole state.
    pub(super) fn decay(&self, hi: usize, rho: &mut [f32]) {
        if let Some(&gamma) = self.retention.get(hi).filter(|&&g| g != 1.0) {
            decay_state(rho, gamma);
        }
    }

    /// The transposed `encoder_v`, (H, N, D).
    pub(super) fn encoder_v_t(&self) -> &[f32] {
        &self.encoder_v_t
    }

    /// Scratch for one worker.
    pub fn scratch(&self) -> Scratch {
        let c = &self.model.config;
        let (d, n) = (c.n_embd, c.n_neurons());
        Scratch {
            v: vec![0.0; d],
            u: vec![0.0; d],
            heads: vec![Head::new(d, n); c.n_head],
            logits: vec![0.0; c.vocab_size],
            cos: vec![0.0; n / 2],
            sin: vec![0.0; n / 2],
            dense: false,
            chunk: None,
        }
    }

    /// Tokens per prefill chunk: as many as fit [`PREFILL_BYTES`] of activations
    /// (16 to 512).
    pub fn prefill_chunk(&self) -> usize {
        let c = &self.model.config;
        let per_token = 4 * c.n_layer * c.n_head * (3 * c.n_neurons() + 2 * c.n_embd + 512);
        (PREFILL_BYTES / per_token.max(1)).clamp(16, 512)
    }

    /// Consumes `tokens` after what `state` has seen and returns the logits after the
    /// last one. The parallel forward runs over chunks of [`Prepared::prefill_chunk`]
    /// tokens, reading and extending ρ, so memory stays bounded whatever the length.
    /// With ρ edits it steps token by token (they act between tokens).
    pub fn prefill<'s>(
        &self,
        state: &mut State,
        scratch: &'s mut Scratch,
        tokens: &[u32],
        edits: &Edits,
    ) -> Result<&'s [f32]> {
        if tokens.is_empty() {
            return Err(Error::Input("prefill: no tokens".into()));
        }
        state.check(&self.model.config)?;
        self.check(scratch)?;
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            // Refused before any chunk is read, so the state is left as it was.
            return Err(Error::Input(format!("prefill: token id {bad} ≥ vocab_size {vocab}")));
        }
        if state.pos.saturating_add(tokens.len()) > MAX_POSITION {
            return Err(Error::Input(format!(
                "prefill: a state at position {} cannot read {} more tokens: past 2^24 ({MAX_POSITION}) positions \
                 are no longer exact in f32",
                state.pos,
                tokens.len()
            )));
        }
        if edits.touches(Site::Rho) {
            for &tok in tokens {
                self.step(state, scratch, tok, edits)?;
            }
            return Ok(&scratch.logits);
        }
        let v = self.model.config.vocab_size;
        for part in tokens.chunks(self.prefill_chunk()) {
            let t = part.len();
            let acts = Activations::reuse(&mut scratch.chunk, &self.model, 1, t)?;
            forward(&self.model, part, acts, Pass { mode: Mode::Eval, edits, state: Some(state) })?;
            scratch.logits.copy_from_slice(&acts.logits[(t - 1) * v..t * v]);
        }
        Ok(&scratch.logits)
    }

    /// Checks that `scratch` was made for a model of this one's sizes.
    fn check(&self, scratch: &Scratch) -> Result<()> {
        let c = &self.model.config;
        let fits = scratch.v.len() == c.n_embd
            && scratch.logits.len() == c.vocab_size
            && scratch.heads.len() == c.n_head
            && scratch.heads.iter().all(|h| h.x.len() == c.n_neurons());
        if !fits {
            return Err(Error::Input("scratch made for a model of other sizes".into()));
        }
        Ok(())
    }

    /// Consumes one token and returns the logits for the next.
    pub fn step<'s>(
        &self,
        state: &mut State,
        scratch: &'s mut Scratch,
        token: u32,
        edits: &Edits,
    ) -> Result<&'s [f32]> {
        let m = &self.model;
        let c = &m.config;
        let p = m.weights();
        let (d, h, n, vocab) = (c.n_embd, c.n_head, c.n_neurons(), c.vocab_size);
        if token as usize >= vocab {
            return Err(Error::Input(format!("token id {token} ≥ vocab_size {vocab}")));
        }
        state.check(c)?;
        self.check(scratch)?;
        if state.pos >= MAX_POSITION {
            return Err(Error::Input(format!(
                "the state is at position {}: past 2^24 ({MAX_POSITION}) positions are no longer exact in f32",
                state.pos
            )));
        }
        if !edits.is_empty() {
            edits.validate(c)?;
            if edits.has_patches() || edits.touches(Site::Out) {
                return Err(Error::Input("patches and layer-output edits apply to the parallel forward".into()));
            }
        }
        let s = scratch;
        let pos = state.pos;
        let mut rstd = [0.0f32];
        // The rotation of position `pos`, shared by every layer and head.
        for (j, (c, s)) in s.cos.iter_mut().zip(s.sin.iter_mut()).enumerate() {
            (*c, *s) = cos_sin(pos, m.freqs[2 * j]);
        }

        // v = LN(embed[token])                                              (D)
        s.v.copy_from_slice(&p.embed[token as usize * d..(token as usize + 1) * d]);
        layer_norm(&mut s.v, &mut rstd, d);
        for l in 0..c.n_layer {
            let rho_l = &mut state.rho[l * h * n * d..(l + 1) * h * n * d];
            let (v, cos, sin, dense) = (&s.v, &s.cos[..], &s.sin[..], s.dense);
            parallel_heads(&mut s.heads, rho_l, |hi, hd, rho| {
                self.decay(hi, rho);
                let w = HeadWeights {
                    encoder: &p.encoder[hi * d * n..(hi + 1) * d * n],
                    encoder_v_t: &self.encoder_v_t[hi * n * d..(hi + 1) * n * d],
                    decoder: &p.decoder[hi * n * d..(hi + 1) * n * d],
                };
                let at = At { layer: l, head: hi, pos, edits };
                head_step(hd, rho, v, None, w, (cos, sin), dense, at);
            });
            // u = Σ_h z_h · decoder_h;  v = LN(v + LN(u))                   (D)
            s.u.fill(0.0);
            for hd in &s.heads {
                s.u.iter_mut().zip(&hd.u).for_each(|(o, &x)| *o += x);
            }
            layer_norm(&mut s.u, &mut rstd, d);
            s.v.iter_mut().zip(&s.u).for_each(|(vi, &ui)| *vi += ui);
            layer_norm(&mut s.v, &mut rstd, d);
        }
        // logits = v · lm_head                                              (V)
        matmul(&mut s.logits, &s.v, p.lm_head, MatMul::new(1, d, vocab));
        state.pos += 1;
        Ok(&s.logits)
    }
}

/// One head's weights.
pub(super) struct HeadWeights<'a> {
    pub(super) encoder: &'a [f32],     // (D, N)
    pub(super) encoder_v_t: &'a [f32], // (N, D)
    pub(super) decoder: &'a [f32],     // (N, D)
}

/// Where a head step is, for the edits.
pub(super) struct At<'a> {
    pub(super) layer: usize,
    pub(super) head: usize,
    pub(super) pos: usize,
    pub(super) edits: &'a Edits,
}

/// One head of one layer at the current position: x, the synapse read and write,
/// y on the active neurons, and this head's decoder output `hd.u`. `x_given` is x
/// when already computed (a batched step makes it for many sequences in one
/// product), else it is computed here.
#[allow(clippy::too_many_arguments)]
pub(super) fn head_step(
    hd: &mut Head,
    rho: &mut [f32],
    v: &[f32],
    x_given: Option<&[f32]>,
    w: HeadWeights,
    (cos, sin): (&[f32], &[f32]),
    dense: bool,
    at: At,
) {
    let (d, n) = (v.len(), hd.x.len());
    // x = relu(v · encoder_h)                                               (N)
    match x_given {
        Some(x) => hd.x.copy_from_slice(x),
        None => matmul(&mut hd.x, v, w.encoder, MatMul::new(1, d, n).relu()),
    }
    let one = |width| Region { head0: at.head, heads: 1, pos0: at.pos, t: 1, n, width };
    let mut rstd = [0.0f32];
    at.edits.apply(Site::X, at.layer, &mut hd.x, one(1));
    // R_t x, and the RoPE pairs with an active neuron
    rope(&mut hd.xr, &hd.x, cos, sin, n, RopeDirection::Forward);
    active_pairs(&hd.x, &mut hd.rows, &mut hd.cols, dense);
    // a = LN(ρᵀ R_t x), read before the write ρ += R_t x ⊗ v                  (D)
    at.edits.apply(Site::Rho, at.layer, rho, one(d));
    rho_read_write(&mut hd.a, rho, &hd.xr, v, &hd.rows);
    layer_norm(&mut hd.a, &mut rstd, d);
    // y = relu(a · encoder_v_h), needed only where x > 0;  z = x ⊙ y
    hd.y.resize(hd.cols.len(), 0.0);
    gather_dot(&mut hd.y, &hd.a, w.encoder_v_t, &hd.cols);
    at.edits.apply_listed(Site::Y, at.layer, at.head, at.pos, &hd.cols, &mut hd.y);
    if at.edits.any(Site::Xy, at.layer) {
        // Edited x ⊙ y may be non-zero anywhere: gate into a whole vector, then list.
        hd.z.fill(0.0);
        gate_listed(&mut hd.z, &hd.x, &hd.y, &hd.cols, &mut hd.z_rows, dense);
        at.edits.apply(Site::Xy, at.layer, &mut hd.z, one(1));
        hd.z_rows.clear();
        hd.z_rows.extend((0..n as u32).filter(|&i| dense || hd.z[i as usize] != 0.0));
    } else {
        gate_listed(&mut hd.z, &hd.x, &hd.y, &hd.cols, &mut hd.z_rows, dense);
    }
    // u_h = z_h · decoder_h over the non-zero z                              (D)
    sparse_row_sum(&mut hd.u, &hd.z, w.decoder, &hd.z_rows);
}
