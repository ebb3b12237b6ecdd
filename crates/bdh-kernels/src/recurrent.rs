//! Kernels of the recurrent (one token at a time) form, restricted to active rows.
//!
//! ReLU makes most neurons silent, so each step touches only the rows of the
//! synapse state ρ, of `decoder` and the columns of `encoder_v` that an active
//! neuron selects. The twins do the dense computation, which equals the sparse one
//! whenever the skipped coefficients are zero.

use crate::simd::{dot16, multiversion};

/// Lists what a recurrent step touches, given x (N) of one head: in `rows` both
/// neurons of every RoPE pair (2j, 2j+1) with an active neuron (the rows of ρ the
/// step reads and writes), and in `cols` the active neurons themselves (the columns
/// of `encoder_v` that y needs). `dense` lists everything, as if every neuron fired.
pub fn active_pairs(x: &[f32], rows: &mut Vec<u32>, cols: &mut Vec<u32>, dense: bool) {
    rows.clear();
    cols.clear();
    for (j, p) in x.chunks_exact(2).enumerate() {
        let (on0, on1) = (p[0] > 0.0 || dense, p[1] > 0.0 || dense);
        if on0 || on1 {
            let pair = 2 * j as u32;
            rows.extend([pair, pair + 1]);
            cols.extend(on0.then_some(pair));
            cols.extend(on1.then_some(pair + 1));
        }
    }
}

/// `z[c] = x[c] · max(y_c, 0)` for the listed neurons `cols` (y given per listed
/// neuron), and the neurons where z ≠ 0 into `z_rows` (every listed one if `dense`):
/// the sparse `x ⊙ relu(a · encoder_v)` of a recurrent step.
pub fn gate_listed(z: &mut [f32], x: &[f32], y: &[f32], cols: &[u32], z_rows: &mut Vec<u32>, dense: bool) {
    z_rows.clear();
    for (&col, &yi) in cols.iter().zip(y) {
        let zi = x[col as usize] * yi.max(0.0);
        if zi != 0.0 || dense {
            z[col as usize] = zi;
            z_rows.push(col);
        }
    }
}

multiversion! {
/// `out = Σ_{i ∈ rows} coef[i] · mat[i, :]` over the listed rows of `mat` (m×d).
///
/// This is both the synapse readout `a = ρᵀ q` (ρ N×D, q the rotated neurons) and
/// the sparse decoder product `u = z · decoder` (z the active x⊙y).
pub fn sparse_row_sum(out: &mut [f32], coef: &[f32], mat: &[f32], rows: &[u32]) {
    let d = out.len();
    out.fill(0.0);
    for &i in rows {
        let i = i as usize;
        let c = coef[i];
        for (o, &w) in out.iter_mut().zip(&mat[i * d..(i + 1) * d]) {
            *o += c * w;
        }
    }
}
}

/// Scalar twin of [`sparse_row_sum`]: the dense sum over every row, in f64.
#[cfg(test)]
pub(crate) fn sparse_row_sum_scalar(out: &mut [f32], coef: &[f32], mat: &[f32], _rows: &[u32]) {
    let d = out.len();
    for (k, o) in out.iter_mut().enumerate() {
        *o = coef.iter().enumerate().map(|(i, &c)| c as f64 * mat[i * d + k] as f64).sum::<f64>() as f32;
    }
}

multiversion! {
/// The synapse state's read and Hebbian write in one pass over the listed rows of
/// ρ (m×d): `a = Σ_{i ∈ rows} q[i] · ρ[i, :]` with ρ as it was, then
/// `ρ[i, :] += q[i] · v`. Each row is read once, which halves the memory traffic
/// of reading and writing ρ in two passes.
pub fn rho_read_write(a: &mut [f32], rho: &mut [f32], q: &[f32], v: &[f32], rows: &[u32]) {
    let d = v.len();
    debug_assert_eq!(a.len(), d);
    a.fill(0.0);
    for &i in rows {
        let i = i as usize;
        let c = q[i];
        for ((ak, r), &vk) in a.iter_mut().zip(&mut rho[i * d..(i + 1) * d]).zip(v) {
            *ak += c * *r;
            *r += c * vk;
        }
    }
}
}

multiversion! {
/// The Hebbian write alone over the listed rows of ρ (m×d): `ρ[i, :] += k[i] · v`,
/// for a write whose key k differs from the read's query.
pub fn rho_write(rho: &mut [f32], k: &[f32], v: &[f32], rows: &[u32]) {
    let d = v.len();
    for &i in rows {
        let i = i as usize;
        let c = k[i];
        for (r, &vk) in rho[i * d..(i + 1) * d].iter_mut().zip(v) {
            *r += c * vk;
        }
    }
}
}

/// Scalar twin of [`rho_write`]: the dense outer-product write.
#[cfg(test)]
pub(crate) fn rho_write_scalar(rho: &mut [f32], k: &[f32], v: &[f32], _rows: &[u32]) {
    let d = v.len();
    for (i, &c) in k.iter().enumerate() {
        for j in 0..d {
            rho[i * d + j] += c * v[j];
        }
    }
}

/// Scalar twin of [`rho_read_write`]: the dense read of every row in f64, then
/// the dense outer-product write.
#[cfg(test)]
pub(crate) fn rho_read_write_scalar(a: &mut [f32], rho: &mut [f32], q: &[f32], v: &[f32], rows: &[u32]) {
    sparse_row_sum_scalar(a, q, rho, rows);
    let d = v.len();
    for (i, &c) in q.iter().enumerate() {
        for k in 0..d {
            rho[i * d + k] += c * v[k];
        }
    }
}

multiversion! {
/// `ρ ← γ ρ` over a head's whole state: the decay before a step's read. A value
/// that falls below f32's smallest normal becomes 0, so the rows of long-silent
/// neurons do not linger in slow subnormal arithmetic (the difference is under
/// 1.2e-38 per value).
pub fn decay_state(rho: &mut [f32], gamma: f32) {
    for r in rho {
        let x = *r * gamma;
        *r = if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x };
    }
}
}

/// Scalar twin of [`decay_state`].
#[cfg(test)]
pub(crate) fn decay_state_scalar(rho: &mut [f32], gamma: f32) {
    for r in rho {
        let x = (*r as f64 * gamma as f64) as f32;
        *r = if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x };
    }
}

multiversion! {
/// `out[c] = a · w_t[cols[c], :]`: the listed rows of `w_t` (n×d, the transpose of
/// a d×n weight, so each neuron's weights are contiguous) dotted with `a` (d).
pub fn gather_dot(out: &mut [f32], a: &[f32], w_t: &[f32], cols: &[u32]) {
    debug_assert_eq!(out.len(), cols.len());
    let d = a.len();
    for (o, &c) in out.iter_mut().zip(cols) {
        *o = dot16(&w_t[c as usize * d..(c as usize + 1) * d], a);
    }
}
}

/// Scalar twin of [`gather_dot`]: each dot product in f64.
#[cfg(test)]
pub(crate) fn gather_dot_scalar(out: &mut [f32], a: &[f32], w_t: &[f32], cols: &[u32]) {
    let d = a.len();
    for (o, &c) in out.iter_mut().zip(cols) {
        *o = (0..d).map(|k| w_t[c as usize * d + k] as f64 * a[k] as f64).sum::<f64>() as f32;
    }
}
