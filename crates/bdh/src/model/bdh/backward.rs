//! The explicit backward of [`crate::forward()`]: d loss / d every parameter.
//!
//! Each block undoes one line of the forward, in reverse; the comments give the
//! forward line and the gradient it produces.

use bdh_kernels::{
    causal_linear_attention_backward, gated_product, gated_product_backward, layer_norm_backward, matmul,
    relu_backward_add, rope, transpose, MatMul, RopeDirection,
};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::forward::{check_tokens, Activations, Dims};
use crate::loss::{cross_entropy, cross_entropy_backward};
use crate::params::{Model, Params};

/// Scratch buffers of the backward, sized once per (B, T).
#[derive(Debug)]
pub struct Gradients {
    /// d loss / d each parameter, accumulated by [`backward`] (zero it between steps).
    pub params: Params,
    dims: Dims,
    dlogits: Vec<f32>, // (B, T, V)
    dv: Vec<f32>,      // (B, T, D) d loss / d residual stream at the current depth
    du: Vec<f32>,      // (B, T, D) d loss / d decoder output
    z: Vec<f32>,       // (B, H, T, N) recomputed dropout(x ⊙ y), then scratch for Rᵀ dq
    dx: Vec<f32>,      // (B, H, T, N) d loss / d x, then through the ReLU
    dy: Vec<f32>,      // (B, H, T, N) d loss / d (a · encoder_v), through the ReLU
    dq: Vec<f32>,      // (B, H, T, N) d loss / d R(x)
    da: Vec<f32>,      // (B, H, T, D) d loss / d attention output
    dvh: Vec<f32>,     // (B, H, T, D) d loss / d v through each head's attention values
    dscores: Vec<f32>, // (B, H, T, T)
    // Transposed weights, so every product reads a row-major B (see `transpose`).
    lm_head_t: Vec<f32>,   // (V, D)
    decoder_t: Vec<f32>,   // (H, D, N)
    encoder_t: Vec<f32>,   // (H, N, D)
    encoder_v_t: Vec<f32>, // (H, N, D)
}

impl Gradients {
    /// Zeroed gradients and scratch for a (B, T) backward of `model`.
    pub fn new(model: &Model, b: usize, t: usize) -> Self {
        let dims = Dims::new(&model.config, b, t);
        let Dims { d, h, n, v, .. } = dims;
        let (bt, bht) = (b * t, b * h * t);
        Gradients {
            params: Params::zeros(&model.config),
            dims,
            dlogits: vec![0.0; bt * v],
            dv: vec![0.0; bt * d],
            du: vec![0.0; bt * d],
            z: vec![0.0; bht * n],
            dx: vec![0.0; bht * n],
            dy: vec![0.0; bht * n],
            dq: vec![0.0; bht * n],
            da: vec![0.0; bht * d],
            dvh: vec![0.0; bht * d],
            dscores: vec![0.0; bht * t],
            lm_head_t: vec![0.0; v * d],
            decoder_t: vec![0.0; h * d * n],
            encoder_t: vec![0.0; h * n * d],
            encoder_v_t: vec![0.0; h * n * d],
        }
    }

    /// Sets every parameter gradient to zero.
    pub fn zero(&mut self) {
        for (_, g) in self.params.tensors_mut() {
            g.fill(0.0);
        }
    }
}

/// Mean cross-entropy of the last forward's logits against `targets` (B, T).
pub fn loss(acts: &Activations, targets: &[u32]) -> Result<f32> {
    check_tokens(targets, &acts.dims, "targets")?;
    Ok(cross_entropy(&acts.logits, targets, acts.dims.v))
}

