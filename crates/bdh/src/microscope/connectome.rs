//! Dynamic functional connectomes: which groups of neurons work together when.
//!
//! A text is cut into windows; in each, the co-activation affinity of every pair of
//! the most active neurons, `A_w[i, j] = mean_t x_i(t) x_j(t)` (non-negative, as x
//! is), stacks into a tensor (neurons × neurons × windows). A non-negative CP
//! factorisation of rank R, `A ≈ Σ_r λ_r a_r ∘ b_r ∘ c_r`, splits it into components:
//! a_r and b_r the neurons that co-activate (a community), c_r when they do (a time
//! course over the windows). The factorisation runs at every rank up to a bound, and
//! its fit per rank tells how many components the data hold.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::synapses::stream_chunks;
use super::Scope;
use crate::error::{Error, Result};

/// Most neurons in the tensor.
pub const MAX_NEURONS: usize = 256;
/// Most windows.
pub const MAX_WINDOWS: usize = 1024;
/// Most components.
pub const MAX_RANK: usize = 16;
/// Multiplicative updates per factorisation.
const ITERATIONS: usize = 300;
/// The most work (tensor entries × ranks × modes × updates) all factorisations may take.
const MAX_WORK: f64 = 2e11;

/// A non-negative tensor of order 3, (I, J, K), row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor3 {
    /// Its sizes.
    pub dims: [usize; 3],
    /// Its values, `[i][j][k]`.
    pub data: Vec<f64>,
}

impl Tensor3 {
    fn at(&self, i: usize, j: usize, k: usize) -> f64 {
        self.data[(i * self.dims[1] + j) * self.dims[2] + k]
    }
}

/// A CP factorisation: `X ≈ Σ_r λ_r a_r ∘ b_r ∘ c_r`, each factor's columns scaled to
/// unit maximum, components by decreasing λ.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cp {
    /// λ_r.
    pub weights: Vec<f64>,
    /// The factors (I, R), (J, R), (K, R), row-major.
    pub factors: [Vec<f64>; 3],
    /// `‖X − X̂‖ / ‖X‖`.
    pub error: f64,
}

/// Σ_{j,k} X[i,j,k] B[j,r] C[k,r] for every (i, r), or its analogue along `mode`.
fn mttkrp(x: &Tensor3, f: &[Vec<f64>; 3], mode: usize, rank: usize) -> Vec<f64> {
    let [ni, nj, nk] = x.dims;
    let mut out = vec![0.0; x.dims[mode] * rank];
    for i in 0..ni {
        for j in 0..nj {
            for k in 0..nk {
                let v = x.at(i, j, k);
                if v == 0.0 {
                    continue;
                }
                let (row, a, b) = match mode {
                    0 => (i, &f[1][j * rank..], &f[2][k * rank..]),
                    1 => (j, &f[0][i * rank..], &f[2][k * rank..]),
                    _ => (k, &f[0][i * rank..], &f[1][j * rank..]),
                };
                let o = &mut out[row * rank..(row + 1) * rank];
                for r in 0..rank {
                    o[r] += v * a[r] * b[r];
                }
            }
        }
    }
    out
}

/// (R, R) Gram matrix FᵀF of an (n, R) factor.
fn gram(f: &[f64], rank: usize) -> Vec<f64> {
    let mut g = vec![0.0; rank * rank];
    for row in f.chunks_exact(rank) {
        for a in 0..rank {
            for b in 0..rank {
                g[a * rank + b] += row[a] * row[b];
            }
        }
    }
    g
}

/// The non-negative CP factorisation of `x` at `rank`, by multiplicative updates
/// from a start drawn from `seed`.
pub fn nonnegative_cp(x: &Tensor3, rank: usize, seed: u64) -> Cp {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut f: [Vec<f64>; 3] =
        std::array::from_fn(|m| (0..x.dims[m] * rank).map(|_| rng.random::<f64>() + 0.1).collect());
    let eps = 1e-12;
    for _ in 0..ITERATIONS {
        for mode in 0..3 {
            let num = mttkrp(x, &f, mode, rank);
            let (o1, o2) = ((mode + 1) % 3, (mode + 2) % 3);
            let (g1, g2) = (gram(&f[o1], rank), gram(&f[o2], rank));
            let g: Vec<f64> = g1.iter().zip(&g2).map(|(a, b)| a * b).collect();
            for (row, num) in f[mode].chunks_exact_mut(rank).zip(num.chunks_exact(rank)) {
                let den: Vec<f64> =
                    (0..rank).map(|b| (0..rank).map(|a| row[a] * g[a * rank + b]).sum::<f64>()).collect();
                row.iter_mut().zip(num.iter().zip(&den)).for_each(|(v, (&nu, &de))| *v *= nu / (de + eps));
            }
        }
    }
    // each column to unit maximum, the scale into λ; components by decreasing λ
    let mut weights = vec![1.0; rank];
    for factor in &mut f {
        for (r, weight) in weights.iter_mut().enumerate() {
            let max = factor.iter().skip(r).step_by(rank).copied().fold(0.0, f64::max);
            if max > 0.0 {
                factor.iter_mut().skip(r).step_by(rank).for_each(|v| *v /= max);
                *weight *= max;
            }
        }
    }
    let mut order: Vec<usize> = (0..rank).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let factors = f.map(|factor| factor.chunks_exact(rank).flat_map(|row| order.iter().map(|&r| row[r])).collect());
    let weights: Vec<f64> = order.iter().map(|&r| weights[r]).collect();
    let error = relative_error(x, &weights, &factors);
    Cp { weights, factors, error }
}

