//! The parallel forward pass, line for line beside bdh.py's `BDH.forward` and the
//! paper's BDH-GPU (Def. 4: Eq. 4, the parallel form, and Eq. 8, the recurrent one).
//! bdh.py, which this follows, differs from Eq. 4 in ways the equation column
//! below shows: it keeps the residual in the D-dimensional `v` (`v ← LN(v + LN(E y))`)
//! and recomputes `x = relu(D_x v)` each layer instead of accumulating x, adds
//! LayerNorms after the embedding and the decoder, and drops out `y`.
//!
//! Names: bdh.py's, the paper's and ours.
//!
//! | bdh.py                      | paper (Eq. 4, 8)          | here        | shape          |
//! |-----------------------------|---------------------------|-------------|----------------|
//! | `idx`                       | token_τ                   | `tokens`    | (B, T)         |
//! | `x` (the residual stream)   | v_{t,l−1}                 | `v`         | (B, T, D)      |
//! | `x_sparse`                  | x_{t,l}                   | `x`         | (B, H, T, N)   |
//! | `QR` = `KR` (in `Attention`)| R_t x_{t,l} (U = RoPE)    | `xr`        | (B, H, T, N)   |
//! | `(QR @ KR.mT).tril(-1)`     | x_τᵀ U^(t−τ) x_t          | `scores`    | (B, H, T, T)   |
//! | `ln(yKV)`                   | LN(a_{t,l})               | `a`         | (B, H, T, D)   |
//! | `y_sparse`                  | (D_y LN(a))^+             | `y`         | (B, H, T, N)   |
//! | `drop(xy_sparse)`           | y_{t,l}                   | `z`         | (B, H, T, N)   |
//! | `ln(yMLP)`                  | LN(E y_{t,l})             | `w`         | (B, T, D)      |
//! | `embed`, `lm_head`          | f_e, f_d                  | same        | (V, D), (D, V) |
//! | `encoder`                   | D_x                       | `encoder`   | (H, D, N)      |
//! | `encoder_v`                 | D_y                       | `encoder_v` | (H, D, N)      |
//! | `decoder`                   | E                         | `decoder`   | (H·N, D)       |
//! | (the state)                 | ρ_{t,l} (Eq. 5)           | `rho`       | (B, H, N, D)   |
//!
//! Every activation the backward needs lives in an [`Activations`] (one layer's
//! buffers per layer, `activations.rs`) sized once per (B, T); a step allocates nothing. The kernels split the
//! work over (B, H) and row blocks themselves.

use bdh_kernels::{
    add, causal_linear_attention, matmul, matmul_batched, rope as rope_kernel, Attention, Batch, MatMul, RopeDirection,
};

