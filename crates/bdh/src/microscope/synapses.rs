//! The synapse state σ of one layer and head (paper Eq. 16) over a text, and the
//! search for synapses and neurons that carry a concept.
//!
//! Definition used here, in bdh.py's activations: for layer l ≥ 1 and head h,
//!
//! `σ_t(i, j) = Σ_{τ ≤ t} z_{l−1}(τ, i) · x_l(τ, j)`
//!
//! where `z_{l−1} = x ⊙ y` of layer l−1 (head h; what that layer's decoder writes
//! into the residual stream that layer l reads) and `x_l = relu(v · encoder_h)` of
//! layer l: the Hebbian co-activation of a presynaptic neuron i with a
//! postsynaptic neuron j. The model's actual state ρ = Σ R_τ x_τ ⊗ v_τ also
//! carries RoPE's rotation, which makes entries of either sign; like the paper, σ
//! leaves the rotation out, so every entry is a sum of products of non-negative
//! activations and never negative.

use serde::Serialize;

use super::stats::{mann_whitney, MannWhitney};
use crate::error::{Error, Result};
use crate::model::bdh::{forward, Activations, Bdh, Pass};
use bdh_kernels::{matmul, MatMul};

/// Synapses kept as candidates in a concept search (largest mean over the concept).
const CANDIDATES: usize = 20_000;

/// z of layer l−1 and x of layer l for head h over `tokens`: ((T, N), (T, N)).
fn activations(model: &Bdh, tokens: &[u32], layer: usize, head: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = &model.config;
    if layer == 0 || layer >= c.n_layer {
        return Err(Error::Input(format!(
            "synapses need a layer in 1..{} (σ pairs layer l−1 with layer l)",
            c.n_layer
        )));
    }
    if head >= c.n_head {
        return Err(Error::Input(format!("head {head} ≥ n_head {}", c.n_head)));
    }
    if tokens.is_empty() {
        return Err(Error::Input("the text is empty".into()));
    }
    let (t, n) = (tokens.len(), c.n_neurons());
    let mut acts = Activations::new(model, 1, t)?;
    forward(model, tokens, &mut acts, Pass::default())?;
    let block = head * t * n..(head + 1) * t * n;
    let (xp, yp) = (&acts.x(layer - 1)[block.clone()], &acts.y(layer - 1)[block.clone()]);
    let z: Vec<f32> = xp.iter().zip(yp).map(|(a, b)| a * b).collect();
    Ok((z, acts.x(layer)[block].to_vec()))
}

/// σ at the end of `tokens`: `zᵀ x`, (N, N), row i presynaptic, column j postsynaptic.
pub fn sigma(model: &Bdh, tokens: &[u32], layer: usize, head: usize) -> Result<Vec<f32>> {
    let (z, x) = activations(model, tokens, layer, head)?;
    let (t, n) = (tokens.len(), model.config.n_neurons());
    let mut s = vec![0.0f32; n * n];
    matmul(&mut s, &z, &x, MatMul::new(n, t, n).a_t());
    Ok(s)
}

/// A synapse and its strength.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Synapse {
    /// Presynaptic neuron (layer l−1).
    pub from: usize,
    /// Postsynaptic neuron (layer l).
    pub to: usize,
    /// σ at the end of the text.
    pub value: f32,
}

/// The strongest synapses of σ and their traces over the text.
#[derive(Clone, Debug, Serialize)]
pub struct SynapseReport {
    /// Layer l.
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// Tokens of the text.
    pub tokens: usize,
    /// Non-zero entries of σ.
    pub nonzero: usize,
    /// The strongest synapses, strongest first.
    pub strongest: Vec<Synapse>,
    /// σ_t of each traced synapse at every token t.
    pub traces: Vec<(Synapse, Vec<f32>)>,
}

/// σ over `tokens`: its `top` strongest synapses, and per-token traces of those
/// in `trace` (plus the five strongest if `trace` is empty).
pub fn synapses(
    model: &Bdh,
    tokens: &[u32],
    layer: usize,
    head: usize,
    top: usize,
    trace: &[(usize, usize)],
) -> Result<SynapseReport> {
    let n = model.config.n_neurons();
    if let Some(&(i, j)) = trace.iter().find(|&&(i, j)| i >= n || j >= n) {
        return Err(Error::Input(format!("synapse {i}:{j} is outside 0..{n}")));
    }
    let (z, x) = activations(model, tokens, layer, head)?;
    let t = tokens.len();
    let mut s = vec![0.0f32; n * n];
    matmul(&mut s, &z, &x, MatMul::new(n, t, n).a_t());
    let nonzero = s.iter().filter(|&&v| v != 0.0).count();
    let strongest = top_entries(&s, n, top);
    let traced: Vec<(usize, usize)> =
        if trace.is_empty() { strongest.iter().take(5).map(|s| (s.from, s.to)).collect() } else { trace.to_vec() };
    let traces = traced
        .into_iter()
        .map(|(i, j)| {
            let mut acc = 0.0f32;
            let series = (0..t).map(|ti| {
                acc += z[ti * n + i] * x[ti * n + j];
                acc
            });
            let series: Vec<f32> = series.collect();
            (Synapse { from: i, to: j, value: *series.last().unwrap_or(&0.0) }, series)
        })
        .collect();
    Ok(SynapseReport { layer, head, tokens: t, nonzero, strongest, traces })
}