/// `‖X − X̂‖ / ‖X‖` of a factorisation.
fn relative_error(x: &Tensor3, weights: &[f64], f: &[Vec<f64>; 3]) -> f64 {
    let [ni, nj, nk] = x.dims;
    let rank = weights.len();
    let (mut diff, mut total) = (0.0, 0.0);
    for i in 0..ni {
        for j in 0..nj {
            for k in 0..nk {
                let fit: f64 =
                    (0..rank).map(|r| weights[r] * f[0][i * rank + r] * f[1][j * rank + r] * f[2][k * rank + r]).sum();
                let v = x.at(i, j, k);
                diff += (v - fit).powi(2);
                total += v * v;
            }
        }
    }
    if total > 0.0 {
        (diff / total).sqrt()
    } else {
        0.0
    }
}

/// A neuron of the tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Unit {
    /// Layer.
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// Neuron within the head.
    pub neuron: usize,
}

/// One component: a community of neurons and its time course.
#[derive(Clone, Debug, Serialize)]
pub struct Component {
    /// λ_r.
    pub weight: f64,
    /// The neurons loading most on it, (index into `units`, loading (a + b) / 2), strongest first.
    pub community: Vec<(usize, f64)>,
    /// Its activity in each window (unit maximum).
    pub course: Vec<f64>,
    /// The window where it peaks.
    pub peak: usize,
}

/// The connectome of a model over a text.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectomeReport {
    /// Tokens per window, and windows.
    pub window: usize,
    /// Windows read.
    pub windows: usize,
    /// The neurons of the tensor: the most active over the text.
    pub units: Vec<Unit>,
    /// `‖X − X̂‖ / ‖X‖` at ranks 1, 2, …
    pub errors: Vec<f64>,
    /// The rank chosen.
    pub rank: usize,
    /// The components at that rank.
    pub components: Vec<Component>,
}

/// The neurons listed per component.
const COMMUNITY: usize = 12;

