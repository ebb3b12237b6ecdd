//! Statistics the microscope reports: discrete power-law fits and the
//! Mann–Whitney U test.

use serde::Serialize;

/// A discrete power law `P(k) ∝ k^(−α)` for `k ≥ x_min`, fitted by maximum likelihood.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PowerLawFit {
    /// The exponent α.
    pub alpha: f64,
    /// The smallest value the law describes.
    pub x_min: u64,
    /// Kolmogorov–Smirnov distance between the tail and the fitted law.
    pub ks: f64,
    /// Values at or above `x_min`.
    pub tail: usize,
}

/// Fits a discrete power law to positive integers (Clauset, Shalizi & Newman 2009):
/// for each candidate `x_min`, `α = 1 + n / Σ ln(x / (x_min − ½))`; the `x_min`
/// with the smallest KS distance wins. Candidates keep at least `min_tail` values.
/// `None` if fewer than `min_tail` positive values.
pub fn fit_power_law(values: &[u64], min_tail: usize) -> Option<PowerLawFit> {
    let mut xs: Vec<u64> = values.iter().copied().filter(|&v| v > 0).collect();
    xs.sort_unstable();
    let min_tail = min_tail.max(2);
    if xs.len() < min_tail {
        return None;
    }
    let mut candidates: Vec<u64> = xs.clone();
    candidates.dedup();
    let mut best: Option<PowerLawFit> = None;
    for &x_min in &candidates {
        let start = xs.partition_point(|&v| v < x_min);
        let tail = &xs[start..];
        if tail.len() < min_tail {
            break;
        }
        let shift = x_min as f64 - 0.5;
        let log_sum: f64 = tail.iter().map(|&v| (v as f64 / shift).ln()).sum();
        if log_sum <= 0.0 {
            continue;
        }
        let alpha = 1.0 + tail.len() as f64 / log_sum;
        let ks = ks_distance(tail, x_min, alpha);
        if best.as_ref().is_none_or(|b| ks < b.ks) {
            best = Some(PowerLawFit { alpha, x_min, ks, tail: tail.len() });
        }
    }
    best
}

/// KS distance between the sorted `tail` and the power law's CCDF
/// `P(X ≥ x) = ((x − ½)/(x_min − ½))^(1−α)`.
fn ks_distance(tail: &[u64], x_min: u64, alpha: f64) -> f64 {
    let n = tail.len() as f64;
    let shift = x_min as f64 - 0.5;
    let mut worst = 0.0f64;
    let mut i = 0;
    while i < tail.len() {
        let x = tail[i];
        let j = tail.partition_point(|&v| v <= x);
        // Empirical and model CDF just below x and at x.
        let below_emp = i as f64 / n;
        let at_emp = j as f64 / n;
        let below_fit = 1.0 - ((x as f64 - 0.5) / shift).powf(1.0 - alpha);
        let at_fit = 1.0 - ((x as f64 + 0.5) / shift).powf(1.0 - alpha);
        worst = worst.max((below_emp - below_fit).abs()).max((at_emp - at_fit).abs());
        i = j;
    }
    worst
}

/// The result of a two-sided Mann–Whitney U test of sample A against sample B.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MannWhitney {
    /// U of sample A: pairs (a, b) with a > b, ties counting ½.
    pub u: f64,
    /// Two-sided p-value, normal approximation with tie and continuity corrections.
    pub p: f64,
    /// Rank-biserial correlation `2U/(n_a n_b) − 1`: +1 when every a exceeds every b.
    pub r: f64,
}

/// Mann–Whitney U of `a` against `b` (average ranks for ties).
pub fn mann_whitney(a: &[f64], b: &[f64]) -> MannWhitney {
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let mut all: Vec<(f64, bool)> = a.iter().map(|&x| (x, true)).chain(b.iter().map(|&x| (x, false))).collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let n = all.len();
    let (mut rank_sum_a, mut tie_term) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < n {
        let j = i + all[i..].iter().take_while(|v| v.0 == all[i].0).count();
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum_a += avg_rank * all[i..j].iter().filter(|v| v.1).count() as f64;
        let t = (j - i) as f64;
        tie_term += t * t * t - t;
        i = j;
    }
    let u = rank_sum_a - na * (na + 1.0) / 2.0;
    let mean = na * nb / 2.0;
    let nf = n as f64;
    let var = na * nb / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)).max(1.0));
    let p = if var > 0.0 {
        let z = ((u - mean).abs() - 0.5).max(0.0) / var.sqrt();
        libm::erfc(z / std::f64::consts::SQRT_2).min(1.0)
    } else {
        1.0
    };
    MannWhitney { u, p, r: if na * nb > 0.0 { 2.0 * u / (na * nb) - 1.0 } else { 0.0 } }
}

/// Benjamini–Hochberg q-values of `p` (in the same order): the smallest false
/// discovery rate at which each test would be called significant,
/// `q_(k) = min_{j ≥ k} p_(j) · m / j` over the p-values sorted ascending, at most 1.
pub fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut q = vec![1.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(p[i] * m as f64 / (rank + 1) as f64);
        q[i] = running.min(1.0);
    }
    q
}

/// The `q`-quantile (0..=1) of sorted values, by linear interpolation.
pub fn quantile(sorted: &[f32], q: f64) -> f32 {
    if sorted.is_empty() {
        return f32::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let w = (pos - lo as f64) as f32;
    sorted[lo] * (1.0 - w) + sorted[hi] * w
}
