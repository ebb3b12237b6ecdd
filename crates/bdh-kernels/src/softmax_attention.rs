//! Causal softmax attention (the GPT baseline's), fused: scores are formed a block
//! of keys at a time with an online softmax, never as a whole T×T matrix; the
//! backward recomputes them from the saved log-sum-exp of each row.
//!
//! Layout: `qkv` (B, T, 3·H·S) rows as nanoGPT's `c_attn` makes them (q of every
//! head, then k, then v; head h at columns h·S..(h+1)·S of each), the output `y`
//! (B, T, H·S) with the heads side by side, `lse` (B, H, T).

use rayon::prelude::*;

use crate::matmul::{matmul, MatMul};
use crate::simd::{dot16, multiversion};
use crate::special::exp;

/// Sizes and dropout of one attention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SoftmaxAttention {
    /// Batch rows.
    pub b: usize,
    /// Positions per row.
    pub t: usize,
    /// Heads.
    pub h: usize,
    /// Width S of one head.
    pub s: usize,
    /// Probability of dropping an attention probability (0: none).
    pub dropout: f32,
    /// Seed of the dropout masks.
    pub seed: u64,
}

impl SoftmaxAttention {
    fn d(&self) -> usize {
        self.h * self.s
    }

    fn scale(&self) -> f32 {
        1.0 / (self.s as f32).sqrt()
    }

