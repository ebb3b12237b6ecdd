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

use std::ops::Range;

use serde::Serialize;

use super::stats::{benjamini_hochberg, mann_whitney, MannWhitney};
use super::Progress;
use super::Scope;
use crate::error::{Error, Result};
use crate::model::bdh::{Activations, Pass, State, NO_EDITS};
use crate::model::Mode;
use bdh_kernels::{matmul, MatMul};

/// Synapses kept as candidates in a concept search (largest mean over the concept).
const CANDIDATES: usize = 20_000;
/// Tokens run through the parallel forward at once; the synapse state ρ carries
/// the text between chunks, so memory does not grow with the text.
const CHUNK: usize = 256;
/// The false-discovery rate at which a concept search counts a synapse or neuron
/// as selective: its Benjamini–Hochberg q-value is below it.
pub const FDR: f64 = 0.05;

/// Checks that (layer, head) has a synapse state σ in `model`.
pub fn check_site(model: &Scope, layer: usize, head: usize) -> Result<()> {
    let c = &model.config;
    if c.n_layer < 2 {
        return Err(Error::Input(format!("synapses need two layers; this model has {}", c.n_layer)));
    }
    if layer == 0 || layer >= c.n_layer {
        return Err(Error::Input(format!(
            "synapses need a layer in 1..={} (σ pairs layer l−1 with layer l); got {layer}",
            c.n_layer - 1
        )));
    }
    if head >= c.n_head {
        return Err(Error::Input(format!("synapses need a head in 0..={}; got {head}", c.n_head - 1)));
    }
    Ok(())
}

/// Runs `tokens` through the parallel forward in chunks of [`CHUNK`] with the
/// synapse state carried between them (the same numbers as one pass over the whole
/// text, in bounded memory) and calls `f(first position, activations)` per chunk.
pub(crate) fn stream_chunks(
    model: &Scope,
    tokens: &[u32],
    mut f: impl FnMut(usize, &Activations) -> Result<()>,
) -> Result<()> {
    if tokens.is_empty() {
        return Err(Error::Input("the text is empty".into()));
    }
    let mut state = State::new(&model.config)?;
    let mut acts: Option<Activations> = None;
    for (k, part) in tokens.chunks(CHUNK).enumerate() {
        let t = part.len();
        let a = Activations::reuse(&mut acts, model, 1, t)?;
        model.forward(part, a, Pass { mode: Mode::Eval, edits: &NO_EDITS, state: Some(&mut state) })?;
        f(k * CHUNK, a)?;
    }
    Ok(())
}

/// Runs `tokens` in chunks with the state carried between them and calls
/// `f(first position, z, x)` for each chunk, with z of layer l−1 and x of layer l
/// for head h, each (t, N) for the chunk's t tokens.
fn for_each_chunk(
    model: &Scope,
    tokens: &[u32],
    layer: usize,
    head: usize,
    mut f: impl FnMut(usize, &[f32], &[f32]),
) -> Result<()> {
    check_site(model, layer, head)?;
    let n = model.config.n_neurons();
    let mut z = Vec::new();
    stream_chunks(model, tokens, |first, a| {
        let t = a.dims.t;
        let block = head * t * n..(head + 1) * t * n;
        let (xp, yp) = (&a.x(layer - 1)[block.clone()], &a.y(layer - 1)[block.clone()]);
        z.clear();
        z.extend(xp.iter().zip(yp).map(|(a, b)| a * b));
        f(first, &z, &a.x(layer)[block]);
        Ok(())
    })
}

/// σ at the end of `tokens`: `Σ_τ z_τᵀ x_τ`, (N, N), row i presynaptic, column j
/// postsynaptic.
pub fn sigma(model: &Scope, tokens: &[u32], layer: usize, head: usize) -> Result<Vec<f32>> {
    sigma_over(model, tokens, layer, head, 0..tokens.len(), &mut |_, _| {}, &mut || {})
}

