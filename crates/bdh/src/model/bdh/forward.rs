//! The parallel forward pass, line for line beside bdh.py's `BDH.forward`.
//!
//! Every activation the backward needs lives in an [`Activations`] sized once per
//! (B, T); a step allocates nothing. The kernels split the work over (B, H) and row
//! blocks themselves.

use bdh_kernels::{
    add, causal_linear_attention, gated_product, layer_norm, matmul, matmul_batched, scale_rows, Attention, Batch,
    MatMul,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::decay::DecayTable;
use super::edit::{Edits, Region, Site, NO_EDITS};
use super::params::Weights;
use super::recurrent::State;
use super::rope::{RopeTable, MAX_POSITION};
use super::{Bdh, BdhConfig};
use crate::error::{Error, Result};
use crate::model::{zeroed, Mode};

/// Sizes of one forward pass: B, T and the model's D, H, N, V, L.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    /// B: sequences in the batch.
    pub b: usize,
    /// T: tokens per sequence.
    pub t: usize,
    /// D: residual width.
    pub d: usize,
    /// H: heads.
    pub h: usize,
    /// N: neurons per head.
    pub n: usize,
    /// V: vocabulary.
    pub v: usize,
    /// L: layers.
    pub l: usize,
}

impl Dims {
    /// The sizes of a (B, T) pass of a model with config `cfg`.
    pub fn new(cfg: &BdhConfig, b: usize, t: usize) -> Self {
        Dims { b, t, d: cfg.n_embd, h: cfg.n_head, n: cfg.n_neurons(), v: cfg.vocab_size, l: cfg.n_layer }
    }

    /// The batching of a product per (row, head) that reads a (B, T, ·) A shared by
    /// the heads and a per-head weight, into a (B, H, ·) C of `c` values per item.
    fn per_head(&self, a: usize, w: usize, c: usize) -> Batch {
        Batch { count: [self.b, self.h], a: [a, 0], b: [0, w], c: [self.h * c, c] }
    }

    /// Edits' view of a whole (B, H, T, N) activation starting at position `pos0`.
    fn region(&self, pos0: usize) -> Region {
        Region { head0: 0, heads: self.h, pos0, t: self.t, n: self.n, width: 1 }
    }
}

/// What a forward pass does besides the math: dropout, interventions, and a
/// carried synapse state.
#[derive(Debug)]
pub struct Pass<'a> {
    /// Dropout or not.
    pub mode: Mode,
    /// Edits of x, y and x⊙y (ρ edits need the recurrent step).
    pub edits: &'a Edits,
    /// Start from this state (B rows, one per batch row) and leave it holding the
    /// tokens read: attention also reads ρ, RoPE counts from `state.pos`. The
    /// backward then takes the gradient through that read and stops there (ρ at
    /// the start is a constant). `None`: an empty state, position 0.
    pub state: Option<&'a mut State>,
}

impl Default for Pass<'_> {
    fn default() -> Self {
        Pass { mode: Mode::Eval, edits: &NO_EDITS, state: None }
    }
}

impl Pass<'_> {
    /// A pass in `mode` with no edits and an empty state.
    pub fn mode(mode: Mode) -> Self {
        Pass { mode, ..Pass::default() }
    }
}

/// The activations of one forward pass, kept for the backward.
#[derive(Debug)]
pub struct Activations {
    /// The sizes these buffers hold.
    pub dims: Dims,
    pub(crate) rope: RopeTable,              // positions pos0..pos0 + T
    pub(crate) decay: DecayTable,            // the retention's powers over T (empty without decay)
    pub(crate) frozen: Option<&'static str>, // why the last forward has no backward
    pub(crate) rho0: Vec<f32>,               // (L, B, H, N, D) ρ a train-mode pass started from; else empty
    pub(crate) tokens: Vec<u32>,             // (B, T)
    pub(crate) v: Vec<f32>,                  // (L+1, B, T, D) residual stream into each layer, then the output
    pub(crate) rstd_v: Vec<f32>,             // (L+1, B, T)
    pub(crate) x: Vec<f32>,                  // (L, B, H, T, N) sparse neurons
    pub(crate) xr: Vec<f32>,                 // (L, B, H, T, N) x rotated by RoPE
    pub(crate) scores: Vec<f32>,             // (L, B, H, T, T) tril₋₁(xr xrᵀ), ⊙ γ^(t−τ) with a decay
    pub(crate) a: Vec<f32>,                  // (L, B, H, T, D) attention output after LN
    pub(crate) rstd_a: Vec<f32>,             // (L, B, H, T)
    pub(crate) y: Vec<f32>,                  // (L, B, H, T, N)
    pub(crate) keep: Vec<f32>,               // (L, B, H, T, N) dropout scale 0 or 1/(1−p); empty until used
    pub(crate) dropout: bool,                // the last forward drew `keep` (an eval pass leaves it stale)
    pub(crate) z: Vec<f32>,                  // (B, H, T, N) scratch: dropout(x ⊙ y) of the current layer
    pub(crate) w: Vec<f32>,                  // (L, B, T, D) LN(decoder output)
    pub(crate) rstd_w: Vec<f32>,             // (L, B, T)
    /// Output of the last forward, (B, T, V).
    pub logits: Vec<f32>,
}