    /// The dropout factor of probability (row, head, i, j): 0 if dropped, else
    /// `1/(1−p)`. A hash of the indices, so the backward redraws the same mask.
    fn keep(&self, row: usize, head: usize, i: usize, j: usize) -> f32 {
        let mut z = self.seed
            ^ (row as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (head as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f).rotate_left(17)
            ^ ((i * self.t + j) as u64).wrapping_mul(0x1656_67b1_9e37_79f9).rotate_left(31);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let u = (z >> 40) as f32 / (1u64 << 24) as f32;
        if u < self.dropout {
            0.0
        } else {
            1.0 / (1.0 - self.dropout)
        }
    }

    fn check(&self, qkv: &[f32], y: &[f32], lse: &[f32]) {
        let (b, t, d) = (self.b, self.t, self.d());
        assert_eq!(qkv.len(), b * t * 3 * d, "softmax attention: qkv is not (B, T, 3D)");
        assert_eq!(y.len(), b * t * d, "softmax attention: y is not (B, T, D)");
        assert_eq!(lse.len(), b * self.h * t, "softmax attention: lse is not (B, H, T)");
    }
}

multiversion! {
fn dot(a: &[f32], b: &[f32], out: &mut f32) {
    *out = a.iter().zip(b).map(|(x, y)| x * y).sum();
}
}

fn dot_of(a: &[f32], b: &[f32]) -> f32 {
    let mut out = 0.0;
    dot(a, b, &mut out);
    out
}

/// `y = softmax(q kᵀ/√S + causal mask) v` per row and head (with dropout on the
/// probabilities if set), and each query's log-sum-exp of its scaled scores.
/// Tiles of [`TILE`] queries × [`TILE`] keys: scores and values are products on the
/// tiles, the softmax is kept online across a query tile's key tiles.
pub fn causal_softmax_attention(y: &mut [f32], lse: &mut [f32], qkv: &[f32], a: SoftmaxAttention) {
    a.check(qkv, y, lse);
    let (t, d, s) = (a.t, a.d(), a.s);
    let rows = (y.par_chunks_mut(t * d), lse.par_chunks_mut(a.h * t), qkv.par_chunks(t * 3 * d));
    rows.into_par_iter().enumerate().for_each(|(row, (y, lse, qkv))| {
        let mut p = vec![0.0f32; TILE * TILE];
        let (mut m, mut l) = ([0.0f32; TILE], [0.0f32; TILE]);
        for h in 0..a.h {
            for i0 in (0..t).step_by(TILE) {
                let qn = TILE.min(t - i0);
                let out = &mut y[i0 * d + h * s..];
                for r in 0..qn {
                    out[r * d..r * d + s].fill(0.0);
                }
                m[..qn].fill(f32::NEG_INFINITY);
                l[..qn].fill(0.0);
                for j0 in (0..=i0).step_by(TILE) {
                    let kn = TILE.min(t - j0);
                    let p = &mut p[..qn * kn];
                    scores(p, qkv, a, (i0, qn), (j0, kn), h);
                    let mut correction = [0.0f32; TILE];
                    online_softmax(p, kn, &mut m[..qn], &mut l[..qn], &mut correction[..qn]);
                    for (r, &c) in correction[..qn].iter().enumerate() {
                        out[r * d..r * d + s].iter_mut().for_each(|o| *o *= c);
                        if a.dropout > 0.0 {
                            for (col, v) in p[r * kn..(r + 1) * kn].iter_mut().enumerate() {
                                *v *= a.keep(row, h, i0 + r, j0 + col);
                            }
                        }
                    }
                    let v = &qkv[j0 * 3 * d + 2 * d + h * s..];
                    matmul(out, p, v, MatMul::new(qn, kn, s).ld(0, 3 * d, d).acc());
                }
                for r in 0..qn {
                    out[r * d..r * d + s].iter_mut().for_each(|o| *o /= l[r]);
                    lse[h * t + i0 + r] = m[r] + l[r].ln();
                }
            }
        }
    });
}

/// Queries and keys per tile.
const TILE: usize = 64;

multiversion! {
/// One tile of scores (rows of `kn`, −∞ where masked) becomes unnormalised
/// probabilities `exp(s − m_new)` against each row's running max `m` (updated),
/// its running sum `l` (updated) and the factor `correction` = exp(m_old − m_new)
/// that rescales what the row accumulated before.
fn online_softmax(p: &mut [f32], kn: usize, m: &mut [f32], l: &mut [f32], correction: &mut [f32]) {
    for (r, pr) in p.chunks_exact_mut(kn).enumerate() {
        let top = lanes(pr, m[r], f32::max);
        correction[r] = exp(m[r] - top);
        pr.iter_mut().for_each(|v| *v = exp(*v - top));
        l[r] = l[r] * correction[r] + lanes(pr, 0.0, |a, b| a + b);
        m[r] = top;
    }
}
}

/// `f` folded over `x` from `init` in 16 lanes, then across them: a reduction the
/// compiler can keep in vector registers (a single running value cannot, as f32
/// operations are not reassociated).
#[inline(always)]
fn lanes(x: &[f32], init: f32, f: impl Fn(f32, f32) -> f32 + Copy) -> f32 {
    let mut acc = [init; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] = f(acc[i], c[i]);
        }
    }
    chunks.remainder().iter().fold(acc.iter().copied().fold(init, f), |a, &v| f(a, v))
}

multiversion! {
/// Scores become probabilities `exp(s − lse)` of each row's log-sum-exp.
fn probabilities(p: &mut [f32], kn: usize, lse: &[f32]) {
    for (pr, &m) in p.chunks_exact_mut(kn).zip(lse) {
        pr.iter_mut().for_each(|v| *v = exp(*v - m));
    }
}
}

multiversion! {
/// Without dropout: `dp` (dy·vᵀ) becomes `ds = p (dp − δ) · scale`, row by row.
fn score_grads(dp: &mut [f32], p: &[f32], kn: usize, delta: &[f32], scale: f32) {
    for ((g, pr), &dl) in dp.chunks_exact_mut(kn).zip(p.chunks_exact(kn)).zip(delta) {
        g.iter_mut().zip(pr).for_each(|(g, &pv)| *g = pv * (*g - dl) * scale);
    }
}
}

