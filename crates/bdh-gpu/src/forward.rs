//! The parallel forward on a device, line for line beside the CPU's
//! (`bdh::model::bdh::forward`, which sets it beside bdh.py): the same products
//! with the same batchings, kernel for kernel: inference (one layer's buffers reused),
//! or training (every layer's kept for the backward, dropout drawn as the CPU draws
//! it), either with a carried state. Edits run on the CPU.

use bdh::model::bdh::{decay::DecayTable, rope::RopeTable, Bdh, Dims, Site, Weights as HostWeights, PARAM_NAMES};
use bdh::params::Params;
use bdh::Result;
use bdh_kernels::{Batch, MatMul};
use cubecl::prelude::Runtime;

use crate::device::{Buf, Device};

/// A BDH model's weights on a device.
pub struct Weights {
    pub embed: Buf,     // (V, D)
    pub encoder: Buf,   // (H, D, N)
    pub encoder_v: Buf, // (H, D, N)
    pub decoder: Buf,   // (H·N, D)
    pub lm_head: Buf,   // (D, V)
}

impl Weights {
    /// `model`'s weights, uploaded.
    pub fn upload<R: Runtime>(dev: &Device<R>, model: &Bdh) -> Result<Self> {
        Self::upload_params(dev, &model.params, "the weights")
    }

    /// A buffer laid out as a BDH model's parameters (weights, their gradients or
    /// moments), uploaded.
    pub fn upload_params<R: Runtime>(dev: &Device<R>, params: &Params, what: &str) -> Result<Self> {
        if !params.slots().iter().map(|s| s.name.as_str()).eq(PARAM_NAMES) {
            return Err(bdh::Error::Mismatch(format!("{what}: not laid out as a BDH model's parameters")));
        }
        let w = HostWeights::of(params);
        Ok(Weights {
            embed: dev.upload(w.embed, "embed")?,
            encoder: dev.upload(w.encoder, "encoder")?,
            encoder_v: dev.upload(w.encoder_v, "encoder_v")?,
            decoder: dev.upload(w.decoder, "decoder")?,
            lm_head: dev.upload(w.lm_head, "lm_head")?,
        })
    }

    /// The five tensors in the order of the parameter buffer's slots.
    pub fn parts(&self) -> [&Buf; 5] {
        [&self.embed, &self.encoder, &self.encoder_v, &self.decoder, &self.lm_head]
    }

    /// Reads every tensor back into `params`, laid out as a BDH model's.
    pub fn read_into<R: Runtime>(&self, dev: &Device<R>, params: &mut Params) -> Result<()> {
        crate::optim::read_into(dev, &self.parts(), params)
    }
}