impl Activations {
    /// Buffers for a (B, T) pass of `model`; an error, before allocating, if they
    /// would not fit in memory.
    pub fn new(model: &Bdh, b: usize, t: usize) -> Result<Self> {
        let dm = Dims::new(&model.config, b, t);
        let Dims { d, h, n, v, l, .. } = dm;
        if b == 0 || t == 0 {
            return Err(Error::Input(format!("empty batch (B={b}, T={t})")));
        }
        // Every size below is a product of these, so bounding the largest bounds all.
        let total = [[l, b, h, t, n * 4], [l, b, h, t, t + 2 * d], [l + 1, b, t, 1, 2 * d + v]]
            .iter()
            .try_fold(0usize, |acc, dims| dims.iter().try_fold(1usize, |p, &x| p.checked_mul(x))?.checked_add(acc));
        crate::memory::ensure_fits(
            crate::memory::f32_bytes(total),
            &format!("the activations of a B={b} T={t} pass of this model"),
        )?;
        Ok(Activations {
            dims: dm,
            rope: RopeTable::new(&model.freqs, 0, t),
            decay: DecayTable::new(&model.config.decay, h, t),
            rho0: Vec::new(),
            frozen: None,
            tokens: vec![0; b * t],
            v: zeroed(&[l + 1, b, t, d])?,
            rstd_v: zeroed(&[l + 1, b, t])?,
            x: zeroed(&[l, b, h, t, n])?,
            xr: zeroed(&[l, b, h, t, n])?,
            scores: zeroed(&[l, b, h, t, t])?,
            a: zeroed(&[l, b, h, t, d])?,
            rstd_a: zeroed(&[l, b, h, t])?,
            y: zeroed(&[l, b, h, t, n])?,
            keep: Vec::new(),
            dropout: false,
            z: zeroed(&[b, h, t, n])?,
            w: zeroed(&[l, b, t, d])?,
            rstd_w: zeroed(&[l, b, t])?,
            logits: zeroed(&[b, t, v])?,
        })
    }