/// `p = q kᵀ/√S` (and −∞ where a key follows its query) for queries `i0..i0+qn`
/// and keys `j0..j0+kn` of head `h`, as a (qn × kn) tile.
fn scores(
    p: &mut [f32],
    qkv: &[f32],
    a: SoftmaxAttention,
    (i0, qn): (usize, usize),
    (j0, kn): (usize, usize),
    h: usize,
) {
    let (d, s) = (a.d(), a.s);
    let (q, k) = (&qkv[i0 * 3 * d + h * s..], &qkv[j0 * 3 * d + d + h * s..]);
    matmul(p, q, k, MatMul::new(qn, s, kn).b_t().ld(3 * d, 3 * d, 0));
    let scale = a.scale();
    for (r, row) in p.chunks_exact_mut(kn).enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            *v = if j0 + c > i0 + r { f32::NEG_INFINITY } else { *v * scale };
        }
    }
}

/// Backward of [`causal_softmax_attention`]: `dqkv` (overwritten) from `dy`, the
/// inputs `qkv`, the output `y` and the saved `lse`. With `δ_i = dy_i · y_i` and
/// `p_ij = exp(q_i·k_j/√S − lse_i)`: `dv_j += p̃_ij dy_i`, `ds_ij = p_ij (m_ij dy_i·v_j − δ_i)`,
/// `dq_i += ds_ij k_j/√S`, `dk_j += ds_ij q_i/√S` (p̃ and m the dropout-scaled ones),
/// on the same tiles as the forward, each a few products.
pub fn causal_softmax_attention_backward(
    dqkv: &mut [f32],
    dy: &[f32],
    qkv: &[f32],
    y: &[f32],
    lse: &[f32],
    a: SoftmaxAttention,
) {
    a.check(qkv, y, lse);
    assert_eq!(dqkv.len(), qkv.len(), "softmax attention backward: dqkv is not (B, T, 3D)");
    assert_eq!(dy.len(), y.len(), "softmax attention backward: dy is not (B, T, D)");
    let (t, d, s, scale) = (a.t, a.d(), a.s, a.scale());
    let rows = (
        dqkv.par_chunks_mut(t * 3 * d),
        dy.par_chunks(t * d),
        y.par_chunks(t * d),
        lse.par_chunks(a.h * t),
        qkv.par_chunks(t * 3 * d),
    );
    rows.into_par_iter().enumerate().for_each(|(row, (dqkv, dy, y, lse, qkv))| {
        dqkv.fill(0.0);
        let (mut p, mut dp) = (vec![0.0f32; TILE * TILE], vec![0.0f32; TILE * TILE]);
        let mut dq = vec![0.0f32; TILE * s];
        let mut delta = [0.0f32; TILE];
        for h in 0..a.h {
            for i0 in (0..t).step_by(TILE) {
                let qn = TILE.min(t - i0);
                for (r, dl) in delta[..qn].iter_mut().enumerate() {
                    let at = (i0 + r) * d + h * s;
                    *dl = dot_of(&dy[at..at + s], &y[at..at + s]);
                }
                let dq = &mut dq[..qn * s];
                dq.fill(0.0);
                let g = &dy[i0 * d + h * s..];
                for j0 in (0..=i0).step_by(TILE) {
                    let kn = TILE.min(t - j0);
                    let (p, dp) = (&mut p[..qn * kn], &mut dp[..qn * kn]);
                    scores(p, qkv, a, (i0, qn), (j0, kn), h);
                    probabilities(p, kn, &lse[h * t + i0..h * t + i0 + qn]);
                    let (k, v) = (&qkv[j0 * 3 * d + d + h * s..], &qkv[j0 * 3 * d + 2 * d + h * s..]);
                    // dp = dy_i · v_jᵀ
                    matmul(dp, g, v, MatMul::new(qn, s, kn).b_t().ld(d, 3 * d, 0));
                    if a.dropout > 0.0 {
                        for r in 0..qn {
                            for c in 0..kn {
                                let keep = a.keep(row, h, i0 + r, j0 + c);
                                let (pv, gv) = (p[r * kn + c], dp[r * kn + c]);
                                dp[r * kn + c] = pv * (keep * gv - delta[r]) * scale; // ds
                                p[r * kn + c] = pv * keep; // p̃
                            }
                        }
                    } else {
                        score_grads(dp, p, kn, &delta[..qn], scale);
                    }
                    // dv_j += p̃ᵀ dy_i; dq_i += ds k_j; dk_j += dsᵀ q_i
                    let dv = &mut dqkv[j0 * 3 * d + 2 * d + h * s..];
                    matmul(dv, p, g, MatMul::new(kn, qn, s).a_t().ld(kn, d, 3 * d).acc());
                    matmul(dq, dp, k, MatMul::new(qn, kn, s).ld(kn, 3 * d, s).acc());
                    let q = &qkv[i0 * 3 * d + h * s..];
                    let dk = &mut dqkv[j0 * 3 * d + d + h * s..];
                    matmul(dk, dp, q, MatMul::new(kn, qn, s).a_t().ld(kn, 3 * d, 3 * d).acc());
                }
                for r in 0..qn {
                    let at = (i0 + r) * 3 * d + h * s;
                    dqkv[at..at + s].iter_mut().zip(&dq[r * s..(r + 1) * s]).for_each(|(o, &v)| *o += v);
                }
            }
        }
    });
}

