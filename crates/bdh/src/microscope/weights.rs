//! How far a model's weights moved from where its training started, and in how many
//! directions: the measures that tell rich learning (weights that change a lot and
//! concentrate on a few directions) from lazy learning (weights that barely move, the
//! model close to its linearisation at the start).
//!
//! For each of the three matrices of the layer — `encoder` and `encoder_v` (one D × N
//! matrix per head) and `decoder` (one N × D block per head):
//!
//! - the **relative change** `‖W − W₀‖ / ‖W₀‖` (Frobenius norms, the whole tensor);
//! - the **effective rank** of each head's matrix, `exp(−Σ p_i ln p_i)` with
//!   `p_i = σ_i / Σ σ` its normalised singular values (Roy and Vetterli): from 1 for a
//!   matrix of rank one to min(rows, cols) for one whose singular values are all
//!   equal; the mean over the heads, now and at the start;
//! - the **alignment** of each head's top [`ALIGNED`] singular directions in the
//!   residual stream (R^D: `encoder`'s left, `decoder`'s right singular vectors) with
//!   those at the start, `‖U₀ᵀ U‖²_F / k`: 1 where the same directions still carry the
//!   most weight, about k / D for unrelated ones; the mean over the heads.

use nalgebra::{DMatrix, SymmetricEigen};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::bdh::Bdh;

/// One weight's movement from the start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightChange {
    /// The tensor (`encoder`, `encoder_v`, `decoder`).
    pub name: String,
    /// `‖W − W₀‖ / ‖W₀‖`.
    pub relative_change: f64,
    /// The heads' mean effective rank now.
    pub effective_rank: f64,
    /// The heads' mean effective rank at the start.
    pub start_rank: f64,
    /// The heads' mean alignment of their top singular directions with the start's
    /// (absent from logs written before it was measured).
    #[serde(default)]
    pub alignment: f64,
}

/// Singular directions compared by [`WeightChange::alignment`].
pub const ALIGNED: usize = 8;

/// The top `k` singular directions of a `rows × cols` row-major matrix on its side of
/// length `min(rows, cols)`, as the columns of a (min, k) matrix: eigenvectors of its
/// smaller Gram matrix.
fn top_directions(m: &[f32], rows: usize, cols: usize, k: usize) -> DMatrix<f64> {
    let a = DMatrix::from_row_iterator(rows, cols, m.iter().map(|&x| x as f64));
    let gram = if rows <= cols { &a * a.transpose() } else { a.transpose() * &a };
    let eig = SymmetricEigen::new(gram);
    let mut order: Vec<usize> = (0..eig.eigenvalues.len()).collect();
    order.sort_by(|&i, &j| eig.eigenvalues[j].total_cmp(&eig.eigenvalues[i]));
    let cols: Vec<_> = order.iter().take(k).map(|&i| eig.eigenvectors.column(i).into_owned()).collect();
    DMatrix::from_columns(&cols)
}

/// `‖U₀ᵀ U‖²_F / k` of two matrices' top `k` singular directions on their shorter side.
pub fn alignment(start: &[f32], now: &[f32], rows: usize, cols: usize, k: usize) -> f64 {
    let k = k.min(rows.min(cols)).max(1);
    let (u0, u) = (top_directions(start, rows, cols, k), top_directions(now, rows, cols, k));
    (u0.transpose() * u).norm_squared() / k as f64
}

