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

/// Rows per block of the blocked products: blocks above the diagonal are skipped,
/// which saves close to half of the work at long T.
const BLOCK: usize = 64;

/// Row blocks `r0..r1` of `0..t`.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(BLOCK).map(move |r0| (r0, (r0 + BLOCK).min(t)))
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
    for (r0, r1) in blocks(t) {
        // scores[r0..r1, ..r1] = q[r0..r1] · q[..r1]ᵀ
        matmul(&mut scores[r0 * t..], &q[r0 * n..], q, MatMul::new(r1 - r0, n, r1).b_t().ld(0, 0, t));
    }
    keep_strictly_lower(scores, t);
    for (r0, r1) in blocks(t) {
        // out[r0..r1] = scores[r0..r1, ..r1] · v[..r1]
        matmul(&mut out[r0 * d..], &scores[r0 * t..], v, MatMul::new(r1 - r0, r1, d).ld(t, 0, 0));
    }
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
    for (r0, r1) in blocks(t) {
        // dS[r0..r1, ..r1] = da[r0..r1] · v[..r1]ᵀ
        matmul(&mut dscores[r0 * t..], &da[r0 * d..], v, MatMul::new(r1 - r0, d, r1).b_t().ld(0, 0, t));
    }
    keep_strictly_lower(dscores, t);
    for (r0, r1) in blocks(t) {
        // dv[r0..r1] = S[r0.., r0..r1]ᵀ · da[r0..]
        let sub = r0 * t + r0;
        matmul(&mut dv[r0 * d..], &scores[sub..], &da[r0 * d..], MatMul::new(r1 - r0, t - r0, d).a_t().ld(t, 0, 0));
        // dq[r0..r1] = dS[r0..r1, ..r1] · q[..r1] + dS[r0.., r0..r1]ᵀ · q[r0..]
        matmul(&mut dq[r0 * n..], &dscores[r0 * t..], q, MatMul::new(r1 - r0, r1, n).ld(t, 0, 0));
        matmul(
            &mut dq[r0 * n..],
            &dscores[sub..],
            &q[r0 * n..],
            MatMul::new(r1 - r0, t - r0, n).a_t().acc().ld(t, 0, 0),
        );
    }
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
