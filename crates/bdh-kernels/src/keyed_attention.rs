//! Strictly causal linear attention whose keys differ from its queries: what the
//! layer runs when a mechanism shapes the key of the write into ρ (a trace, an
//! astrocyte's gate).
//!
//! `out[t] = Σ_{τ<t} (q_t · k_τ) γ^(t−τ) v_τ`, i.e. `out = (tril₋₁(q kᵀ) ⊙ Γ) v`, per
//! batch row and head, with q and k (B, H, T, N) already rotated and v (B, T, D)
//! shared by the heads of a row. The keys-equal-queries kernel
//! ([`crate::causal_linear_attention`]) stays the layer's default, with RoPE fused.

use rayon::prelude::*;

#[cfg(test)]
use crate::attention::Lag;
use crate::attention::{blocks, mask_and_decay, Attention, Lags, QT};
use crate::matmul::{matmul, transpose, with_scratch, MatMul};

/// Forward over every (row, head), in parallel: `scores = tril₋₁(q kᵀ) ⊙ Γ`
/// (B, H, T, T, kept for the backward) and `out = scores · v` (B, H, T, D).
/// `lags`: each head's decay and delay.
pub fn keyed_attention(out: &mut [f32], scores: &mut [f32], q: &[f32], k: &[f32], v: &[f32], lags: Lags, s: Attention) {
    let _span = crate::profile::span("keyed attention", [s.t, s.n, s.d], s.flops());
    let Attention { b, h, t, n, d } = s;
    assert!(
        out.len() == b * h * t * d
            && scores.len() == b * h * t * t
            && q.len() == b * h * t * n
            && k.len() == q.len()
            && v.len() == b * t * d
            && lags.fits(h),
        "keyed_attention: sizes for {s:?}"
    );
    (out.par_chunks_mut(t * d), scores.par_chunks_mut(t * t), q.par_chunks(t * n), k.par_chunks(t * n))
        .into_par_iter()
        .enumerate()
        .for_each(|(bh, (out, scores, q, k))| {
            let v = &v[bh / h * t * d..(bh / h + 1) * t * d];
            with_scratch(&QT, |kt| {
                kt.resize(n * t, 0.0);
                transpose(kt, k, t, n);
                for (r0, r1) in blocks(t) {
                    // scores[r0..r1, ..r1] = q[r0..r1] · kᵀ[:, ..r1]
                    matmul(&mut scores[r0 * t..], &q[r0 * n..], kt, MatMul::new(r1 - r0, n, r1).ld(0, t, t));
                }
            });
            mask_and_decay(scores, t, lags.of(bh % h));
            for (r0, r1) in blocks(t) {
                matmul(&mut out[r0 * d..], &scores[r0 * t..], v, MatMul::new(r1 - r0, r1, d).ld(t, 0, 0));
            }
        });
}

/// What [`keyed_attention`] read and kept, for its backward.
#[derive(Clone, Copy, Debug)]
pub struct KeyedSaved<'a> {
    /// The rotated queries, (B, H, T, N).
    pub q: &'a [f32],
    /// The rotated keys, (B, H, T, N).
    pub k: &'a [f32],
    /// The values, (B, T, D).
    pub v: &'a [f32],
    /// The scores the forward kept, (B, H, T, T).
    pub scores: &'a [f32],
    /// Each head's decay and delay, as the forward was given.
    pub lags: Lags<'a>,
}

