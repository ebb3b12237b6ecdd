//! The parallel forward on a device, line for line beside the CPU's
//! (`bdh::model::bdh::forward`, which sets it beside bdh.py): the same products
//! with the same batchings, kernel for kernel. Eval mode: no dropout, no edits, no
//! carried state (those run on the CPU).

use bdh::model::bdh::{decay::DecayTable, rope::RopeTable, Bdh, Dims};
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
        let w = model.weights();
        Ok(Weights {
            embed: dev.upload(w.embed, "embed")?,
            encoder: dev.upload(w.encoder, "encoder")?,
            encoder_v: dev.upload(w.encoder_v, "encoder_v")?,
            decoder: dev.upload(w.decoder, "decoder")?,
            lm_head: dev.upload(w.lm_head, "lm_head")?,
        })
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

/// Buffers of a (B, T) pass, made once per shape.
pub struct Pass {
    pub dims: Dims,
    x: Buf,          // (B, H, T, N)
    xr: Buf,         // (B, H, T, N)
    y: Buf,          // (B, H, T, N)
    z: Buf,          // (B, H, T, N)
    scores: Buf,     // (B, H, T, T)
    a: Buf,          // (B, H, T, D)
    rstd: Buf,       // (B, H, T)
    w: Buf,          // (B, T, D)
    v: [Buf; 2],     // (B, T, D) the residual in and out of a layer
    pub logits: Buf, // (B, T, V)
    losses: Buf,     // (B, T)
}

impl Pass {
    /// Buffers for a (B, T) pass.
    pub fn new<R: Runtime>(dev: &Device<R>, dims: Dims) -> Result<Self> {
        let Dims { b, t, d, h, n, v, .. } = dims;
        let s = |len: usize, what: &str| dev.scratch(len, what);
        Ok(Pass {
            dims,
            x: s(b * h * t * n, "x")?,
            xr: s(b * h * t * n, "R(x)")?,
            y: s(b * h * t * n, "y")?,
            z: s(b * h * t * n, "x ⊙ y")?,
            scores: s(b * h * t * t, "attention scores")?,
            a: s(b * h * t * d, "attention output")?,
            rstd: s(b * h * t, "LayerNorm statistics")?,
            w: s(b * t * d, "decoder output")?,
            v: [s(b * t * d, "residual stream")?, s(b * t * d, "residual stream")?],
            logits: s(b * t * v, "logits")?,
            losses: s(b * t, "losses")?,
        })
    }
}

/// The tables of a pass over positions `pos0..pos0 + T`, made on the host by the
/// CPU's own code: RoPE's cos and sin, and with a decay the powers of γ the scores
/// and a carried state need.
pub struct Tables {
    cos: Buf,    // (T, N/2)
    sin: Buf,    // (T, N/2)
    decay: bool, // whether the state decays (else the powers are empty)
    powers: Buf, // (H, T): γ_h^k at k = i − j, for the scores
    read: Buf,   // (H, T): γ_h^(i+1), the carried ρ's weight in the read at i
    write: Buf,  // (H, T): γ_h^(T−1−i), token i's weight in ρ after the pass
    whole: Buf,  // (H): γ_h^T, what is left of the carried ρ
}

