//! Strictly causal linear attention with a retention per neuron: what the layer runs
//! when each neuron's synapses fade at their own rate.
//!
//! `out[t] = Σ_{τ<t} Σ_i q_ti k_τi γ_i^(t−τ) v_τ` per batch row and head, with q and k
//! (B, H, T, N) already rotated, v (B, T, D) shared by the heads of a row and γ (H, N).
//! A neuron's own decay no longer scales a score by one number, so the (T, T) scores
//! are never formed. T is cut in chunks of [`CHUNK`] positions, as gated linear
//! attention does: within a chunk each score is summed over the neurons with its
//! powers γ_i^(t−τ); across chunks a state
//! `S = Σ_{τ<c0} γ^(c0−1−τ) ⊙ k_τ ⊗ v_τ` (N, D), the recurrent ρ at the chunk's first
//! position c0, is read by `γ^(t−c0+1) ⊙ q_t` and carried on by two products. Only
//! non-negative powers of γ ≤ 1 appear, so nothing overflows however fast a neuron
//! forgets.
//!
//! The backward runs the same two sweeps: forwards for dq (reading S), backwards for
//! dk and dv (reading `G = Σ_{t≥c1} γ^(t−c1) ⊙ q_t ⊗ da_t`), and takes
//! `d ln γ_i = Σ_t t q_ti dq_ti − Σ_τ τ k_τi dk_τi` (each score's d/d ln γ_i is its
//! lag t − τ times itself).

use rayon::prelude::*;

use crate::attention::Attention;
use crate::matmul::{matmul, MatMul};
use crate::simd::multiversion;

/// Positions per chunk: the scores within one are summed neuron by neuron, those
/// across chunks go through the (N, D) state by matrix products.
pub const CHUNK: usize = 32;

/// γ^j for j = 0..=CHUNK, (CHUNK + 1, N) for one head's γ (N), formed in f64 and 0
/// below f32's smallest normal (as the other kernels flush).
fn powers(gamma: &[f32]) -> Vec<f32> {
    (0..=CHUNK)
        .flat_map(|j| {
            gamma.iter().map(move |&g| match (g as f64).powi(j as i32) {
                p if p < f32::MIN_POSITIVE as f64 => 0.0,
                p => p as f32,
            })
        })
        .collect()
}

multiversion! {
    /// `Σ_i a_i b_i c_i`, in sixteen lanes.
    fn dot3_into(out: &mut f32, a: &[f32], b: &[f32], c: &[f32]) {
        let mut lanes = [0.0f32; 16];
        let (ac, bc, cc) = (a.chunks_exact(16), b.chunks_exact(16), c.chunks_exact(16));
        let tail: f32 = ac.remainder().iter().zip(bc.remainder()).zip(cc.remainder()).map(|((x, y), z)| x * y * z).sum();
        for ((x, y), z) in ac.zip(bc).zip(cc) {
            for l in 0..16 {
                lanes[l] += x[l] * y[l] * z[l];
            }
        }
        *out = lanes.iter().sum::<f32>() + tail;
    }
}

fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut out = 0.0;
    dot3_into(&mut out, a, b, c);
    out
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

multiversion! {
    /// `out += s · (a ⊙ b)`.
    fn axpy2(out: &mut [f32], s: f32, a: &[f32], b: &[f32]) {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o += s * x * y;
        }
    }
}

multiversion! {
    /// `out[j] = a[j] ⊙ p[rows[j]]` for the rows of a chunk (each of width `n`).
    fn weigh_rows(out: &mut [f32], a: &[f32], p: &[f32], exps: &[usize], n: usize) {
        for ((o, x), &e) in out.chunks_exact_mut(n).zip(a.chunks_exact(n)).zip(exps) {
            for ((o, x), w) in o.iter_mut().zip(x).zip(&p[e * n..(e + 1) * n]) {
                *o = x * w;
            }
        }
    }
}

/// `state (N, D) ← γ^l ⊙ state`: row i fades by γ_i^l.
fn fade(state: &mut [f32], p: &[f32], l: usize, d: usize) {
    let n = state.len() / d;
    for (row, &w) in state.chunks_exact_mut(d).zip(&p[l * n..(l + 1) * n]) {
        row.iter_mut().for_each(|x| *x *= w);
    }
}

/// One head's chunks: (start, end) pairs covering 0..t.
fn chunks(t: usize) -> impl DoubleEndedIterator<Item = (usize, usize)> {
    (0..t.div_ceil(CHUNK)).map(move |c| (c * CHUNK, ((c + 1) * CHUNK).min(t)))
}