/// Calls `each(z, x)` for the positions in `window`, a chunk at a time (rows of
/// N values, one per position), and `chunk()` after each chunk the model reads:
/// it reads every token before `window.end`.
fn stream_window(
    model: &Scope,
    tokens: &[u32],
    layer: usize,
    head: usize,
    window: Range<usize>,
    each: &mut dyn FnMut(&[f32], &[f32]),
    chunk: &mut dyn FnMut(),
) -> Result<()> {
    let n = model.config.n_neurons();
    if window.start >= window.end || window.end > tokens.len() {
        return Err(Error::Input(format!(
            "window {}..{} is not a non-empty span of the text's {} tokens",
            window.start,
            window.end,
            tokens.len()
        )));
    }
    for_each_chunk(model, &tokens[..window.end], layer, head, |first, z, x| {
        let t = z.len() / n;
        let (lo, hi) = (window.start.max(first), (first + t).min(window.end));
        if lo < hi {
            let rows = (lo - first) * n..(hi - first) * n;
            each(&z[rows.clone()], &x[rows]);
        }
        chunk();
    })
}

/// σ summed over the positions in `window`, calling `each(z, x)` and `chunk()` on
/// the way (see [`stream_window`]).
fn sigma_over(
    model: &Scope,
    tokens: &[u32],
    layer: usize,
    head: usize,
    window: Range<usize>,
    each: &mut dyn FnMut(&[f32], &[f32]),
    chunk: &mut dyn FnMut(),
) -> Result<Vec<f32>> {
    check_site(model, layer, head)?;
    let n = model.config.n_neurons();
    let cells = n.checked_mul(n).ok_or_else(|| Error::Config("N² overflows".into()))?;
    crate::memory::ensure_fits(crate::memory::f32_bytes(Some(cells)), "σ (N × N)")?;
    let mut s = crate::model::zeroed(&[cells])?;
    stream_window(
        model,
        tokens,
        layer,
        head,
        window,
        &mut |z, x| {
            matmul(&mut s, z, x, MatMul::new(n, z.len() / n, n).a_t().acc());
            each(z, x);
        },
        chunk,
    )?;
    Ok(s)
}

/// Running totals of σ(i, j) for chosen synapses, one value per position.
struct Traces {
    pairs: Vec<(usize, usize)>,
    acc: Vec<f32>,
    series: Vec<Vec<f32>>,
    n: usize,
}

impl Traces {
    fn new(pairs: Vec<(usize, usize)>, n: usize, span: usize) -> Self {
        let series = pairs.iter().map(|_| Vec::with_capacity(span)).collect();
        Traces { acc: vec![0.0; pairs.len()], pairs, series, n }
    }
    fn read(&mut self, z: &[f32], x: &[f32]) {
        for (zr, xr) in z.chunks_exact(self.n).zip(x.chunks_exact(self.n)) {
            for (k, &(i, j)) in self.pairs.iter().enumerate() {
                self.acc[k] += zr[i] * xr[j];
                self.series[k].push(self.acc[k]);
            }
        }
    }
    fn finish(self, sigma: &[f32]) -> Vec<(Synapse, Vec<f32>)> {
        let n = self.n;
        let syn = |(i, j): (usize, usize)| Synapse { from: i, to: j, value: sigma[i * n + j] };
        self.pairs.into_iter().map(syn).zip(self.series).collect()
    }
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
    /// The positions σ sums over (the model reads every token before its end).
    pub window: Range<usize>,
    /// Non-zero entries of σ.
    pub nonzero: usize,
    /// The strongest synapses, strongest first.
    pub strongest: Vec<Synapse>,
    /// σ_t of each traced synapse at every position t of the window.
    pub traces: Vec<(Synapse, Vec<f32>)>,
}

/// Bytes `synapses` needs beyond the model for `tokens` positions and `traces`
/// traced synapses: σ, the traces, and one chunk of activations (an estimate).
pub fn synapses_bytes(model: &Scope, tokens: usize, traces: usize) -> Option<usize> {
    let c = &model.config;
    let n = c.n_neurons();
    let chunk = CHUNK.min(tokens.max(1));
    let per_token = 4 * c.n_layer * c.n_head * (3 * n + 2 * c.n_embd) + 4 * (c.n_embd + c.vocab_size) * 4;
    let sigma = n.checked_mul(n)?.checked_mul(4)?;
    let traced = tokens.checked_mul(traces)?.checked_mul(4)?;
    let state = c.n_layer.checked_mul(c.n_head)?.checked_mul(n)?.checked_mul(c.n_embd)?.checked_mul(4)?;
    sigma
        .checked_add(traced)?
        .checked_add(state)?
        .checked_add(chunk.checked_mul(per_token)?)?
        .checked_add(chunk * chunk * 4 * c.n_head)
}