/// Cached keys and values of one sequence: `len` rows of `ld` values each, head h
/// at columns h·S..(h+1)·S.
#[derive(Clone, Copy, Debug)]
pub struct KvCache<'a> {
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
    /// Positions cached.
    pub len: usize,
    /// Row stride.
    pub ld: usize,
}

/// One query per head against every cached key and value (generation): `q` and
/// `y` (H·S) for `h` heads of width `s`.
pub fn softmax_attention_step(y: &mut [f32], q: &[f32], cache: KvCache, h: usize, s: usize) {
    let KvCache { k, v, len, ld } = cache;
    assert!(q.len() == h * s && y.len() == h * s && len > 0, "softmax attention step: sizes");
    assert!(k.len() >= (len - 1) * ld + h * s && v.len() >= (len - 1) * ld + h * s, "softmax attention step: cache");
    // (the heads in parallel: at a long context each reads a cache far larger than its work)
    y.par_chunks_exact_mut(s).zip(q.par_chunks_exact(s)).enumerate().for_each(|(head, (out, qh))| {
        let mut scores = vec![0.0f32; len];
        step_head(out, qh, k, v, len, ld, head * s, &mut scores);
    });
}

multiversion! {
/// One head of [`softmax_attention_step`]: its scores against the `len` cached keys
/// (columns `off..off + S` of rows of stride `ld`), their softmax and the weighted
/// sum of the values, in one vectorised body (a call per key would cost more than its
/// few multiply-adds).
#[allow(clippy::too_many_arguments)]
fn step_head(out: &mut [f32], qh: &[f32], k: &[f32], v: &[f32], len: usize, ld: usize, off: usize, scores: &mut [f32]) {
    let s = qh.len();
    let scale = 1.0 / (s as f32).sqrt();
    for (j, sc) in scores.iter_mut().enumerate().take(len) {
        *sc = dot16(&k[j * ld + off..][..s], qh) * scale;
    }
    let top = lanes(&scores[..len], f32::NEG_INFINITY, f32::max);
    scores[..len].iter_mut().for_each(|sc| *sc = exp(*sc - top));
    let l = lanes(&scores[..len], 0.0, |a, b| a + b);
    out.fill(0.0);
    for (j, &p) in scores[..len].iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&v[j * ld + off..][..s]) {
            *o += p * x;
        }
    }
    out.iter_mut().for_each(|o| *o /= l);
}
}

/// Scalar twins: the whole score matrix, softmax and products in f64.
#[cfg(test)]
pub(crate) mod scalar {
    use super::SoftmaxAttention;

