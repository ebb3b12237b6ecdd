//! Strictly causal linear attention: no softmax, keys = queries.
//!
//! `out[t] = Σ_{τ<t} (q_t · q_τ) v_τ`, i.e. `out = tril₋₁(q qᵀ) v`, per batch row and
//! head, with q (B, H, T, N) the rotated neurons and v (B, T, D) the values, which
//! every head of a row shares.
//!
//! With a decay, head h's scores are multiplied by `γ_h^(t−τ)`: `decay` holds γ_h per
//! head, or is empty for none (the reference model).

use rayon::prelude::*;

use crate::elementwise::relu_backward_add_block;
use crate::matmul::{matmul, transpose, with_scratch, MatMul};
use crate::rope::{rope_block, RopeDirection};

thread_local! {
    /// Per-thread scratch of one (row, head): qᵀ in the forward, Rᵀ dq in the
    /// backward; grown to the largest seen.
    pub(crate) static QT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sizes of a batched attention: B rows, H heads, T positions, N query width, D value width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attention {
    /// B: batch rows.
    pub b: usize,
    /// H: heads per row.
    pub h: usize,
    /// T: positions.
    pub t: usize,
    /// N: width of q.
    pub n: usize,
    /// D: width of v.
    pub d: usize,
}

impl Attention {
    /// Multiply-adds of the causal products, as the model's count has them (the
    /// scores and the values' sum over the positions before each query).
    pub(crate) fn flops(&self) -> f64 {
        (self.b * self.h * self.t * self.t * (self.n + self.d)) as f64
    }
}

/// How each head weights the score of positions t−τ apart: its decay multiplies it by
/// γ_h^(t−τ), its delay δ_h by `w(t−τ) = clamp(t − τ − δ_h, 0, 1)` (a write readable
/// δ_h tokens later than without; a fractional δ interpolates between the integer
/// lags around it). `decay`: γ_h per head, or empty for none; `delays`: δ_h ≥ 0 per
/// head, or empty for none.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lags<'a> {
    /// γ_h per head, or empty.
    pub decay: &'a [f32],
    /// δ_h per head, or empty.
    pub delays: &'a [f32],
}

impl<'a> Lags<'a> {
    /// A decay alone.
    pub fn decay(decay: &'a [f32]) -> Self {
        Lags { decay, delays: &[] }
    }

    /// Whether they are for `h` heads.
    pub(crate) fn fits(&self, h: usize) -> bool {
        (self.decay.is_empty() || self.decay.len() == h) && (self.delays.is_empty() || self.delays.len() == h)
    }

    /// Those of head `head`.
    pub(crate) fn of(&self, head: usize) -> Lag {
        Lag { gamma: self.decay.get(head).copied(), delay: self.delays.get(head).copied().unwrap_or(0.0) }
    }
}

/// One head's [`Lags`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lag {
    pub(crate) gamma: Option<f32>,
    pub(crate) delay: f32,
}

impl Lag {
    /// The delay's whole lags m and fraction f: scores at lags up to m vanish, the
    /// one at lag m + 1 is weighted 1 − f.
    pub(crate) fn split(self) -> (usize, f32) {
        let m = self.delay.floor();
        (m as usize, self.delay - m)
    }

    /// The weight of the score of position j seen from i, in f64: `w(i − j) γ^(i−j)`
    /// (γ = 1 without a decay; 0 below f32's smallest normal).
    #[cfg(test)]
    pub(crate) fn factor(self, i: usize, j: usize) -> f64 {
        let (m, f) = self.split();
        if j + m >= i {
            return 0.0;
        }
        let w = if i - j == m + 1 { 1.0 - f as f64 } else { 1.0 };
        match self.gamma.map_or(1.0, |g| (g as f64).powi((i - j) as i32)) {
            g if g < f32::MIN_POSITIVE as f64 => 0.0,
            g => w * g,
        }
    }
}