impl Tables {
    /// The tables of a T-token pass of `model` from position `pos0`.
    pub fn new<R: Runtime>(dev: &Device<R>, model: &Bdh, pos0: usize, t: usize) -> Result<Self> {
        let rope = RopeTable::new(&model.freqs, pos0, t);
        let decay = DecayTable::new(&model.config.decay, model.config.n_head, t);
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

/// Runs the model on `ids` (B, T) and leaves the logits in `pass.logits`. With
/// `rho` (one stream, B = 1: ρ of every layer), attention also reads the carried
/// state and the pass's tokens are written into it, as T recurrent steps would
/// (`bdh::model::bdh::forward` with a state).
pub fn forward<R: Runtime>(dev: &Device<R>, w: &Weights, pass: &Pass, ids: &Buf, tables: &Tables, rho: Option<&[Buf]>) {
    let Dims { b, t, d, h, n, v: vocab, l: layers } = pass.dims;
    let per_head = |a: usize, wt: usize, c: usize| Batch { count: [b, h], a: [a, 0], b: [0, wt], c: [h * c, c] };
    let per_item = |a: usize, wt: usize, c: usize| Batch { count: [b, h], a: [h * a, a], b: [0, wt], c: [h * c, c] };
    let (tn, tt, td) = (t * n, t * t, t * d);

    // v = LN(embed[idx])                                                    (B, T, D)
    dev.gather(&w.embed, ids, &pass.v[0], d);
    dev.layer_norm(&pass.v[0], &pass.rstd, d);
    for l in 0..layers {
        let (v_in, v_out) = (&pass.v[l % 2], &pass.v[(l + 1) % 2]);
        // x_sparse = relu(x @ encoder)                                      (B, H, T, N)
        dev.matmul(&pass.x, v_in, &w.encoder, MatMul::new(t, d, n).relu(), per_head(td, d * n, tn), false);
        // QR = KR = rope(x_sparse); scores = (QR @ KR.mT).tril(-1) (⊙ γ^(t−τ))  (B, H, T, T)
        dev.rope(&pass.x, &tables.cos, &tables.sin, &pass.xr, t, n);
        let scores = Batch { count: [b, h], a: [h * tn, tn], b: [h * tn, tn], c: [h * tt, tt] };
        dev.matmul(&pass.scores, &pass.xr, &pass.xr, MatMul::new(t, n, t).b_t(), scores, true);
        if tables.decay {
            dev.decay_scores(&pass.scores, &tables.powers, h, t);
        }
        // yKV = ln(scores @ x)                                              (B, H, T, D)
        let read = Batch { count: [b, h], a: [h * tt, tt], b: [td, 0], c: [h * td, td] };
        dev.matmul(&pass.a, &pass.scores, v_in, MatMul::new(t, t, d), read, false);
        if let Some(rho) = rho {
            // With a carried state: a_i += γ^(i+1) R(x_i) · ρ₀, then
            // ρ = γ^T ρ₀ + Σ_i γ^(T−1−i) R(x_i) ⊗ v_i (the weighted R(x) made in z,
            // free until x ⊙ y).
            debug_assert_eq!(b, 1, "a carried state is one stream's");
            let (rho, nd) = (&rho[l], n * d);
            let weighted = |powers: &Buf| {
                if tables.decay {
                    dev.scale_rows(&pass.z, &pass.xr, powers, n);
                    &pass.z
                } else {
                    &pass.xr
                }
            };
            let state_read = Batch { count: [1, h], a: [0, tn], b: [0, nd], c: [0, td] };
            dev.matmul(&pass.a, weighted(&tables.read), rho, MatMul::new(t, n, d).acc(), state_read, false);
            if tables.decay {
                dev.scale_blocks(rho, &tables.whole, nd);
            }
            let state_write = Batch { count: [1, h], a: [0, tn], b: [0, 0], c: [0, nd] };
            dev.matmul(rho, weighted(&tables.write), v_in, MatMul::new(n, t, d).a_t().acc(), state_write, false);
        }
        dev.layer_norm(&pass.a, &pass.rstd, d);
        // y_sparse = relu(yKV @ encoder_v); xy_sparse = x_sparse * y_sparse  (B, H, T, N)
        dev.matmul(&pass.y, &pass.a, &w.encoder_v, MatMul::new(t, d, n).relu(), per_item(td, d * n, tn), false);
        dev.mul(&pass.x, &pass.y, &pass.z);
        // y = ln(xy_sparse @ decoder), summed over heads                      (B, T, D)
        let heads = Batch { count: [b, h], a: [h * tn, tn], b: [0, n * d], c: [td, 0] };
        dev.matmul(&pass.w, &pass.z, &w.decoder, MatMul::new(t, n, d), heads, false);
        dev.layer_norm(&pass.w, &pass.rstd, d);
        // x = ln(x + y)                                                     (B, T, D)
        dev.add(v_in, &pass.w, v_out);
        dev.layer_norm(v_out, &pass.rstd, d);
    }
    // logits = x @ lm_head                                                  (B, T, V)
    let one = Batch { count: [1, 1], a: [0, 0], b: [0, 0], c: [0, 0] };
    dev.matmul(&pass.logits, &pass.v[layers % 2], &w.lm_head, MatMul::new(b * t, d, vocab), one, false);
}

/// The per-position cross-entropy of the last forward's logits against `targets`.
pub fn losses<R: Runtime>(dev: &Device<R>, pass: &Pass, targets: &[u32]) -> Result<Vec<f32>> {
    let targets = dev.upload_ids(targets)?;
    dev.cross_entropy(&pass.logits, &targets, &pass.losses, pass.dims.v);
    dev.read(&pass.losses)
}
