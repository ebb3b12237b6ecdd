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
//! [`Scratch`]. The state lives in [`super::state`].
//!
//! One step advances 1…B streams by one token each ([`Prepared::step`]; one stream
//! is a one-element call). The products with weights every stream shares are B-row
//! products, each weight read once for all rows: `x = relu(v · encoder_h)` and
//! `logits = v · lm_head`. What depends on a stream's own neurons stays per row and
//! sparse: the read and write of its ρ, `y = relu(a · encoder_v)` on its active
//! neurons only, the decoder product over its non-zero `x ⊙ y`. Up to 16 rows the
//! shared products sum in one row's order, so a stream's logits are bit for bit the
//! same alone or in a batch; beyond, the blocked product rounds differently (within
//! a few ulps).

use bdh_kernels::{
    active_pairs, gate_listed, gather_dot, matmul, narrow, parallel_each, rho_read_write, rho_read_write_half,
    rho_write, rope, sparse_row_sum, transpose, widen, MatMul, RopeDirection,
};

use super::activations::Activations;
use super::decay::Damping;
use super::delay::Queue;
use super::edit::{Edits, Region, Site};
use super::forward::{forward, Pass};
use super::key::KeySite;
use super::norm::{NormSite, Place};
use super::rho::{RhoMut, StateDtype};
use super::rope::cos_sin;
use super::state::State;
use super::threshold::ThresholdSite;
use super::variant::Residual;
use super::Bdh;
use crate::error::{Error, Result};
use crate::model::{check_positions, check_tokens, zeroed, Mode};

/// A model ready for inference, shared by every sequence that runs on it.
#[derive(Clone, Debug)]
pub struct Prepared {
    model: Bdh,
    encoder_v_t: Vec<f32>,      // (H, N, D) encoder_v with each neuron's weights contiguous
    damping: Damping,           // how ρ fades before each read
    keys: Option<Box<KeySite>>, // the write's key, when not x itself
    queue: Option<Box<Queue>>,  // the delayed writes, with delays
    dtype: StateDtype,          // how the states it makes store ρ
}

/// Buffers of a step of 1…B streams, grown to the largest batch seen and reused,
/// and the activations of a prefill chunk: one per worker.
#[derive(Debug)]
pub struct Scratch {
    v: Vec<f32>,                 // (B, D) residual streams
    u: Vec<f32>,                 // (B, D) decoder outputs
    stats: Vec<f32>,             // (B, 2) the norm's statistics per stream
    logits: Vec<f32>,            // (B, V)
    heads: Vec<HeadScratch>,     // (H)
    rotations: Vec<Rotation>,    // (≥ B) the rotation of each stream's position
    dims: (usize, usize, usize), // (D, N, V) of the model it was made for
    dense: bool,                 // touch every row, not only those of active neurons
    chunk: Option<Activations>,
}

/// One head's buffers for every stream of a step.
#[derive(Clone, Debug)]
struct HeadScratch {
    x: Vec<f32>,          // (B, N) this head's neurons of every stream
    x_in: Vec<f32>,       // (B, N) x of the layer before, with the residual in the neurons
    streams: Vec<Stream>, // (≥ B)
}

/// One (stream, head)'s buffers.
#[derive(Clone, Debug)]
struct Stream {
    xr: Vec<f32>,       // (N) rotated neurons
    key: Vec<f32>,      // (N) the write's key, with a mechanism there
    kr: Vec<f32>,       // (N) the key rotated
    key_rows: Vec<u32>, // rows of the key's active RoPE pairs
    key_cols: Vec<u32>, // its active neurons (unused)
    a: Vec<f32>,        // (D) attention readout
    y: Vec<f32>,        // (|cols|) y on the active neurons
    z: Vec<f32>,        // (N) x ⊙ y, valid on `z_rows`
    u: Vec<f32>,        // (D) this head's share of the decoder output
    wide: Vec<f32>,     // (N, D) a 16-bit ρ widened, with a mechanism or an edit at ρ
    rows: Vec<u32>,     // rows of the active RoPE pairs
    cols: Vec<u32>,     // active neurons
    z_rows: Vec<u32>,   // non-zero entries of z
}

