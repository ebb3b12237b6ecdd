//! Causal softmax attention (the GPT baseline's), fused: scores are formed a block
//! of keys at a time with an online softmax, never as a whole T×T matrix; the
//! backward recomputes them from the saved log-sum-exp of each row.
//!
//! Layout: `qkv` (B, T, 3·H·S) rows as nanoGPT's `c_attn` makes them (q of every
//! head, then k, then v; head h at columns h·S..(h+1)·S of each), the output `y`
//! (B, T, H·S) with the heads side by side, `lse` (B, H, T).

use rayon::prelude::*;

use crate::simd::{dot16, multiversion};
use crate::special::exp;
use crate::tile::{tile, LANES};

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

    /// Multiply-adds of the causal products, as the model's count has them (the
    /// scores and the values' sum over the keys at or before each query).
    fn flops(&self) -> f64 {
        2.0 * (self.b * self.t * self.t * self.d()) as f64
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
        assert!(self.s > 0, "softmax attention: heads of width 0");
    }
}

/// Queries and keys per tile.
const TILE: usize = 64;

/// One head's operands as the tile products read them, for a sequence of `t`
/// positions padded to whole tiles (`tp`) and a head width padded to whole vectors
/// (`sp`): the padding is zero, written once, so a padded query (a column past the
/// end) scores 0 and a padded gradient contributes nothing. (Keys are read where
/// they lie; those past the end are masked.)
struct Operands {
    tp: usize,
    sp: usize,
}

impl Operands {
    fn new(t: usize, s: usize) -> Self {
        Operands { tp: t.div_ceil(TILE) * TILE, sp: s.div_ceil(LANES) * LANES }
    }

    /// `dst` (S × tp) = columns `off..off + S` of the `t` rows of `src` (stride
    /// `ld`), transposed.
    fn transposed(&self, dst: &mut [f32], src: &[f32], (t, ld, off, s): (usize, usize, usize, usize)) {
        for i in 0..t {
            for (x, &v) in src[i * ld + off..][..s].iter().enumerate() {
                dst[x * self.tp + i] = v;
            }
        }
    }

    /// `dst` (tp × sp) = columns `off..off + S` of the `t` rows of `src`.
    fn padded(&self, dst: &mut [f32], src: &[f32], (t, ld, off, s): (usize, usize, usize, usize)) {
        for i in 0..t {
            dst[i * self.sp..][..s].copy_from_slice(&src[i * ld + off..][..s]);
        }
    }
}

/// `y = softmax(q kᵀ/√S + causal mask) v` per row and head (with dropout on the
/// probabilities if set), and each query's log-sum-exp of its scaled scores.
/// Tiles of [`TILE`] keys × [`TILE`] queries, held transposed (a query per column)
/// so the online softmax runs down the columns, a vector of queries at a time; the
/// scores and the values' sums are [`tile`] products on them.
pub fn causal_softmax_attention(y: &mut [f32], lse: &mut [f32], qkv: &[f32], a: SoftmaxAttention) {
    let _span = crate::profile::span("softmax attention", [a.t, a.h, a.s], a.flops());
    a.check(qkv, y, lse);
    let (t, d, s) = (a.t, a.d(), a.s);
    let ops = Operands::new(t, s);
    let rows = (y.par_chunks_mut(t * d), lse.par_chunks_mut(a.h * t), qkv.par_chunks(t * 3 * d));
    rows.into_par_iter().enumerate().for_each(|(row, (y, lse, qkv))| {
        let (mut q_t, mut v_t) = (vec![0.0f32; s * ops.tp], vec![0.0f32; s * ops.tp]);
        let (mut p_t, mut out_t) = (vec![0.0f32; TILE * TILE], vec![0.0f32; s * TILE]);
        let (mut m, mut l, mut correction) = ([0.0f32; TILE], [0.0f32; TILE], [0.0f32; TILE]);
        for h in 0..a.h {
            ops.transposed(&mut q_t, qkv, (t, 3 * d, h * s, s));
            ops.transposed(&mut v_t, qkv, (t, 3 * d, 2 * d + h * s, s));
            for i0 in (0..t).step_by(TILE) {
                let qn = TILE.min(t - i0);
                out_t.fill(0.0);
                m.fill(f32::NEG_INFINITY);
                l.fill(0.0);
                for j0 in (0..=i0).step_by(TILE) {
                    let kn = TILE.min(t - j0);
                    scores_t(&mut p_t, qkv, &q_t, &ops, a, (i0, j0, kn), h);
                    online_softmax(&mut p_t, kn, &mut m, &mut l, &mut correction);
                    scale_columns(&mut out_t, &correction);
                    if a.dropout > 0.0 {
                        for (c, pr) in p_t.chunks_exact_mut(TILE).take(kn).enumerate() {
                            for (r, v) in pr.iter_mut().enumerate().take(qn) {
                                *v *= a.keep(row, h, i0 + r, j0 + c);
                            }
                        }
                    }
                    // outᵀ += v_jᵀ p̃ᵀ
                    tile(&mut out_t, TILE, &v_t[j0..], ops.tp, &p_t, TILE, (s, kn, TILE));
                }
                for r in 0..qn {
                    let out = &mut y[(i0 + r) * d + h * s..][..s];
                    out.iter_mut().enumerate().for_each(|(x, o)| *o = out_t[x * TILE + r] / l[r]);
                    lse[h * t + i0 + r] = m[r] + l[r].ln();
                }
            }
        }
    });
}

