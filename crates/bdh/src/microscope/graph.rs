//! The neuron interaction graph G = D·E of a head: how strongly neuron j's output
//! drives neuron i's input.
//!
//! In bdh.py's names, neuron j of head h writes `decoder[h·N + j, :]` into the
//! residual stream and neuron i reads it through `encoder[h, :, i]`, so the weight
//! of the edge j → i is `G_h[j, i] = decoder_h[j, :] · encoder_h[:, i]`: rows are
//! sources, columns targets. Each block is N×N (8192² in the paper's model); it is
//! computed a stripe of rows at a time, twice (quantiles from a sample, then
//! exact counts and the edges above each threshold), and never held whole.

use bdh_kernels::{matmul, MatMul};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;

use super::louvain::louvain;
use super::stats::{fit_power_law, quantile, PowerLawFit};
use super::Progress;
use crate::model::bdh::Bdh;

/// Rows of G computed at once.
const STRIPE: usize = 256;
/// Values sampled to place the thresholds.
const SAMPLE: usize = 1 << 20;
/// Bins of the value histogram.
const BINS: usize = 60;

/// What to compute.
#[derive(Clone, Debug)]
pub struct GraphOptions {
    /// Heads to analyse (default all).
    pub heads: Vec<usize>,
    /// Thresholds as quantiles of G's values: an edge where G ≥ the quantile.
    pub quantiles: Vec<f64>,
    /// Louvain runs (node orders) per graph; the best modularity is kept.
    pub louvain_seeds: u64,
    /// Seed of the baselines.
    pub seed: u64,
}

/// Degree statistics, modularity and fits of one thresholded graph.
#[derive(Clone, Debug, Serialize)]
pub struct GraphStats {
    /// Directed edges (self-loops excluded).
    pub edges: usize,
    /// Mean out-degree.
    pub mean_degree: f64,
    /// Largest out- and in-degree.
    pub max_out_degree: u64,
    /// Largest in-degree.
    pub max_in_degree: u64,
    /// Power-law fit of the out-degrees.
    pub out_fit: Option<PowerLawFit>,
    /// Power-law fit of the in-degrees.
    pub in_fit: Option<PowerLawFit>,
    /// Best Newman modularity found by Louvain on the undirected graph.
    pub modularity: f64,
    /// (degree, nodes) of the out-degree distribution.
    pub out_degrees: Vec<(u64, usize)>,
    /// (degree, nodes) of the in-degree distribution.
    pub in_degrees: Vec<(u64, usize)>,
}

/// One threshold of the sweep, with its baselines.
#[derive(Clone, Debug, Serialize)]
pub struct Threshold {
    /// The quantile of G's values.
    pub quantile: f64,
    /// The threshold value.
    pub value: f32,
    /// The model's graph.
    pub model: GraphStats,
    /// G(n, m): the same number of random directed edges.
    pub random: GraphStats,
    /// A product of random Gaussian factors of the same rank, thresholded to the
    /// same edge count.
    pub low_rank: GraphStats,
}

/// The analysis of one head's block.
#[derive(Clone, Debug, Serialize)]
pub struct HeadGraph {
    /// The head.
    pub head: usize,
    /// Neurons (nodes).
    pub n: usize,
    /// Histogram of G's values: bin edges (BINS + 1) and counts.
    pub histogram: (Vec<f32>, Vec<u64>),
    /// (quantile, value) of the right tail.
    pub tail: Vec<(f64, f32)>,
    /// The threshold sweep.
    pub sweep: Vec<Threshold>,
    /// The strongest communities of the sweep's sparsest graph, for a picture.
    pub sketch: Option<Sketch>,
}

/// The strongest communities (most edges inside) of one thresholded graph, each
/// cut to its best-connected neurons, and the edges among the neurons kept.
#[derive(Clone, Debug, Serialize)]
pub struct Sketch {
    /// The graph's quantile.
    pub quantile: f64,
    /// Neurons of each community kept, best-connected first; strongest community first.
    pub communities: Vec<Vec<u32>>,
    /// Directed edges among the neurons kept.
    pub edges: Vec<(u32, u32)>,
}

/// Communities drawn in a sketch, and neurons per community.
const SKETCH_COMMUNITIES: usize = 8;
const SKETCH_NEURONS: usize = 24;