/// A stream's position and the cos and sin of its rotation per RoPE pair, (N/2) each.
#[derive(Clone, Debug)]
struct Rotation {
    pos: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Scratch {
    /// Scratch that reads and writes every row of ρ, `encoder_v` and `decoder`
    /// whether its neuron fired or not: the same numbers, without the sparse
    /// savings, as a baseline for them.
    pub fn dense(self) -> Self {
        Scratch { dense: true, ..self }
    }

    /// Sizes every buffer for `b` streams, keeping what larger batches allocated.
    fn resize(&mut self, b: usize) {
        let (d, n, vocab) = self.dims;
        self.v.resize(b * d, 0.0);
        self.u.resize(b * d, 0.0);
        self.stats.resize(2 * b, 0.0);
        self.logits.resize(b.max(1) * vocab, 0.0);
        // Per-stream buffers are only ever added, so a batch that shrinks and grows
        // again reuses them.
        let more = b.saturating_sub(self.rotations.len());
        let rotation = || Rotation { pos: 0, cos: vec![0.0; n / 2], sin: vec![0.0; n / 2] };
        self.rotations.extend(std::iter::repeat_with(rotation).take(more));
        for hs in &mut self.heads {
            hs.x.resize(b * n, 0.0);
            hs.x_in.resize(b * n, 0.0);
            let more = b.saturating_sub(hs.streams.len());
            hs.streams.extend(std::iter::repeat_with(|| Stream::new(d, n)).take(more));
        }
    }
}

impl Stream {
    fn new(d: usize, n: usize) -> Self {
        Stream {
            xr: vec![0.0; n],
            key: vec![0.0; n],
            kr: vec![0.0; n],
            key_rows: Vec::with_capacity(n),
            key_cols: Vec::with_capacity(n),
            a: vec![0.0; d],
            y: Vec::with_capacity(n),
            z: vec![0.0; n],
            u: vec![0.0; d],
            wide: Vec::new(),
            rows: Vec::with_capacity(n),
            cols: Vec::with_capacity(n),
            z_rows: Vec::with_capacity(n),
        }
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
        let damping = Damping::new(model.retention(), model.config.n_head);
        let keys = model.key_site().map(Box::new);
        let queue = Queue::new(&model.config, model.delays(), model.retention()).map(Box::new);
        Ok(Prepared { model, encoder_v_t, damping, keys, queue, dtype: StateDtype::F32 })
    }

    /// The same, making states whose ρ is stored as `dtype` ([`Prepared::state`]);
    /// a step takes states of any type, each as it is. Refused for a state that fades
    /// more slowly than the type resolves: a fade by γ moves a value by 1 − γ of it,
    /// and where that is under 16 of its rounding steps (bf16: 1 − γ < 2⁻⁵; f16:
    /// 2⁻⁸) each token's rounding would change how fast it fades.
    pub fn with_state_dtype(self, dtype: StateDtype) -> Result<Self> {
        self.holds(dtype)?;
        Ok(Prepared { dtype, ..self })
    }

    /// Whether a state of `dtype` can hold this model's decay (see [`Prepared::with_state_dtype`]).
    pub(crate) fn holds(&self, dtype: StateDtype) -> Result<()> {
        let bits = match dtype {
            StateDtype::F32 => return Ok(()),
            StateDtype::Bf16 => 5,
            StateDtype::F16 => 8,
        };
        match self.damping.slowest_fade().filter(|&f| f < (0.5f32).powi(bits)) {
            Some(fade) => Err(Error::Input(format!(
                "a {dtype} state cannot hold this model's decay: its slowest fade, γ = {:.6} a token, moves a value \
                 by less than 16 of {dtype}'s rounding steps (1 − γ under 2^-{bits}), so rounding would change how \
                 fast it fades; keep f32 for it",
                1.0 - fade
            ))),
            None => Ok(()),
        }
    }

    /// The empty state of a new sequence with ρ stored as `dtype`, whatever type this
    /// prepared model makes by default (refused as [`Prepared::with_state_dtype`] refuses).
    pub fn state_of(&self, dtype: StateDtype) -> Result<State> {
        self.holds(dtype)?;
        State::with_dtype(&self.model.config, dtype)
    }

    /// How the states it makes store ρ.
    pub fn state_dtype(&self) -> StateDtype {
        self.dtype
    }

    /// The model.
    pub fn model(&self) -> &Bdh {
        &self.model
    }