use super::activations::{Activations, LayerRows};
use super::decay::DecayTable;
use super::delay::Queue;
use super::edit::{Edits, Region, Site, NO_EDITS};
use super::key::{KeyBuffers, KeySite};
use super::norm::{NormSite, Place};
use super::params::Weights;
use super::rho::StateDtype;
use super::rope::RopeTable;
use super::site::Mechanisms;
use super::state::State;
use super::threshold::ThresholdSite;
use super::variant::Residual;
use super::{Bdh, BdhConfig};
use crate::error::{Error, Result};
use crate::model::{check_batch, check_positions, zeroed, Mode};

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
    pub(crate) fn region(&self, pos0: usize) -> Region {
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

/// Runs the model on `tokens` (B, T) and fills `acts`, `acts.logits` included:
/// bdh.py's `BDH.forward`, line for line.
pub fn forward(model: &Bdh, tokens: &[u32], acts: &mut Activations, pass: Pass<'_>) -> Result<()> {
    match pass.state {
        // (a 16-bit ρ: the pass reads and extends it in f32, and it is stored back
        // rounded; training keeps f32 states only)
        Some(state) if state.rho.dtype() != StateDtype::F32 => {
            if matches!(pass.mode, Mode::Train { .. }) {
                return Err(Error::Input(format!(
                    "training keeps ρ in f32, and this state holds it in {}",
                    state.rho.dtype()
                )));
            }
            let dtype = state.rho.dtype();
            state.rho = state.rho.converted(StateDtype::F32)?;
            let done = forward_f32(model, tokens, acts, Pass { state: Some(&mut *state), ..pass });
            state.rho = state.rho.converted(dtype)?;
            done
        }
        _ => forward_f32(model, tokens, acts, pass),
    }
}

fn forward_f32(model: &Bdh, tokens: &[u32], acts: &mut Activations, pass: Pass<'_>) -> Result<()> {
    let Pass { mode, edits, mut state } = pass;
    let Setup { pos0, dropout } = begin(model, tokens, acts, mode, edits, state.as_deref())?;
    let dm = acts.dims;
    let Dims { b, t, d, h, v: vocab, l: layers, .. } = dm;
    let p = model.weights();
    let cfg = &model.config;

    // v = LN(embed[idx])                              v_{τ,0} = f_e(token_τ)    (B, T, D)
    for (row, &tok) in acts.v0.chunks_exact_mut(d).zip(tokens) {
        row.copy_from_slice(&p.embed[tok as usize * d..(tok as usize + 1) * d]);
    }
    let norm = NormSite::new(cfg, p.norm);
    norm.forward(&mut acts.v0, &mut acts.stats_v0, d, Place::Embed);

    // The heads of a batch row are independent until the decoder sums them: a few
    // rows at a time keeps a group's activations in cache from one kernel to the next.
    let group = bdh_kernels::rows_per_group(h);
    let (rope, decay, drawn) = (&acts.rope, &acts.decay, acts.dropout);
    let keys = model.key_site();
    let queue = Queue::new(cfg, model.delays(), model.retention());
    for l in 0..layers {
        let (before, after) = acts.layers.split_at_mut(l);
        let v_in = before.last().map_or(&acts.v0[..], |prev| &prev.v[..]);
        // x_{l−1}, which x_l adds to when the residual is in the neurons (x_0 = 0)
        let x_in = before.last().filter(|_| !cfg.residual.is_d()).map_or(&[][..], |prev| &prev.x[..]);
        let layer = &mut after[0];
        for r0 in (0..b).step_by(group) {
            let rows = r0..(r0 + group).min(b);
            let stream = ((l * b + r0) * h) as u64;
            let dropout = dropout.map(|(seed, prob)| (seed, stream, prob));
            let (rho, key_state, rings) =
                match state.as_deref_mut().map(|s| s.layer_rows(&model.config, l, rows.clone())).transpose()? {
                    Some(ls) => (Some(ls.rho), Some(ls.keys), Some(ls.queue)),
                    None => (None, None, None),
                };
            let at = layer.rows(rows, (v_in, x_in), &mut acts.z, dm, drawn);
            let mechanisms = &model.mechanisms;
            let keys = keys.as_ref().map(|site| (site, key_state));
            let carried = rho.map(|rho| (rho, queue.as_ref().zip(rings)));
            heads(&p, cfg, at, l, Extras { rope, decay, mechanisms, keys, edits, pos0, dropout, carried });
        }
        mix(&p, cfg, layer.rows(0..b, (v_in, x_in), &mut acts.z, dm, drawn));
        let out = Region { head0: 0, heads: 1, pos0, t, n: d, width: 1 };
        edits.apply(Site::Out, l, &mut layer.v, out);
    }
    if let Some(state) = state {
        state.pos += t;
    }

    // logits = v · lm_head                            f_d(v_{t,L})              (B, T, V)
    let v_last = acts.layers.last().map_or(&acts.v0, |last| &last.v);
    matmul(&mut acts.logits, v_last, p.lm_head, MatMul::new(b * t, d, vocab).par());
    Ok(())
}

/// What [`begin`] decided for a pass.
pub(super) struct Setup {
    pub(super) pos0: usize,                 // the position of the first token
    pub(super) dropout: Option<(u64, f32)>, // (seed, probability) of this pass's masks
}

/// Everything a forward does before the math: checks the inputs, brings the RoPE
/// and decay tables to the pass's positions, makes room for dropout masks, keeps ρ₀
/// of a carried state for the backward and records whether a backward may follow.
pub(super) fn begin(
    model: &Bdh,
    tokens: &[u32],
    acts: &mut Activations,
    mode: Mode,
    edits: &Edits,
    state: Option<&State>,
) -> Result<Setup> {
    let dm = acts.dims;
    check_batch(tokens, (dm.b, dm.t), dm.v, "forward")?;
    if acts.dims != Dims::new(&model.config, dm.b, dm.t) || !acts.made_for(model) {
        return Err(Error::Mismatch("forward: activations made for a model of another shape or layer".into()));
    }
    if edits.touches(Site::Rho) {
        return Err(Error::Input("ρ edits apply to the recurrent step, not the parallel forward".into()));
    }
    edits.validate(&model.config)?;
    let pos0 = match state {
        Some(s) => s.check_rows(&model.config, dm.b).map(|_| s.pos)?,
        None => 0,
    };
    check_positions(pos0, dm.t, "forward")?;
    let dropout = match mode {
        Mode::Train { seed } if model.config.dropout > 0.0 => Some((seed, model.config.dropout)),
        _ => None,
    };
    for layer in acts.layers.iter_mut().filter(|l| dropout.is_some() && l.keep.is_empty()) {
        layer.keep = zeroed(&[dm.b, dm.h, dm.t, dm.n])?;
    }
    // (an eval pass leaves the masks of an earlier training pass unused)
    acts.dropout = dropout.is_some();
    if acts.rope.start != pos0 || acts.freqs != model.freqs {
        acts.rope = RopeTable::new(&model.freqs, pos0, dm.t);
        acts.freqs.clone_from(&model.freqs);
    }
    let retention = model.retention();
    let (delays, holds) = (model.delays(), model.config.delays.holds(dm.h));
    // (a retention per neuron's tables, (H, T, N), only for a pass that carries a state)
    let t = if model.config.per_neuron_decay() && state.is_none() { 0 } else { dm.t };
    if (&acts.decay.gamma, &acts.decay.delays, &acts.decay.holds, acts.decay.t) != (&retention, &delays, &holds, t) {
        acts.decay = DecayTable::new(retention, (delays, holds), (dm.h, t));
    }
    acts.tokens.copy_from_slice(tokens);
    acts.frozen = (!edits.is_empty()).then_some("the forward applied edits");
    acts.rho0.clear();
    acts.keys0.clear();
    acts.queue0.clear();
    match (state, mode) {
        // ρ at the start, for the gradient through its read (the state itself moves
        // on), and the key's traces, for the trace's; only a training pass keeps
        // them, so inference never copies ρ.
        (Some(s), Mode::Train { .. }) => {
            let copies = [
                (&mut acts.rho0, s.rho.f32("training")?, "ρ₀"),
                (&mut acts.keys0, &s.keys[..], "the key's traces"),
                (&mut acts.queue0, &s.queue[..], "the delayed writes"),
            ];
            for (copy, of, what) in copies {
                let need = Some(4 * of.len() as u64);
                copy.try_reserve_exact(of.len()).map_err(|_| Error::TooLarge {
                    what: format!("a copy of {what}"),
                    need,
                    have: None,
                })?;
                copy.extend_from_slice(of);
            }
        }
        (Some(_), Mode::Eval) => {
            acts.frozen =
                Some("the forward read a carried state in eval mode (a train-mode pass keeps what its backward needs)")
        }
        (None, _) => {}
    }
    Ok(Setup { pos0, dropout })
}

/// A carried state's ρ of a layer for some rows, with the queue of delayed writes
/// and its rings, with delays.
type Carried<'a> = (&'a mut [f32], Option<(&'a Queue, &'a mut [f32])>);

