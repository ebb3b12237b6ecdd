//! Kernels of the recurrent (one token at a time) form, restricted to active rows.
//!
//! ReLU makes most neurons silent, so each step touches only the rows of the
//! synapse state ρ, of `decoder` and the columns of `encoder_v` that an active
//! neuron selects. The twins do the dense computation, which equals the sparse one
//! whenever the skipped coefficients are zero.

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

/// Scalar twin of [`sparse_row_sum`]: the dense sum over every row, in f64.
pub fn sparse_row_sum_scalar(out: &mut [f32], coef: &[f32], mat: &[f32], _rows: &[u32]) {
    let d = out.len();
    for (k, o) in out.iter_mut().enumerate() {
        *o = coef.iter().enumerate().map(|(i, &c)| c as f64 * mat[i * d + k] as f64).sum::<f64>()
            as f32;
    }
}

/// Hebbian write `ρ[i, :] += q[i] · v` for the listed rows of ρ (m×d).
pub fn rho_update(rho: &mut [f32], q: &[f32], v: &[f32], rows: &[u32]) {
    let d = v.len();
    for &i in rows {
        let i = i as usize;
        let c = q[i];
        for (r, &vv) in rho[i * d..(i + 1) * d].iter_mut().zip(v) {
            *r += c * vv;
        }
    }
}

/// Scalar twin of [`rho_update`]: the dense outer-product update of every row.
pub fn rho_update_scalar(rho: &mut [f32], q: &[f32], v: &[f32], _rows: &[u32]) {
    let d = v.len();
    for (i, &c) in q.iter().enumerate() {
        for k in 0..d {
            rho[i * d + k] += c * v[k];
        }
    }
}

/// `out[c] = Σ_k a[k] · w[k, cols[c]]`: the listed columns of `a · w`, w (d×n) row-major.
pub fn gather_matvec(out: &mut [f32], a: &[f32], w: &[f32], n: usize, cols: &[u32]) {
    debug_assert_eq!(out.len(), cols.len());
    out.fill(0.0);
    for (k, &ak) in a.iter().enumerate() {
        let row = &w[k * n..(k + 1) * n];
        for (o, &c) in out.iter_mut().zip(cols) {
            *o += ak * row[c as usize];
        }
    }
}

/// Scalar twin of [`gather_matvec`]: the dense product in f64, then the gather.
pub fn gather_matvec_scalar(out: &mut [f32], a: &[f32], w: &[f32], n: usize, cols: &[u32]) {
    let dense: Vec<f64> =
        (0..n).map(|j| a.iter().enumerate().map(|(k, &ak)| ak as f64 * w[k * n + j] as f64).sum()).collect();
    for (o, &c) in out.iter_mut().zip(cols) {
        *o = dense[c as usize] as f32;
    }
}