fn top_entries(s: &[f32], n: usize, k: usize) -> Vec<Synapse> {
    let mut idx: Vec<usize> = (0..s.len()).filter(|&i| s[i] > 0.0).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| s[b].total_cmp(&s[a]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]));
    idx.into_iter().map(|i| Synapse { from: i / n, to: i % n, value: s[i] }).collect()
}

/// A synapse or neuron ranked by how well it separates concept from contrast.
#[derive(Clone, Debug, Serialize)]
pub struct Separation {
    /// Presynaptic neuron (for a neuron: the neuron; `to` is then None).
    pub from: usize,
    /// Postsynaptic neuron, for a synapse.
    pub to: Option<usize>,
    /// Mean value over the concept sentences.
    pub concept_mean: f64,
    /// Mean value over the contrast sentences.
    pub contrast_mean: f64,
    /// The test, concept against contrast.
    pub test: MannWhitney,
}

/// The result of a concept search.
#[derive(Clone, Debug, Serialize)]
pub struct ConceptReport {
    /// Concept sentences.
    pub concept: usize,
    /// Contrast sentences.
    pub contrast: usize,
    /// Synapses scored (the largest concept means).
    pub candidates: usize,
    /// Best-separating synapses, most significant first.
    pub synapses: Vec<Separation>,
    /// Best-separating neurons of layer l (summed x over each sentence).
    pub neurons: Vec<Separation>,
}

/// Ranks synapses (σ at the end of each sentence) and neurons (x summed over each
/// sentence) by the Mann–Whitney U test of concept against contrast sentences.
pub fn concept_search(
    model: &Bdh,
    concept: &[Vec<u32>],
    contrast: &[Vec<u32>],
    layer: usize,
    head: usize,
    top: usize,
) -> Result<ConceptReport> {
    if concept.len() < 2 || contrast.len() < 2 {
        return Err(Error::Input("a concept search needs at least two concept and two contrast sentences".into()));
    }
    let n = model.config.n_neurons();
    let all: Vec<&Vec<u32>> = concept.iter().chain(contrast).collect();
    // Candidates: the synapses with the largest mean σ over the concept sentences.
    let mut mean = vec![0.0f32; n * n];
    for s in concept {
        let sig = sigma(model, s, layer, head)?;
        mean.iter_mut().zip(&sig).for_each(|(m, &v)| *m += v);
    }
    let cands: Vec<usize> = top_entries(&mean, n, CANDIDATES).into_iter().map(|s| s.from * n + s.to).collect();
    let mut syn_values = vec![vec![0.0f64; all.len()]; cands.len()];
    let mut neuron_values = vec![vec![0.0f64; all.len()]; n];
    for (k, s) in all.iter().enumerate() {
        let (z, x) = activations(model, s, layer, head)?;
        let t = s.len();
        for (ci, &c) in cands.iter().enumerate() {
            let (i, j) = (c / n, c % n);
            syn_values[ci][k] = (0..t).map(|ti| z[ti * n + i] as f64 * x[ti * n + j] as f64).sum();
        }
        for (j, nv) in neuron_values.iter_mut().enumerate() {
            nv[k] = (0..t).map(|ti| x[ti * n + j] as f64).sum();
        }
    }
    let nc = concept.len();
    let rank = |values: &[Vec<f64>], name: &dyn Fn(usize) -> (usize, Option<usize>)| {
        let mut out: Vec<Separation> = values
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let (from, to) = name(k);
                let (a, b) = v.split_at(nc);
                Separation {
                    from,
                    to,
                    concept_mean: a.iter().sum::<f64>() / a.len() as f64,
                    contrast_mean: b.iter().sum::<f64>() / b.len() as f64,
                    test: mann_whitney(a, b),
                }
            })
            .filter(|s| s.test.r > 0.0)
            .collect();
        out.sort_by(|a, b| a.test.p.total_cmp(&b.test.p).then(b.test.r.total_cmp(&a.test.r)));
        out.truncate(top);
        out
    };
    let synapses = rank(&syn_values, &|k| (cands[k] / n, Some(cands[k] % n)));
    let neurons = rank(&neuron_values, &|k| (k, None));
    Ok(ConceptReport { concept: concept.len(), contrast: contrast.len(), candidates: cands.len(), synapses, neurons })
}