/// What a layer needs besides its buffers and the weights.
struct Extras<'a> {
    rope: &'a RopeTable,
    decay: &'a DecayTable,
    mechanisms: &'a Mechanisms,
    /// The write's key site, with the carried traces of these rows, (B, H, W).
    keys: Option<(&'a KeySite, Option<&'a mut [f32]>)>,
    edits: &'a Edits,
    pos0: usize,
    /// (seed, first stream, probability) of the dropout masks.
    dropout: Option<(u64, u64, f32)>,
    /// ρ of this layer for these rows, (B, H, N, D), when a state is carried, with
    /// the queue of delayed writes and its rings, (B, H, W), with delays.
    carried: Option<Carried<'a>>,
}

/// The first half of a BDH layer (bdh.py's loop body up to the decoder), per head,
/// on the rows of `s`.
fn heads(p: &Weights, cfg: &BdhConfig, s: LayerRows, l: usize, e: Extras) {
    let dm = s.dims;
    let Dims { b, t, d, h, n, .. } = dm;
    // x_sparse = relu(x @ encoder)                    x_{t,l} = (D_x v_{t,l−1})^+  (B, H, T, N)
    //   (the threshold site: (D_x v − θ)^+ with a threshold per neuron)
    let threshold = ThresholdSite::new(cfg, p.threshold, p.activity);
    let encode = (threshold.product(MatMul::new(t, d, n)), dm.per_head(t * d, d * n, t * n));
    let head = |row: usize| (row / t) % h;
    match cfg.residual {
        Residual::D => {
            matmul_batched(s.x, s.v_in, p.encoder, encode.0, encode.1);
            threshold.encode(s.x, n, head);
        }
        //   (the residual site, in the neurons:       x_{t,l} = x_{t,l−1} + (D_x v_{t,l−1})^+)
        Residual::N => {
            matmul_batched(s.inc, s.v_in, p.encoder, encode.0, encode.1);
            threshold.encode(s.inc, n, head);
            if s.x_in.is_empty() {
                s.x.copy_from_slice(s.inc);
            } else {
                add(s.x, s.x_in, s.inc);
            }
        }
    }
    e.edits.apply(Site::X, l, s.x, dm.region(e.pos0));
    // yKV = attn(Q = K = x_sparse, V = x)             a_{t,l} = Σ_{τ<t} v_τ (x_τᵀ U^(t−τ) x_t)  (B, H, T, D)
    //   (U: RoPE, times γ_h^(t−τ) with a decay: the damping site)
    let rope = (&e.rope.cos[..], &e.rope.sin[..]);
    let shape = Attention { b, h, t, n, d };
    match e.keys {
        None if !e.decay.per_neuron() => {
            causal_linear_attention(s.a, s.scores, s.xr, s.x, s.v_in, rope, e.decay.lags(), shape)
        }
        //   (the write's key site: a_t = Σ_{τ<t} v_τ (R_τ key_τ · R_t x_t), key = g(s) ⊙ c;
        //    the damping site's kernel with a retention per neuron)
        keys => {
            rope_kernel(s.xr, s.x, rope.0, rope.1, n, RopeDirection::Forward);
            if let Some((site, state)) = keys {
                site.forward(s.x, state, KeyBuffers { key: s.key, trace: s.trace, glia: s.glia }, (h, t));
                rope_kernel(s.kr, s.key, rope.0, rope.1, n, RopeDirection::Forward);
            }
            let k = if s.kr.is_empty() { &s.xr[..] } else { &s.kr[..] };
            e.decay.attend(s.a, s.scores, (&*s.xr, k, s.v_in), shape);
        }
    }
    if let Some((rho, queue)) = e.carried {
        // With a carried state (Eq. 5, 8): a_i += γ^(i+1) R(x_i) · ρ₀ (the past), then
        // ρ = γ^T ρ₀ + Σ_i γ^(T−1−i) R(x_i) ⊗ v_i; the powers are carried by a copy of
        // R(x) in z (free until x ⊙ y). With delays (the read's mask site), the chunk
        // also reads the queued writes it may see, its last δ tokens are queued instead
        // of written, and the queued ones now due enter ρ.
        let (tn, nd, td) = (t * n, n * d, t * d);
        let read = Batch { count: [b, h], a: [h * tn, tn], b: [h * nd, nd], c: [h * td, td] };
        let write = Batch { count: [b, h], a: [h * tn, tn], b: [td, 0], c: [h * nd, nd] };
        let dc = e.decay;
        let q = dc.weighted(s.z, s.xr, &dc.read, (h, t, n));
        matmul_batched(s.a, q, rho, MatMul::new(t, n, d).acc(), read);
        dc.fade_whole(rho, (h, nd));
        let keys = if s.kr.is_empty() { &s.xr[..] } else { &s.kr[..] };
        if let Some((queue, rings)) = &queue {
            let (hw, htn, htd) = (rings.len() / b, h * tn, h * td);
            for r in 0..b {
                let ring = &rings[r * hw..(r + 1) * hw];
                queue.read(&mut s.a[r * htd..(r + 1) * htd], &s.xr[r * htn..(r + 1) * htn], ring, e.pos0, t);
            }
        }
        let k = dc.weighted(s.z, keys, &dc.write, (h, t, n));
        matmul_batched(rho, k, s.v_in, MatMul::new(n, t, d).a_t().acc(), write);
        if let Some((queue, rings)) = queue {
            let (hw, htn, hnd) = (rings.len() / b, h * tn, h * nd);
            for r in 0..b {
                let (rho, ring) = (&mut rho[r * hnd..(r + 1) * hnd], &mut rings[r * hw..(r + 1) * hw]);
                queue.advance(rho, ring, (&keys[r * htn..(r + 1) * htn], &s.v_in[r * td..(r + 1) * td]), e.pos0, t);
            }
        }
    }
    // yKV = ln(yKV)                                   LN(a_{t,l})
    NormSite::new(cfg, p.norm).forward(s.a, s.stats_a, d, Place::Read);
    // y_sparse = relu(yKV @ encoder_v)                (D_y LN(a_{t,l}))^+        (B, H, T, N)
    let per_item = Batch { a: [h * t * d, t * d], ..dm.per_head(0, d * n, t * n) };
    matmul_batched(s.y, s.a, p.encoder_v, MatMul::new(t, d, n).relu(), per_item);
    e.edits.apply(Site::Y, l, s.y, dm.region(e.pos0));
    // xy_sparse = drop(x_sparse * y_sparse)           y_{t,l} = (D_y LN(a))^+ ⊙ x_{t,l}  (B, H, T, N)
    if let Some((seed, stream, prob)) = e.dropout {
        crate::model::dropout::draw(s.keep, t * n, seed, stream, prob);
    }
    //   (the gate's site: dropout(f(x ⊙ y)) with a mechanism f there)
    e.mechanisms.gate(s.z, s.x, s.y, s.keep, l, dm.region(e.pos0));
    e.edits.apply(Site::Xy, l, s.z, dm.region(e.pos0));
    if !s.xy.is_empty() {
        s.xy.copy_from_slice(s.z);
    }
}

/// The second half of a BDH layer: the decoder sums the heads into the residual stream.
fn mix(p: &Weights, cfg: &BdhConfig, s: LayerRows) {
    let Dims { b, t, d, h, n, .. } = s.dims;
    // y = ln(xy_sparse @ decoder)                     LN(E y_{t,l})              (B, T, D)
    let per_row = Batch { count: [b, h], a: [h * t * n, t * n], b: [0, n * d], c: [t * d, 0] };
    matmul_batched(s.w, s.z, p.decoder, MatMul::new(t, n, d), per_row);
    let norm = NormSite::new(cfg, p.norm);
    norm.forward(s.w, s.stats_w, d, Place::Decoder);
    match cfg.residual {
        // x = ln(x + y)                               v_{t,l} = LN(v_{t,l−1} + LN(E y))  (B, T, D)
        Residual::D => {
            add(s.v_out, s.v_in, s.w);
            norm.forward(s.v_out, s.stats_out, d, Place::Residual);
        }
        //   (the residual site, in the neurons:       v_{t,l} = N(E y_{t,l}))
        Residual::N => {
            s.v_out.copy_from_slice(s.w);
            s.stats_out.fill(1.0);
        }
    }
}