/// `state ← γ^l ⊙ state + Σ_j (γ^(l−1−j) ⊙ k_j) ⊗ v_j` over a chunk's rows j < l:
/// the recurrent ρ carried over the chunk. `scratch`: (CHUNK, N).
fn carry(
    state: &mut [f32],
    scratch: &mut [f32],
    (k, v): (&[f32], &[f32]),
    p: &[f32],
    (l, n, d): (usize, usize, usize),
) {
    fade(state, p, l, d);
    let exps: Vec<usize> = (0..l).map(|j| l - 1 - j).collect();
    weigh_rows(&mut scratch[..l * n], &k[..l * n], p, &exps, n);
    matmul(state, scratch, v, MatMul::new(n, l, d).a_t().acc());
}

/// Checks the sizes of one call.
fn check(name: &str, (q, k, v, gamma): (&[f32], &[f32], &[f32], &[f32]), s: Attention) {
    let Attention { b, h, t, n, d } = s;
    assert!(
        q.len() == b * h * t * n && k.len() == q.len() && v.len() == b * t * d && gamma.len() == h * n && t > 0,
        "{name}: sizes for {s:?}"
    );
}

/// Forward over every (row, head), in parallel: `out` (B, H, T, D) from rotated
/// queries `q` and keys `k` (B, H, T, N), values `v` (B, T, D) and each head's
/// retentions `gamma` (H, N), every γ in [0, 1].
pub fn neuron_decay_attention(out: &mut [f32], q: &[f32], k: &[f32], v: &[f32], gamma: &[f32], s: Attention) {
    let _span = crate::profile::span("neuron-decay attention", [s.t, s.n, s.d], s.flops());
    let Attention { h, t, n, d, .. } = s;
    check("neuron_decay_attention", (q, k, v, gamma), s);
    assert_eq!(out.len(), q.len() / n * d, "neuron_decay_attention: out for {s:?}");
    let tables: Vec<Vec<f32>> = gamma.chunks_exact(n).map(powers).collect();
    (out.par_chunks_mut(t * d), q.par_chunks(t * n), k.par_chunks(t * n)).into_par_iter().enumerate().for_each(
        |(bh, (out, q, k))| {
            let (v, p) = (&v[bh / h * t * d..(bh / h + 1) * t * d], &tables[bh % h]);
            let (mut state, mut scratch) = (vec![0.0f32; n * d], vec![0.0f32; CHUNK * n]);
            for (c0, c1) in chunks(t) {
                let l = c1 - c0;
                let (qc, kc, vc, oc) =
                    (&q[c0 * n..c1 * n], &k[c0 * n..c1 * n], &v[c0 * d..c1 * d], &mut out[c0 * d..c1 * d]);
                // the past chunks: out_t = (γ^(t−c0+1) ⊙ q_t) · S
                if c0 == 0 {
                    oc.fill(0.0);
                } else {
                    let exps: Vec<usize> = (1..=l).collect();
                    weigh_rows(&mut scratch[..l * n], qc, p, &exps, n);
                    matmul(oc, &scratch, &state, MatMul::new(l, n, d));
                }
                // this chunk: out_t += Σ_{τ<t} (Σ_i q_ti k_τi γ_i^(t−τ)) v_τ
                for i in 1..l {
                    for j in 0..i {
                        let score =
                            dot3(&qc[i * n..(i + 1) * n], &kc[j * n..(j + 1) * n], &p[(i - j) * n..(i - j + 1) * n]);
                        oc[i * d..(i + 1) * d]
                            .iter_mut()
                            .zip(&vc[j * d..(j + 1) * d])
                            .for_each(|(o, &x)| *o += score * x);
                    }
                }
                if c1 < t {
                    carry(&mut state, &mut scratch, (kc, vc), p, (l, n, d));
                }
            }
        },
    );
}