    /// The buffers in `slot` if they are for a (B, T) pass of `model`'s sizes, else
    /// new ones (the old freed first): for passes over texts of varying lengths.
    pub fn reuse<'s>(slot: &'s mut Option<Activations>, model: &Bdh, b: usize, t: usize) -> Result<&'s mut Self> {
        let fits = slot.as_ref().is_some_and(|a| a.dims == Dims::new(&model.config, b, t));
        if !fits {
            drop(slot.take());
            *slot = Some(Activations::new(model, b, t)?);
        }
        Ok(slot.as_mut().expect("just made"))
    }

    /// The residual stream leaving layer `l − 1` (entering layer `l`), (B, T, D);
    /// `l = L` is the final one that `lm_head` reads.
    pub fn residual(&self, l: usize) -> &[f32] {
        let size = self.dims.b * self.dims.t * self.dims.d;
        &self.v[l * size..(l + 1) * size]
    }

    /// x of layer `l`, (B, H, T, N).
    pub fn x(&self, l: usize) -> &[f32] {
        &self.x[self.neurons(l)]
    }

    /// x rotated by RoPE of layer `l`, (B, H, T, N).
    pub fn x_rotated(&self, l: usize) -> &[f32] {
        &self.xr[self.neurons(l)]
    }

    /// The attention scores of layer `l`, `tril₋₁(R(x) R(x)ᵀ)` (times γ^(t−τ) with a
    /// decay), (B, H, T, T).
    pub fn scores(&self, l: usize) -> &[f32] {
        let Dims { b, h, t, .. } = self.dims;
        &self.scores[l * b * h * t * t..(l + 1) * b * h * t * t]
    }

    /// y of layer `l`, (B, H, T, N).
    pub fn y(&self, l: usize) -> &[f32] {
        &self.y[self.neurons(l)]
    }

    /// Layer `l`'s buffers for batch rows `rows`, and the RoPE and decay tables.
    fn layer_rows(&mut self, l: usize, rows: std::ops::Range<usize>) -> (LayerRows<'_>, (&RopeTable, &DecayTable)) {
        let Dims { b, t, d, h, n, .. } = self.dims;
        let g = rows.len();
        let at = |per_row: usize, layer_stride_rows: usize| l * layer_stride_rows * per_row + rows.start * per_row;
        let (htn, htd, htt) = (h * t * n, h * t * d, h * t * t);
        let (v_in, v_out) = self.v[at(t * d, b)..].split_at_mut(b * t * d);
        let keep = if !self.dropout { &mut [][..] } else { &mut self.keep[at(htn, b)..][..g * htn] };
        let view = LayerRows {
            dims: Dims { b: g, ..self.dims },
            v_in: &v_in[..g * t * d],
            v_out: &mut v_out[..g * t * d],
            rstd_out: &mut self.rstd_v[at(t, b) + b * t..][..g * t],
            x: &mut self.x[at(htn, b)..][..g * htn],
            xr: &mut self.xr[at(htn, b)..][..g * htn],
            scores: &mut self.scores[at(htt, b)..][..g * htt],
            a: &mut self.a[at(htd, b)..][..g * htd],
            rstd_a: &mut self.rstd_a[at(h * t, b)..][..g * h * t],
            y: &mut self.y[at(htn, b)..][..g * htn],
            keep,
            z: &mut self.z[rows.start * htn..][..g * htn],
            w: &mut self.w[at(t * d, b)..][..g * t * d],
            rstd_w: &mut self.rstd_w[at(t, b)..][..g * t],
        };
        (view, (&self.rope, &self.decay))
    }

    fn neurons(&self, l: usize) -> std::ops::Range<usize> {
        let Dims { b, h, t, n, .. } = self.dims;
        l * b * h * t * n..(l + 1) * b * h * t * n
    }
}

/// Checks a (B, T) batch of token ids against the vocabulary and the buffers.
pub(crate) fn check_tokens(tokens: &[u32], dims: &Dims, what: &str) -> Result<()> {
    if tokens.len() != dims.b * dims.t {
        return Err(Error::Input(format!("{what}: {} ids for a batch of B={} × T={}", tokens.len(), dims.b, dims.t)));
    }
    if let Some(&bad) = tokens.iter().find(|&&tok| tok as usize >= dims.v) {
        return Err(Error::Input(format!("{what}: token id {bad} ≥ vocab_size {}", dims.v)));
    }
    Ok(())
}

