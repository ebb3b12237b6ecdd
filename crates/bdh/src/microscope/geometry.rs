//! The geometry of concept codes: BDH's activity is sparse and non-negative, so a
//! concept's code can be read as a set of neurons — those active whenever the
//! concept is — and codes superpose by union. How much they overlap, how many can be
//! superposed before the union also covers a concept that is not in it (a
//! collision), each against random codes of the same sizes, and a 2-D t-SNE map of
//! the activations, one point per occurrence.
//!
//! The concepts are the built-in language's values: places and colours, each read at
//! its last byte in statements ("ada lives in oslo.").

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

use super::Scope;
use crate::data::{Kind, SyntheticLanguage};
use crate::error::{Error, Result};
use crate::model::bdh::{Activations, Pass, Site};

/// Most statements per kind.
pub const MAX_STATEMENTS: usize = 2000;
/// Draws of k codes per k.
const DRAWS: usize = 200;
/// The share of draws with a collision a superposition of k codes may have.
pub const COLLISION_RATE: f64 = 0.05;

/// `|a ∩ b| / |a ∪ b|` of two sorted sets (1 for two empty sets).
pub fn jaccard(a: &[u32], b: &[u32]) -> f64 {
    let (mut i, mut j, mut both) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => (i, j, both) = (i + 1, j + 1, both + 1),
        }
    }
    let union = a.len() + b.len() - both;
    if union == 0 {
        1.0
    } else {
        both as f64 / union as f64
    }
}

/// For k = 1, 2, …, len: the share of `DRAWS` random sets of k codes whose union
/// covers some code outside the set (a collision). Empty codes are left out (they
/// are covered by anything).
pub fn collision_rates(codes: &[Vec<u32>], seed: u64) -> Vec<f64> {
    let kept: Vec<&Vec<u32>> = codes.iter().filter(|c| !c.is_empty()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let index: Vec<usize> = (0..kept.len()).collect();
    (1..=kept.len())
        .map(|k| {
            let hits = (0..DRAWS)
                .filter(|_| {
                    let chosen: Vec<usize> = index.choose_multiple(&mut rng, k).copied().collect();
                    let mut union: Vec<u32> = chosen.iter().flat_map(|&c| kept[c].iter().copied()).collect();
                    union.sort_unstable();
                    union.dedup();
                    (0..kept.len())
                        .filter(|c| !chosen.contains(c))
                        .any(|c| kept[c].iter().all(|n| union.binary_search(n).is_ok()))
                })
                .count();
            hits as f64 / DRAWS as f64
        })
        .collect()
}

/// The largest k whose collision rate is at most [`COLLISION_RATE`], with every
/// smaller k's too (0 if even one code collides).
pub fn capacity(rates: &[f64]) -> usize {
    rates.iter().take_while(|&&r| r <= COLLISION_RATE).count()
}

/// Codes of the same sizes as `codes`, each a random set of neurons out of `pool`.
pub fn random_codes(codes: &[Vec<u32>], pool: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let all: Vec<u32> = (0..pool as u32).collect();
    codes
        .iter()
        .map(|c| {
            let mut r: Vec<u32> = all.choose_multiple(&mut rng, c.len()).copied().collect();
            r.sort_unstable();
            r
        })
        .collect()
}

/// The mean Jaccard index over pairs of codes (empty codes left out, as in
/// [`collision_rates`]).
fn mean_overlap(codes: &[Vec<u32>]) -> f64 {
    let codes: Vec<&Vec<u32>> = codes.iter().filter(|c| !c.is_empty()).collect();
    let mut sum = (0.0, 0usize);
    for (i, a) in codes.iter().enumerate() {
        for b in &codes[i + 1..] {
            sum = (sum.0 + jaccard(a, b), sum.1 + 1);
        }
    }
    sum.0 / sum.1.max(1) as f64
}

/// One concept's code.
#[derive(Clone, Debug, Serialize)]
pub struct Code {
    /// The word.
    pub concept: String,
    /// Its kind (place or color).
    pub kind: Kind,
    /// Occurrences read.
    pub occurrences: usize,
    /// Neurons (layer · H·N + head · N + neuron) active at at least half of them.
    pub neurons: Vec<u32>,
}

/// Codes' overlap and superposition against random codes of the same sizes.
#[derive(Clone, Debug, Serialize)]
pub struct Superposition {
    /// Mean Jaccard index over pairs of codes.
    pub overlap: f64,
    /// The collision rate of a union of k codes, k = 1, 2, …
    pub collisions: Vec<f64>,
    /// The most codes a union holds with collisions in at most 5% of draws.
    pub capacity: usize,
}

/// A point of the map.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Which concept (index into `codes`).
    pub concept: usize,
    /// Its coordinates.
    pub x: f64,
    /// Its coordinates.
    pub y: f64,
}

/// The geometry of a model's concept codes.
#[derive(Clone, Debug, Serialize)]
pub struct GeometryReport {
    /// The activation read: x or x ⊙ y, of every layer.
    pub site: Site,
    /// Neurons in all (layers · heads · neurons per head).
    pub pool: usize,
    /// The codes.
    pub codes: Vec<Code>,
    /// The model's codes.
    pub model: Superposition,
    /// Random codes of the same sizes.
    pub random: Superposition,
    /// The t-SNE map of the occurrences' activations (the last layer's).
    pub map: Vec<Point>,
}