    /// The empty state of a new sequence.
    pub fn state(&self) -> Result<State> {
        State::with_dtype(&self.model.config, self.dtype)
    }

    /// Bytes a state of this model occupies (ρ: L·H·N·D values of its type, and the
    /// mechanisms' per-stream state), without making one.
    pub fn state_bytes(&self) -> usize {
        State::bytes_of(&self.model.config, 1, self.dtype)
    }

    /// Scratch for one worker.
    pub fn scratch(&self) -> Scratch {
        let c = &self.model.config;
        let (d, n) = (c.n_embd, c.n_neurons());
        let head = HeadScratch { x: Vec::new(), x_in: Vec::new(), streams: Vec::new() };
        let mut s = Scratch {
            v: Vec::new(),
            u: Vec::new(),
            stats: Vec::new(),
            logits: Vec::new(),
            heads: vec![head; c.n_head],
            rotations: Vec::new(),
            dims: (d, n, c.vocab_size),
            dense: false,
            chunk: None,
        };
        s.resize(1);
        s
    }

    /// Tokens per prefill chunk: as many as fit [`PREFILL_BYTES`] of activations
    /// (16 to 512).
    pub fn prefill_chunk(&self) -> usize {
        let c = &self.model.config;
        // (and 4 N more with a mechanism at the write's key: its key, rotation and traces)
        let per_n = if KeySite::width(c) > 0 { 7 } else { 3 };
        let per_token = 4 * c.n_layer * c.n_head * (per_n * c.n_neurons() + 2 * c.n_embd + 512);
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
        // Refused before any chunk is read, so the state is left as it was.
        check_tokens(tokens, self.model.config.vocab_size, "prefill")?;
        check_positions(state.pos, tokens.len(), "prefill")?;
        if edits.touches(Site::Rho) {
            for &tok in tokens {
                self.step(&mut [&mut *state], scratch, &[tok], edits)?;
            }
            return Ok(&scratch.logits[..self.model.config.vocab_size]);
        }
        let v = self.model.config.vocab_size;
        for part in tokens.chunks(self.prefill_chunk()) {
            let t = part.len();
            let acts = Activations::reuse(&mut scratch.chunk, &self.model, 1, t)?;
            forward(&self.model, part, acts, Pass { mode: Mode::Eval, edits, state: Some(state) })?;
            scratch.logits[..v].copy_from_slice(&acts.logits[(t - 1) * v..t * v]);
        }
        Ok(&scratch.logits[..v])
    }

    /// Checks that `scratch` was made for a model of this one's sizes.
    fn check(&self, scratch: &Scratch) -> Result<()> {
        let c = &self.model.config;
        if scratch.dims != (c.n_embd, c.n_neurons(), c.vocab_size) || scratch.heads.len() != c.n_head {
            return Err(Error::Mismatch("scratch made for a model of other sizes".into()));
        }
        Ok(())
    }

    /// Consumes one token per stream (`tokens[b]` after what `states[b]` has read)
    /// and returns the logits for the next token of every stream, (B, V). Each
    /// state keeps its own position; the edits act on every stream; B = 0 does
    /// nothing. Every input is checked before any state changes.
    pub fn step<'s>(
        &self,
        states: &mut [&mut State],
        scratch: &'s mut Scratch,
        tokens: &[u32],
        edits: &Edits,
    ) -> Result<&'s [f32]> {
        let m = &self.model;
        let c = &m.config;
        let p = m.weights();
        let (d, h, n, vocab, b) = (c.n_embd, c.n_head, c.n_neurons(), c.vocab_size, tokens.len());
        if states.len() != b {
            return Err(Error::Input(format!("step: {} states for {b} tokens", states.len())));
        }
        check_tokens(tokens, vocab, "step")?;
        for st in states.iter() {
            st.check(c)?;
            check_positions(st.pos, 1, "step")?;
        }
        self.check(scratch)?;
        if !edits.is_empty() {
            edits.validate(c)?;
            if edits.has_patches() || edits.touches(Site::Out) {
                return Err(Error::Input("patches and layer-output edits apply to the parallel forward".into()));
            }
        }
        let s = scratch;
        s.resize(b);
        if b == 0 {
            return Ok(&s.logits[..0]);
        }
        for (rot, st) in s.rotations.iter_mut().zip(states.iter()) {
            rot.pos = st.pos;
            for (j, (cj, sj)) in rot.cos.iter_mut().zip(rot.sin.iter_mut()).enumerate() {
                (*cj, *sj) = cos_sin(st.pos, m.freqs[2 * j]);
            }
        }