/// Runs the model on `tokens` (B, T) and fills `acts`, `acts.logits` included.
pub fn forward(model: &Bdh, tokens: &[u32], acts: &mut Activations, pass: Pass<'_>) -> Result<()> {
    let dm = acts.dims;
    let Dims { b, t, d, h, n, v: vocab, l: layers } = dm;
    check_tokens(tokens, &dm, "forward")?;
    let Pass { mode, edits, mut state } = pass;
    if edits.touches(Site::Rho) {
        return Err(Error::Input("ρ edits apply to the recurrent step, not the parallel forward".into()));
    }
    edits.validate(&model.config)?;
    let pos0 = match &state {
        Some(s) => s.check_rows(&model.config, b).map(|_| s.pos)?,
        None => 0,
    };
    if pos0.saturating_add(t) > MAX_POSITION {
        return Err(Error::Input(format!(
            "a state at position {pos0} cannot read {t} more tokens: past 2^24 ({MAX_POSITION}) positions are no \
             longer exact in f32"
        )));
    }
    let p = model.weights();
    let bt = b * t;
    let dropout = match mode {
        Mode::Train { seed } if model.config.dropout > 0.0 => Some((seed, model.config.dropout)),
        _ => None,
    };
    if dropout.is_some() && acts.keep.is_empty() {
        acts.keep = zeroed(&[layers, b, h, t, n])?;
    }
    acts.dropout = dropout.is_some();
    if acts.rope.start != pos0 {
        acts.rope = RopeTable::new(&model.freqs, pos0, t);
    }
    if acts.decay.of != model.config.decay {
        acts.decay = DecayTable::new(&model.config.decay, h, t);
    }
    acts.tokens.copy_from_slice(tokens);
    acts.frozen = (!edits.is_empty()).then_some("the forward applied edits");
    acts.rho0.clear();
    match (&state, mode) {
        // ρ at the start, for the gradient through its read (the state itself moves
        // on); only a training pass keeps it, so inference never copies ρ.
        (Some(s), Mode::Train { .. }) => {
            acts.rho0.try_reserve_exact(s.rho.len()).map_err(|_| Error::Input("no memory to keep ρ₀".into()))?;
            acts.rho0.extend_from_slice(&s.rho);
        }
        (Some(_), Mode::Eval) => {
            acts.frozen =
                Some("the forward read a carried state in eval mode (a train-mode pass keeps what its backward needs)")
        }
        (None, _) => {}
    }

    // v = LN(embed[idx])                                                 (B, T, D)
    let v0 = &mut acts.v[..bt * d];
    for (row, &tok) in v0.chunks_exact_mut(d).zip(tokens) {
        row.copy_from_slice(&p.embed[tok as usize * d..(tok as usize + 1) * d]);
    }
    layer_norm(v0, &mut acts.rstd_v[..bt], d);

    // The heads of a batch row are independent until the decoder sums them: a few
    // rows at a time keeps a group's activations in cache from one kernel to the next.
    let group = bdh_kernels::rows_per_group(h);
    for l in 0..layers {
        for r0 in (0..b).step_by(group) {
            let rows = r0..(r0 + group).min(b);
            let stream = ((l * b + r0) * h) as u64;
            let dropout = dropout.map(|(seed, prob)| (seed, stream, prob));
            let hnd = h * n * d;
            let rho = state.as_deref_mut().map(|s| &mut s.rho[(l * b + rows.start) * hnd..(l * b + rows.end) * hnd]);
            let (at, (rope, decay)) = acts.layer_rows(l, rows);
            heads(&p, at, l, Extras { rope, decay, edits, pos0, dropout, rho });
        }
        let (at, _) = acts.layer_rows(l, 0..b);
        mix(&p, at);
        let out = Region { head0: 0, heads: 1, pos0, t, n: d, width: 1 };
        edits.apply(Site::Out, l, &mut acts.v[(l + 1) * bt * d..(l + 2) * bt * d], out);
    }
    if let Some(state) = state {
        state.pos += t;
    }

    // logits = v · lm_head                                               (B, T, V)
    let v_last = &acts.v[layers * bt * d..];
    matmul(&mut acts.logits, v_last, p.lm_head, MatMul::new(bt, d, vocab).par());
    Ok(())
}

/// One layer's buffers for some batch rows.
struct LayerRows<'a> {
    dims: Dims,           // B: the rows here
    v_in: &'a [f32],      // (B, T, D)
    v_out: &'a mut [f32], // (B, T, D)
    rstd_out: &'a mut [f32],
    x: &'a mut [f32],      // (B, H, T, N)
    xr: &'a mut [f32],     // (B, H, T, N)
    scores: &'a mut [f32], // (B, H, T, T)
    a: &'a mut [f32],      // (B, H, T, D)
    rstd_a: &'a mut [f32], // (B, H, T)
    y: &'a mut [f32],      // (B, H, T, N)
    keep: &'a mut [f32],   // (B, H, T, N), empty without dropout
    z: &'a mut [f32],      // (B, H, T, N)
    w: &'a mut [f32],      // (B, T, D)
    rstd_w: &'a mut [f32], // (B, T)
}

/// What a layer needs besides its buffers and the weights.
struct Extras<'a> {
    rope: &'a RopeTable,
    decay: &'a DecayTable,
    edits: &'a Edits,
    pos0: usize,
    /// (seed, first stream, probability) of the dropout masks.
    dropout: Option<(u64, u64, f32)>,
    /// ρ of this layer for these rows, (B, H, N, D), when a state is carried.
    rho: Option<&'a mut [f32]>,
}