/// Backward of [`neuron_decay_attention`] from `da` (B, H, T, D): `dq`, `dk`
/// (B, H, T, N) and `dv` (B, H, T, D, per head: the caller sums the heads), all
/// overwritten, and `dlog_gamma` (B, H, N), d/d ln γ_i of each row and head.
#[allow(clippy::too_many_arguments)]
pub fn neuron_decay_attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dlog_gamma: &mut [f32],
    da: &[f32],
    (q, k, v, gamma): (&[f32], &[f32], &[f32], &[f32]),
    s: Attention,
) {
    let _span = crate::profile::span("neuron-decay attention backward", [s.t, s.n, s.d], 2.0 * s.flops());
    let Attention { b, h, t, n, d } = s;
    check("neuron_decay_attention_backward", (q, k, v, gamma), s);
    assert!(
        dq.len() == q.len() && dk.len() == q.len() && dv.len() == b * h * t * d && da.len() == dv.len(),
        "neuron_decay_attention_backward: gradients for {s:?}"
    );
    assert_eq!(dlog_gamma.len(), b * h * n, "neuron_decay_attention_backward: dlog_gamma for {s:?}");
    let tables: Vec<Vec<f32>> = gamma.chunks_exact(n).map(powers).collect();
    let grads = (dq.par_chunks_mut(t * n), dk.par_chunks_mut(t * n), dv.par_chunks_mut(t * d));
    (grads, dlog_gamma.par_chunks_mut(n)).into_par_iter().enumerate().for_each(|(bh, ((dq, dk, dv), dlg))| {
        let (v, p) = (&v[bh / h * t * d..(bh / h + 1) * t * d], &tables[bh % h]);
        let (q, k, da) =
            (&q[bh * t * n..(bh + 1) * t * n], &k[bh * t * n..(bh + 1) * t * n], &da[bh * t * d..(bh + 1) * t * d]);
        let (mut state, mut scratch) = (vec![0.0f32; n * d], vec![0.0f32; CHUNK * n]);
        // forwards: dq_t = Σ_{τ<t} (da_t · v_τ) γ^(t−τ) ⊙ k_τ, the past chunks through S
        for (c0, c1) in chunks(t) {
            let l = c1 - c0;
            let (kc, vc, dac, dqc) =
                (&k[c0 * n..c1 * n], &v[c0 * d..c1 * d], &da[c0 * d..c1 * d], &mut dq[c0 * n..c1 * n]);
            if c0 == 0 {
                dqc.fill(0.0);
            } else {
                // dq_t = γ^(t−c0+1) ⊙ (S · da_t)
                matmul(dqc, dac, &state, MatMul::new(l, d, n).b_t());
                for (i, row) in dqc.chunks_exact_mut(n).enumerate() {
                    row.iter_mut().zip(&p[(i + 1) * n..(i + 2) * n]).for_each(|(g, &w)| *g *= w);
                }
            }
            for i in 1..l {
                for j in 0..i {
                    let g = dot(&dac[i * d..(i + 1) * d], &vc[j * d..(j + 1) * d]);
                    axpy2(&mut dqc[i * n..(i + 1) * n], g, &kc[j * n..(j + 1) * n], &p[(i - j) * n..(i - j + 1) * n]);
                }
            }
            if c1 < t {
                carry(&mut state, &mut scratch, (kc, vc), p, (l, n, d));
            }
        }
        // backwards: dk_τ = Σ_{t>τ} (da_t · v_τ) γ^(t−τ) ⊙ q_t, dv_τ = Σ_{t>τ} score(t, τ) da_t,
        // the later chunks through G = Σ_{t≥c1} γ^(t−c1) ⊙ q_t ⊗ da_t
        let grad_state = &mut state;
        grad_state.fill(0.0);
        for (c0, c1) in chunks(t).rev() {
            let l = c1 - c0;
            let (qc, kc, vc, dac) = (&q[c0 * n..c1 * n], &k[c0 * n..c1 * n], &v[c0 * d..c1 * d], &da[c0 * d..c1 * d]);
            let (dkc, dvc) = (&mut dk[c0 * n..c1 * n], &mut dv[c0 * d..c1 * d]);
            if c1 == t {
                dkc.fill(0.0);
                dvc.fill(0.0);
            } else {
                // dk_τ = γ^(c1−τ) ⊙ (G · v_τ), dv_τ = Gᵀ (γ^(c1−τ) ⊙ k_τ)
                let exps: Vec<usize> = (0..l).map(|j| l - j).collect();
                matmul(dkc, vc, grad_state, MatMul::new(l, d, n).b_t());
                for (row, &e) in dkc.chunks_exact_mut(n).zip(&exps) {
                    row.iter_mut().zip(&p[e * n..(e + 1) * n]).for_each(|(g, &w)| *g *= w);
                }
                weigh_rows(&mut scratch[..l * n], kc, p, &exps, n);
                matmul(dvc, &scratch, grad_state, MatMul::new(l, n, d));
            }
            for j in 0..l {
                for i in j + 1..l {
                    let pw = &p[(i - j) * n..(i - j + 1) * n];
                    let g = dot(&dac[i * d..(i + 1) * d], &vc[j * d..(j + 1) * d]);
                    axpy2(&mut dkc[j * n..(j + 1) * n], g, &qc[i * n..(i + 1) * n], pw);
                    let score = dot3(&qc[i * n..(i + 1) * n], &kc[j * n..(j + 1) * n], pw);
                    dvc[j * d..(j + 1) * d]
                        .iter_mut()
                        .zip(&dac[i * d..(i + 1) * d])
                        .for_each(|(o, &x)| *o += score * x);
                }
            }
            if c0 > 0 {
                // G ← γ^l ⊙ G + Σ_i (γ^i ⊙ q_i) ⊗ da_i
                fade(grad_state, p, l, d);
                let exps: Vec<usize> = (0..l).collect();
                weigh_rows(&mut scratch[..l * n], qc, p, &exps, n);
                matmul(grad_state, &scratch, dac, MatMul::new(n, l, d).a_t().acc());
            }
        }
        // d ln γ_i = Σ_t (t − m) (q_ti dq_ti − k_ti dk_ti), any m (the lags are differences)
        let mut acc = vec![0.0f64; n];
        let mid = (t / 2) as f64;
        for (i, (((q, dq), k), dk)) in
            q.chunks_exact(n).zip(dq.chunks_exact(n)).zip(k.chunks_exact(n)).zip(dk.chunks_exact(n)).enumerate()
        {
            let at = i as f64 - mid;
            for c in 0..n {
                acc[c] += at * (q[c] as f64 * dq[c] as f64 - k[c] as f64 * dk[c] as f64);
            }
        }
        dlg.iter_mut().zip(acc).for_each(|(o, a)| *o = a as f32);
    });
}