        // v = LN(embed[token])                                              (B, D)
        for (vb, &tok) in s.v.chunks_exact_mut(d).zip(tokens) {
            vb.copy_from_slice(&p.embed[tok as usize * d..(tok as usize + 1) * d]);
        }
        let (norm, k) = (NormSite::new(c, p.norm), c.norm.stats());
        norm.forward(&mut s.v, &mut s.stats[..b * k], d, Place::Embed);
        for l in 0..c.n_layer {
            // Per head (the unit of parallel work): its neurons for every stream in
            // one product, then each stream's read, write and decoder share.
            let mut work: Vec<HeadWork> = s
                .heads
                .iter_mut()
                .enumerate()
                .map(|(head, hs)| HeadWork {
                    head,
                    hs,
                    rho: Vec::with_capacity(b),
                    keys: Vec::with_capacity(b),
                    rings: Vec::with_capacity(b),
                })
                .collect();
            let (w, wq) = (KeySite::width(c), Queue::width(c));
            for st in states.iter_mut() {
                let rho_l = st.rho.part(l * h * n * d..(l + 1) * h * n * d);
                for (hw, rho) in work.iter_mut().zip(rho_l.chunks(n * d)) {
                    hw.rho.push(rho);
                }
                if w > 0 {
                    let keys_l = &mut st.keys[l * h * w..(l + 1) * h * w];
                    for (hw, keys) in work.iter_mut().zip(keys_l.chunks_exact_mut(w)) {
                        hw.keys.push(keys);
                    }
                }
                if wq > 0 {
                    let queue_l = &mut st.queue[l * h * wq..(l + 1) * h * wq];
                    for (hw, ring) in work.iter_mut().zip(queue_l.chunks_exact_mut(wq)) {
                        hw.rings.push(ring);
                    }
                }
            }
            let at = LayerStep { layer: l, v: &s.v, rotations: &s.rotations, edits, dense: s.dense };
            parallel_each(&mut work, |hw| self.head(hw, &at));
            drop(work);
            // u = Σ_h z_h · decoder_h;  v = LN(v + LN(u))                     (B, D)
            for (r, ub) in s.u.chunks_exact_mut(d).enumerate() {
                ub.fill(0.0);
                for hs in &s.heads {
                    ub.iter_mut().zip(&hs.streams[r].u).for_each(|(o, &x)| *o += x);
                }
            }
            norm.forward(&mut s.u, &mut s.stats[..b * k], d, Place::Decoder);
            match c.residual {
                Residual::D => {
                    s.v.iter_mut().zip(&s.u).for_each(|(vi, &ui)| *vi += ui);
                    norm.forward(&mut s.v, &mut s.stats[..b * k], d, Place::Residual);
                }
                //   (the residual in the neurons: v = N(u))
                Residual::N => s.v.copy_from_slice(&s.u),
            }
        }
        // logits = v · lm_head                                              (B, V)
        matmul(&mut s.logits[..b * vocab], &s.v, p.lm_head, MatMul::new(b, d, vocab).par());
        for st in states.iter_mut() {
            st.pos += 1;
        }
        Ok(&s.logits[..b * vocab])
    }

    /// One head of one layer for every stream: `x = relu(v · encoder_h)` for all
    /// rows at once, then each stream's part (in parallel when there are several).
    fn head(&self, hw: &mut HeadWork, at: &LayerStep) {
        let c = &self.model.config;
        let (d, n, b) = (c.n_embd, c.n_neurons(), at.v.len() / c.n_embd);
        let w = self.model.weights();
        let encoder = &w.encoder[hw.head * d * n..][..d * n];
        // x = relu(v · encoder_h)                                           (B, N)
        //   (the threshold site: relu(v · encoder_h − θ) with a threshold per neuron)
        let threshold = ThresholdSite::new(c, w.threshold, w.activity);
        matmul(&mut hw.hs.x, at.v, encoder, threshold.product(MatMul::new(b, d, n)));
        threshold.encode(&mut hw.hs.x, n, |_| hw.head);
        //   (the residual in the neurons: x = x_{l−1} + relu(v · encoder_h), x_0 = 0)
        let in_neurons = !c.residual.is_d();
        if in_neurons && at.layer > 0 {
            hw.hs.x.iter_mut().zip(&hw.hs.x_in).for_each(|(x, &x0)| *x += x0);
        }
        let HeadScratch { x, x_in, streams } = &mut *hw.hs;
        let (mut keys, mut rings) = (hw.keys.iter_mut(), hw.rings.iter_mut());
        let mut work: Vec<StreamHead> = (streams.iter_mut().zip(x.chunks_exact_mut(n)).zip(hw.rho.drain(..)))
            .enumerate()
            .map(|(row, ((st, x), rho))| {
                let (keys, ring) = (keys.next().map(|k| &mut **k), rings.next().map(|r| &mut **r));
                StreamHead { row, st, x, rho, keys, ring }
            })
            .collect();
        parallel_each(&mut work, |w| self.stream_head(hw.head, w, at));
        drop(work);
        if in_neurons {
            x_in.copy_from_slice(x);
        }
    }

    /// One stream's part of a head's step: the synapse read and write, y on the
    /// active neurons and the head's decoder share.
    fn stream_head(&self, hi: usize, w: &mut StreamHead, at: &LayerStep) {
        let c = &self.model.config;
        let p = self.model.weights();
        let (d, n) = (c.n_embd, c.n_neurons());
        let decoder = &p.decoder[hi * n * d..][..n * d];
        let encoder_v_t = &self.encoder_v_t[hi * n * d..][..n * d];
        let StreamHead { row, st, x, rho, keys, ring } = w;
        let v = &at.v[*row * d..(*row + 1) * d];
        let rotation = &at.rotations[*row];
        let pos = rotation.pos;
        let one = |width| Region { head0: hi, heads: 1, pos0: pos, t: 1, n, width };
        let mut stats = [0.0f32; 2];
        at.edits.apply(Site::X, at.layer, x, one(1));
        // R_t x, and the RoPE pairs with an active neuron
        rope(&mut st.xr, x, &rotation.cos, &rotation.sin, n, RopeDirection::Forward);
        active_pairs(x, &mut st.rows, &mut st.cols, at.dense);
        let synapse = Synapse { hi, x: &x[..], v, rotation, keys: keys.as_deref_mut(), ring: ring.as_deref_mut() };
        match rho {
            RhoMut::F32(rho) => self.synapse(st, rho, synapse, at),
            // (a 16-bit ρ: its fade, then the read and write in one pass over its active
            // rows, read and summed in f32; with a key or queue of its own or an edit at
            // ρ, the head's ρ widened around the same f32 steps)
            RhoMut::Half(rho, half) if self.plain_synapse(hi) && !at.edits.any(Site::Rho, at.layer) => {
                self.damping.step_half(hi, rho, *half);
                rho_read_write_half(&mut st.a, rho, &st.xr, v, &st.rows, *half)
            }
            RhoMut::Half(rho, half) => {
                let mut wide = std::mem::take(&mut st.wide);
                wide.resize(rho.len(), 0.0);
                widen(&mut wide, rho, *half);
                self.synapse(st, &mut wide, synapse, at);
                narrow(rho, &wide, *half);
                st.wide = wide;
            }
        }
        NormSite::new(c, p.norm).forward(&mut st.a, &mut stats[..c.norm.stats()], d, Place::Read);
        // y = relu(a · encoder_v_h), needed only where x > 0;  z = x ⊙ y
        st.y.resize(st.cols.len(), 0.0);
        gather_dot(&mut st.y, &st.a, encoder_v_t, &st.cols);
        at.edits.apply_listed(Site::Y, at.layer, hi, pos, &st.cols, &mut st.y);
        let mechanisms = &self.model.mechanisms;
        let whole = at.edits.any(Site::Xy, at.layer) || mechanisms.any(Site::Xy);
        if whole {
            // An edited x ⊙ y, or one the gate's mechanism maps, may be non-zero
            // anywhere: gate into a whole vector, then list.
            st.z.fill(0.0);
        }
        gate_listed(&mut st.z, x, &st.y, &st.cols, &mut st.z_rows, at.dense);
        if whole {
            mechanisms.forward(Site::Xy, at.layer, &mut st.z, one(1));
            at.edits.apply(Site::Xy, at.layer, &mut st.z, one(1));
            st.z_rows.clear();
            st.z_rows.extend((0..n as u32).filter(|&i| at.dense || st.z[i as usize] != 0.0));
        }
        // u_h = z_h · decoder_h over the non-zero z                           (D)
        sparse_row_sum(&mut st.u, &st.z, decoder, &st.z_rows);
    }

    /// Whether head `hi`'s read and write are bdh.py's (with a fade at most): no key
    /// of its own, no queued writes.
    fn plain_synapse(&self, hi: usize) -> bool {
        self.keys.is_none() && !self.queue.as_ref().is_some_and(|q| q.delays(hi))
    }

    /// One stream's synapse read and write in one head, on its ρ in f32: the state's
    /// sites in order (damping, ρ edits, the write's key, delayed writes), `st.a` the read.
    fn synapse(&self, st: &mut Stream, rho: &mut [f32], w: Synapse, at: &LayerStep) {
        let Synapse { hi, x, v, rotation, keys, ring } = w;
        let (n, d) = (self.model.config.n_neurons(), self.model.config.n_embd);
        let Rotation { pos, cos, sin } = rotation;
        let one = Region { head0: hi, heads: 1, pos0: *pos, t: 1, n, width: d };
        // (the state's damping site: ρ fades before the read)
        self.damping.step(hi, rho);
        // a = LN(ρᵀ R_t x), read before the write ρ += R_t x ⊗ v                (D)
        at.edits.apply(Site::Rho, at.layer, rho, one);
        //   (the write's key site: ρ += R_t key ⊗ v, the key's traces advancing by x)
        if let (Some(site), Some(traces)) = (&self.keys, keys) {
            site.step(hi, x, traces, &mut st.key);
            rope(&mut st.kr, &st.key, cos, sin, n, RopeDirection::Forward);
            active_pairs(&st.key, &mut st.key_rows, &mut st.key_cols, at.dense);
        }
        let (key, key_rows) = if self.keys.is_some() { (&st.kr, &st.key_rows) } else { (&st.xr, &st.rows) };
        match (self.queue.as_ref().filter(|q| q.delays(hi)), ring) {
            //   (the read's mask site: the write joins the queue; the one at lag m + 1 is read
            //   and enters ρ)
            (Some(queue), Some(ring)) => {
                sparse_row_sum(&mut st.a, &st.xr, rho, &st.rows);
                queue.step(hi, *pos, rho, (&mut st.a, &st.xr), (key, v), ring);
            }
            _ if self.keys.is_some() => {
                sparse_row_sum(&mut st.a, &st.xr, rho, &st.rows);
                rho_write(rho, key, v, key_rows);
            }
            _ => rho_read_write(&mut st.a, rho, &st.xr, v, &st.rows),
        }
    }
}

