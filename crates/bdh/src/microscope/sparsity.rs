//! How many neurons fire: x, y and x⊙y per layer, head and token, RoPE pairs
//! with an active neuron, the most and least active neurons, and activity by RoPE
//! frequency.

use serde::Serialize;

use super::Scope;
use crate::error::{Error, Result};
use crate::model::bdh::{Activations, Pass};

/// Buckets of RoPE frequency (pairs in order of decreasing frequency).
const FREQ_BUCKETS: usize = 16;
/// Neurons listed at each end of the activity ranking.
const LISTED: usize = 10;

/// Fractions of non-zero activations.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Fractions {
    /// x > 0.
    pub x: f64,
    /// y = relu(a · encoder_v) > 0.
    pub y: f64,
    /// x ⊙ y > 0 (what the decoder reads).
    pub xy: f64,
    /// RoPE pairs (2j, 2j+1) with at least one x > 0 (the rows of ρ a step touches).
    pub pairs: f64,
}

/// One layer's sparsity.
#[derive(Clone, Debug, Serialize)]
pub struct LayerSparsity {
    /// The layer.
    pub layer: usize,
    /// Over all heads and tokens.
    pub all: Fractions,
    /// Per head.
    pub heads: Vec<Fractions>,
    /// Fraction of x > 0 at each token (all heads).
    pub per_token_x: Vec<f64>,
    /// Fraction of x ⊙ y > 0 at each token.
    pub per_token_xy: Vec<f64>,
    /// Min, quartiles and max of `per_token_x`.
    pub per_token_x_quartiles: [f64; 5],
    /// Mean x firing rate per bucket of RoPE frequency: (highest frequency of the
    /// bucket, in cycles per token, and rate).
    pub by_frequency: Vec<(f64, f64)>,
}

/// A neuron and how often it fired.
#[derive(Clone, Debug, Serialize)]
pub struct NeuronActivity {
    /// Layer.
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// Neuron within the head.
    pub neuron: usize,
    /// Fraction of tokens with x > 0.
    pub rate: f64,
}

/// Sparsity of a model over a text.
#[derive(Clone, Debug, Serialize)]
pub struct SparsityReport {
    /// Tokens analysed.
    pub tokens: usize,
    /// Window length (each window starts with an empty state).
    pub window: usize,
    /// Per layer.
    pub layers: Vec<LayerSparsity>,
    /// The most often firing neurons.
    pub most_active: Vec<NeuronActivity>,
    /// The least often firing neurons.
    pub least_active: Vec<NeuronActivity>,
    /// Neurons (of all layers and heads) that never fired.
    pub silent: usize,
}

/// Runs the model over `tokens` in windows of `window` and measures sparsity.
pub fn sparsity(model: &Scope, tokens: &[u32], window: usize) -> Result<SparsityReport> {
    if tokens.is_empty() || window == 0 {
        return Err(Error::Input("sparsity needs at least one token and a window > 0".into()));
    }
    let c = &model.config;
    let (layers, h, n) = (c.n_layer, c.n_head, c.n_neurons());
    // Counts per (layer, head): x, y, xy, pairs; per (layer, head, neuron): x fires.
    let mut counts = vec![[0u64; 4]; layers * h];
    let mut fires = vec![0u32; layers * h * n];
    let mut per_token: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); layers];
    let mut pair_fires = vec![0u64; layers * n / 2];
    for chunk in tokens.chunks(window) {
        let t = chunk.len();
        let mut acts = Activations::new(model, 1, t)?;
        model.forward(chunk, &mut acts, Pass::default())?;
        for l in 0..layers {
            let (x, y) = (acts.x(l), acts.y(l));
            let mut tok_x = vec![0u64; t];
            let mut tok_xy = vec![0u64; t];
            for hi in 0..h {
                let cnt = &mut counts[l * h + hi];
                for ti in 0..t {
                    let base = (hi * t + ti) * n;
                    let (xr, yr) = (&x[base..base + n], &y[base..base + n]);
                    for (j, (&xv, &yv)) in xr.iter().zip(yr).enumerate() {
                        let (fx, fy) = (xv > 0.0, yv > 0.0);
                        cnt[0] += fx as u64;
                        cnt[1] += fy as u64;
                        cnt[2] += (fx && fy) as u64;
                        tok_x[ti] += fx as u64;
                        tok_xy[ti] += (fx && fy) as u64;
                        fires[(l * h + hi) * n + j] += fx as u32;
                    }
                    for (j, p) in xr.chunks_exact(2).enumerate() {
                        let on = p[0] > 0.0 || p[1] > 0.0;
                        cnt[3] += on as u64;
                        pair_fires[l * n / 2 + j] += on as u64;
                    }
                }
            }
            let hn = (h * n) as f64;
            per_token[l].0.extend(tok_x.iter().map(|&k| k as f64 / hn));
            per_token[l].1.extend(tok_xy.iter().map(|&k| k as f64 / hn));
        }
    }
    let total = tokens.len() as f64;
    let frac = |c: &[u64; 4], heads: f64| {
        let cells = total * heads * n as f64;
        Fractions {
            x: c[0] as f64 / cells,
            y: c[1] as f64 / cells,
            xy: c[2] as f64 / cells,
            pairs: 2.0 * c[3] as f64 / cells,
        }
    };
    let layer_reports = (0..layers)
        .map(|l| {
            let heads: Vec<Fractions> = (0..h).map(|hi| frac(&counts[l * h + hi], 1.0)).collect();
            let mut sum = [0u64; 4];
            for hc in &counts[l * h..(l + 1) * h] {
                for k in 0..4 {
                    sum[k] += hc[k];
                }
            }
            let (px, pxy) = per_token[l].clone();
            let mut sorted = px.clone();
            sorted.sort_by(f64::total_cmp);
            let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
            let pairs_per_bucket = (n / 2).div_ceil(FREQ_BUCKETS);
            let by_frequency = pair_fires[l * n / 2..(l + 1) * n / 2]
                .chunks(pairs_per_bucket)
                .enumerate()
                .map(|(b, ch)| {
                    let first_pair = b * pairs_per_bucket;
                    let freq = model.freqs[2 * first_pair] as f64;
                    (freq, ch.iter().sum::<u64>() as f64 / (ch.len() as f64 * total * h as f64))
                })
                .collect();
            LayerSparsity {
                layer: l,
                all: frac(&sum, h as f64),
                heads,
                per_token_x: px,
                per_token_xy: pxy,
                per_token_x_quartiles: [q(0.0), q(0.25), q(0.5), q(0.75), q(1.0)],
                by_frequency,
            }
        })
        .collect();
    let mut ranked: Vec<NeuronActivity> = fires
        .iter()
        .enumerate()
        .map(|(k, &f)| NeuronActivity { layer: k / (h * n), head: k / n % h, neuron: k % n, rate: f as f64 / total })
        .collect();
    ranked.sort_by(|a, b| b.rate.total_cmp(&a.rate));
    let silent = ranked.iter().filter(|a| a.rate == 0.0).count();
    Ok(SparsityReport {
        tokens: tokens.len(),
        window,
        layers: layer_reports,
        most_active: ranked[..LISTED.min(ranked.len())].to_vec(),
        least_active: ranked[ranked.len().saturating_sub(LISTED)..].iter().rev().cloned().collect(),
        silent,
    })
}
