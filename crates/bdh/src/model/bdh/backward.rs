//! The explicit backward of [`super::forward()`]: d loss / d every parameter.
//!
//! Each block undoes one line of the forward, in reverse; the comments give the
//! forward line and the gradient it produces.

use bdh_kernels::{
    add_groups, causal_linear_attention_backward, gated_product, gated_product_backward, layer_norm_backward, matmul,
    matmul_batched, relu_backward_add, rope, transpose, Attention, Batch, MatMul, RopeDirection,
};

use super::forward::{check_tokens, Activations, Dims};
use super::params::WeightsMut;
use super::Bdh;
use crate::error::{Error, Result};
use crate::model::loss::{cross_entropy, cross_entropy_backward};
use crate::model::zeroed;
use crate::params::Params;

/// Scratch buffers of the backward, sized once per (B, T).
#[derive(Debug)]
pub struct Backward {
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

impl Backward {
    /// Scratch for a (B, T) backward of `model`.
    pub fn new(model: &Bdh, b: usize, t: usize) -> Result<Self> {
        let dims = Dims::new(&model.config, b, t);
        let Dims { d, h, n, v, .. } = dims;
        Ok(Backward {
            dims,
            dlogits: zeroed(&[b, t, v])?,
            dv: zeroed(&[b, t, d])?,
            du: zeroed(&[b, t, d])?,
            z: zeroed(&[b, h, t, n])?,
            dx: zeroed(&[b, h, t, n])?,
            dy: zeroed(&[b, h, t, n])?,
            dq: zeroed(&[b, h, t, n])?,
            da: zeroed(&[b, h, t, d])?,
            dvh: zeroed(&[b, h, t, d])?,
            dscores: zeroed(&[b, h, t, t])?,
            lm_head_t: zeroed(&[v, d])?,
            decoder_t: zeroed(&[h, d, n])?,
            encoder_t: zeroed(&[h, n, d])?,
            encoder_v_t: zeroed(&[h, n, d])?,
        })
    }
}

/// Mean cross-entropy of the last forward's logits against `targets` (B, T).
pub fn loss(acts: &Activations, targets: &[u32]) -> Result<f32> {
    check_tokens(targets, &acts.dims, "targets")?;
    Ok(cross_entropy(&acts.logits, targets, acts.dims.v))
}

/// Adds d loss / d parameters of the last forward (in `acts`) to `grads`, for the
/// mean cross-entropy against `targets` (B, T). Returns the loss.
pub fn backward(model: &Bdh, acts: &Activations, targets: &[u32], grads: &mut Params, s: &mut Backward) -> Result<f32> {
    if s.dims != acts.dims {
        return Err(Error::Input(format!("backward: scratch sized for {:?}, activations for {:?}", s.dims, acts.dims)));
    }
    if let Some(why) = acts.frozen {
        return Err(Error::Input(format!("backward: {why}; its gradient is not the model's")));
    }
    if !grads.same_layout(&model.params) {
        return Err(Error::Input("backward: the gradient buffer is not laid out as the model's parameters".into()));
    }
    let loss = loss(acts, targets)?;
    let dm = acts.dims;
    let Dims { b, t, d, h, n, v: vocab, l: layers } = dm;
    let (bt, bhtn, bhtd) = (b * t, b * h * t * n, b * h * t * d);
    let p = model.weights();
    let g = WeightsMut::of(grads);
    transpose(&mut s.lm_head_t, p.lm_head, d, vocab);
    for hi in 0..h {
        let (dn, nd) = (hi * d * n..(hi + 1) * d * n, hi * n * d..(hi + 1) * n * d);
        transpose(&mut s.decoder_t[dn.clone()], &p.decoder[nd.clone()], n, d);
        transpose(&mut s.encoder_t[nd.clone()], &p.encoder[dn.clone()], d, n);
        transpose(&mut s.encoder_v_t[nd], &p.encoder_v[dn], d, n);
    }
    let (cos, sin) = (&acts.rope.cos[..], &acts.rope.sin[..]);
    // Products per (row, head) and their sums over rows (weight gradients) or heads.
    let per_head = |a: [usize; 2], w: [usize; 2], c: [usize; 2]| Batch { count: [b, h], a, b: w, c };
    let (row_nt, row_dt) = ([h * t * n, t * n], [h * t * d, t * d]); // (B, H, T, ·) per item

    // logits = v · lm_head  ⇒  d lm_head += vᵀ · dlogits,  dv = dlogits · lm_headᵀ
    cross_entropy_backward(&mut s.dlogits, &acts.logits, targets, vocab);
    let v_last = acts.residual(layers);
    matmul(g.lm_head, v_last, &s.dlogits, MatMul::new(d, bt, vocab).a_t().acc().par());
    matmul(&mut s.dv, &s.dlogits, &s.lm_head_t, MatMul::new(bt, vocab, d).par());

    for l in (0..layers).rev() {
        let v_in = acts.residual(l);
        let (x, xr, y) = (&acts.x[l * bhtn..][..bhtn], &acts.xr[l * bhtn..][..bhtn], &acts.y[l * bhtn..][..bhtn]);
        let keep = if acts.keep.is_empty() { &[][..] } else { &acts.keep[l * bhtn..][..bhtn] };
        let (a, rstd_a) = (&acts.a[l * bhtd..][..bhtd], &acts.rstd_a[l * b * h * t..][..b * h * t]);
        let scores = &acts.scores[l * b * h * t * t..][..b * h * t * t];

        // v_out = LN(v_in + w)  ⇒  dv (residual path) = dw = LN'(dv_out)
        layer_norm_backward(&mut s.dv, acts.residual(l + 1), &acts.rstd_v[(l + 1) * bt..(l + 2) * bt], d);
        // w = LN(u)  ⇒  du = LN'(dw)
        s.du.copy_from_slice(&s.dv);
        layer_norm_backward(&mut s.du, &acts.w[l * bt * d..(l + 1) * bt * d], &acts.rstd_w[l * bt..(l + 1) * bt], d);
        // u = concat_h(z) · decoder  ⇒  d decoder_h += Σ_b z_bhᵀ · du_b
        gated_product(&mut s.z, x, y, keep);
        matmul_batched(
            g.decoder,
            &s.z,
            &s.du,
            MatMul::new(n, t, d).a_t().acc(),
            per_head(row_nt, [t * d, 0], [0, n * d]),
        );
        // dz = du · decoder_hᵀ                                           (B, H, T, N)
        matmul_batched(&mut s.dx, &s.du, &s.decoder_t, MatMul::new(t, d, n), per_head([t * d, 0], [0, d * n], row_nt));
        // z = dropout(x ⊙ relu(y_latent))  ⇒  dy = dz ⊙ x ⊙ [y > 0],  dx = dz ⊙ y
        gated_product_backward(&mut s.dx, &mut s.dy, x, y, keep);
        // y_latent = a · encoder_v_h  ⇒  da = dy · encoder_v_hᵀ          (B, H, T, D)
        matmul_batched(&mut s.da, &s.dy, &s.encoder_v_t, MatMul::new(t, n, d), per_head(row_nt, [0, n * d], row_dt));
        // a = LN(attention)  ⇒  d attention = LN'(da)
        layer_norm_backward(&mut s.da, a, rstd_a, d);
        // attention = tril₋₁(xr xrᵀ) · v  ⇒  d xr, and dv through the values of each head
        let shape = Attention { b, h, t, n, d };
        causal_linear_attention_backward(&mut s.dq, &mut s.dvh, &mut s.dscores, &s.da, xr, v_in, scores, shape);
        // xr = R(x)  ⇒  dx += Rᵀ d xr;  x = relu(x_latent)  ⇒  through [x > 0]
        rope(&mut s.z, &s.dq, cos, sin, n, RopeDirection::Inverse);
        relu_backward_add(&mut s.dx, &s.z, x);
        // x_latent = v · encoder_h, y_latent = a · encoder_v_h  ⇒  weight gradients, summed over rows
        let sum_rows = MatMul::new(d, t, n).a_t().acc();
        matmul_batched(g.encoder, v_in, &s.dx, sum_rows, per_head([t * d, 0], row_nt, [0, d * n]));
        matmul_batched(g.encoder_v, a, &s.dy, sum_rows, per_head(row_dt, row_nt, [0, d * n]));
        // dv_in = dv (residual) + Σ_h dv through attention values + Σ_h dx_h · encoder_hᵀ
        add_groups(&mut s.dv, &s.dvh, t * d, h);
        let sum_heads = MatMul::new(t, n, d).acc();
        matmul_batched(&mut s.dv, &s.dx, &s.encoder_t, sum_heads, per_head(row_nt, [0, n * d], [t * d, 0]));
    }

    // v = LN(embed[idx])  ⇒  d embed[idx] += LN'(dv)
    layer_norm_backward(&mut s.dv, acts.residual(0), &acts.rstd_v[..bt], d);
    for (row, &tok) in s.dv.chunks_exact(d).zip(&acts.tokens) {
        let e = &mut g.embed[tok as usize * d..(tok as usize + 1) * d];
        e.iter_mut().zip(row).for_each(|(o, &gv)| *o += gv);
    }
    Ok(loss)
}