/// Forward over every (row, head), in parallel: rotates x (B, H, T, N) by RoPE into
/// `q` (kept for the backward; tables (T, N/2) as [`crate::rope()`] reads them), then
/// writes `scores = tril₋₁(q qᵀ)` (B, H, T, T), also kept, and `out = scores · v`
/// (B, H, T, D). Each (row, head) is rotated and attended in one task, while its q
/// is in cache. `lags`: each head's decay and delay.
#[allow(clippy::too_many_arguments)]
pub fn causal_linear_attention(
    out: &mut [f32],
    scores: &mut [f32],
    q: &mut [f32],
    x: &[f32],
    v: &[f32],
    (cos, sin): (&[f32], &[f32]),
    lags: Lags,
    s: Attention,
) {
    let _span = crate::profile::span("linear attention", [s.t, s.n, s.d], s.flops());
    let Attention { b, h, t, n, d } = s;
    assert!(
        out.len() == b * h * t * d
            && scores.len() == b * h * t * t
            && q.len() == b * h * t * n
            && x.len() == q.len()
            && v.len() == b * t * d
            && cos.len() * 2 == t * n
            && lags.fits(h),
        "causal_linear_attention: sizes for {s:?}"
    );
    (out.par_chunks_mut(t * d), scores.par_chunks_mut(t * t), q.par_chunks_mut(t * n), x.par_chunks(t * n))
        .into_par_iter()
        .enumerate()
        .for_each(|(bh, (out, scores, q, x))| {
            rope_block(q, x, cos, sin, n, RopeDirection::Forward);
            let v = &v[bh / h * t * d..(bh / h + 1) * t * d];
            attention_one(out, scores, q, v, lags.of(bh % h), (t, n, d));
        });
}

/// What the forward of [`causal_linear_attention`] read and kept, for its backward.
#[derive(Clone, Copy, Debug)]
pub struct AttentionSaved<'a> {
    /// The neurons before RoPE, (B, H, T, N): a ReLU's output.
    pub x: &'a [f32],
    /// The rotated neurons, (B, H, T, N).
    pub q: &'a [f32],
    /// The values, (B, T, D).
    pub v: &'a [f32],
    /// `tril₋₁(q qᵀ)`, decayed and delayed, (B, H, T, T).
    pub scores: &'a [f32],
    /// Each head's decay and delay, as the forward was given.
    pub lags: Lags<'a>,
    /// RoPE's cosines, (T, N/2).
    pub cos: &'a [f32],
    /// RoPE's sines, (T, N/2).
    pub sin: &'a [f32],
}