/// The singular values of a `rows × cols` row-major matrix, largest first: the square
/// roots of the eigenvalues of its smaller Gram matrix, formed in f64.
pub fn singular_values(m: &[f32], rows: usize, cols: usize) -> Vec<f64> {
    assert_eq!(m.len(), rows * cols, "singular_values: sizes");
    let a = DMatrix::from_row_iterator(rows, cols, m.iter().map(|&x| x as f64));
    let gram = if rows <= cols { &a * a.transpose() } else { a.transpose() * &a };
    let mut s: Vec<f64> = SymmetricEigen::new(gram).eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

/// The effective rank of a `rows × cols` matrix (0 for a zero matrix).
pub fn effective_rank(m: &[f32], rows: usize, cols: usize) -> f64 {
    let s = singular_values(m, rows, cols);
    let total: f64 = s.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    let entropy: f64 = s.iter().map(|&x| x / total).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum();
    entropy.exp()
}

/// `‖a − b‖ / ‖b‖` (0 for a zero `b` equal to `a`, infinite for another).
fn relative_change(now: &[f32], start: &[f32]) -> f64 {
    let sq = |it: &mut dyn Iterator<Item = f64>| it.map(|x| x * x).sum::<f64>().sqrt();
    let diff = sq(&mut now.iter().zip(start).map(|(&a, &b)| a as f64 - b as f64));
    let base = sq(&mut start.iter().map(|&b| b as f64));
    if diff == 0.0 {
        0.0
    } else if base == 0.0 {
        f64::INFINITY
    } else {
        diff / base
    }
}

/// The movement of `now`'s three layer matrices from `start`'s; the two must be
/// the same model (config) at two points of one run.
pub fn weight_change(start: &Bdh, now: &Bdh) -> Result<Vec<WeightChange>> {
    if start.config != now.config {
        return Err(Error::Mismatch(format!(
            "a model's weights compare with its own start: {:?} and {:?} differ",
            start.config, now.config
        )));
    }
    let c = &now.config;
    let (h, d, n) = (c.n_head, c.n_embd, c.n_neurons());
    let (a, b) = (start.weights(), now.weights());
    let mean_rank = |w: &[f32], rows: usize, cols: usize| {
        w.chunks_exact(rows * cols).map(|m| effective_rank(m, rows, cols)).sum::<f64>() / h as f64
    };
    let tensors = [
        ("encoder", a.encoder, b.encoder, (d, n)),
        ("encoder_v", a.encoder_v, b.encoder_v, (d, n)),
        ("decoder", a.decoder, b.decoder, (n, d)),
    ];
    Ok(tensors
        .into_iter()
        .map(|(name, w0, w, (rows, cols))| WeightChange {
            name: name.into(),
            relative_change: relative_change(w, w0),
            effective_rank: mean_rank(w, rows, cols),
            start_rank: mean_rank(w0, rows, cols),
            alignment: w0
                .chunks_exact(rows * cols)
                .zip(w.chunks_exact(rows * cols))
                .map(|(a, b)| alignment(a, b, rows, cols, ALIGNED))
                .sum::<f64>()
                / h as f64,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effective_rank_of_known_matrices() {
        // the identity's singular values are equal: its rank; a rank-one outer product's: 1
        let eye: Vec<f32> = (0..16).map(|i| if i % 5 == 0 { 1.0 } else { 0.0 }).collect();
        assert!((effective_rank(&eye, 4, 4) - 4.0).abs() < 1e-9);
        let outer: Vec<f32> = (0..12).map(|i| ((i / 4 + 1) * (i % 4 + 1)) as f32).collect();
        assert!((effective_rank(&outer, 3, 4) - 1.0).abs() < 1e-6);
        // two equal singular values and a zero one: 2, whichever side is longer
        let (two, two_t) = ([3.0, 0.0, 0.0, 0.0, 3.0, 0.0], [3.0, 0.0, 0.0, 3.0, 0.0, 0.0]);
        assert!((effective_rank(&two, 2, 3) - 2.0).abs() < 1e-9);
        assert!((effective_rank(&two_t, 3, 2) - 2.0).abs() < 1e-9);
        assert_eq!(effective_rank(&[0.0; 6], 2, 3), 0.0);
        // singular values of diag(3, 1): 3 and 1
        let s = singular_values(&[3.0, 0.0, 0.0, -1.0], 2, 2);
        assert!((s[0] - 3.0).abs() < 1e-12 && (s[1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_alignment_of_known_matrices() {
        // diag(3, 2, 1) against itself scaled: the same directions; against
        // diag(1, 2, 3): the top one swapped for the last
        let diag = |a: f32, b: f32, c: f32| [a, 0.0, 0.0, 0.0, b, 0.0, 0.0, 0.0, c];
        assert!((alignment(&diag(3.0, 2.0, 1.0), &diag(6.0, 4.0, 2.0), 3, 3, 1) - 1.0).abs() < 1e-12);
        assert!(alignment(&diag(3.0, 2.0, 1.0), &diag(1.0, 2.0, 3.0), 3, 3, 1) < 1e-12);
        // top two: {e1, e2} against {e3, e2}: one of two shared
        assert!((alignment(&diag(3.0, 2.0, 1.0), &diag(1.0, 2.0, 3.0), 3, 3, 2) - 0.5).abs() < 1e-12);
        // a rotation within the kept subspace changes nothing; the wide and the tall
        // side agree (a matrix and its transpose)
        let wide = [3.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0];
        let tall = [3.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0];
        assert!((alignment(&wide, &wide, 2, 4, 2) - 1.0).abs() < 1e-12);
        assert!((alignment(&tall, &tall, 4, 2, 1) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_relative_change_of_known_moves() {
        assert_eq!(relative_change(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((relative_change(&[3.0, 4.0], &[0.0, 5.0]) - (10.0f64).sqrt() / 5.0).abs() < 1e-12);
        assert!(relative_change(&[1.0], &[0.0]).is_infinite());
    }
}