/// Adds d loss / d parameters of the last forward (in `acts`) to `grads.params`,
/// for the mean cross-entropy against `targets` (B, T). Returns the loss.
pub fn backward(model: &Model, acts: &Activations, targets: &[u32], grads: &mut Gradients) -> Result<f32> {
    if grads.dims != acts.dims {
        return Err(Error::Input(format!(
            "backward: gradients sized for {:?}, activations for {:?}",
            grads.dims, acts.dims
        )));
    }
    let loss = loss(acts, targets)?;
    let Dims { b, t, d, h, n, v: vocab, l: layers } = acts.dims;
    let (bt, bhtn) = (b * t, b * h * t * n);
    let p = &model.params;
    let g = &mut grads.params;
    transpose(&mut grads.lm_head_t, &p.lm_head, d, vocab);
    for hi in 0..h {
        let (dn, nd) = (hi * d * n..(hi + 1) * d * n, hi * n * d..(hi + 1) * n * d);
        transpose(&mut grads.decoder_t[dn.clone()], &p.decoder[nd.clone()], n, d);
        transpose(&mut grads.encoder_t[nd.clone()], &p.encoder[dn.clone()], d, n);
        transpose(&mut grads.encoder_v_t[nd], &p.encoder_v[dn], d, n);
    }
    let (decoder_t, encoder_t, encoder_v_t) = (&grads.decoder_t, &grads.encoder_t, &grads.encoder_v_t);

    // logits = v · lm_head  ⇒  d lm_head += vᵀ · dlogits,  dv = dlogits · lm_headᵀ
    cross_entropy_backward(&mut grads.dlogits, &acts.logits, targets, vocab);
    let v_last = acts.residual(layers);
    matmul(&mut g.lm_head, v_last, &grads.dlogits, MatMul::new(d, bt, vocab).a_t().acc().par());
    matmul(&mut grads.dv, &grads.dlogits, &grads.lm_head_t, MatMul::new(bt, vocab, d).par());

    for l in (0..layers).rev() {
        let v_in = acts.residual(l);
        let v_out = acts.residual(l + 1);
        let rstd_out = &acts.rstd_v[(l + 1) * bt..(l + 2) * bt];
        let w = &acts.w[l * bt * d..(l + 1) * bt * d];
        let rstd_w = &acts.rstd_w[l * bt..(l + 1) * bt];
        let x = &acts.x[l * bhtn..(l + 1) * bhtn];
        let xr = &acts.xr[l * bhtn..(l + 1) * bhtn];
        let y = &acts.y[l * bhtn..(l + 1) * bhtn];
        let keep = if acts.keep.is_empty() { &[][..] } else { &acts.keep[l * bhtn..(l + 1) * bhtn] };
        let scores = &acts.scores[l * b * h * t * t..(l + 1) * b * h * t * t];
        let a = &acts.a[l * b * h * t * d..(l + 1) * b * h * t * d];
        let rstd_a = &acts.rstd_a[l * b * h * t..(l + 1) * b * h * t];

        // v_out = LN(v_in + w)  ⇒  dv (residual path) = dw = LN'(dv_out)
        layer_norm_backward(&mut grads.dv, v_out, rstd_out, d);
        // w = LN(u)  ⇒  du = LN'(dw)
        grads.du.copy_from_slice(&grads.dv);
        layer_norm_backward(&mut grads.du, w, rstd_w, d);

        // u = concat_h(z) · decoder  ⇒  d decoder_h += Σ_b z_bhᵀ · du_b
        grads.z.par_chunks_mut(t * n).enumerate().for_each(|(bh, z)| {
            let s = bh * t * n..(bh + 1) * t * n;
            let k = if keep.is_empty() { keep } else { &keep[s.clone()] };
            gated_product(z, &x[s.clone()], &y[s], k);
        });
        let (z, du) = (&grads.z, &grads.du);
        g.decoder.par_chunks_mut(n * d).enumerate().for_each(|(hi, g_dec)| {
            for bi in 0..b {
                let z_bh = &z[(bi * h + hi) * t * n..(bi * h + hi + 1) * t * n];
                matmul(g_dec, z_bh, &du[bi * t * d..(bi + 1) * t * d], MatMul::new(n, t, d).a_t().acc());
            }
        });

        let rope_table = &acts.rope;
        (
            grads.dx.par_chunks_mut(t * n),
            grads.dy.par_chunks_mut(t * n),
            grads.dq.par_chunks_mut(t * n),
            grads.z.par_chunks_mut(t * n),
            grads.da.par_chunks_mut(t * d),
            grads.dvh.par_chunks_mut(t * d),
            grads.dscores.par_chunks_mut(t * t),
        )
            .into_par_iter()
            .enumerate()
            .for_each(|(bh, (dx, dy, dq, scratch, da, dvh, dscores))| {
                let (bi, hi) = (bh / h, bh % h);
                let nb = bh * t * n..(bh + 1) * t * n;
                let db = bh * t * d..(bh + 1) * t * d;
                let (x, xr, y) = (&x[nb.clone()], &xr[nb.clone()], &y[nb.clone()]);
                let v_b = &v_in[bi * t * d..(bi + 1) * t * d];
                let du_b = &du[bi * t * d..(bi + 1) * t * d];
                let decoder_t = &decoder_t[hi * d * n..(hi + 1) * d * n]; //  (D, N)
                let encoder_v_t = &encoder_v_t[hi * n * d..(hi + 1) * n * d]; // (N, D)

                // dz = du · decoder_hᵀ                                        (T, N)
                matmul(dx, du_b, decoder_t, MatMul::new(t, d, n));
                // z = dropout(x ⊙ relu(y_latent))  ⇒  dy = dz ⊙ x ⊙ [y > 0],  dx = dz ⊙ y
                let k = if keep.is_empty() { keep } else { &keep[nb.clone()] };
                gated_product_backward(dx, dy, x, y, k);
                // y_latent = a · encoder_v_h  ⇒  da = dy · encoder_v_hᵀ      (T, D)
                matmul(da, dy, encoder_v_t, MatMul::new(t, n, d));
                // a = LN(attention)  ⇒  d attention = LN'(da)
                layer_norm_backward(da, &a[db.clone()], &rstd_a[bh * t..(bh + 1) * t], d);
                // attention = tril₋₁(xr xrᵀ) · v  ⇒  d xr, and dv through the values
                let s = &scores[bh * t * t..(bh + 1) * t * t];
                causal_linear_attention_backward(dq, dvh, dscores, da, xr, v_b, s, (t, n, d));
                // xr = R(x)  ⇒  dx += Rᵀ d xr;  x = relu(x_latent)  ⇒  through [x > 0]
                rope(scratch, dq, &rope_table.cos, &rope_table.sin, n, RopeDirection::Inverse);
                relu_backward_add(dx, scratch, x);
            });

        // x_latent = v · encoder_h, y_latent = a · encoder_v_h  ⇒  weight gradients
        let (dx, dy) = (&grads.dx, &grads.dy);
        (g.encoder.par_chunks_mut(d * n), g.encoder_v.par_chunks_mut(d * n)).into_par_iter().enumerate().for_each(
            |(hi, (g_enc, g_enc_v))| {
                for bi in 0..b {
                    let bh = bi * h + hi;
                    let (nb, db) = (bh * t * n..(bh + 1) * t * n, bh * t * d..(bh + 1) * t * d);
                    let v_b = &v_in[bi * t * d..(bi + 1) * t * d];
                    matmul(g_enc, v_b, &dx[nb.clone()], MatMul::new(d, t, n).a_t().acc());
                    matmul(g_enc_v, &a[db], &dy[nb], MatMul::new(d, t, n).a_t().acc());
                }
            },
        );

        // dv_in = dv (residual) + Σ_h dv through attention values + Σ_h dx_h · encoder_hᵀ
        let dvh = &grads.dvh;
        grads.dv.par_chunks_mut(t * d).enumerate().for_each(|(bi, dv)| {
            for hi in 0..h {
                let bh = bi * h + hi;
                let encoder_t = &encoder_t[hi * n * d..(hi + 1) * n * d]; // (N, D)
                dv.iter_mut().zip(&dvh[bh * t * d..(bh + 1) * t * d]).for_each(|(o, &g)| *o += g);
                matmul(dv, &dx[bh * t * n..(bh + 1) * t * n], encoder_t, MatMul::new(t, n, d).acc());
            }
        });
    }

    // v = LN(embed[idx])  ⇒  d embed[idx] += LN'(dv)
    layer_norm_backward(&mut grads.dv, acts.residual(0), &acts.rstd_v[..bt], d);
    for (row, &tok) in grads.dv.chunks_exact(d).zip(&acts.tokens) {
        let e = &mut g.embed[tok as usize * d..(tok as usize + 1) * d];
        e.iter_mut().zip(row).for_each(|(o, &gv)| *o += gv);
    }
    Ok(loss)
}
