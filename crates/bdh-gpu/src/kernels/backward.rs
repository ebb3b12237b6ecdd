//! The backward's kernels, each the twin of a CPU kernel (named at each) and
//! checked against it (`tests/twins.rs`), in the CPU kernels' order of operations.
//! (A value chosen by a run-time test is assigned in an `if`, not an `if`
//! expression: cubecl 0.10 gives the latter the `else` value whatever the test.)

use cubecl::prelude::*;

use super::log_sum_exp;

/// Per row of `v` logits: `(softmax(row) − onehot(target)) · scale`, the gradient
/// of the mean cross-entropy (`bdh::model::loss::cross_entropy_backward`).
#[cube(launch)]
pub fn cross_entropy_backward(
    logits: &Array<f32>,
    targets: &Array<u32>,
    grad: &mut Array<f32>,
    rows: usize,
    v: usize,
    scale: f32,
) {
    let r = ABSOLUTE_POS;
    if r < rows {
        let o = r * v;
        let lse = log_sum_exp(logits, o, v);
        for i in 0..v {
            grad[o + i] = Exp::exp(logits[o + i] - lse) * scale;
        }
        let at = o + targets[r] as usize;
        grad[at] -= scale;
    }
}

/// The parameter-free LayerNorm's backward, in place on rows of `d`:
/// `g ← rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂))` (`bdh_kernels::layer_norm_backward`).
#[cube(launch)]
pub fn layer_norm_backward(g: &mut Array<f32>, xhat: &Array<f32>, rstd: &Array<f32>, rows: usize, d: usize) {
    let r = ABSOLUTE_POS;
    if r < rows {
        let o = r * d;
        let mut mg = 0.0f32;
        let mut mgx = 0.0f32;
        for i in 0..d {
            mg += g[o + i];
            mgx += g[o + i] * xhat[o + i];
        }
        mg /= d as f32;
        mgx /= d as f32;
        let s = rstd[r];
        for i in 0..d {
            g[o + i] = s * (g[o + i] - mg - xhat[o + i] * mgx);
        }
    }
}

/// The gate's backward, z = x ⊙ y (⊙ keep with `dropout`): from dz in `dx`,
/// `dy = dz' ⊙ x ⊙ [y > 0]` and `dx = dz' ⊙ y` with dz' = dz ⊙ keep, and z
/// recomputed for the decoder's gradient (`bdh_kernels::gated_product` and
/// `gated_product_backward`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn gate_backward(
    dx: &mut Array<f32>,
    dy: &mut Array<f32>,
    z: &mut Array<f32>,
    x: &Array<f32>,
    y: &Array<f32>,
    keep: &Array<f32>,
    len: usize,
    #[comptime] dropout: bool,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let mut g = dx[i];
        let mut zi = x[i] * y[i];
        if dropout {
            g *= keep[i];
            zi *= keep[i];
        }
        z[i] = zi;
        let mut on = 0.0f32;
        if y[i] > 0.0 {
            on = 1.0f32;
        }
        dy[i] = g * x[i] * on;
        dx[i] = g * y[i];
    }
}

/// `dx = [x > 0] ⊙ (dx + extra)`: the ReLU's backward of a gradient arriving by two
/// paths (`bdh_kernels`' `relu_backward_add_block`).
#[cube(launch)]
pub fn relu_backward_add(dx: &mut Array<f32>, extra: &Array<f32>, x: &Array<f32>, len: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        let mut on = 0.0f32;
        if x[i] > 0.0 {
            on = 1.0f32;
        }
        dx[i] = (dx[i] + extra[i]) * on;
    }
}

/// `out[g, e] += Σ_j src[g, j, e]` over `k` groups of `len` values, j in order
/// (`bdh_kernels::add_groups`: each head's part of a residual gradient summed).
#[cube(launch)]
pub fn add_groups(out: &mut Array<f32>, src: &Array<f32>, total: usize, len: usize, k: usize) {
    let i = ABSOLUTE_POS;
    if i < total {
        let g = i / len;
        let e = i % len;
        let mut v = out[i];
        for j in 0..k {
            v += src[(g * k + j) * len + e];
        }
        out[i] = v;
    }
}

/// `grad[r, c] += Σ dv[i, c]` over the positions i of token r (`positions[starts[r]
/// .. starts[r + 1]]`, in order): the embedding's gradient, one unit per (token,
/// column) so that no two units write one value (the CPU's scatter-add, in its order).
#[cube(launch)]
pub fn embed_backward(
    grad: &mut Array<f32>,
    dv: &Array<f32>,
    positions: &Array<u32>,
    starts: &Array<u32>,
    vocab: usize,
    d: usize,
) {
    let u = ABSOLUTE_POS;
    if u < vocab * d {
        let r = u / d;
        let c = u % d;
        let mut v = grad[u];
        for k in starts[r] as usize..starts[r + 1] as usize {
            v += dv[positions[k] as usize * d + c];
        }
        grad[u] = v;
    }
}

/// `dst = src`.
#[cube(launch)]
pub fn copy(src: &Array<f32>, dst: &mut Array<f32>, len: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        dst[i] = src[i];
    }
}

/// `dst = 0`.
#[cube(launch)]
pub fn zero(dst: &mut Array<f32>, len: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        dst[i] = 0.0;
    }
}
