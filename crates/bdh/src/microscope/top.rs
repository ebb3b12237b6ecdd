//! The top-activating contexts of one neuron over a text, and their facets: a
//! neuron may fire for several unrelated reasons, so its top contexts are clustered
//! (k-means, cosine, on the whole head's activation vector at each context) and each
//! cluster is shown on its own.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::synapses::stream_chunks;
use super::Scope;
use crate::error::{Error, Result};
use crate::model::bdh::Site;

/// Most contexts kept.
pub const MAX_CONTEXTS: usize = 2000;
/// Most facets.
pub const MAX_FACETS: usize = 64;

/// One context where the neuron fired.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Context {
    /// Position of the token in the text.
    pub position: usize,
    /// The neuron's activation there.
    pub activation: f32,
    /// The bytes around it (lossy UTF-8).
    pub before: String,
    /// The token itself.
    pub token: String,
    /// The bytes after it.
    pub after: String,
    /// Its facet.
    pub facet: usize,
}

/// A cluster of contexts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Facet {
    /// Contexts in it.
    pub size: usize,
    /// Their mean activation.
    pub mean_activation: f64,
    /// The tokens most often at its contexts, with counts.
    pub tokens: Vec<(String, usize)>,
}

/// What a neuron fires for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopReport {
    /// Layer, head, neuron.
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// Neuron.
    pub neuron: usize,
    /// x, y or xy.
    pub site: Site,
    /// Tokens read.
    pub tokens: usize,
    /// Positions where it was positive.
    pub fired: usize,
    /// The top contexts, strongest first.
    pub contexts: Vec<Context>,
    /// Their facets, largest first.
    pub facets: Vec<Facet>,
}

#[derive(PartialEq)]
struct Kept {
    activation: f32,
    position: usize,
    vector: Vec<f32>,
}
impl Eq for Kept {}
impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Kept {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.activation.total_cmp(&other.activation).then(other.position.cmp(&self.position))
    }
}

/// The `k` strongest contexts of neuron (layer, head, neuron) on `site` over
/// `bytes`, `radius` bytes each side, clustered into at most `facets` facets.
#[allow(clippy::too_many_arguments)]
pub fn top(
    model: &Scope,
    bytes: &[u8],
    layer: usize,
    head: usize,
    neuron: usize,
    site: Site,
    k: usize,
    facets: usize,
    radius: usize,
) -> Result<TopReport> {
    let c = &model.config;
    let n = c.n_neurons();
    if layer >= c.n_layer || head >= c.n_head || neuron >= n {
        return Err(Error::Input(format!(
            "no neuron {neuron} of head {head}, layer {layer}: the model has layers 0..={}, heads 0..={}, neurons \
             0..={}",
            c.n_layer - 1,
            c.n_head - 1,
            n - 1
        )));
    }
    if !matches!(site, Site::X | Site::Y | Site::Xy)
        || k == 0
        || k > MAX_CONTEXTS
        || !(1..=MAX_FACETS).contains(&facets)
    {
        return Err(Error::Input(format!(
            "top needs a site of x, y or xy, 1..={MAX_CONTEXTS} contexts and 1..={MAX_FACETS} facets; got {site:?}, \
             {k}, {facets}"
        )));
    }
    let tokens: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
    let mut heap: BinaryHeap<Reverse<Kept>> = BinaryHeap::new();
    let mut fired = 0;
    stream_chunks(model, &tokens, |first, a| {
        let t = a.dims.t;
        let block = head * t * n..(head + 1) * t * n;
        let (x, y) = (&a.x(layer)[block.clone()], &a.y(layer)[block]);
        for ti in 0..t {
            let row = ti * n..(ti + 1) * n;
            let value = |j: usize| match site {
                Site::X => x[row.start + j],
                Site::Y => y[row.start + j],
                _ => x[row.start + j] * y[row.start + j],
            };
            let act = value(neuron);
            if act <= 0.0 {
                continue;
            }
            fired += 1;
            if heap.len() < k || heap.peek().is_some_and(|m| act > m.0.activation) {
                heap.push(Reverse(Kept { activation: act, position: first + ti, vector: (0..n).map(value).collect() }));
                if heap.len() > k {
                    heap.pop();
                }
            }
        }
        Ok(())
    })?;
    let mut kept: Vec<Kept> = heap.into_iter().map(|r| r.0).collect();
    kept.sort_by(|a, b| b.cmp(a));
    let vectors: Vec<Vec<f32>> = kept.iter().map(|k| k.vector.clone()).collect();
    let facets = facets.min(kept.len().max(1));
    let assignment = kmeans_cosine(&vectors, facets, 0);
    // Facets numbered by size, largest first; empty clusters dropped.
    let size = |f: usize| assignment.iter().filter(|&&a| a == f).count();
    let mut order: Vec<usize> = (0..facets).filter(|&f| size(f) > 0).collect();
    order.sort_by(|&a, &b| size(b).cmp(&size(a)).then(a.cmp(&b)));
    let lossy = |r: std::ops::Range<usize>| String::from_utf8_lossy(&bytes[r]).into_owned();
    let contexts: Vec<Context> = kept
        .iter()
        .zip(&assignment)
        .map(|(k, &cluster)| Context {
            position: k.position,
            activation: k.activation,
            before: lossy(k.position.saturating_sub(radius)..k.position),
            token: lossy(k.position..k.position + 1),
            after: lossy(k.position + 1..(k.position + 1 + radius).min(bytes.len())),
            facet: order.iter().position(|&o| o == cluster).expect("every cluster with a member is kept"),
        })
        .collect();
    let facets = (0..order.len())
        .map(|f| {
            let members: Vec<&Context> = contexts.iter().filter(|c| c.facet == f).collect();
            let mut counts: Vec<(String, usize)> = Vec::new();
            for m in &members {
                match counts.iter_mut().find(|(t, _)| *t == m.token) {
                    Some(entry) => entry.1 += 1,
                    None => counts.push((m.token.clone(), 1)),
                }
            }
            counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            counts.truncate(5);
            let mean = members.iter().map(|m| m.activation as f64).sum::<f64>() / members.len() as f64;
            Facet { size: members.len(), mean_activation: mean, tokens: counts }
        })
        .collect();
    Ok(TopReport { layer, head, neuron, site, tokens: tokens.len(), fired, contexts, facets })
}