/// One stream's buffers and state in one head's step: the unit of parallel work
/// within a head.
struct StreamHead<'a> {
    row: usize,
    st: &'a mut Stream,
    x: &'a mut [f32],            // (N) its neurons
    rho: RhoMut<'a>,             // (N, D) its ρ of this head and layer
    keys: Option<&'a mut [f32]>, // (W) its write key's traces, with a mechanism there
    ring: Option<&'a mut [f32]>, // (W') its delayed writes, with delays
}

/// What a stream's synapse read and write in one head reads besides its ρ.
struct Synapse<'a> {
    hi: usize,
    x: &'a [f32], // (N) its neurons
    v: &'a [f32], // (D) its residual stream
    rotation: &'a Rotation,
    keys: Option<&'a mut [f32]>, // (W) its write key's traces
    ring: Option<&'a mut [f32]>, // (W') its delayed writes
}

/// What every head of a layer's step reads.
struct LayerStep<'a> {
    layer: usize,
    v: &'a [f32], // (B, D) residual streams
    rotations: &'a [Rotation],
    edits: &'a Edits,
    dense: bool,
}

/// One head's work in a layer's step: its buffers and its ρ in every stream.
struct HeadWork<'a> {
    head: usize,
    hs: &'a mut HeadScratch,
    rho: Vec<RhoMut<'a>>,      // (B) of (N, D)
    keys: Vec<&'a mut [f32]>,  // (B) of (W) the write key's traces, or none
    rings: Vec<&'a mut [f32]>, // (B) of (W') the delayed writes, or none
}