/// `pᵀ = k qᵀ/√S` for keys `j0..j0 + kn` (rows) and the tile of queries from `i0`
/// (columns) of head `h`, −∞ where a key follows its query or lies past the end.
fn scores_t(
    p_t: &mut [f32],
    qkv: &[f32],
    q_t: &[f32],
    ops: &Operands,
    a: SoftmaxAttention,
    (i0, j0, kn): (usize, usize, usize),
    h: usize,
) {
    let (d, s) = (a.d(), a.s);
    p_t.fill(0.0);
    tile(p_t, TILE, &qkv[j0 * 3 * d + d + h * s..], 3 * d, &q_t[i0..], ops.tp, (kn, s, TILE));
    mask(p_t, kn, i0 as isize - j0 as isize, a.scale());
}

multiversion! {
/// Scales the scores of a transposed tile and masks them: −∞ where the key (row c)
/// follows the query (column r), c > r + `shift`, or lies past the keys (c ≥ kn).
fn mask(p_t: &mut [f32], kn: usize, shift: isize, scale: f32) {
    for (c, pr) in p_t.chunks_exact_mut(TILE).enumerate() {
        for (r, v) in pr.iter_mut().enumerate() {
            *v = if c >= kn || c as isize > r as isize + shift { f32::NEG_INFINITY } else { *v * scale };
        }
    }
}
}

multiversion! {
/// One transposed tile of scores (the first `kn` rows hold keys) becomes
/// unnormalised probabilities `exp(s − m_new)` against each column's running max `m`
/// (updated), its running sum `l` (updated), and `correction` = exp(m_old − m_new)
/// rescales what the column accumulated before.
fn online_softmax(p_t: &mut [f32], kn: usize, m: &mut [f32; TILE], l: &mut [f32; TILE], correction: &mut [f32; TILE]) {
    let mut top = *m;
    for pr in p_t.chunks_exact(TILE).take(kn) {
        for (t, &v) in top.iter_mut().zip(pr) {
            *t = t.max(v);
        }
    }
    let mut sum = [0.0f32; TILE];
    for pr in p_t.chunks_exact_mut(TILE).take(kn) {
        for ((v, &t), s) in pr.iter_mut().zip(&top).zip(sum.iter_mut()) {
            *v = exp(*v - t);
            *s += *v;
        }
    }
    for r in 0..TILE {
        correction[r] = exp(m[r] - top[r]);
        l[r] = l[r] * correction[r] + sum[r];
    }
    *m = top;
}
}