/// Backward of [`causal_linear_attention`] over every (row, head), in parallel, from
/// dL/d(out) `da` (B, H, T, D): `dS = tril₋₁(da vᵀ) ⊙ Γ` (Γ the decay's γ^(t−τ), or
/// 1; written to the scratch `dscores`, (B, H, T, T)), `dv = Sᵀ da` per head
/// (B, H, T, D; the caller sums the heads), `dq = (dS + dSᵀ) q` (B, H, T, N), and
/// through RoPE and the ReLU that made x: `dx = [x > 0] ⊙ (dx + Rᵀ dq)` (`dx` holds
/// the gradient of x by other paths on entry). `dq` and `dv` are overwritten.
/// `dlags` (B, H, 2) receives, per (row, head), what a learned decay and a learned
/// delay train by ([`lag_grads`]; sums of T²/2 and T·N terms, small beside the products).
#[allow(clippy::too_many_arguments)]
pub fn causal_linear_attention_backward(
    dx: &mut [f32],
    dq: &mut [f32],
    dv: &mut [f32],
    dscores: &mut [f32],
    dlags: &mut [f32],
    da: &[f32],
    saved: AttentionSaved,
    s: Attention,
) {
    let _span = crate::profile::span("linear attention backward", [s.t, s.n, s.d], 2.0 * s.flops());
    let Attention { b, h, t, n, d } = s;
    let AttentionSaved { x, q, v, scores, cos, sin, lags } = saved;
    assert!(
        dx.len() == b * h * t * n
            && dq.len() == dx.len()
            && x.len() == dx.len()
            && q.len() == dx.len()
            && dv.len() == b * h * t * d
            && da.len() == dv.len()
            && v.len() == b * t * d
            && dscores.len() == b * h * t * t
            && scores.len() == dscores.len()
            && cos.len() * 2 == t * n
            && lags.fits(h)
            && dlags.len() == 2 * b * h,
        "causal_linear_attention_backward: sizes for {s:?}"
    );
    let grads = (dx.par_chunks_mut(t * n), dq.par_chunks_mut(t * n), dv.par_chunks_mut(t * d));
    (grads, dscores.par_chunks_mut(t * t), dlags.par_chunks_mut(2)).into_par_iter().enumerate().for_each(
        |(bh, ((dx, dq, dv), dscores, dlog))| {
            let v = &v[bh / h * t * d..(bh / h + 1) * t * d];
            let (nb, db, tb) =
                (bh * t * n..(bh + 1) * t * n, bh * t * d..(bh + 1) * t * d, bh * t * t..(bh + 1) * t * t);
            let saved = (&q[nb.clone()], v, &scores[tb]);
            attention_backward_one(dq, dv, dscores, dlog, &da[db], saved, lags.of(bh % h), (t, n, d));
            with_scratch(&QT, |rotated| {
                rotated.resize(t * n, 0.0);
                rope_block(rotated, dq, cos, sin, n, RopeDirection::Inverse);
                relu_backward_add_block(dx, rotated, &x[nb]);
            });
        },
    );
}

/// Zeroes the diagonal and everything above it of a t×t matrix, and with a delay
/// δ = m + f the m diagonals below it, weighting the next by 1 − f (entry (i, j)
/// times `clamp(i − j − δ, 0, 1)`); with a retention γ, multiplies entry (i, j) by
/// γ^(i−j) (powers in f64, then rounded). Entries whose power falls below f32's
/// smallest normal become 0, as the recurrent state's do, so far distances cost no
/// subnormal arithmetic in the products.
pub(crate) fn mask_and_decay(s: &mut [f32], t: usize, lag: Lag) {
    let (m, frac) = lag.split();
    for (i, row) in s.chunks_exact_mut(t).enumerate() {
        let keep = i.saturating_sub(m);
        row[keep..].fill(0.0);
        if frac > 0.0 && keep > 0 {
            row[keep - 1] *= 1.0 - frac;
        }
        if let Some(g) = lag.gamma {
            let mut f = (g as f64).powi(m as i32);
            for (k, x) in row[..keep].iter_mut().rev().enumerate() {
                f *= g as f64;
                if f < f32::MIN_POSITIVE as f64 {
                    row[..keep - k].fill(0.0);
                    break;
                }
                *x = (*x as f64 * f) as f32;
            }
        }
    }
}

/// [d loss / d ln γ, d loss / d δ] of one (row, head), from `dS` before the lags'
/// weighting and the scores `S = P ⊙ w ⊙ γ^(t−τ)` (t×t each), with P = q kᵀ (q, k
/// (t×n) its queries and keys): `Σ_{τ<t} dS ⊙ S ⊙ (t−τ)` (0 without a decay), and
/// `−Σ dS ⊙ P ⊙ γ^(m+1)` over the lag m + 1 that a delay δ = m + f weights by 1 − f
/// (0 without a delay).
pub(crate) fn lag_grads(
    dscores: &[f32],
    scores: &[f32],
    (q, k, n): (&[f32], &[f32], usize),
    t: usize,
    lag: Lag,
) -> [f32; 2] {
    let mut dlog = 0.0f64;
    if lag.gamma.is_some() {
        for i in 1..t {
            let (ds, s) = (&dscores[i * t..i * t + i], &scores[i * t..i * t + i]);
            dlog += ds.iter().zip(s).enumerate().map(|(j, (&g, &s))| (g * s) as f64 * (i - j) as f64).sum::<f64>();
        }
    }
    let mut ddelay = 0.0f64;
    if lag.delay > 0.0 {
        let (m, _) = lag.split();
        let g = lag.gamma.map_or(1.0, |g| match (g as f64).powi(m as i32 + 1) {
            p if p < f32::MIN_POSITIVE as f64 => 0.0,
            p => p,
        });
        for i in m + 1..t {
            let j = i - m - 1;
            let p: f64 =
                q[i * n..(i + 1) * n].iter().zip(&k[j * n..(j + 1) * n]).map(|(&a, &b)| a as f64 * b as f64).sum();
            ddelay -= dscores[i * t + j] as f64 * p * g;
        }
    }
    [dlog as f32, ddelay as f32]
}