/// σ over `tokens` in `window` (default: all of them): its `top` strongest
/// synapses, and per-position traces of those in `trace` (plus the five strongest
/// if `trace` is empty). Memory is bounded by σ (N²), one chunk of activations and
/// the traces, whatever the text's length. `progress` counts the chunks of text
/// read, over both passes when the five strongest are traced.
#[allow(clippy::too_many_arguments)]
pub fn synapses(
    model: &Scope,
    tokens: &[u32],
    layer: usize,
    head: usize,
    top: usize,
    trace: &[(usize, usize)],
    window: Option<Range<usize>>,
    progress: Progress,
) -> Result<SynapseReport> {
    check_site(model, layer, head)?;
    let n = model.config.n_neurons();
    if let Some(&(i, j)) = trace.iter().find(|&&(i, j)| i >= n || j >= n) {
        return Err(Error::Input(format!("synapse {i}:{j} is outside 0..{n}")));
    }
    let window = window.unwrap_or(0..tokens.len());
    let span = window.end.saturating_sub(window.start);
    let need = synapses_bytes(model, span, trace.len().max(5))
        .ok_or_else(|| Error::Config("the synapse analysis's size overflows".into()))?;
    crate::memory::ensure_fits(need, &format!("σ with traces over {span} tokens"))?;
    // Named traces are recorded as the text streams past; the strongest are only
    // known at the end, so they take a second pass over the text.
    let passes = if trace.is_empty() { 2 } else { 1 };
    let chunks = passes * window.end.div_ceil(CHUNK);
    let mut done = 0;
    progress(done, chunks);
    let mut chunk = || {
        done += 1;
        progress(done, chunks);
    };
    let mut named = Traces::new(trace.to_vec(), n, span);
    let s = sigma_over(model, tokens, layer, head, window.clone(), &mut |z, x| named.read(z, x), &mut chunk)?;
    let nonzero = s.iter().filter(|&&v| v != 0.0).count();
    let strongest = top_entries(&s, n, top);
    let traces = if trace.is_empty() {
        let mut best = Traces::new(strongest.iter().take(5).map(|s| (s.from, s.to)).collect(), n, span);
        stream_window(model, tokens, layer, head, window.clone(), &mut |z, x| best.read(z, x), &mut chunk)?;
        best.finish(&s)
    } else {
        named.finish(&s)
    };
    Ok(SynapseReport { layer, head, tokens: tokens.len(), window, nonzero, strongest, traces })
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
    /// Benjamini–Hochberg q-value: the test's p adjusted for every synapse (or
    /// neuron) tested in the search, controlling the false discovery rate.
    pub q: f64,
}

/// The result of a concept search.
#[derive(Clone, Debug, Serialize)]
pub struct ConceptReport {
    /// Concept sentences.
    pub concept: usize,
    /// Contrast sentences.
    pub contrast: usize,
    /// Synapses tested (the largest concept means); the synapses' q-values adjust
    /// for this many tests.
    pub candidates: usize,
    /// Neurons tested; the neurons' q-values adjust for this many tests.
    pub neurons_tested: usize,
    /// Synapses tested that are higher in the concept at q < [`FDR`].
    pub synapses_selective: usize,
    /// Neurons tested that are higher in the concept at q < [`FDR`].
    pub neurons_selective: usize,
    /// Best-separating synapses, most significant first.
    pub synapses: Vec<Separation>,
    /// Best-separating neurons of layer l (summed x over each sentence).
    pub neurons: Vec<Separation>,
}

