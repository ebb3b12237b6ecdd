//! The GPT's backward: the forward's steps in reverse, each with its gradient.

use bdh_kernels::{
    affine_backward, bias_grad, causal_softmax_attention_backward, gelu_backward, layer_norm_backward, matmul, MatMul,
    SoftmaxAttention,
};

use super::forward::{Activations, Dims, Norm};
use super::params::{weights, weights_mut, Affine};
use super::Gpt;
use crate::error::{Error, Result};
use crate::model::loss::{cross_entropy, cross_entropy_backward};
use crate::model::zeroed;
use crate::params::Params;

/// Scratch of a (B, T) backward, allocated once.
#[derive(Debug)]
pub struct Backward {
    dims: Dims,
    dlogits: Vec<f32>, // (B·T, V)
    dx: Vec<f32>,      // (B·T, D): d loss / d residual stream
    dd: Vec<f32>,      // (B·T, D) scratch
    d3: Vec<f32>,      // (B·T, 3D)
    d4: Vec<f32>,      // (B·T, 4D)
}

impl Backward {
    /// Scratch for the backward of `acts`-sized passes of `model`.
    pub fn new(model: &Gpt, b: usize, t: usize) -> Result<Self> {
        let c = &model.config;
        let dims = Dims { b, t, d: c.n_embd, h: c.n_head, v: c.vocab_size, l: c.n_layer };
        let bt = b.checked_mul(t).ok_or_else(|| Error::Input("B·T overflows".into()))?;
        let floats = bt
            .checked_mul(c.vocab_size + 9 * c.n_embd)
            .ok_or_else(|| Error::Input(format!("the GPT backward's scratch for B={b}, T={t} overflows")))?;
        crate::memory::ensure_fits(crate::memory::f32_bytes(Some(floats)), "the GPT backward's scratch")?;
        let d = c.n_embd;
        Ok(Backward {
            dims,
            dlogits: zeroed(&[bt, c.vocab_size])?,
            dx: zeroed(&[bt, d])?,
            dd: zeroed(&[bt, d])?,
            d3: zeroed(&[bt, 3 * d])?,
            d4: zeroed(&[bt, 4 * d])?,
        })
    }
}

/// Mean cross-entropy of the last forward's logits against `targets` (B, T).
pub fn loss(acts: &Activations, targets: &[u32]) -> Result<f32> {
    let Dims { b, t, v, .. } = acts.dims;
    crate::model::check_batch(targets, (b, t), v, "targets")?;
    Ok(cross_entropy(&acts.logits, targets, v))
}

/// For a Linear `y = x·wᵀ + b` over `rows` rows: `dw += dyᵀ x`, `db += Σ dy`, and
/// `dx = dy · w` (overwritten).
fn linear_backward(dx: &mut [f32], dy: &[f32], x: &[f32], w: &Affine<&[f32]>, g: &mut Affine<&mut [f32]>, rows: usize) {
    let (n_in, n_out) = (x.len() / rows, dy.len() / rows);
    matmul(g.weight, dy, x, MatMul::new(n_out, rows, n_in).a_t().acc().par());
    if let Some(db) = g.bias.as_deref_mut() {
        bias_grad(db, dy);
    }
    matmul(dx, dy, w.weight, MatMul::new(rows, n_out, n_in).par());
}

/// Backward of a LayerNorm with affine `w` saved as `n`: `g` holds d loss / d its
/// output on entry and d loss / d its input on return.
fn norm_backward(g: &mut [f32], n: &Norm, w: &Affine<&[f32]>, dw: &mut Affine<&mut [f32]>) {
    let mut none: [f32; 0] = [];
    let db = dw.bias.as_deref_mut().unwrap_or(&mut none);
    affine_backward(g, dw.weight, db, &n.xhat, w.weight);
    layer_norm_backward(g, &n.xhat, &n.rstd, w.weight.len());
}

