//! The backward on a device, line for line beside the CPU's
//! (`bdh::model::bdh::backward`): the same products and the same order, each block
//! undoing one line of the forward, in reverse.

use bdh::model::bdh::Dims;
use bdh::Result;
use bdh_kernels::{Batch, MatMul};
use cubecl::prelude::Runtime;

use crate::device::{Buf, Device};
use crate::forward::{Pass, Tables, Weights};

/// The backward's scratch buffers, sized once per (B, T).
pub struct Scratch {
    dlogits: Buf, // (B, T, V)
    dv: Buf,      // (B, T, D) d loss / d residual stream at the current depth
    du: Buf,      // (B, T, D) d loss / d decoder output
    dx: Buf,      // (B, H, T, N)
    dy: Buf,      // (B, H, T, N)
    dq: Buf,      // (B, H, T, N) d loss / d R(x)
    dq0: Buf,     // (B, H, T, N) the same, rotated back
    da: Buf,      // (B, H, T, D)
    dvh: Buf,     // (B, H, T, D) d loss / d v through each head's values
    dscores: Buf, // (B, H, T, T)
}

impl Scratch {
    /// Scratch for a backward of `dims`.
    pub fn new<R: Runtime>(dev: &Device<R>, dims: Dims) -> Result<Self> {
        let Dims { b, t, d, h, n, v, .. } = dims;
        let s = |len: usize, what: &str| dev.scratch(len, what);
        let htn = b * h * t * n;
        Ok(Scratch {
            dlogits: s(b * t * v, "the logits' gradient")?,
            dv: s(b * t * d, "the residual's gradient")?,
            du: s(b * t * d, "the decoder output's gradient")?,
            dx: s(htn, "x's gradient")?,
            dy: s(htn, "y's gradient")?,
            dq: s(htn, "R(x)'s gradient")?,
            dq0: s(htn, "R(x)'s gradient")?,
            da: s(b * h * t * d, "the attention output's gradient")?,
            dvh: s(b * h * t * d, "the values' gradient")?,
            dscores: s(b * h * t * t, "the scores' gradient")?,
        })
    }
}

/// A batch's positions grouped by token, in order within each token (so that the
/// embedding's gradient sums a token's rows as the CPU does, one unit per value of
/// the gradient, no atomics): the positions of token r are
/// `positions[starts[r]..starts[r + 1]]`.
pub struct ByToken {
    positions: Buf, // (B·T)
    starts: Buf,    // (V + 1)
}

impl ByToken {
    /// The index of `tokens` (all below `vocab`).
    pub fn new<R: Runtime>(dev: &Device<R>, tokens: &[u32], vocab: usize) -> Result<Self> {
        let mut starts = vec![0u32; vocab + 1];
        tokens.iter().for_each(|&t| starts[t as usize + 1] += 1);
        (0..vocab).for_each(|r| starts[r + 1] += starts[r]);
        let mut next = starts.clone();
        let mut positions = vec![0u32; tokens.len()];
        for (i, &t) in tokens.iter().enumerate() {
            positions[next[t as usize] as usize] = i as u32;
            next[t as usize] += 1;
        }
        Ok(ByToken { positions: dev.upload_ids(&positions)?, starts: dev.upload_ids(&starts)? })
    }

    /// An embedding's gradient: row r of `grad` (V, D) += the rows of `dv` (B·T, D)
    /// at the positions of token r.
    pub fn embed_backward<R: Runtime>(&self, dev: &Device<R>, grad: &Buf, dv: &Buf, d: usize) {
        dev.embed_backward(grad, dv, &self.positions, &self.starts, d);
    }
}

/// Values of the backward's scratch of `dims` (for the memory a step needs).
pub fn scratch_values(dims: &Dims) -> Option<usize> {
    let Dims { b, t, d, h, n, v, .. } = *dims;
    let m = |xs: &[usize]| xs.iter().try_fold(1usize, |p, &x| p.checked_mul(x));
    [m(&[b, t, v + 2 * d])?, m(&[b, h, t, 4 * n])?, m(&[b, h, t, 2 * d + t])?]
        .iter()
        .try_fold(0usize, |a, &x| a.checked_add(x))
}