/// Reads `statements` statements of each kind with `model` and measures its codes at
/// `site` (x or x ⊙ y); the map's randomness and the draws come from `seed`.
pub fn geometry(model: &Scope, site: Site, statements: usize, seed: u64) -> Result<GeometryReport> {
    if !matches!(site, Site::X | Site::Xy) || !(8..=MAX_STATEMENTS).contains(&statements) {
        return Err(Error::Input(format!(
            "geometry reads x or xy over 8..={MAX_STATEMENTS} statements per kind; got {site:?} and {statements}"
        )));
    }
    let c = &model.config;
    let (layers, h, n) = (c.n_layer, c.n_head, c.n_neurons());
    let hn = h * n;
    let mut codes = Vec::new();
    let mut vectors: Vec<(usize, Vec<f32>)> = Vec::new();
    let mut acts: Option<Activations> = None;
    for kind in [Kind::Place, Kind::Color] {
        let first = codes.len();
        let values = kind.values();
        let mut counts = vec![vec![0u32; layers * hn]; values.len()];
        let mut seen = vec![0usize; values.len()];
        for s in SyntheticLanguage::statements(kind, statements, seed) {
            let Some(v) = values.iter().position(|v| s.contains(&format!(" {v}."))) else { continue };
            let at = s.rfind('.').expect("a statement ends with a full stop") - 1;
            let tokens: Vec<u32> = s.bytes().map(u32::from).collect();
            let a = Activations::reuse(&mut acts, model, 1, tokens.len())?;
            model.forward(&tokens, a, Pass::default())?;
            let t = tokens.len();
            let mut last = vec![0.0f32; hn];
            for l in 0..layers {
                let (x, y) = (a.x(l), a.y(l));
                for hi in 0..h {
                    let row = (hi * t + at) * n;
                    for j in 0..n {
                        let value = if site == Site::X { x[row + j] } else { x[row + j] * y[row + j] };
                        counts[v][l * hn + hi * n + j] += u32::from(value > 0.0);
                        if l + 1 == layers {
                            last[hi * n + j] = value;
                        }
                    }
                }
            }
            seen[v] += 1;
            vectors.push((first + v, last));
        }
        for (v, value) in values.iter().enumerate() {
            let neurons = (0..layers * hn)
                .filter(|&u| seen[v] > 0 && 2 * counts[v][u] as usize >= seen[v])
                .map(|u| u as u32)
                .collect();
            codes.push(Code { concept: (*value).into(), kind, occurrences: seen[v], neurons });
        }
    }
    let sets: Vec<Vec<u32>> = codes.iter().filter(|c| c.occurrences > 0).map(|c| c.neurons.clone()).collect();
    let measure = |sets: &[Vec<u32>]| {
        let collisions = collision_rates(sets, seed);
        Superposition { overlap: mean_overlap(sets), capacity: capacity(&collisions), collisions }
    };
    let random = measure(&random_codes(&sets, layers * hn, seed));
    let map = tsne_map(&vectors, seed)?;
    Ok(GeometryReport { site, pool: layers * hn, codes, model: measure(&sets), random, map })
}

/// A 2-D t-SNE map of the vectors (Barnes-Hut, Euclidean), from a start drawn from
/// `seed`.
fn tsne_map(vectors: &[(usize, Vec<f32>)], seed: u64) -> Result<Vec<Point>> {
    let count = vectors.len();
    if vectors.iter().any(|(_, v)| v.iter().any(|x| !x.is_finite())) {
        return Err(Error::Input("the activations hold NaN or infinite values: the model's weights are broken".into()));
    }
    if count < 8 {
        return Err(Error::Input(format!("the map needs at least 8 occurrences; the statements held {count}")));
    }
    // perplexity at most (count − 1) / 3, as t-SNE's neighbourhoods need
    let perplexity = 30.0f32.min(((count - 1) / 3) as f32);
    let data: Vec<&[f32]> = vectors.iter().map(|(_, v)| &v[..]).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1e-4).expect("a valid std");
    let start: Vec<f32> = (0..count * 2).map(|_| normal.sample(&mut rng)).collect();
    let mut tsne: bhtsne::tSNE<f32, &[f32]> = bhtsne::tSNE::new(&data);
    tsne.embedding_dim(2)
        .perplexity(perplexity)
        .epochs(1000)
        .initial_embedding(start)
        .barnes_hut(0.5, |a, b| a.iter().zip(b.iter()).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt());
    let y = tsne.embedding();
    Ok(vectors
        .iter()
        .zip(y.chunks_exact(2))
        .map(|((c, _), p)| Point { concept: *c, x: p[0] as f64, y: p[1] as f64 })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_overlap_and_superpose_as_counted() {
        assert_eq!(jaccard(&[1, 2, 3], &[2, 3, 4]), 0.5);
        assert_eq!(jaccard(&[1], &[2]), 0.0);
        // disjoint codes never collide: every union holds exactly its own
        let disjoint: Vec<Vec<u32>> = (0..6).map(|i| vec![2 * i, 2 * i + 1]).collect();
        let rates = collision_rates(&disjoint, 1);
        assert!(rates.iter().all(|&r| r == 0.0));
        assert_eq!(capacity(&rates), 6);
        // a code inside another collides whenever the larger is in the union without it
        let nested = vec![vec![1], vec![1, 2], vec![3]];
        let rates = collision_rates(&nested, 1);
        // k = 1: {1,2} alone covers {1}: 1 draw in 3; k = 2: {1,2} with {3}: 1 pair in 3
        assert!((rates[0] - 1.0 / 3.0).abs() < 0.1 && (rates[1] - 1.0 / 3.0).abs() < 0.1, "{rates:?}");
        assert_eq!(rates[2], 0.0, "all three: nothing outside");
        assert_eq!(capacity(&rates), 0);
        // random codes keep their sizes
        let random = random_codes(&nested, 10, 3);
        assert_eq!(random.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2, 1]);
        assert!(random.iter().all(|c| c.windows(2).all(|w| w[0] < w[1]) && c.iter().all(|&x| x < 10)));
    }
}
