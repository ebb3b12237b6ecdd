//! Row-wise steps of the GPT baseline and their gradients: a bias added to every
//! row, LayerNorm's affine part, and the exact (erf) GELU.

use rayon::prelude::*;

use crate::elementwise::PAR_MIN;
use crate::simd::multiversion;
use crate::special::{erf, exp};

/// Rows per parallel block of `d` values.
fn rows_per_block(d: usize) -> usize {
    (PAR_MIN / 2 / d.max(1)).max(1)
}

multiversion! {
fn affine_block(x: &mut [f32], w: &[f32], b: &[f32]) {
    let d = w.len();
    for row in x.chunks_exact_mut(d) {
        for (i, v) in row.iter_mut().enumerate() {
            *v = *v * w[i] + if b.is_empty() { 0.0 } else { b[i] };
        }
    }
}
}

/// `x = x ⊙ w + b` on every row of `x` (rows × d): LayerNorm's weight and bias
/// after the normalisation, or a Linear's bias with `w` all ones. `b` may be empty.
pub fn affine(x: &mut [f32], w: &[f32], b: &[f32]) {
    let _span = crate::profile::span("affine", [x.len(), w.len(), 0], 0.0);
    let d = w.len();
    assert!(d > 0 && x.len().is_multiple_of(d) && (b.is_empty() || b.len() == d), "affine: sizes");
    if x.len() < PAR_MIN {
        return affine_block(x, w, b);
    }
    x.par_chunks_mut(rows_per_block(d) * d).for_each(|x| affine_block(x, w, b));
}

/// `x += b` on every row of `x` (a Linear's bias).
pub fn add_bias(x: &mut [f32], b: &[f32]) {
    let _span = crate::profile::span("add bias", [x.len(), b.len(), 0], 0.0);
    let d = b.len();
    assert!(d > 0 && x.len().is_multiple_of(d), "add_bias: sizes");
    let add = |x: &mut [f32]| x.chunks_exact_mut(d).for_each(|r| r.iter_mut().zip(b).for_each(|(v, &c)| *v += c));
    if x.len() < PAR_MIN {
        return add(x);
    }
    x.par_chunks_mut(rows_per_block(d) * d).for_each(add);
}

/// `db += Σ_rows dy` (the gradient of a bias added to every row).
pub fn bias_grad(db: &mut [f32], dy: &[f32]) {
    let _span = crate::profile::span("bias gradient", [dy.len(), db.len(), 0], 0.0);
    let d = db.len();
    assert!(d > 0 && dy.len().is_multiple_of(d), "bias_grad: sizes");
    for row in dy.chunks_exact(d) {
        db.iter_mut().zip(row).for_each(|(g, &v)| *g += v);
    }
}

/// Backward of [`affine`] with `x̂` the normalised input: `dw += Σ dy ⊙ x̂`, `db += Σ dy`
/// (if `db` is not empty), and `dy` becomes `dy ⊙ w` (the gradient of `x̂`) in place.
pub fn affine_backward(dy: &mut [f32], dw: &mut [f32], db: &mut [f32], xhat: &[f32], w: &[f32]) {
    let _span = crate::profile::span("affine backward", [dy.len(), w.len(), 0], 0.0);
    let d = w.len();
    assert!(dy.len() == xhat.len() && dw.len() == d && (db.is_empty() || db.len() == d), "affine_backward: sizes");
    for (g, x) in dy.chunks_exact_mut(d).zip(xhat.chunks_exact(d)) {
        for i in 0..d {
            dw[i] += g[i] * x[i];
            if !db.is_empty() {
                db[i] += g[i];
            }
            g[i] *= w[i];
        }
    }
}

#[inline(always)]
fn gelu_one(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// d gelu / dx = Φ(x) + x φ(x).
#[inline(always)]
fn gelu_slope(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = exp(-0.5 * x * x) * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2);
    cdf + x * pdf
}

multiversion! {
fn gelu_block(out: &mut [f32], x: &[f32]) {
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = gelu_one(v));
}
}

multiversion! {
fn gelu_backward_block(g: &mut [f32], x: &[f32]) {
    g.iter_mut().zip(x).for_each(|(g, &v)| *g *= gelu_slope(v));
}
}

/// `out = gelu(x)`, the exact form `x · Φ(x)` (`nn.GELU()` default).
pub fn gelu(out: &mut [f32], x: &[f32]) {
    let _span = crate::profile::span("gelu", [x.len(), 0, 0], 0.0);
    assert_eq!(out.len(), x.len(), "gelu: sizes");
    if x.len() < PAR_MIN {
        return gelu_block(out, x);
    }
    out.par_chunks_mut(PAR_MIN / 2).zip(x.par_chunks(PAR_MIN / 2)).for_each(|(o, x)| gelu_block(o, x));
}

/// `g ← g ⊙ gelu'(x)` in place: the gradient of GELU's input from its output's.
pub fn gelu_backward(g: &mut [f32], x: &[f32]) {
    let _span = crate::profile::span("gelu backward", [x.len(), 0, 0], 0.0);
    assert_eq!(g.len(), x.len(), "gelu_backward: sizes");
    if x.len() < PAR_MIN {
        return gelu_backward_block(g, x);
    }
    g.par_chunks_mut(PAR_MIN / 2).zip(x.par_chunks(PAR_MIN / 2)).for_each(|(g, x)| gelu_backward_block(g, x));
}

/// Scalar twins in f64.
#[cfg(test)]
pub(crate) mod scalar {
    fn erf(x: f64) -> f64 {
        libm::erf(x)
    }

    /// GELU in f64.
    pub fn gelu(x: &[f32]) -> Vec<f32> {
        x.iter().map(|&v| (0.5 * v as f64 * (1.0 + erf(v as f64 / 2f64.sqrt()))) as f32).collect()
    }

    /// GELU's slope by a central difference in f64.
    pub fn gelu_slope(x: &[f32]) -> Vec<f32> {
        let f = |v: f64| 0.5 * v * (1.0 + erf(v / 2f64.sqrt()));
        x.iter().map(|&v| ((f(v as f64 + 1e-6) - f(v as f64 - 1e-6)) / 2e-6) as f32).collect()
    }

    /// `x ⊙ w + b` per row.
    pub fn affine(x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        x.chunks(w.len())
            .flat_map(|r| r.iter().zip(w).enumerate().map(|(i, (&v, &wi))| v * wi + b.get(i).copied().unwrap_or(0.0)))
            .collect()
    }
}