/// Adds d loss / d parameters of the last forward (in `acts`) to `grads`, for the
/// mean cross-entropy against `targets` (B, T). Returns the loss.
pub fn backward(model: &Gpt, acts: &Activations, targets: &[u32], grads: &mut Params, s: &mut Backward) -> Result<f32> {
    if s.dims != acts.dims {
        return Err(Error::Input(format!("backward: scratch sized for {:?}, activations for {:?}", s.dims, acts.dims)));
    }
    if !grads.same_layout(&model.params) {
        return Err(Error::Input("backward: the gradient buffer is not laid out as the model's parameters".into()));
    }
    let loss = loss(acts, targets)?;
    let Dims { b, t, d, h, v, .. } = acts.dims;
    let bt = b * t;
    let w = weights(&model.config, &model.params);
    let mut g = weights_mut(&model.config, grads);
    // logits = ln_f(x) · wteᵀ
    cross_entropy_backward(&mut s.dlogits, &acts.logits, targets, v);
    matmul(g.wte, &s.dlogits, &acts.ln_f.out, MatMul::new(v, bt, d).a_t().acc().par());
    matmul(&mut s.dx, &s.dlogits, w.wte, MatMul::new(bt, v, d).par());
    norm_backward(&mut s.dx, &acts.ln_f, &w.ln_f, &mut g.ln_f);
    for (layer, ((a, wb), gb)) in acts.blocks.iter().zip(&w.blocks).zip(g.blocks.iter_mut()).enumerate().rev() {
        // x = x + drop(mlp.c_proj(gelu(c_fc(ln_2(x))))): the branch gets dx ⊙ keep.
        branch_grad(&mut s.dd, &s.dx, &a.keep_mlp);
        linear_backward(&mut s.d4, &s.dd, &a.gelu, &wb.mlp_proj, &mut gb.mlp_proj, bt);
        gelu_backward(&mut s.d4, &a.fc);
        linear_backward(&mut s.dd, &s.d4, &a.ln_2.out, &wb.c_fc, &mut gb.c_fc, bt);
        norm_backward(&mut s.dd, &a.ln_2, &wb.ln_2, &mut gb.ln_2);
        s.dx.iter_mut().zip(&s.dd).for_each(|(x, &y)| *x += y);
        // x = x + drop(c_proj(attn(ln_1(x))))
        branch_grad(&mut s.dd, &s.dx, &a.keep_attn);
        let mut datt = std::mem::take(&mut s.d4);
        let datt_rows = &mut datt[..bt * d];
        linear_backward(datt_rows, &s.dd, &a.att, &wb.attn_proj, &mut gb.attn_proj, bt);
        let (p, seed) = acts.attn_dropout;
        let attn = SoftmaxAttention { b, t, h, s: d / h, dropout: p, seed: seed.wrapping_add(layer as u64) };
        causal_softmax_attention_backward(&mut s.d3, datt_rows, &a.qkv, &a.att, &a.lse, attn);
        s.d4 = datt;
        linear_backward(&mut s.dd, &s.d3, &a.ln_1.out, &wb.c_attn, &mut gb.c_attn, bt);
        norm_backward(&mut s.dd, &a.ln_1, &wb.ln_1, &mut gb.ln_1);
        s.dx.iter_mut().zip(&s.dd).for_each(|(x, &y)| *x += y);
    }
    // x = drop(wte[tok] + wpe[pos])
    if !acts.keep_embed.is_empty() {
        s.dx.iter_mut().zip(&acts.keep_embed).for_each(|(x, &k)| *x *= k);
    }
    for (r, &tok) in acts.tokens.iter().enumerate() {
        let row = &s.dx[r * d..][..d];
        g.wte[tok as usize * d..][..d].iter_mut().zip(row).for_each(|(gw, &x)| *gw += x);
        g.wpe[(r % t) * d..][..d].iter_mut().zip(row).for_each(|(gw, &x)| *gw += x);
    }
    Ok(loss)
}

/// `out = dx ⊙ keep` (or a copy of `dx` without dropout).
fn branch_grad(out: &mut [f32], dx: &[f32], keep: &[f32]) {
    if keep.is_empty() {
        out.copy_from_slice(dx);
    } else {
        out.iter_mut().zip(dx).zip(keep).for_each(|((o, &g), &k)| *o = g * k);
    }
}