/// Adds d loss / d every weight of the last training forward (in `pass`, of the
/// tokens `by_token` indexes) to `g`, for the mean cross-entropy against `targets`;
/// through the read of a carried state exactly when the forward kept its ρ₀
/// (`Pass::training` with `rho0`: a carried state not detached).
#[allow(clippy::too_many_arguments)]
pub fn backward<R: Runtime>(
    dev: &Device<R>,
    w: &Weights,
    g: &Weights,
    pass: &Pass,
    s: &Scratch,
    by_token: &ByToken,
    targets: &Buf,
    tables: &Tables,
) -> Result<()> {
    let Dims { b, t, d, h, n, v: vocab, l: layers } = pass.dims;
    let (bt, tn, td, tt, nd) = (b * t, t * n, t * d, t * t, n * d);
    let one = Batch { count: [1, 1], a: [0, 0], b: [0, 0], c: [0, 0] };
    let items = |a: [usize; 2], bb: [usize; 2], c: [usize; 2]| Batch { count: [b, h], a, b: bb, c };
    let (row_n, row_d, row_t) = ([h * tn, tn], [h * td, td], [h * tt, tt]); // (B, H, T, ·) per item

    // logits = v · lm_head  ⇒  d lm_head += vᵀ · dlogits,  dv = dlogits · lm_headᵀ
    dev.cross_entropy_backward(&pass.logits, targets, &s.dlogits, vocab, 1.0 / bt as f32);
    let v_last = pass.residual(layers).0;
    dev.matmul(&g.lm_head, v_last, &s.dlogits, MatMul::new(d, bt, vocab).a_t().acc(), one, false);
    dev.matmul(&s.dv, &s.dlogits, &w.lm_head, MatMul::new(bt, vocab, d).b_t(), one, false);

    for l in (0..layers).rev() {
        let (k, (v_in, _), (v_out, rstd_out)) = (pass.layer(l), pass.residual(l), pass.residual(l + 1));
        // v_out = LN(v_in + w)  ⇒  dv (residual path) = dw = LN'(dv_out)
        dev.layer_norm_backward(&s.dv, v_out, rstd_out, d);
        // w = LN(u)  ⇒  du = LN'(dw)
        dev.copy(&s.dv, &s.du);
        dev.layer_norm_backward(&s.du, &k.w, &k.rstd_w, d);
        // u = concat_h(z) · decoder  ⇒  dz = du · decoder_hᵀ                  (B, H, T, N)
        dev.matmul(&s.dx, &s.du, &w.decoder, MatMul::new(t, d, n).b_t(), items([td, 0], [0, nd], row_n), false);
        // z = dropout(x ⊙ relu(y_latent))  ⇒  dy = dz ⊙ x ⊙ [y > 0], dx = dz ⊙ y; z recomputed
        dev.gate_backward(&s.dx, &s.dy, &pass.z, &k.x, &k.y, k.keep.as_ref())?;
        // y_latent = a · encoder_v_h  ⇒  da = dy · encoder_v_hᵀ                (B, H, T, D)
        dev.matmul(&s.da, &s.dy, &w.encoder_v, MatMul::new(t, n, d).b_t(), items(row_n, [0, nd], row_d), false);
        // a = LN(attention)  ⇒  d attention = LN'(da)
        dev.layer_norm_backward(&s.da, &k.a, &k.rstd_a, d);
        // attention = (tril₋₁(xr xrᵀ) ⊙ Γ) · v:  dS = tril₋₁(da vᵀ) ⊙ Γ,  dv_h = Sᵀ da,
        // d xr = (dS + dSᵀ) xr,  dx = [x > 0] ⊙ (dx + Rᵀ d xr)
        dev.matmul(&s.dscores, &s.da, v_in, MatMul::new(t, d, t).b_t(), items(row_d, [td, 0], row_t), true);
        if tables.decay {
            dev.decay_scores(&s.dscores, &tables.powers, h, t);
        }
        dev.matmul(&s.dvh, &k.scores, &s.da, MatMul::new(t, t, d).a_t(), items(row_t, row_d, row_d), false);
        dev.matmul(&s.dq, &s.dscores, &k.xr, MatMul::new(t, t, n), items(row_t, row_n, row_n), false);
        dev.matmul(&s.dq, &s.dscores, &k.xr, MatMul::new(t, t, n).a_t().acc(), items(row_t, row_n, row_n), false);
        dev.rope(&s.dq, &tables.cos, &tables.sin, &s.dq0, t, n, true);
        dev.relu_backward_add(&s.dx, &s.dq0, &k.x);
        if let Some(rho0) = pass.rho0.get(l) {
            // attention += (γ^(i+1)) R(x) · ρ₀ (a carried state, held constant)
            //   ⇒  dx += [x > 0] ⊙ Rᵀ (γ^(i+1) da · ρ₀ᵀ)
            dev.matmul(&s.dq, &s.da, rho0, MatMul::new(t, d, n).b_t(), items(row_d, [h * nd, nd], row_n), false);
            let turned = if tables.decay {
                dev.scale_rows(&s.dq0, &s.dq, &tables.read, n);
                dev.rope(&s.dq0, &tables.cos, &tables.sin, &s.dq, t, n, true);
                &s.dq
            } else {
                dev.rope(&s.dq, &tables.cos, &tables.sin, &s.dq0, t, n, true);
                &s.dq0
            };
            dev.relu_backward_add(&s.dx, turned, &k.x);
        }
        // dv_in = dv (residual) + Σ_h dv through attention values + Σ_h dx_h · encoder_hᵀ
        dev.add_groups(&s.dv, &s.dvh, td, h);
        dev.matmul(&s.dv, &s.dx, &w.encoder, MatMul::new(t, n, d).b_t().acc(), items(row_n, [0, nd], [td, 0]), false);

        // Weight gradients, summed over rows:
        // u = concat_h(z) · decoder  ⇒  d decoder_h += Σ_b z_bhᵀ · du_b
        dev.matmul(&g.decoder, &pass.z, &s.du, MatMul::new(n, t, d).a_t().acc(), items(row_n, [td, 0], [0, nd]), false);
        // x_latent = v · encoder_h, y_latent = a · encoder_v_h
        dev.matmul(&g.encoder, v_in, &s.dx, MatMul::new(d, t, n).a_t().acc(), items([td, 0], row_n, [0, nd]), false);
        dev.matmul(&g.encoder_v, &k.a, &s.dy, MatMul::new(d, t, n).a_t().acc(), items(row_d, row_n, [0, nd]), false);
    }

    // v = LN(embed[idx])  ⇒  d embed[idx] += LN'(dv)
    let (v0, rstd0) = pass.residual(0);
    dev.layer_norm_backward(&s.dv, v0, rstd0, d);
    by_token.embed_backward(dev, &g.embed, &s.dv, d);
    Ok(())
}