/// k-means on the unit-normalised `vectors` (cosine similarity), k-means++ seeded
/// by `seed`, 50 iterations at most: each vector's cluster.
pub fn kmeans_cosine(vectors: &[Vec<f32>], k: usize, seed: u64) -> Vec<usize> {
    let unit: Vec<Vec<f64>> = vectors
        .iter()
        .map(|v| {
            let norm = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
            v.iter().map(|&x| x as f64 / norm).collect()
        })
        .collect();
    let k = k.min(unit.len());
    if k == 0 {
        return vec![0; unit.len()];
    }
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centres: Vec<Vec<f64>> = vec![unit[0].clone()];
    while centres.len() < k {
        let d: Vec<f64> =
            unit.iter().map(|u| centres.iter().map(|c| 1.0 - dot(u, c)).fold(f64::MAX, f64::min).max(0.0)).collect();
        let total: f64 = d.iter().sum();
        if total <= 0.0 {
            break;
        }
        let mut pick = rng.random::<f64>() * total;
        let i = d.iter().position(|&w| {
            pick -= w;
            pick <= 0.0
        });
        centres.push(unit[i.unwrap_or(unit.len() - 1)].clone());
    }
    let mut assign = vec![0usize; unit.len()];
    for _ in 0..50 {
        let next: Vec<usize> = unit
            .iter()
            .map(|u| {
                (0..centres.len())
                    .max_by(|&a, &b| dot(u, &centres[a]).total_cmp(&dot(u, &centres[b])).then(b.cmp(&a)))
                    .unwrap_or(0)
            })
            .collect();
        let changed = next != assign;
        assign = next;
        for (ci, centre) in centres.iter_mut().enumerate() {
            let mut sum = vec![0.0; centre.len()];
            for (u, _) in unit.iter().zip(&assign).filter(|(_, &a)| a == ci) {
                sum.iter_mut().zip(u).for_each(|(s, x)| *s += x);
            }
            let norm = sum.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 0.0 {
                *centre = sum.iter().map(|x| x / norm).collect();
            }
        }
        if !changed {
            break;
        }
    }
    assign
}