/// The first half of a BDH layer (bdh.py's loop body up to the decoder), per head,
/// on the rows of `s`.
fn heads(p: &Weights, s: LayerRows, l: usize, e: Extras) {
    let dm = s.dims;
    let Dims { b, t, d, h, n, .. } = dm;
    // x = relu(v · encoder_h)                                            (B, H, T, N)
    matmul_batched(s.x, s.v_in, p.encoder, MatMul::new(t, d, n).relu(), dm.per_head(t * d, d * n, t * n));
    e.edits.apply(Site::X, l, s.x, dm.region(e.pos0));
    // a = LN(tril₋₁(R(x) R(x)ᵀ) · v)                                      (B, H, T, D)
    let rope = (&e.rope.cos[..], &e.rope.sin[..]);
    //   (with a decay: scores ⊙ γ_h^(t−τ))
    causal_linear_attention(s.a, s.scores, s.xr, s.x, s.v_in, rope, &e.decay.gamma, Attention { b, h, t, n, d });
    if let Some(rho) = e.rho {
        // With a carried state: a += R(x) · ρ (the past), then ρ += R(x)ᵀ · v;
        // with a decay, a_i += γ^(i+1) R(x_i) · ρ, then ρ = γ^T ρ + Σ_i γ^(T−1−i) R(x_i) ⊗ v_i,
        // the powers carried by a copy of R(x) in z (free until x ⊙ y).
        let (tn, nd, td) = (t * n, n * d, t * d);
        let read = Batch { count: [b, h], a: [h * tn, tn], b: [h * nd, nd], c: [h * td, td] };
        let write = Batch { count: [b, h], a: [h * tn, tn], b: [td, 0], c: [h * nd, nd] };
        let dc = e.decay;
        let q = weighted(s.z, s.xr, &dc.read, (h, t, n));
        matmul_batched(s.a, q, rho, MatMul::new(t, n, d).acc(), read);
        if dc.is_some() {
            scale_rows(rho, &dc.whole, h, 1, nd);
        }
        let q = weighted(s.z, s.xr, &dc.write, (h, t, n));
        matmul_batched(rho, q, s.v_in, MatMul::new(n, t, d).a_t().acc(), write);
    }
    layer_norm(s.a, s.rstd_a, d);
    // y = relu(a · encoder_v_h)                                          (B, H, T, N)
    let per_item = Batch { a: [h * t * d, t * d], ..dm.per_head(0, d * n, t * n) };
    matmul_batched(s.y, s.a, p.encoder_v, MatMul::new(t, d, n).relu(), per_item);
    e.edits.apply(Site::Y, l, s.y, dm.region(e.pos0));
    // z = dropout(x ⊙ y)                                                 (B, H, T, N)
    if let Some((seed, stream, prob)) = e.dropout {
        draw_dropout_masks(s.keep, t * n, seed, stream, prob);
    }
    gated_product(s.z, s.x, s.y, s.keep);
    e.edits.apply(Site::Xy, l, s.z, dm.region(e.pos0));
}

/// `xr` (B, H, T, N) with row i of head h times `powers[h, i]`, made in `buf`; `xr`
/// itself when there are no powers (no decay).
fn weighted<'a>(buf: &'a mut [f32], xr: &'a [f32], powers: &[f32], (h, t, n): (usize, usize, usize)) -> &'a [f32] {
    if powers.is_empty() {
        return xr;
    }
    buf.copy_from_slice(xr);
    scale_rows(buf, powers, h, t, n);
    buf
}

/// The second half of a BDH layer: the decoder sums the heads into the residual stream.
fn mix(p: &Weights, s: LayerRows) {
    let Dims { b, t, d, h, n, .. } = s.dims;
    // w = LN(concat_h(z) · decoder)                                      (B, T, D)
    let per_row = Batch { count: [b, h], a: [h * t * n, t * n], b: [0, n * d], c: [t * d, 0] };
    matmul_batched(s.w, s.z, p.decoder, MatMul::new(t, n, d), per_row);
    layer_norm(s.w, s.rstd_w, d);
    // v = LN(v + w)                                                      (B, T, D)
    add(s.v_out, s.v_in, s.w);
    layer_norm(s.v_out, s.rstd_out, d);
}

/// Fills each block of `block` values of `keep` (one (row, head) of a layer) with 0
/// (dropped, probability `prob`) or `1/(1−prob)` (kept), as `nn.Dropout` scales,
/// from ChaCha stream `first_stream + block index` of `seed`, so the masks do not
/// depend on the thread count.
fn draw_dropout_masks(keep: &mut [f32], block: usize, seed: u64, first_stream: u64, prob: f32) {
    let scale = 1.0 / (1.0 - prob);
    bdh_kernels::parallel_chunks(keep, block, |i, k| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(first_stream + i as u64);
        k.iter_mut().for_each(|k| *k = if rng.random::<f32>() < prob { 0.0 } else { scale });
    });
}