    fn probs(qkv: &[f32], a: &SoftmaxAttention, row: usize, h: usize) -> Vec<Vec<f64>> {
        let (t, d, s) = (a.t, a.h * a.s, a.s);
        let at = |i: usize, part: usize, c: usize| qkv[row * t * 3 * d + i * 3 * d + part * d + h * s + c] as f64;
        (0..t)
            .map(|i| {
                let sc: Vec<f64> = (0..=i)
                    .map(|j| (0..s).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>() / (s as f64).sqrt())
                    .collect();
                let top = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|v| (v - top).exp()).sum();
                sc.iter().map(|v| (v - top).exp() / z).collect()
            })
            .collect()
    }

    /// Forward: y and lse.
    pub fn forward(qkv: &[f32], a: &SoftmaxAttention) -> (Vec<f32>, Vec<f32>) {
        let (t, d, s) = (a.t, a.h * a.s, a.s);
        let mut y = vec![0.0f32; a.b * t * d];
        let mut lse = vec![0.0f32; a.b * a.h * t];
        for row in 0..a.b {
            for h in 0..a.h {
                let p = probs(qkv, a, row, h);
                for i in 0..t {
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..s)
                                .map(|c| {
                                    qkv[row * t * 3 * d + i * 3 * d + h * s + c] as f64
                                        * qkv[row * t * 3 * d + j * 3 * d + d + h * s + c] as f64
                                })
                                .sum::<f64>()
                                / (s as f64).sqrt()
                        })
                        .collect();
                    let top = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    lse[row * a.h * t + h * t + i] =
                        (top + sc.iter().map(|v| (v - top).exp()).sum::<f64>().ln()) as f32;
                    for c in 0..s {
                        let v: f64 = (0..=i)
                            .map(|j| {
                                p[i][j]
                                    * a.keep(row, h, i, j) as f64
                                    * qkv[row * t * 3 * d + j * 3 * d + 2 * d + h * s + c] as f64
                            })
                            .sum();
                        y[row * t * d + i * d + h * s + c] = v as f32;
                    }
                }
            }
        }
        (y, lse)
    }

    /// Backward by the chain rule through the materialised probabilities.
    pub fn backward(dy: &[f32], qkv: &[f32], a: &SoftmaxAttention) -> Vec<f32> {
        let (t, d, s) = (a.t, a.h * a.s, a.s);
        let mut dqkv = vec![0.0f64; qkv.len()];
        let x = |i: usize| qkv[i] as f64;
        for row in 0..a.b {
            let base = row * t * 3 * d;
            for h in 0..a.h {
                let p = probs(qkv, a, row, h);
                for i in 0..t {
                    let g = |c: usize| dy[row * t * d + i * d + h * s + c] as f64;
                    // dP_ij = keep · dy_i · v_j; dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik).
                    let dp: Vec<f64> = (0..=i)
                        .map(|j| {
                            a.keep(row, h, i, j) as f64
                                * (0..s).map(|c| g(c) * x(base + j * 3 * d + 2 * d + h * s + c)).sum::<f64>()
                        })
                        .collect();
                    let dot: f64 = (0..=i).map(|j| p[i][j] * dp[j]).sum();
                    for j in 0..=i {
                        let ds = p[i][j] * (dp[j] - dot) / (s as f64).sqrt();
                        let w = p[i][j] * a.keep(row, h, i, j) as f64;
                        for c in 0..s {
                            dqkv[base + j * 3 * d + 2 * d + h * s + c] += w * g(c);
                            dqkv[base + i * 3 * d + h * s + c] += ds * x(base + j * 3 * d + d + h * s + c);
                            dqkv[base + j * 3 * d + d + h * s + c] += ds * x(base + i * 3 * d + h * s + c);
                        }
                    }
                }
            }
        }
        dqkv.into_iter().map(|v| v as f32).collect()
    }
}