/// Ranks synapses (σ at the end of each sentence) and neurons (x summed over each
/// sentence) by the Mann–Whitney U test of concept against contrast sentences.
/// `progress` counts the sentences read, over both passes: the concept's, to pick
/// the candidate synapses, then every sentence, to test them.
pub fn concept_search(
    model: &Scope,
    concept: &[Vec<u32>],
    contrast: &[Vec<u32>],
    layer: usize,
    head: usize,
    top: usize,
    progress: Progress,
) -> Result<ConceptReport> {
    if concept.len() < 2 || contrast.len() < 2 {
        return Err(Error::Input("a concept search needs at least two concept and two contrast sentences".into()));
    }
    let n = model.config.n_neurons();
    let all: Vec<&Vec<u32>> = concept.iter().chain(contrast).collect();
    // Candidates: the synapses with the largest mean σ over the concept sentences.
    // σ's concept mean (N², f32) and the tested values ((candidates + N) × sentences, f64).
    let cells = n.checked_mul(n).ok_or_else(|| Error::Config("N² overflows".into()))?;
    let values = CANDIDATES
        .min(cells)
        .checked_add(n)
        .and_then(|rows| rows.checked_mul(all.len()))
        .and_then(|v| v.checked_mul(8))
        .and_then(|v| v.checked_add(cells.checked_mul(4)?));
    crate::memory::ensure_fits(
        values.unwrap_or(usize::MAX),
        &format!("a concept search over {} sentences", all.len()),
    )?;
    let passes = concept.len() + all.len();
    progress(0, passes);
    let mut mean = crate::model::zeroed(&[cells])?;
    for (k, s) in concept.iter().enumerate() {
        let sig = sigma(model, s, layer, head)?;
        mean.iter_mut().zip(&sig).for_each(|(m, &v)| *m += v);
        progress(k + 1, passes);
    }
    let cands: Vec<usize> = top_entries(&mean, n, CANDIDATES).into_iter().map(|s| s.from * n + s.to).collect();
    let mut syn_values = vec![vec![0.0f64; all.len()]; cands.len()];
    let mut neuron_values = vec![vec![0.0f64; all.len()]; n];
    for (k, s) in all.iter().enumerate() {
        let each = &mut |z: &[f32], x: &[f32]| {
            for (zr, xr) in z.chunks_exact(n).zip(x.chunks_exact(n)) {
                for (ci, &c) in cands.iter().enumerate() {
                    syn_values[ci][k] += zr[c / n] as f64 * xr[c % n] as f64;
                }
                for (nv, &v) in neuron_values.iter_mut().zip(xr) {
                    nv[k] += v as f64;
                }
            }
        };
        stream_window(model, s, layer, head, 0..s.len(), each, &mut || {})?;
        progress(concept.len() + k + 1, passes);
    }
    let nc = concept.len();
    let rank = |values: &[Vec<f64>], name: &dyn Fn(usize) -> (usize, Option<usize>)| {
        let tests: Vec<MannWhitney> = values
            .iter()
            .map(|v| {
                let (a, b) = v.split_at(nc);
                mann_whitney(a, b)
            })
            .collect();
        let q = benjamini_hochberg(&tests.iter().map(|t| t.p).collect::<Vec<_>>());
        let selective = tests.iter().zip(&q).filter(|(t, &q)| t.r > 0.0 && q < FDR).count();
        let mut out: Vec<Separation> = values
            .iter()
            .zip(tests)
            .zip(q)
            .enumerate()
            .filter(|(_, ((_, test), _))| test.r > 0.0)
            .map(|(k, ((v, test), q))| {
                let (from, to) = name(k);
                let (a, b) = v.split_at(nc);
                Separation {
                    from,
                    to,
                    concept_mean: a.iter().sum::<f64>() / a.len() as f64,
                    contrast_mean: b.iter().sum::<f64>() / b.len() as f64,
                    test,
                    q,
                }
            })
            .collect();
        out.sort_by(|a, b| a.test.p.total_cmp(&b.test.p).then(b.test.r.total_cmp(&a.test.r)));
        out.truncate(top);
        (out, selective)
    };
    let (synapses, synapses_selective) = rank(&syn_values, &|k| (cands[k] / n, Some(cands[k] % n)));
    let (neurons, neurons_selective) = rank(&neuron_values, &|k| (k, None));
    Ok(ConceptReport {
        concept: concept.len(),
        contrast: contrast.len(),
        candidates: cands.len(),
        neurons_tested: n,
        synapses_selective,
        neurons_selective,
        synapses,
        neurons,
    })
}