/// Values of each buffer of a pass of `dims`, named, largest first.
pub fn buffers(dims: &Dims) -> [(&'static str, usize); 7] {
    let Dims { b, t, d, h, n, v, .. } = *dims;
    let m = |xs: &[usize]| xs.iter().try_fold(1usize, |p, &x| p.checked_mul(x)).unwrap_or(usize::MAX);
    [
        ("x, its rotation, y and x ⊙ y", m(&[b, h, t, n])),
        ("the attention scores", m(&[b, h, t, t])),
        ("the attention output", m(&[b, h, t, d])),
        ("the logits", m(&[b, t, v])),
        ("the residual stream", m(&[b, t, d])),
        ("the LayerNorm statistics", m(&[b, h, t])),
        ("the token ids", m(&[b, t])),
    ]
}

/// Buffers of a (B, T) pass, made once per shape: for inference one layer's
/// buffers reused by every layer; for training every layer's, kept for the backward.
pub struct Pass {
    pub dims: Dims,
    pub(crate) layers: Vec<Kept>, // (1 or L)
    pub(crate) v: Vec<Buf>,       // (2 or L + 1) × (B, T, D): the residual into each layer
    pub(crate) rstd_v: Vec<Buf>,  // (2 or L + 1) × (B, T)
    pub(crate) z: Buf,            // (B, H, T, N) dropout(x ⊙ y)
    pub(crate) rho0: Vec<Buf>,    // (L) × (B, H, N, D): a carried ρ before each layer's write, if kept
    pub logits: Buf,              // (B, T, V)
    losses: Buf,                  // (B, T)
}

/// What one layer's forward keeps.
pub(crate) struct Kept {
    pub x: Buf,            // (B, H, T, N)
    pub xr: Buf,           // (B, H, T, N)
    pub y: Buf,            // (B, H, T, N)
    pub keep: Option<Buf>, // (B, H, T, N) dropout's scales, when training with dropout
    pub scores: Buf,       // (B, H, T, T)
    pub a: Buf,            // (B, H, T, D)
    pub rstd_a: Buf,       // (B, H, T)
    pub w: Buf,            // (B, T, D)
    pub rstd_w: Buf,       // (B, T)
}

impl Kept {
    fn new<R: Runtime>(dev: &Device<R>, dims: Dims, dropout: bool) -> Result<Self> {
        let Dims { b, t, d, h, n, .. } = dims;
        let s = |len: usize, what: &str| dev.scratch(len, what);
        Ok(Kept {
            x: s(b * h * t * n, "x")?,
            xr: s(b * h * t * n, "R(x)")?,
            y: s(b * h * t * n, "y")?,
            keep: if dropout { Some(s(b * h * t * n, "dropout masks")?) } else { None },
            scores: s(b * h * t * t, "attention scores")?,
            a: s(b * h * t * d, "attention output")?,
            rstd_a: s(b * h * t, "LayerNorm statistics")?,
            w: s(b * t * d, "decoder output")?,
            rstd_w: s(b * t, "LayerNorm statistics")?,
        })
    }
}

impl Pass {
    /// Buffers for a (B, T) pass of inference.
    pub fn new<R: Runtime>(dev: &Device<R>, dims: Dims) -> Result<Self> {
        Self::make(dev, dims, 1, false, false)
    }

    /// Buffers for a (B, T) pass of training: every layer's kept, dropout's masks
    /// with `dropout`, and with `rho0` a carried state's value before each write.
    pub fn training<R: Runtime>(dev: &Device<R>, dims: Dims, dropout: bool, rho0: bool) -> Result<Self> {
        Self::make(dev, dims, dims.l, dropout, rho0)
    }

    fn make<R: Runtime>(dev: &Device<R>, dims: Dims, layers: usize, dropout: bool, rho0: bool) -> Result<Self> {
        let Dims { b, t, d, h, n, v, l } = dims;
        let s = |len: usize, what: &str| dev.scratch(len, what);
        let residuals = if layers == 1 { 2 } else { l + 1 };
        Ok(Pass {
            dims,
            layers: (0..layers).map(|_| Kept::new(dev, dims, dropout)).collect::<Result<_>>()?,
            v: (0..residuals).map(|_| s(b * t * d, "residual stream")).collect::<Result<_>>()?,
            rstd_v: (0..residuals).map(|_| s(b * t, "LayerNorm statistics")).collect::<Result<_>>()?,
            z: s(b * h * t * n, "x ⊙ y")?,
            rho0: (0..if rho0 { l } else { 0 }).map(|_| s(b * h * n * d, "the carried ρ")).collect::<Result<_>>()?,
            logits: s(b * t * v, "logits")?,
            losses: s(b * t, "losses")?,
        })
    }

    /// The buffers layer `l` keeps (shared by all layers in inference).
    pub(crate) fn layer(&self, l: usize) -> &Kept {
        &self.layers[l % self.layers.len()]
    }

    /// The residual stream into layer `l` (`l = L`: the last, which `lm_head` reads)
    /// and its LayerNorm statistics.
    pub(crate) fn residual(&self, l: usize) -> (&Buf, &Buf) {
        (&self.v[l % self.v.len()], &self.rstd_v[l % self.v.len()])
    }
}

/// What a forward does besides the math.
#[derive(Default)]
pub struct Extras<'a> {
    /// ρ of every layer (B rows, (B, H, N, D) each), read and written as T
    /// recurrent steps would (`bdh::model::bdh::forward` with a state).
    pub rho: Option<&'a [Buf]>,
    /// Dropout: the ChaCha8 key of the step's seed (8 words) and the probability.
    pub dropout: Option<(&'a Buf, f32)>,
    /// Called with each site of each layer (x, y, x⊙y, the layer's output) right
    /// after it is made, before anything reads it: where edits are applied.
    pub edit: Option<&'a EditHook<'a>>,
}

/// What [`Extras::edit`] calls: (site, layer, the site's buffer).
pub type EditHook<'a> = dyn Fn(Site, usize, &Buf) + 'a;

/// The tables of a pass over positions `pos0..pos0 + T`, made on the host by the
/// CPU's own code: RoPE's cos and sin, and with a decay the powers of γ the scores
/// and a carried state need.
pub struct Tables {
    pub(crate) cos: Buf,    // (T, N/2)
    pub(crate) sin: Buf,    // (T, N/2)
    pub(crate) decay: bool, // whether the state decays (else the powers are empty)
    pub(crate) powers: Buf, // (H, T): γ_h^k at k = i − j, for the scores
    pub(crate) read: Buf,   // (H, T): γ_h^(i+1), the carried ρ's weight in the read at i
    pub(crate) write: Buf,  // (H, T): γ_h^(T−1−i), token i's weight in ρ after the pass
    pub(crate) whole: Buf,  // (H): γ_h^T, what is left of the carried ρ
}

impl Tables {
    /// The tables of a T-token pass of `model` from position `pos0`.
    pub fn new<R: Runtime>(dev: &Device<R>, model: &Bdh, pos0: usize, t: usize) -> Result<Self> {
        let rope = RopeTable::new(&model.freqs, pos0, t);
        let decay = DecayTable::new(model.retention(), (Vec::new(), Vec::new()), (model.config.n_head, t));
        // γ^k at k = i − j: the table's `read` powers are γ^(i+1), so k ≥ 1 is read[k−1].
        let powers: Vec<f32> = decay
            .read
            .chunks(t.max(1))
            .flat_map(|row| std::iter::once(1.0).chain(row[..t - 1].iter().copied()))
            .collect();
        Ok(Tables {
            cos: dev.upload(&rope.cos, "RoPE table")?,
            sin: dev.upload(&rope.sin, "RoPE table")?,
            decay: decay.is_some(),
            powers: dev.upload(&powers, "decay powers")?,
            read: dev.upload(&decay.read, "decay powers")?,
            write: dev.upload(&decay.write, "decay powers")?,
            whole: dev.upload(&decay.whole, "decay powers")?,
        })
    }
}

/// Runs the model on `ids` (B, T) and leaves the logits in `pass.logits`. With a
/// carried ρ, attention also reads it and the pass's tokens are written into it
/// (a training pass also keeps its value before the write); with dropout, each
/// layer draws its masks as the CPU does.
pub fn forward<R: Runtime>(dev: &Device<R>, w: &Weights, pass: &Pass, ids: &Buf, tables: &Tables, extras: Extras) {
    let Dims { b, t, d, h, n, v: vocab, l: layers } = pass.dims;
    let per_head = |a: usize, wt: usize, c: usize| Batch { count: [b, h], a: [a, 0], b: [0, wt], c: [h * c, c] };
    let per_item = |a: usize, wt: usize, c: usize| Batch { count: [b, h], a: [h * a, a], b: [0, wt], c: [h * c, c] };
    let (tn, tt, td, nd) = (t * n, t * t, t * d, n * d);
    let edit = |site: Site, l: usize, buf: &Buf| {
        if let Some(edit) = extras.edit {
            edit(site, l, buf);
        }
    };

    // v = LN(embed[idx])                                                    (B, T, D)
    let (v0, rstd0) = pass.residual(0);
    dev.gather(&w.embed, ids, v0, d);
    dev.layer_norm(v0, rstd0, d);
    for l in 0..layers {
        let (k, (v_in, _), (v_out, rstd_out)) = (pass.layer(l), pass.residual(l), pass.residual(l + 1));
        // x_sparse = relu(x @ encoder)                                      (B, H, T, N)
        dev.matmul(&k.x, v_in, &w.encoder, MatMul::new(t, d, n).relu(), per_head(td, d * n, tn), false);
        edit(Site::X, l, &k.x);
        // QR = KR = rope(x_sparse); scores = (QR @ KR.mT).tril(-1) (⊙ γ^(t−τ))  (B, H, T, T)
        dev.rope(&k.x, &tables.cos, &tables.sin, &k.xr, t, n, false);
        let scores = Batch { count: [b, h], a: [h * tn, tn], b: [h * tn, tn], c: [h * tt, tt] };
        dev.matmul(&k.scores, &k.xr, &k.xr, MatMul::new(t, n, t).b_t(), scores, true);
        if tables.decay {
            dev.decay_scores(&k.scores, &tables.powers, h, t);
        }
        // yKV = ln(scores @ x)                                              (B, H, T, D)
        let read = Batch { count: [b, h], a: [h * tt, tt], b: [td, 0], c: [h * td, td] };
        dev.matmul(&k.a, &k.scores, v_in, MatMul::new(t, t, d), read, false);
        if let Some(rho) = extras.rho {
            // With a carried state: a_i += γ^(i+1) R(x_i) · ρ₀, then
            // ρ = γ^T ρ₀ + Σ_i γ^(T−1−i) R(x_i) ⊗ v_i (the weighted R(x) made in z,
            // free until x ⊙ y).
            let rho = &rho[l];
            if let Some(kept) = pass.rho0.get(l) {
                dev.copy(rho, kept);
            }
            let weighted = |powers: &Buf| {
                if tables.decay {
                    dev.scale_rows(&pass.z, &k.xr, powers, n);
                    &pass.z
                } else {
                    &k.xr
                }
            };
            let state_read = Batch { count: [b, h], a: [h * tn, tn], b: [h * nd, nd], c: [h * td, td] };
            dev.matmul(&k.a, weighted(&tables.read), rho, MatMul::new(t, n, d).acc(), state_read, false);
            if tables.decay {
                dev.scale_blocks(rho, &tables.whole, nd);
            }
            let state_write = Batch { count: [b, h], a: [h * tn, tn], b: [td, 0], c: [h * nd, nd] };
            dev.matmul(rho, weighted(&tables.write), v_in, MatMul::new(n, t, d).a_t().acc(), state_write, false);
        }
        dev.layer_norm(&k.a, &k.rstd_a, d);
        // y_sparse = relu(yKV @ encoder_v); xy_sparse = drop(x_sparse * y_sparse)  (B, H, T, N)
        dev.matmul(&k.y, &k.a, &w.encoder_v, MatMul::new(t, d, n).relu(), per_item(td, d * n, tn), false);
        edit(Site::Y, l, &k.y);
        if let (Some((key, prob)), Some(keep)) = (extras.dropout, &k.keep) {
            // block (row, head) of layer l: ChaCha8 stream (l·B + row)·H + head
            dev.dropout_mask(keep, key, tn, (l * b * h) as u32, prob);
        }
        let keep = if extras.dropout.is_some() { k.keep.as_ref() } else { None };
        dev.mul(&k.x, &k.y, keep, &pass.z);
        edit(Site::Xy, l, &pass.z);
        // y = ln(xy_sparse @ decoder), summed over heads                      (B, T, D)
        let heads = Batch { count: [b, h], a: [h * tn, tn], b: [0, n * d], c: [td, 0] };
        dev.matmul(&k.w, &pass.z, &w.decoder, MatMul::new(t, n, d), heads, false);
        dev.layer_norm(&k.w, &k.rstd_w, d);
        // x = ln(x + y)                                                     (B, T, D)
        dev.add(v_in, &k.w, v_out);
        dev.layer_norm(v_out, rstd_out, d);
        edit(Site::Out, l, v_out);
    }
    // logits = x @ lm_head                                                  (B, T, V)
    let one = Batch { count: [1, 1], a: [0, 0], b: [0, 0], c: [0, 0] };
    dev.matmul(&pass.logits, pass.residual(layers).0, &w.lm_head, MatMul::new(b * t, d, vocab), one, false);
}

/// The mean cross-entropy of the last forward's logits against `targets` (on the
/// device), summed in f64 as the CPU sums it.
pub fn mean_loss<R: Runtime>(dev: &Device<R>, pass: &Pass, targets: &Buf) -> Result<f32> {
    dev.mean_cross_entropy(&pass.logits, targets, &pass.losses, pass.dims.v)
}

/// The per-position cross-entropy of the last forward's logits against `targets`.
pub fn losses<R: Runtime>(dev: &Device<R>, pass: &Pass, targets: &[u32]) -> Result<Vec<f32>> {
    let targets = dev.upload_ids(targets)?;
    dev.cross_entropy(&pass.logits, &targets, &pass.losses, pass.dims.v);
    dev.read(&pass.losses)
}