/// Rows per block of the blocked products: blocks above the diagonal are skipped,
/// which saves close to half of the work at long T.
const BLOCK: usize = 64;

/// Row blocks `r0..r1` of `0..t`.
pub(crate) fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(BLOCK).map(move |r0| (r0, (r0 + BLOCK).min(t)))
}

/// Forward of one (row, head): q (t×n), v (t×d), scores (t×t), out (t×d), with
/// the head's retention γ if it has one.
fn attention_one(out: &mut [f32], scores: &mut [f32], q: &[f32], v: &[f32], lag: Lag, (t, n, d): Dims3) {
    // qᵀ (n×t), made once: every block of rows reads a row-major B from it.
    with_scratch(&QT, |qt| {
        qt.resize(n * t, 0.0);
        transpose(qt, q, t, n);
        for (r0, r1) in blocks(t) {
            // scores[r0..r1, ..r1] = q[r0..r1] · qᵀ[:, ..r1]
            matmul(&mut scores[r0 * t..], &q[r0 * n..], qt, MatMul::new(r1 - r0, n, r1).ld(0, t, t));
        }
    });
    mask_and_decay(scores, t, lag);
    for (r0, r1) in blocks(t) {
        // out[r0..r1] = scores[r0..r1, ..r1] · v[..r1]
        matmul(&mut out[r0 * d..], &scores[r0 * t..], v, MatMul::new(r1 - r0, r1, d).ld(t, 0, 0));
    }
}

/// (t, n, d) of one (row, head).
type Dims3 = (usize, usize, usize);

/// Scalar twin of [`causal_linear_attention`]: RoPE's twin, then loops over τ < t
/// only, f64 sums, the lags' weight by [`Lag::factor`].
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_linear_attention_scalar(
    out: &mut [f32],
    scores: &mut [f32],
    q: &mut [f32],
    x: &[f32],
    v: &[f32],
    (cos, sin): (&[f32], &[f32]),
    lags: Lags,
    s: Attention,
) {
    let Attention { b, h, t, n, d } = s;
    crate::rope::rope_scalar(q, x, cos, sin, n, RopeDirection::Forward);
    for bh in 0..b * h {
        let vb = &v[bh / h * t * d..(bh / h + 1) * t * d];
        let (out, scores, q) = (&mut out[bh * t * d..], &mut scores[bh * t * t..], &q[bh * t * n..]);
        attention_one_scalar(out, scores, q, vb, lags.of(bh % h), (t, n, d));
    }
}