/// Backward of [`keyed_attention`] from `da` (B, H, T, D): `dS = tril₋₁(da vᵀ) ⊙ Γ`
/// (into the scratch `dscores`), `dv = Sᵀ da` per head (B, H, T, D; the caller sums
/// the heads), `dq = dS k` and `dk = dSᵀ q` (B, H, T, N, overwritten), and
/// `dlags` (B, H, 2) what a learned decay and a learned delay train by
/// ([`crate::attention::lag_grads`]).
#[allow(clippy::too_many_arguments)]
pub fn keyed_attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dscores: &mut [f32],
    dlags: &mut [f32],
    da: &[f32],
    saved: KeyedSaved,
    s: Attention,
) {
    let _span = crate::profile::span("keyed attention backward", [s.t, s.n, s.d], 2.0 * s.flops());
    let Attention { b, h, t, n, d } = s;
    let KeyedSaved { q, k, v, scores, lags } = saved;
    assert!(
        dq.len() == b * h * t * n
            && dk.len() == dq.len()
            && q.len() == dq.len()
            && k.len() == dq.len()
            && dv.len() == b * h * t * d
            && da.len() == dv.len()
            && v.len() == b * t * d
            && dscores.len() == b * h * t * t
            && scores.len() == dscores.len()
            && lags.fits(h)
            && dlags.len() == 2 * b * h,
        "keyed_attention_backward: sizes for {s:?}"
    );
    let grads = (dq.par_chunks_mut(t * n), dk.par_chunks_mut(t * n), dv.par_chunks_mut(t * d));
    (grads, dscores.par_chunks_mut(t * t), dlags.par_chunks_mut(2)).into_par_iter().enumerate().for_each(
        |(bh, ((dq, dk, dv), ds, dlags))| {
            let v = &v[bh / h * t * d..(bh / h + 1) * t * d];
            let (nb, db, tb) =
                (bh * t * n..(bh + 1) * t * n, bh * t * d..(bh + 1) * t * d, bh * t * t..(bh + 1) * t * t);
            let (q, k, da, scores) = (&q[nb.clone()], &k[nb], &da[db], &scores[tb]);
            let lag = lags.of(bh % h);
            for (r0, r1) in blocks(t) {
                // dS[r0..r1, ..r1] = da[r0..r1] · v[..r1]ᵀ
                matmul(&mut ds[r0 * t..], &da[r0 * d..], v, MatMul::new(r1 - r0, d, r1).b_t().ld(0, 0, t));
            }
            dlags.copy_from_slice(&crate::attention::lag_grads(ds, scores, (q, k, n), t, lag));
            mask_and_decay(ds, t, lag);
            for (r0, r1) in blocks(t) {
                let sub = r0 * t + r0;
                // dv[r0..r1] = S[r0.., r0..r1]ᵀ · da[r0..]
                matmul(
                    &mut dv[r0 * d..],
                    &scores[sub..],
                    &da[r0 * d..],
                    MatMul::new(r1 - r0, t - r0, d).a_t().ld(t, 0, 0),
                );
                // dq[r0..r1] = dS[r0..r1, ..r1] · k[..r1]
                matmul(&mut dq[r0 * n..], &ds[r0 * t..], k, MatMul::new(r1 - r0, r1, n).ld(t, 0, 0));
                // dk[r0..r1] = dS[r0.., r0..r1]ᵀ · q[r0..]
                matmul(&mut dk[r0 * n..], &ds[sub..], &q[r0 * n..], MatMul::new(r1 - r0, t - r0, n).a_t().ld(t, 0, 0));
            }
        },
    );
}

/// Scalar twin of [`keyed_attention`] and its backward together, from the
/// definition with f64 sums: fills `out`, `scores`, and from `da` the gradients
/// `dq`, `dk`, `dv` (per head) and `dlags`.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn keyed_attention_scalar(
    (out, scores): (&mut [f32], &mut [f32]),
    (dq, dk, dv, dlags): (&mut [f32], &mut [f32], &mut [f32], &mut [f32]),
    (q, k, v, da): (&[f32], &[f32], &[f32], &[f32]),
    lags: Lags,
    s: Attention,
) {
    let Attention { b, h, t, n, d } = s;
    let dot = |x: &[f32], y: &[f32]| -> f64 { x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum() };
    for bh in 0..b * h {
        let lag = lags.of(bh % h);
        let row = |w: usize, i: usize| (bh * t + i) * w..(bh * t + i + 1) * w;
        let vrow = |i: usize| (bh / h * t + i) * d..(bh / h * t + i + 1) * d;
        let (mut gq, mut gk, mut gv) = (vec![0.0f64; t * n], vec![0.0f64; t * n], vec![0.0f64; t * d]);
        let (mut dlog, mut ddelay) = (0.0f64, 0.0f64);
        let (m, _) = lag.split();
        for i in 0..t {
            let mut acc = vec![0.0f64; d];
            for j in 0..t {
                let f = lag.factor(i, j);
                let p = dot(&q[row(n, i)], &k[row(n, j)]);
                scores[bh * t * t + i * t + j] = (p * f) as f32;
                let raw = dot(&da[row(d, i)], &v[vrow(j)]);
                dlog += raw * p * f * (i as f64 - j as f64);
                if lag.delay > 0.0 && j + m + 1 == i {
                    ddelay -= raw * p * Lag { delay: 0.0, ..lag }.factor(i, j);
                }
                for c in 0..d {
                    acc[c] += p * f * v[vrow(j)][c] as f64;
                    gv[j * d + c] += p * f * da[row(d, i)][c] as f64;
                }
                for c in 0..n {
                    gq[i * n + c] += raw * f * k[row(n, j)][c] as f64;
                    gk[j * n + c] += raw * f * q[row(n, i)][c] as f64;
                }
            }
            out[row(d, i)].iter_mut().zip(acc).for_each(|(o, a)| *o = a as f32);
        }
        let put = |dst: &mut [f32], src: Vec<f64>| dst.iter_mut().zip(src).for_each(|(o, g)| *o = g as f32);
        put(&mut dq[bh * t * n..(bh + 1) * t * n], gq);
        put(&mut dk[bh * t * n..(bh + 1) * t * n], gk);
        put(&mut dv[bh * t * d..(bh + 1) * t * d], gv);
        dlags[2 * bh] = if lag.gamma.is_some() { dlog as f32 } else { 0.0 };
        dlags[2 * bh + 1] = ddelay as f32;
    }
}