/// Scalar twin of [`neuron_decay_attention`] and its backward together, from the
/// definition with f64 sums: fills `out` and, from `da`, `dq`, `dk`, `dv` (per head)
/// and `dlog_gamma`.
#[cfg(test)]
pub(crate) fn neuron_decay_attention_scalar(
    out: &mut [f32],
    (dq, dk, dv, dlog_gamma): (&mut [f32], &mut [f32], &mut [f32], &mut [f32]),
    (q, k, v, gamma): (&[f32], &[f32], &[f32], &[f32]),
    da: &[f32],
    s: Attention,
) {
    let Attention { h, t, n, d, .. } = s;
    for bh in 0..out.len() / (t * d) {
        let qr = |i: usize, c: usize| q[(bh * t + i) * n + c] as f64;
        let kr = |i: usize, c: usize| k[(bh * t + i) * n + c] as f64;
        let vr = |i: usize, c: usize| v[(bh / h * t + i) * d + c] as f64;
        let dar = |i: usize, c: usize| da[(bh * t + i) * d + c] as f64;
        let pw = |c: usize, lag: usize| match (gamma[bh % h * n + c] as f64).powi(lag as i32) {
            p if p < f32::MIN_POSITIVE as f64 => 0.0,
            p => p,
        };
        let (mut o, mut gq, mut gk, mut gv, mut gl) =
            (vec![0.0f64; t * d], vec![0.0f64; t * n], vec![0.0f64; t * n], vec![0.0f64; t * d], vec![0.0f64; n]);
        for i in 0..t {
            for j in 0..i {
                let g: f64 = (0..d).map(|c| dar(i, c) * vr(j, c)).sum();
                let score: f64 = (0..n).map(|c| qr(i, c) * kr(j, c) * pw(c, i - j)).sum();
                for c in 0..d {
                    o[i * d + c] += score * vr(j, c);
                    gv[j * d + c] += score * dar(i, c);
                }
                for c in 0..n {
                    let w = pw(c, i - j);
                    gq[i * n + c] += g * w * kr(j, c);
                    gk[j * n + c] += g * w * qr(i, c);
                    gl[c] += g * w * qr(i, c) * kr(j, c) * (i - j) as f64;
                }
            }
        }
        let put = |dst: &mut [f32], src: Vec<f64>| dst.iter_mut().zip(src).for_each(|(x, y)| *x = y as f32);
        put(&mut out[bh * t * d..(bh + 1) * t * d], o);
        put(&mut dq[bh * t * n..(bh + 1) * t * n], gq);
        put(&mut dk[bh * t * n..(bh + 1) * t * n], gk);
        put(&mut dv[bh * t * d..(bh + 1) * t * d], gv);
        put(&mut dlog_gamma[bh * n..(bh + 1) * n], gl);
    }
}