#[cfg(test)]
fn attention_one_scalar(out: &mut [f32], scores: &mut [f32], q: &[f32], v: &[f32], lag: Lag, dims: Dims3) {
    let (t, n, d) = dims;
    scores[..t * t].fill(0.0);
    for i in 0..t {
        let mut acc = vec![0.0f64; d];
        for j in 0..i {
            let s: f64 = (0..n).map(|k| q[i * n + k] as f64 * q[j * n + k] as f64).sum::<f64>() * lag.factor(i, j);
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

/// Backward of one (row, head), from what its forward kept: (q, v, scores).
#[allow(clippy::too_many_arguments)]
fn attention_backward_one(
    dq: &mut [f32],
    dv: &mut [f32],
    dscores: &mut [f32],
    dlags: &mut [f32],
    da: &[f32],
    (q, v, scores): (&[f32], &[f32], &[f32]),
    lag: Lag,
    (t, n, d): Dims3,
) {
    for (r0, r1) in blocks(t) {
        // dS[r0..r1, ..r1] = da[r0..r1] · v[..r1]ᵀ
        matmul(&mut dscores[r0 * t..], &da[r0 * d..], v, MatMul::new(r1 - r0, d, r1).b_t().ld(0, 0, t));
    }
    dlags.copy_from_slice(&lag_grads(dscores, scores, (q, q, n), t, lag));
    // the scores were q qᵀ ⊙ Γ: the gradient of q qᵀ is dS ⊙ Γ
    mask_and_decay(dscores, t, lag);
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
/// f64 sums; recomputes the (decayed) scores from q instead of reading them.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn causal_linear_attention_backward_scalar(
    dx: &mut [f32],
    dq: &mut [f32],
    dv: &mut [f32],
    dscores: &mut [f32],
    dlags: &mut [f32],
    da: &[f32],
    saved: AttentionSaved,
    s: Attention,
) {
    let Attention { b, h, t, n, d } = s;
    let AttentionSaved { x, q, v, cos, sin, lags, .. } = saved;
    for bh in 0..b * h {
        let vb = &v[bh / h * t * d..(bh / h + 1) * t * d];
        let (nb, db) = (bh * t * n..(bh + 1) * t * n, bh * t * d..(bh + 1) * t * d);
        let ds = &mut dscores[bh * t * t..(bh + 1) * t * t];
        let lag = lags.of(bh % h);
        let [dlog, ddelay] = attention_backward_one_scalar(
            &mut dq[nb.clone()],
            &mut dv[db.clone()],
            ds,
            &da[db],
            &q[nb],
            vb,
            lag,
            (t, n, d),
        );
        dlags[2 * bh] = if lag.gamma.is_some() { dlog as f32 } else { 0.0 };
        dlags[2 * bh + 1] = ddelay as f32;
    }
    let mut rotated = vec![0.0; dq.len()];
    crate::rope::rope_scalar(&mut rotated, dq, cos, sin, n, RopeDirection::Inverse);
    crate::elementwise::scalar::relu_backward_add(dx, &rotated, x);
}

/// Returns [d loss / d ln γ, d loss / d δ]: `Σ_{j<i} (da_i · v_j)(q_i · q_j) w γ^(i−j) (i−j)`,
/// and `−Σ (da_i · v_j)(q_i · q_j) γ^(i−j)` over i − j = m + 1 for a delay δ = m + f.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
fn attention_backward_one_scalar(
    dq: &mut [f32],
    dv: &mut [f32],
    dscores: &mut [f32],
    da: &[f32],
    q: &[f32],
    v: &[f32],
    lag: Lag,
    (t, n, d): Dims3,
) -> [f64; 2] {
    let (mut dlog, mut ddelay) = (0.0f64, 0.0f64);
    let (m, _) = lag.split();
    let dot = |x: &[f32], i: usize, y: &[f32], j: usize, w: usize| -> f64 {
        (0..w).map(|k| x[i * w + k] as f64 * y[j * w + k] as f64).sum()
    };
    let mut gq = vec![0.0f64; t * n];
    let mut gv = vec![0.0f64; t * d];
    dscores[..t * t].fill(0.0);
    for i in 0..t {
        for j in 0..i {
            let f = lag.factor(i, j);
            let s = dot(q, i, q, j, n) * f;
            let raw = dot(da, i, v, j, d);
            let ds = raw * f;
            dlog += raw * s * (i - j) as f64;
            if lag.delay > 0.0 && i - j == m + 1 {
                // f = (1 − frac) γ^(m+1): d f / d δ = −γ^(m+1)
                let unweighted = Lag { delay: 0.0, ..lag }.factor(i, j);
                ddelay -= raw * dot(q, i, q, j, n) * unweighted;
            }
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
    [dlog, ddelay]
}
