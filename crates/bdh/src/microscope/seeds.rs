//! How stable a model's neurons are over a set of equally good models that differ
//! only in their training seed: each neuron of the first model (the reference) is
//! matched to one of each other model by the correlation of their activations x over
//! the same text — heads first, then neurons by an optimal assignment within the
//! matched heads — and the matches tell whether the same neurons, with the same
//! selectivity and importance, come out of every seed.
//!
//! - **Matched correlation**: the correlation of a reference neuron's activations
//!   with its match's over the text (1: the same feature).
//! - **Importance**: a neuron's mean contribution to the residual stream,
//!   mean_t (x ⊙ y)_t · ‖decoder row‖; its spread over the models (coefficient of
//!   variation through the matches), and how many of the reference's most important
//!   neurons have matches among the other model's most important.
//! - **Basis alignment**: whether the neurons themselves are the axes of the
//!   activity, measured without any other model — the mean over a head's top
//!   principal components of their largest squared loading on one neuron (1: each
//!   component is one neuron), against random directions in the same space.

use nalgebra::DMatrix;
use pathfinding::prelude::{kuhn_munkres, Matrix};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use super::synapses::stream_chunks;
use super::Scope;
use crate::error::{Error, Result};
use bdh_kernels::{matmul, MatMul};

/// Most tokens read.
pub const MAX_TOKENS: usize = 16_384;
/// Most models compared.
pub const MAX_MODELS: usize = 16;
/// Principal components whose alignment with the neurons is measured.
const COMPONENTS: usize = 8;

/// What one model's neurons did over the text.
struct Activity {
    /// x per (layer, head): (T, N), each column standardised (zero where constant).
    x: Vec<Vec<f32>>,
    /// Importance per (layer, head, neuron).
    importance: Vec<f64>,
}

/// Reads `tokens` with `model` (one stream, its state carried) and keeps x.
fn activity(model: &Scope, tokens: &[u32]) -> Result<Activity> {
    let c = &model.config;
    let (layers, h, n, t_all) = (c.n_layer, c.n_head, c.n_neurons(), tokens.len());
    let floats = layers.checked_mul(h).and_then(|x| x.checked_mul(n)).and_then(|x| x.checked_mul(t_all));
    crate::memory::ensure_fits(crate::memory::f32_bytes(floats), "the activations of the text")?;
    let mut x = vec![vec![0.0f32; t_all * n]; layers * h];
    let mut contribution = vec![0.0f64; layers * h * n];
    stream_chunks(model, tokens, |first, a| {
        let t = a.dims.t;
        for l in 0..layers {
            let (xs, ys) = (a.x(l), a.y(l));
            for hi in 0..h {
                for ti in 0..t {
                    let at = (hi * t + ti) * n;
                    x[l * h + hi][(first + ti) * n..(first + ti + 1) * n].copy_from_slice(&xs[at..at + n]);
                    let sums = &mut contribution[(l * h + hi) * n..(l * h + hi + 1) * n];
                    for (s, (&xv, &yv)) in sums.iter_mut().zip(xs[at..at + n].iter().zip(&ys[at..at + n])) {
                        *s += (xv * yv) as f64;
                    }
                }
            }
        }
        Ok(())
    })?;
    let decoder = model.weights().decoder;
    let d = c.n_embd;
    let importance = contribution
        .iter()
        .enumerate()
        .map(|(u, &s)| {
            let row = &decoder[(u % (h * n)) * d..(u % (h * n) + 1) * d];
            s / t_all as f64 * row.iter().map(|&w| (w * w) as f64).sum::<f64>().sqrt()
        })
        .collect();
    for head in &mut x {
        standardise(head, t_all, n);
    }
    Ok(Activity { x, importance })
}