/// The sketch of graph `edges` on `n` nodes (communities by Louvain).
pub fn sketch(n: usize, edges: &[(u32, u32)], quantile: f64, seeds: u64) -> Sketch {
    let (community, _) = louvain(n, edges, seeds);
    let groups = community.iter().map(|&c| c as usize + 1).max().unwrap_or(0);
    let (mut inside, mut degree) = (vec![0usize; groups], vec![0usize; n]);
    for &(a, b) in edges {
        degree[a as usize] += 1;
        degree[b as usize] += 1;
        if community[a as usize] == community[b as usize] {
            inside[community[a as usize] as usize] += 1;
        }
    }
    let mut size = vec![0usize; groups];
    community.iter().for_each(|&c| size[c as usize] += 1);
    let mut order: Vec<usize> = (0..groups).filter(|&g| inside[g] > 0 && size[g] >= 3).collect();
    order.sort_by_key(|&g| (std::cmp::Reverse(inside[g]), g));
    order.truncate(SKETCH_COMMUNITIES);
    let communities: Vec<Vec<u32>> = order
        .iter()
        .map(|&g| {
            let mut members: Vec<u32> = (0..n as u32).filter(|&i| community[i as usize] as usize == g).collect();
            members.sort_by_key(|&i| (std::cmp::Reverse(degree[i as usize]), i));
            members.truncate(SKETCH_NEURONS);
            members
        })
        .collect();
    let kept: std::collections::HashSet<u32> = communities.iter().flatten().copied().collect();
    let edges = edges.iter().filter(|(a, b)| kept.contains(a) && kept.contains(b)).copied().collect();
    Sketch { quantile, communities, edges }
}

/// The per-head blocks of G, analysed; `progress` counts passes over a block
/// and Louvain runs (each weighted as one pass).
pub fn analyse(model: &Bdh, opts: &GraphOptions, progress: Progress) -> Vec<HeadGraph> {
    let c = &model.config;
    let (d, n) = (c.n_embd, c.n_neurons());
    let heads: Vec<usize> = if opts.heads.is_empty() { (0..c.n_head).collect() } else { opts.heads.clone() };
    // Per head: the model's block twice, the low-rank block twice per quantile, and
    // Louvain on three graphs per quantile and on the sketch.
    let q = opts.quantiles.len();
    let total = heads.len() * (2 + 2 * q + 3 * q + 1);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let tick = |units: usize| {
        let now = done.fetch_add(units, std::sync::atomic::Ordering::Relaxed) + units;
        progress(now, total);
    };
    progress(0, total);
    heads
        .into_iter()
        .map(|h| {
            let decoder = &model.weights().decoder[h * n * d..(h + 1) * n * d];
            let encoder = &model.weights().encoder[h * d * n..(h + 1) * d * n];
            let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ h as u64);
            let gauss = |len: usize, rng: &mut ChaCha8Rng| -> Vec<f32> {
                (0..len).map(|_| StandardNormal.sample(rng)).collect()
            };
            let (fa, fb) = (gauss(n * d, &mut rng), gauss(d * n, &mut rng));
            let model_block = Product { left: decoder, right: encoder, n, d };
            let random_block = Product { left: &fa, right: &fb, n, d };
            let Values { thresholds, histogram, tail } = model_block.thresholds(&opts.quantiles);
            tick(1);
            let model_edges = model_block.edges(&thresholds);
            tick(1);
            let top = opts.quantiles.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(k, _)| k);
            let mut picture = None;
            let sweep = opts
                .quantiles
                .iter()
                .zip(&thresholds)
                .zip(model_edges)
                .enumerate()
                .map(|(k, ((&q, &value), edges))| {
                    if Some(k) == top {
                        picture = Some(sketch(n, &edges, q, opts.louvain_seeds));
                        tick(1);
                    }
                    // The low-rank baseline is thresholded at its own quantile for the same edge count.
                    let share = 1.0 - edges.len() as f64 / (n * n) as f64;
                    let lr_t = random_block.thresholds(&[share]).thresholds;
                    tick(1);
                    let lr_edges = random_block.edges(&lr_t).pop().unwrap_or_default();
                    tick(1);
                    let random_edges = gnm(n, edges.len(), &mut rng);
                    let stats_of = |edges: &[(u32, u32)]| {
                        let s = stats(n, edges, opts.louvain_seeds);
                        tick(1);
                        s
                    };
                    Threshold {
                        quantile: q,
                        value,
                        model: stats_of(&edges),
                        random: stats_of(&random_edges),
                        low_rank: stats_of(&lr_edges),
                    }
                })
                .collect();
            HeadGraph { head: h, n, histogram, tail, sweep, sketch: picture }
        })
        .collect()
}

/// What the sample of a block's values gives.
struct Values {
    thresholds: Vec<f32>,
    histogram: (Vec<f32>, Vec<u64>),
    tail: Vec<(f64, f32)>,
}

