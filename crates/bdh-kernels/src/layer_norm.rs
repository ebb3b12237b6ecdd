//! LayerNorm without weight or bias (as `nn.LayerNorm(D, elementwise_affine=False)`).

use rayon::prelude::*;

use crate::elementwise::PAR_MIN;
use crate::simd::multiversion;

/// The epsilon of PyTorch's LayerNorm, used by the reference.
pub const LN_EPS: f32 = 1e-5;

/// Rows per parallel block of `d` elements each.
fn rows_per_block(d: usize) -> usize {
    (PAR_MIN / 2 / d.max(1)).max(1)
}

/// Normalises each row of `x` (rows × d) in place to zero mean and unit variance
/// (biased variance, [`LN_EPS`] added) and writes each row's `1/σ` to `rstd`.
pub fn layer_norm(x: &mut [f32], rstd: &mut [f32], d: usize) {
    let _span = crate::profile::span("layer norm", [x.len() / d.max(1), d, 0], 0.0);
    if x.len() < PAR_MIN {
        return layer_norm_block(x, rstd, d);
    }
    let r = rows_per_block(d);
    x.par_chunks_mut(r * d).zip(rstd.par_chunks_mut(r)).for_each(|(x, s)| layer_norm_block(x, s, d));
}

multiversion! {
fn layer_norm_block(x: &mut [f32], rstd: &mut [f32], d: usize) {
    assert_eq!(x.len(), rstd.len() * d, "layer_norm: {} values for {} rows of {d}", x.len(), rstd.len());
    for (row, r) in x.chunks_exact_mut(d).zip(rstd.iter_mut()) {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let s = 1.0 / (var + LN_EPS).sqrt();
        for v in row.iter_mut() {
            *v = (*v - mean) * s;
        }
        *r = s;
    }
}
}

/// Scalar twin of [`layer_norm`], accumulating in f64.
#[cfg(test)]
pub(crate) fn layer_norm_scalar(x: &mut [f32], rstd: &mut [f32], d: usize) {
    for (row, r) in x.chunks_exact_mut(d).zip(rstd.iter_mut()) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        let s = 1.0 / (var + LN_EPS as f64).sqrt();
        for v in row.iter_mut() {
            *v = ((*v as f64 - mean) * s) as f32;
        }
        *r = s as f32;
    }
}

/// Backward of [`layer_norm`] in place: `g` holds dL/d(output) on entry and
/// dL/d(input) on return, from the saved output `xhat` and `rstd`:
/// `dx = rstd · (dy − mean(dy) − x̂ · mean(dy ⊙ x̂))`.
pub fn layer_norm_backward(g: &mut [f32], xhat: &[f32], rstd: &[f32], d: usize) {
    let _span = crate::profile::span("layer norm backward", [g.len() / d.max(1), d, 0], 0.0);
    if g.len() < PAR_MIN {
        return layer_norm_backward_block(g, xhat, rstd, d);
    }
    let r = rows_per_block(d);
    (g.par_chunks_mut(r * d), xhat.par_chunks(r * d), rstd.par_chunks(r))
        .into_par_iter()
        .for_each(|(g, x, s)| layer_norm_backward_block(g, x, s, d));
}

multiversion! {
fn layer_norm_backward_block(g: &mut [f32], xhat: &[f32], rstd: &[f32], d: usize) {
    debug_assert_eq!(g.len(), xhat.len());
    for ((gr, xr), &s) in g.chunks_exact_mut(d).zip(xhat.chunks_exact(d)).zip(rstd) {
        let mut mg = 0.0f32;
        let mut mgx = 0.0f32;
        for (&gv, &xv) in gr.iter().zip(xr) {
            mg += gv;
            mgx += gv * xv;
        }
        mg /= d as f32;
        mgx /= d as f32;
        for (gv, &xv) in gr.iter_mut().zip(xr) {
            *gv = s * (*gv - mg - xv * mgx);
        }
    }
}
}

/// Scalar twin of [`layer_norm_backward`], accumulating in f64.
#[cfg(test)]
pub(crate) fn layer_norm_backward_scalar(g: &mut [f32], xhat: &[f32], rstd: &[f32], d: usize) {
    for ((gr, xr), &s) in g.chunks_exact_mut(d).zip(xhat.chunks_exact(d)).zip(rstd) {
        let mg = gr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let mgx = gr.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() / d as f64;
        for (gv, &xv) in gr.iter_mut().zip(xr) {
            *gv = (s as f64 * (*gv as f64 - mg - xv as f64 * mgx)) as f32;
        }
    }
}