/// Each column of a (T, N) matrix to mean 0 and unit norm (zero if constant).
fn standardise(m: &mut [f32], t: usize, n: usize) {
    for j in 0..n {
        let mean = (0..t).map(|i| m[i * n + j] as f64).sum::<f64>() / t as f64;
        let norm = (0..t).map(|i| (m[i * n + j] as f64 - mean).powi(2)).sum::<f64>().sqrt();
        let scale = if norm > 1e-12 { 1.0 / norm } else { 0.0 };
        for i in 0..t {
            m[i * n + j] = ((m[i * n + j] as f64 - mean) * scale) as f32;
        }
    }
}

/// The (N, N) correlations of two standardised (T, N) matrices.
fn correlations(a: &[f32], b: &[f32], t: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0.0f32; n * n];
    matmul(&mut c, a, b, MatMul::new(n, t, n).a_t().par());
    c
}

/// The assignment of rows to columns of an (N, N) matrix with the largest sum.
fn best_assignment(weights: &[f32], n: usize) -> Vec<usize> {
    // kuhn_munkres wants exact (integer) weights: micro-units of correlation
    let scaled: Vec<i64> = weights.iter().map(|&w| (w as f64 * 1e6).round() as i64).collect();
    let m = Matrix::from_vec(n, n, scaled).expect("an n × n matrix");
    kuhn_munkres(&m).1
}

/// The mean of the row maxima of an (N, N) matrix: how well two heads could match
/// at best, cheaply, to choose which heads to assign.
fn row_max_mean(c: &[f32], n: usize) -> f64 {
    c.chunks_exact(n).map(|r| r.iter().copied().fold(f32::MIN, f32::max) as f64).sum::<f64>() / n as f64
}

/// One other model's matches of the reference's neurons.
#[derive(Clone, Debug, Serialize)]
pub struct Matching {
    /// Which model (its index in the set; the reference is 0).
    pub model: usize,
    /// For each (layer, head) of the reference, the head of this model (in the same
    /// layer) matched to it.
    pub heads: Vec<usize>,
    /// For each reference neuron (layer, head, neuron), its match's neuron.
    #[serde(skip)]
    pub neurons: Vec<usize>,
    /// The mean matched correlation over the reference's neurons that vary, per
    /// (layer, head).
    pub correlation: Vec<f64>,
    /// The mean matched correlation of the reference's most important neurons.
    pub important_correlation: f64,
    /// Of the reference's most important neurons (per layer), the share whose
    /// matches are among this model's most important.
    pub important_overlap: f64,
}

/// One model's neurons against its own activity's principal components.
#[derive(Clone, Debug, Serialize)]
pub struct Basis {
    /// The model.
    pub model: usize,
    /// Per (layer, head): the mean over its top components of their largest squared
    /// loading on one neuron.
    pub alignment: Vec<f64>,
}

/// A set of models that differ in seed, compared neuron by neuron.
#[derive(Clone, Debug, Serialize)]
pub struct SeedsReport {
    /// Models compared.
    pub models: usize,
    /// Layers and heads of each.
    pub layers: usize,
    /// Heads per layer.
    pub heads: usize,
    /// Tokens read.
    pub tokens: usize,
    /// The most important neurons per layer that the stability is measured on.
    pub important: usize,
    /// Each other model's matches.
    pub matchings: Vec<Matching>,
    /// Quartiles (min, 25%, median, 75%, max) over the reference's most important
    /// neurons of their importance's coefficient of variation across the models.
    pub importance_spread: [f64; 5],
    /// Each model's basis alignment.
    pub bases: Vec<Basis>,
    /// The same measure for random unit directions in a head's space.
    pub random_alignment: f64,
}