multiversion! {
/// Every row of a transposed output tile times `correction`, column by column.
fn scale_columns(out_t: &mut [f32], correction: &[f32; TILE]) {
    for row in out_t.chunks_exact_mut(TILE) {
        row.iter_mut().zip(correction).for_each(|(o, &c)| *o *= c);
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
/// The backward's tile: transposed scores become probabilities `exp(s − lse)` of
/// their column's log-sum-exp, and `dpᵀ` (v dyᵀ) becomes `dsᵀ = p (dp − δ) · scale`
/// (without dropout), on the first `kn` rows (the keys; the rows past them stay −∞
/// and zero, and every product reads only the first `kn`).
fn score_grads(p_t: &mut [f32], dp_t: &mut [f32], kn: usize, lse: &[f32; TILE], delta: &[f32; TILE], scale: f32, drop: bool) {
    for (pr, gr) in p_t.chunks_exact_mut(TILE).zip(dp_t.chunks_exact_mut(TILE)).take(kn) {
        for (((p, g), &m), &dl) in pr.iter_mut().zip(gr.iter_mut()).zip(lse).zip(delta) {
            *p = exp(*p - m);
            if !drop {
                *g = *p * (*g - dl) * scale;
            }
        }
    }
}
}

/// Backward of [`causal_softmax_attention`]: `dqkv` (overwritten) from `dy`, the
/// inputs `qkv`, the output `y` and the saved `lse`. With `δ_i = dy_i · y_i` and
/// `p_ij = exp(q_i·k_j/√S − lse_i)`: `dv_j += p̃_ij dy_i`, `ds_ij = p_ij (m_ij dy_i·v_j − δ_i)`,
/// `dq_i += ds_ij k_j/√S`, `dk_j += ds_ij q_i/√S` (p̃ and m the dropout-scaled ones),
/// on the forward's transposed tiles, each a [`tile`] product; a head's key and
/// value gradients are summed over its query tiles, then written.
pub fn causal_softmax_attention_backward(
    dqkv: &mut [f32],
    dy: &[f32],
    qkv: &[f32],
    y: &[f32],
    lse: &[f32],
    a: SoftmaxAttention,
) {
    let _span = crate::profile::span("softmax attention backward", [a.t, a.h, a.s], 2.0 * a.flops());
    a.check(qkv, y, lse);
    assert_eq!(dqkv.len(), qkv.len(), "softmax attention backward: dqkv is not (B, T, 3D)");
    assert_eq!(dy.len(), y.len(), "softmax attention backward: dy is not (B, T, D)");
    let (t, d, s, scale) = (a.t, a.d(), a.s, a.scale());
    let ops = Operands::new(t, s);
    let (tp, sp) = (ops.tp, ops.sp);
    let rows = (
        dqkv.par_chunks_mut(t * 3 * d),
        dy.par_chunks(t * d),
        y.par_chunks(t * d),
        lse.par_chunks(a.h * t),
        qkv.par_chunks(t * 3 * d),
    );
    rows.into_par_iter().enumerate().for_each(|(row, (dqkv, dy, y, lse, qkv))| {
        let [mut q_t, mut k_t, mut dy_t] = [(); 3].map(|_| vec![0.0f32; s * tp]);
        let [mut q_p, mut dy_p, mut dk, mut dv] = [(); 4].map(|_| vec![0.0f32; tp * sp]);
        let (mut p_t, mut ds_t, mut dq_t) =
            (vec![0.0f32; TILE * TILE], vec![0.0f32; TILE * TILE], vec![0.0f32; s * TILE]);
        for h in 0..a.h {
            ops.transposed(&mut q_t, qkv, (t, 3 * d, h * s, s));
            ops.transposed(&mut k_t, qkv, (t, 3 * d, d + h * s, s));
            ops.transposed(&mut dy_t, dy, (t, d, h * s, s));
            ops.padded(&mut q_p, qkv, (t, 3 * d, h * s, s));
            ops.padded(&mut dy_p, dy, (t, d, h * s, s));
            dk.fill(0.0);
            dv.fill(0.0);
            for i0 in (0..t).step_by(TILE) {
                let qn = TILE.min(t - i0);
                let (mut delta, mut lse_i) = ([0.0f32; TILE], [0.0f32; TILE]);
                for r in 0..qn {
                    let at = (i0 + r) * d + h * s;
                    delta[r] = dot16(&dy[at..at + s], &y[at..at + s]);
                    lse_i[r] = lse[h * t + i0 + r];
                }
                dq_t.fill(0.0);
                for j0 in (0..=i0).step_by(TILE) {
                    let kn = TILE.min(t - j0);
                    scores_t(&mut p_t, qkv, &q_t, &ops, a, (i0, j0, kn), h);
                    // dpᵀ = v_j dy_iᵀ
                    ds_t.fill(0.0);
                    tile(&mut ds_t, TILE, &qkv[j0 * 3 * d + 2 * d + h * s..], 3 * d, &dy_t[i0..], tp, (kn, s, TILE));
                    score_grads(&mut p_t, &mut ds_t, kn, &lse_i, &delta, scale, a.dropout > 0.0);
                    if a.dropout > 0.0 {
                        for c in 0..kn {
                            for r in 0..qn {
                                let keep = a.keep(row, h, i0 + r, j0 + c);
                                let (pv, gv) = (p_t[c * TILE + r], ds_t[c * TILE + r]);
                                ds_t[c * TILE + r] = pv * (keep * gv - delta[r]) * scale;
                                p_t[c * TILE + r] = pv * keep; // p̃
                            }
                        }
                    }
                    // dqᵀ += k_jᵀ dsᵀ;  dk_j += dsᵀ q_i;  dv_j += p̃ᵀ dy_i
                    tile(&mut dq_t, TILE, &k_t[j0..], tp, &ds_t, TILE, (s, kn, TILE));
                    tile(&mut dk[j0 * sp..], sp, &ds_t, TILE, &q_p[i0 * sp..], sp, (kn, qn, sp));
                    tile(&mut dv[j0 * sp..], sp, &p_t, TILE, &dy_p[i0 * sp..], sp, (kn, qn, sp));
                }
                for r in 0..qn {
                    let dq = &mut dqkv[(i0 + r) * 3 * d + h * s..][..s];
                    dq.iter_mut().enumerate().for_each(|(x, o)| *o = dq_t[x * TILE + r]);
                }
            }
            for i in 0..t {
                dqkv[i * 3 * d + d + h * s..][..s].copy_from_slice(&dk[i * sp..][..s]);
                dqkv[i * 3 * d + 2 * d + h * s..][..s].copy_from_slice(&dv[i * sp..][..s]);
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
