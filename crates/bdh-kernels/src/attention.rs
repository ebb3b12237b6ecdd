//! Strictly causal linear attention of one (batch, head): no softmax, keys = queries.
//!
//! `out[t] = Σ_{τ<t} (q_t · q_τ) v_τ`, i.e. `out = tril₋₁(q qᵀ) v`, with q (T×N) the
//! rotated neurons and v (T×D) the values.

use crate::matmul::{matmul, MatMul};

/// Zeroes the diagonal and everything above it of a t×t matrix.
fn keep_strictly_lower(s: &mut [f32], t: usize) {
    for (i, row) in s.chunks_exact_mut(t).enumerate() {
        row[i..].fill(0.0);
    }
}

/// Forward: writes `scores = tril₋₁(q qᵀ)` (t×t, kept for the backward) and
/// `out = scores · v` (t×d).
pub fn causal_linear_attention(
    out: &mut [f32],
    scores: &mut [f32],
    q: &[f32],
    v: &[f32],
    t: usize,
    n: usize,
    d: usize,
) {
    matmul(scores, q, q, MatMul::new(t, n, t).b_t());
    keep_strictly_lower(scores, t);
    matmul(out, scores, v, MatMul::new(t, t, d));
}

/// Scalar twin of [`causal_linear_attention`]: loops over τ < t only, f64 sums.
pub fn causal_linear_attention_scalar(
    out: &mut [f32],
    scores: &mut [f32],
    q: &[f32],
    v: &[f32],
    t: usize,
    n: usize,
    d: usize,
) {
    scores[..t * t].fill(0.0);
    for i in 0..t {
        let mut acc = vec![0.0f64; d];
        for j in 0..i {
            let s: f64 = (0..n).map(|k| q[i * n + k] as f64 * q[j * n + k] as f64).sum();
            scores[i * t + j] = s as f32;
            for (a, &vv) in acc.iter_mut().zip(&v[j * d..(j + 1) * d]) {
                *a += s * vv as f64;
            }
        }
        for (o, a) in out[i * d..(i + 1) * d].iter_mut().zip(acc) {
            *o = a as f32;
        }
    }
}

/// Backward of [`causal_linear_attention`] from dL/d(out) `da` (t×d):
/// `dS = tril₋₁(da vᵀ)` (written to the t×t scratch `dscores`), `dv = Sᵀ da`,
/// `dq = (dS + dSᵀ) q`. `dq` and `dv` are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn causal_linear_attention_backward(
    dq: &mut [f32],
    dv: &mut [f32],
    dscores: &mut [f32],
    da: &[f32],
    q: &[f32],
    v: &[f32],
    scores: &[f32],
    (t, n, d): (usize, usize, usize),
) {
    matmul(dscores, da, v, MatMul::new(t, d, t).b_t());
    keep_strictly_lower(dscores, t);
    matmul(dv, scores, da, MatMul::new(t, t, d).a_t());
    matmul(dq, dscores, q, MatMul::new(t, t, n));
    matmul(dq, dscores, q, MatMul::new(t, t, n).a_t().acc());
}

/// Scalar twin of [`causal_linear_attention_backward`], from the definition with
/// f64 sums; recomputes the scores from q instead of reading them.
#[allow(clippy::too_many_arguments)]
pub fn causal_linear_attention_backward_scalar(
    dq: &mut [f32],
    dv: &mut [f32],
    dscores: &mut [f32],
    da: &[f32],
    q: &[f32],
    v: &[f32],
    _scores: &[f32],
    (t, n, d): (usize, usize, usize),
) {
    let dot = |x: &[f32], i: usize, y: &[f32], j: usize, w: usize| -> f64 {
        (0..w).map(|k| x[i * w + k] as f64 * y[j * w + k] as f64).sum()
    };
    let mut gq = vec![0.0f64; t * n];
    let mut gv = vec![0.0f64; t * d];
    dscores[..t * t].fill(0.0);
    for i in 0..t {
        for j in 0..i {
            let s = dot(q, i, q, j, n);
            let ds = dot(da, i, v, j, d);
            dscores[i * t + j] = ds as f32;
            for k in 0..d {
                gv[j * d + k] += s * da[i * d + k] as f64;
            }
            for k in 0..n {
                gq[i * n + k] += ds * q[j * n + k] as f64;
                gq[j * n + k] += ds * q[i * n + k] as f64;
            }
        }
    }
    for (o, g) in dq.iter_mut().zip(gq) {
        *o = g as f32;
    }
    for (o, g) in dv.iter_mut().zip(gv) {
        *o = g as f32;
    }
}