/// Compares `models` (the first the reference) over `tokens`, measuring stability on
/// each layer's `important` most important neurons.
pub fn seeds(models: &[Scope], tokens: &[u32], important: usize, seed: u64) -> Result<SeedsReport> {
    if !(2..=MAX_MODELS).contains(&models.len()) {
        return Err(Error::Input(format!("compare 2..={MAX_MODELS} models; got {}", models.len())));
    }
    if tokens.len() < 2 || tokens.len() > MAX_TOKENS {
        return Err(Error::Input(format!("read 2..={MAX_TOKENS} tokens; got {}", tokens.len())));
    }
    let c = &models[0].config;
    let shape = |m: &Scope| (m.config.n_layer, m.config.n_head, m.config.n_neurons(), m.config.n_embd);
    if let Some(other) = models.iter().position(|m| shape(m) != shape(&models[0])) {
        return Err(Error::Mismatch(format!(
            "model {other} is L{} H{} N{} D{}, the first L{} H{} N{} D{}: models of one shape only",
            shape(&models[other]).0,
            shape(&models[other]).1,
            shape(&models[other]).2,
            shape(&models[other]).3,
            c.n_layer,
            c.n_head,
            c.n_neurons(),
            c.n_embd
        )));
    }
    let (layers, h, n, t) = (c.n_layer, c.n_head, c.n_neurons(), tokens.len());
    // two models' activations, a head pair's correlations (and their integer copy), an
    // eigendecomposition's matrices
    let need = [2 * layers * h * t * n * 4, n * n * (4 + 8), 3 * n * n * 8];
    crate::memory::ensure_fits(need.iter().sum(), &format!("matching {n} neurons per head over {t} tokens"))?;
    if important == 0 || important > h * n {
        return Err(Error::Input(format!("the important neurons per layer must be 1..={}; got {important}", h * n)));
    }
    let reference = activity(&models[0], tokens)?;
    let top = |imp: &[f64], l: usize| -> Vec<usize> {
        let mut order: Vec<usize> = (l * h * n..(l + 1) * h * n).collect();
        order.sort_by(|&a, &b| imp[b].total_cmp(&imp[a]));
        order.truncate(important);
        order
    };
    let reference_top: Vec<Vec<usize>> = (0..layers).map(|l| top(&reference.importance, l)).collect();
    let mut bases = vec![Basis { model: 0, alignment: basis_alignment(&reference, t, n) }];
    let mut matchings = Vec::new();
    let mut importances = vec![reference.importance.clone()];
    for (k, model) in models.iter().enumerate().skip(1) {
        let other = activity(model, tokens)?;
        bases.push(Basis { model: k, alignment: basis_alignment(&other, t, n) });
        let (mut heads, mut neurons, mut correlation) = (Vec::new(), vec![0; layers * h * n], Vec::new());
        let mut matched = vec![0.0f64; layers * h * n];
        for l in 0..layers {
            // heads: the assignment of the best cheap matches (one head pair's
            // correlations held at a time)
            let mut cross = vec![0.0f32; h * h];
            for a in 0..h {
                for b in 0..h {
                    let corr = correlations(&reference.x[l * h + a], &other.x[l * h + b], t, n);
                    cross[a * h + b] = row_max_mean(&corr, n) as f32;
                }
            }
            let head_of = best_assignment(&cross, h);
            for (a, &b) in head_of.iter().enumerate() {
                let corr = &correlations(&reference.x[l * h + a], &other.x[l * h + b], t, n);
                let assignment = best_assignment(corr, n);
                let mut sum = (0.0, 0usize);
                for (j, &m) in assignment.iter().enumerate() {
                    let u = (l * h + a) * n + j;
                    neurons[u] = (l * h + b) * n + m;
                    matched[u] = corr[j * n + m] as f64;
                    if reference.x[l * h + a].iter().skip(j).step_by(n).any(|&v| v != 0.0) {
                        sum = (sum.0 + matched[u], sum.1 + 1);
                    }
                }
                correlation.push(sum.0 / sum.1.max(1) as f64);
            }
            heads.extend(head_of);
        }
        let theirs: Vec<Vec<usize>> = (0..layers).map(|l| top(&other.importance, l)).collect();
        let (mut corr_sum, mut shared, mut count) = (0.0, 0usize, 0usize);
        for (l, ours) in reference_top.iter().enumerate() {
            for &u in ours {
                corr_sum += matched[u];
                shared += usize::from(theirs[l].contains(&neurons[u]));
                count += 1;
            }
        }
        importances.push(neurons.iter().map(|&v| other.importance[v]).collect());
        matchings.push(Matching {
            model: k,
            heads,
            neurons,
            correlation,
            important_correlation: corr_sum / count as f64,
            important_overlap: shared as f64 / count as f64,
        });
    }
    let mut spread: Vec<f64> = reference_top
        .iter()
        .flatten()
        .map(|&u| {
            let v: Vec<f64> = importances.iter().map(|imp| imp[u]).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            if mean > 0.0 {
                sd / mean
            } else {
                0.0
            }
        })
        .collect();
    spread.sort_by(f64::total_cmp);
    let q = |p: f64| spread[((spread.len() - 1) as f64 * p).round() as usize];
    Ok(SeedsReport {
        models: models.len(),
        layers,
        heads: h,
        tokens: t,
        important,
        matchings,
        importance_spread: [q(0.0), q(0.25), q(0.5), q(0.75), q(1.0)],
        bases,
        random_alignment: random_alignment(n, seed),
    })
}