/// An N×N block `left (N×D) · right (D×N)`, computed in stripes on demand.
struct Product<'a> {
    left: &'a [f32],
    right: &'a [f32],
    n: usize,
    d: usize,
}

impl Product<'_> {
    fn for_each_stripe(&self, mut f: impl FnMut(usize, &[f32])) {
        let mut stripe = vec![0.0f32; STRIPE * self.n];
        for r0 in (0..self.n).step_by(STRIPE) {
            let rows = STRIPE.min(self.n - r0);
            let out = &mut stripe[..rows * self.n];
            matmul(out, &self.left[r0 * self.d..], self.right, MatMul::new(rows, self.d, self.n).par());
            f(r0, out);
        }
    }

    /// Thresholds at `quantiles` (from an evenly strided sample of the values),
    /// the value histogram, and the right tail's quantiles.
    fn thresholds(&self, quantiles: &[f64]) -> Values {
        let total = self.n * self.n;
        let stride = (total / SAMPLE).max(1);
        let mut sample = Vec::with_capacity(total / stride + 1);
        self.for_each_stripe(|r0, s| {
            let first = (r0 * self.n).div_ceil(stride) * stride - r0 * self.n;
            sample.extend(s.iter().skip(first).step_by(stride).copied());
        });
        sample.sort_by(f32::total_cmp);
        let thresholds = quantiles.iter().map(|&q| quantile(&sample, q)).collect();
        let (lo, hi) = (sample[0], sample[sample.len() - 1]);
        let edges: Vec<f32> = (0..=BINS).map(|i| lo + (hi - lo) * i as f32 / BINS as f32).collect();
        let mut counts = vec![0u64; BINS];
        for &v in &sample {
            let b = (((v - lo) / (hi - lo).max(f32::MIN_POSITIVE)) * BINS as f32) as usize;
            counts[b.min(BINS - 1)] += stride as u64;
        }
        let tail = [0.9, 0.99, 0.999, 0.9999, 1.0].iter().map(|&q| (q, quantile(&sample, q))).collect();
        Values { thresholds, histogram: (edges, counts), tail }
    }

    /// Directed edges j → i (self-loops excluded) with G[j, i] ≥ each threshold.
    fn edges(&self, thresholds: &[f32]) -> Vec<Vec<(u32, u32)>> {
        let mut out = vec![Vec::new(); thresholds.len()];
        self.for_each_stripe(|r0, s| {
            for (r, row) in s.chunks_exact(self.n).enumerate() {
                let j = (r0 + r) as u32;
                for (i, &g) in row.iter().enumerate() {
                    for (list, &t) in out.iter_mut().zip(thresholds) {
                        if g >= t && i as u32 != j {
                            list.push((j, i as u32));
                        }
                    }
                }
            }
        });
        out
    }
}

/// `m` distinct random directed edges on `n` nodes, no self-loops: G(n, m).
fn gnm(n: usize, m: usize, rng: &mut ChaCha8Rng) -> Vec<(u32, u32)> {
    let m = m.min(n * (n - 1));
    let mut seen = std::collections::HashSet::with_capacity(m);
    while seen.len() < m {
        let (a, b) = (rng.random_range(0..n as u32), rng.random_range(0..n as u32));
        if a != b {
            seen.insert((a, b));
        }
    }
    let mut e: Vec<(u32, u32)> = seen.into_iter().collect();
    e.sort_unstable();
    e
}

/// Degrees, power-law fits and modularity of a directed edge list on `n` nodes.
pub fn stats(n: usize, edges: &[(u32, u32)], seeds: u64) -> GraphStats {
    let (mut out_deg, mut in_deg) = (vec![0u64; n], vec![0u64; n]);
    for &(a, b) in edges {
        out_deg[a as usize] += 1;
        in_deg[b as usize] += 1;
    }
    let hist = |deg: &[u64]| {
        let mut h = std::collections::BTreeMap::new();
        for &k in deg {
            *h.entry(k).or_insert(0usize) += 1;
        }
        h.into_iter().collect::<Vec<_>>()
    };
    let (_, modularity) = louvain(n, edges, seeds);
    GraphStats {
        edges: edges.len(),
        mean_degree: edges.len() as f64 / n as f64,
        max_out_degree: out_deg.iter().copied().max().unwrap_or(0),
        max_in_degree: in_deg.iter().copied().max().unwrap_or(0),
        out_fit: fit_power_law(&out_deg, 50),
        in_fit: fit_power_law(&in_deg, 50),
        modularity,
        out_degrees: hist(&out_deg),
        in_degrees: hist(&in_deg),
    }
}