/// Reads `tokens` (one stream, the state carried) in windows of `window`, builds the
/// affinity tensor of the `neurons` most active neurons, factorises it at ranks
/// 1..=`max_rank` and keeps the components at `rank` (or, when `None`, at the
/// smallest rank past which one more component lowers the error by less than a
/// hundredth of the data's norm).
pub fn connectome(
    model: &Scope,
    tokens: &[u32],
    window: usize,
    neurons: usize,
    (rank, max_rank): (Option<usize>, usize),
    seed: u64,
) -> Result<ConnectomeReport> {
    let windows = tokens.len() / window.max(1);
    if window < 2 || !(2..=MAX_WINDOWS).contains(&windows) {
        return Err(Error::Input(format!(
            "the connectome needs windows of at least 2 tokens and 2..={MAX_WINDOWS} of them; {} tokens in windows \
             of {window} make {windows}",
            tokens.len()
        )));
    }
    if !(2..=MAX_NEURONS).contains(&neurons) || !(1..=MAX_RANK).contains(&max_rank) {
        return Err(Error::Input(format!(
            "the connectome takes 2..={MAX_NEURONS} neurons and ranks 1..={MAX_RANK}; got {neurons} and {max_rank}"
        )));
    }
    // the factorisations' work: each update sweeps the tensor once per rank and mode
    let work = (neurons * neurons * windows) as f64 * (max_rank * (max_rank + 1) / 2) as f64 * 3.0 * ITERATIONS as f64;
    if work > MAX_WORK {
        return Err(Error::Input(format!(
            "{neurons} neurons × {windows} windows at ranks up to {max_rank} would take {work:.1e} operations (at most \
             {MAX_WORK:.0e}, a few minutes): take fewer neurons, fewer or longer windows, or a smaller --max-rank"
        )));
    }
    if let Some(r) = rank.filter(|&r| r == 0 || r > max_rank) {
        return Err(Error::Input(format!("the rank must be 1..={max_rank} (the largest tried); got {r}")));
    }
    let c = &model.config;
    let (layers, h, n) = (c.n_layer, c.n_head, c.n_neurons());
    let tokens = &tokens[..windows * window];
    // first pass: each neuron's total activity; second: the chosen ones' affinities
    let mut total = vec![0.0f64; layers * h * n];
    stream_chunks(model, tokens, |_, a| {
        let t = a.dims.t;
        for l in 0..layers {
            for (i, row) in a.x(l).chunks_exact(n).enumerate() {
                let hi = i / t;
                total[(l * h + hi) * n..(l * h + hi + 1) * n].iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64);
            }
        }
        Ok(())
    })?;
    let mut order: Vec<usize> = (0..total.len()).collect();
    order.sort_by(|&a, &b| total[b].total_cmp(&total[a]).then(a.cmp(&b)));
    order.truncate(neurons.min(total.len()));
    let m = order.len();
    let units: Vec<Unit> =
        order.iter().map(|&u| Unit { layer: u / (h * n), head: (u / n) % h, neuron: u % n }).collect();
    let mut x = Tensor3 { dims: [m, m, windows], data: vec![0.0; m * m * windows] };
    let mut act = vec![0.0f64; m];
    stream_chunks(model, tokens, |first, a| {
        let t = a.dims.t;
        for ti in 0..t {
            let w = (first + ti) / window;
            for (k, unit) in units.iter().enumerate() {
                act[k] = a.x(unit.layer)[(unit.head * t + ti) * n + unit.neuron] as f64;
            }
            for i in 0..m {
                if act[i] == 0.0 {
                    continue;
                }
                for j in 0..m {
                    x.data[(i * m + j) * windows + w] += act[i] * act[j] / window as f64;
                }
            }
        }
        Ok(())
    })?;
    let fits: Vec<Cp> = (1..=max_rank).map(|r| nonnegative_cp(&x, r, seed)).collect();
    let errors: Vec<f64> = fits.iter().map(|f| f.error).collect();
    let chosen = rank.unwrap_or_else(|| (1..max_rank).find(|&r| errors[r - 1] - errors[r] < 0.01).unwrap_or(max_rank));
    let cp = &fits[chosen - 1];
    let components = (0..chosen)
        .map(|r| {
            let mut community: Vec<(usize, f64)> =
                (0..m).map(|i| (i, (cp.factors[0][i * chosen + r] + cp.factors[1][i * chosen + r]) / 2.0)).collect();
            community.sort_by(|a, b| b.1.total_cmp(&a.1));
            community.truncate(COMMUNITY);
            let course: Vec<f64> = (0..windows).map(|w| cp.factors[2][w * chosen + r]).collect();
            let peak = (0..windows).max_by(|&a, &b| course[a].total_cmp(&course[b])).unwrap_or(0);
            Component { weight: cp.weights[r], community, course, peak }
        })
        .collect();
    Ok(ConnectomeReport { window, windows, units, errors, rank: chosen, components })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three planted components over 12 neurons and 30 windows: disjoint
    /// communities of 4, each active in its own third of the windows.
    fn planted(noise: f64) -> (Tensor3, Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let (m, w) = (12, 30);
        let community: Vec<Vec<f64>> = (0..3)
            .map(|r| (0..m).map(|i| if i / 4 == r { 0.5 + 0.1 * (i % 4) as f64 } else { 0.0 }).collect())
            .collect();
        let course: Vec<Vec<f64>> = (0..3)
            .map(|r| (0..w).map(|k| if k / 10 == r { 1.0 } else { 0.05 * ((k * 7 + r) % 3) as f64 }).collect())
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut data = vec![0.0; m * m * w];
        for i in 0..m {
            for j in 0..m {
                for k in 0..w {
                    let v: f64 = (0..3).map(|r| community[r][i] * community[r][j] * course[r][k]).sum();
                    data[(i * m + j) * w + k] = v + noise * rng.random::<f64>();
                }
            }
        }
        (Tensor3 { dims: [m, m, w], data }, community, course)
    }

    fn cosine(a: &[f64], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        dot / (a.iter().map(|x| x * x).sum::<f64>().sqrt() * b.iter().map(|x| x * x).sum::<f64>().sqrt())
    }

    #[test]
    fn planted_components_are_recovered() {
        let (x, community, course) = planted(0.01);
        let cp = nonnegative_cp(&x, 3, 1);
        assert!(cp.error < 0.05, "error {}", cp.error);
        // each planted component is one of the three found, neurons and time course
        for r in 0..3 {
            let best = (0..3)
                .map(|q| {
                    let a: Vec<f64> = (0..12).map(|i| cp.factors[0][i * 3 + q]).collect();
                    let c: Vec<f64> = (0..30).map(|k| cp.factors[2][k * 3 + q]).collect();
                    cosine(&a, &community[r]).min(cosine(&c, &course[r]))
                })
                .fold(0.0, f64::max);
            assert!(best > 0.98, "component {r}: best match {best}");
        }
        // the fit stops improving past the planted rank
        let errors: Vec<f64> = (1..=5).map(|r| nonnegative_cp(&x, r, 1).error).collect();
        assert!(errors[1] - errors[2] > 0.1 && errors[2] - errors[3] < 0.01, "{errors:?}");
    }
}