/// The mean largest squared loading of the top principal components of each head's
/// activity (the columns are standardised: components of the correlation matrix).
fn basis_alignment(a: &Activity, t: usize, n: usize) -> Vec<f64> {
    a.x.iter()
        .map(|x| {
            let corr = DMatrix::from_row_slice(n, n, &correlations(x, x, t, n)).map(|v| v as f64);
            let pcs = top_components(&corr, COMPONENTS.min(n));
            mean_max_loading(&pcs)
        })
        .collect()
}

/// The mean over the columns of their largest squared entry.
fn mean_max_loading(vectors: &DMatrix<f64>) -> f64 {
    let k = vectors.ncols();
    vectors.column_iter().map(|c| c.iter().map(|x| x * x).fold(0.0, f64::max)).sum::<f64>() / k as f64
}

/// The top `k` eigenvectors of a symmetric matrix, as columns.
fn top_components(m: &DMatrix<f64>, k: usize) -> DMatrix<f64> {
    let eig = m.clone().symmetric_eigen();
    let mut order: Vec<usize> = (0..eig.eigenvalues.len()).collect();
    order.sort_by(|&i, &j| eig.eigenvalues[j].total_cmp(&eig.eigenvalues[i]));
    DMatrix::from_columns(&order.iter().take(k).map(|&i| eig.eigenvectors.column(i).into_owned()).collect::<Vec<_>>())
}

/// [`mean_max_loading`] of random unit vectors in R^n.
fn random_alignment(n: usize, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let v: DMatrix<f64> = DMatrix::from_fn(n, 64, |_, _| StandardNormal.sample(&mut rng));
    let norms: Vec<f64> = v.column_iter().map(|c| c.norm()).collect();
    mean_max_loading(&DMatrix::from_fn(n, 64, |i, j| v[(i, j)] / norms[j]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_assignment_recovers_a_permutation() {
        let perm = [2usize, 0, 3, 1];
        let mut w = vec![0.1f32; 16];
        for (i, &j) in perm.iter().enumerate() {
            w[i * 4 + j] = 0.9;
        }
        assert_eq!(best_assignment(&w, 4), perm);
    }

    #[test]
    fn components_of_a_diagonal_matrix_are_its_axes() {
        let m = DMatrix::from_diagonal(&nalgebra::DVector::from_vec(vec![1.0, 5.0, 3.0, 0.5]));
        let pcs = top_components(&m, 2);
        assert!((pcs[(1, 0)].abs() - 1.0).abs() < 1e-9 && (pcs[(2, 1)].abs() - 1.0).abs() < 1e-9);
        assert!((mean_max_loading(&pcs) - 1.0).abs() < 1e-9);
        // random directions in R^256 load far less on any one axis
        assert!(random_alignment(256, 1) < 0.1);
    }
}
