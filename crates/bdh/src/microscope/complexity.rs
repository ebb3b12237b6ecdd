//! How complex each neuron's firing is over a text: the Lempel–Ziv complexity of its
//! binarised firing sequence (x > 0 at each token), normalised by that of shuffled
//! sequences with the same firing rate. A neuron that fires on a fixed schedule or
//! in long runs scores well below 1; one whose firing is as unpredictable as coin
//! flips at its rate scores about 1.
//!
//! The complexity is Lempel and Ziv's of 1976, counted as Kaspar and Schuster do: the
//! number of phrases when the sequence is cut, left to right, into the shortest
//! pieces that do not occur earlier (overlap allowed) — 2 for a constant sequence,
//! 3 for a periodic 0101…, about n / log₂ n for random bits.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use super::synapses::stream_chunks;
use super::Scope;
use crate::error::{Error, Result};

/// Most tokens analysed: the complexity's cost grows as n² / log n per neuron.
pub const MAX_TOKENS: usize = 1 << 16;
/// Most shuffles per neuron.
pub const MAX_SHUFFLES: usize = 64;
/// Neurons listed at each end of the ranking.
const LISTED: usize = 10;
/// Bins of the normalised complexity's histogram, over [0, 1.5].
const BINS: usize = 30;
/// The least share of tokens on which a neuron ranked must fire, and not fire: below
/// it a sequence holds a handful of events, and its ratio to its shuffles is mostly
/// the noise of small counts.
pub const MIN_SHARE: f64 = 0.01;

/// The Lempel–Ziv (1976) complexity of `s`: its phrases, by Kaspar and Schuster's
/// algorithm (Phys. Rev. A 36, 842, 1987).
pub fn lz76(s: &[bool]) -> usize {
    let n = s.len();
    if n < 2 {
        return n;
    }
    let (mut i, mut k, mut l, mut k_max, mut c) = (0, 1, 1, 1, 1);
    loop {
        if s[i + k - 1] == s[l + k - 1] {
            k += 1;
            if l + k > n {
                return c + 1;
            }
        } else {
            k_max = k_max.max(k);
            i += 1;
            if i == l {
                c += 1;
                l += k_max;
                if l + 1 > n {
                    return c;
                }
                (i, k, k_max) = (0, 1, 1);
            } else {
                k = 1;
            }
        }
    }
}

/// The mean complexity of `shuffles` random orderings of `s` (same length, same
/// number of ones), drawn from `seed`.
pub fn shuffled_lz76(s: &[bool], shuffles: usize, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut copy = s.to_vec();
    let total: usize = (0..shuffles)
        .map(|_| {
            copy.shuffle(&mut rng);
            lz76(&copy)
        })
        .sum();
    total as f64 / shuffles.max(1) as f64
}

/// One neuron's firing complexity.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NeuronComplexity {
    /// Layer.
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// Neuron within the head.
    pub neuron: usize,
    /// Fraction of tokens where it fired.
    pub rate: f64,
    /// Lempel–Ziv complexity of its firing sequence.
    pub lz: usize,
    /// The mean of its shuffled sequences'.
    pub shuffled: f64,
    /// `lz / shuffled`.
    pub normalised: f64,
}

/// The distribution of one head's normalised complexities.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeadComplexity {
    /// Layer.
    pub layer: usize,
    /// Head.
    pub head: usize,
    /// Neurons that fired on at least [`MIN_SHARE`] of the tokens and did not on at
    /// least as many (the others' sequences are constant or nearly so).
    pub varying: usize,
    /// Min, quartiles and max of their normalised complexity.
    pub quartiles: [f64; 5],
    /// Counts over [`BINS`] equal bins of [0, 1.5] (the last also holds anything
    /// above).
    pub histogram: Vec<usize>,
}

/// The complexity of every neuron of a model over a text.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComplexityReport {
    /// Tokens analysed.
    pub tokens: usize,
    /// Shuffles per neuron.
    pub shuffles: usize,
    /// Per layer and head.
    pub heads: Vec<HeadComplexity>,
    /// The least complex varying neurons, least first.
    pub least: Vec<NeuronComplexity>,
    /// The most complex, most first.
    pub most: Vec<NeuronComplexity>,
    /// Neurons that fired on fewer than [`MIN_SHARE`] of the tokens (never, too),
    /// and that fired on all but fewer than that share.
    pub constant: (usize, usize),
}

/// Runs `model` over `tokens` (one stream, its state carried) and measures each
/// neuron's firing complexity against `shuffles` shuffles, drawn from `seed`.
pub fn complexity(model: &Scope, tokens: &[u32], shuffles: usize, seed: u64) -> Result<ComplexityReport> {
    if tokens.len() < 2 || tokens.len() > MAX_TOKENS || !(1..=MAX_SHUFFLES).contains(&shuffles) {
        return Err(Error::Input(format!(
            "complexity needs 2..={MAX_TOKENS} tokens and 1..={MAX_SHUFFLES} shuffles; got {} and {shuffles}",
            tokens.len()
        )));
    }
    let c = &model.config;
    let (layers, h, n, t_all) = (c.n_layer, c.n_head, c.n_neurons(), tokens.len());
    // firing[(l, h, j)] over all tokens: layers · H · N · T bits, packed in words
    let (units, words) = (layers * h * n, t_all.div_ceil(64));
    let need = units.checked_mul(words).and_then(|w| w.checked_mul(8)).unwrap_or(usize::MAX);
    crate::memory::ensure_fits(need, &format!("the firing of {units} neurons over {t_all} tokens"))?;
    let mut firing = vec![0u64; units * words];
    stream_chunks(model, tokens, |first, a| {
        let t = a.dims.t;
        for l in 0..layers {
            let x = a.x(l);
            for hi in 0..h {
                for ti in 0..t {
                    let (row, at) = (&x[(hi * t + ti) * n..(hi * t + ti + 1) * n], first + ti);
                    for (j, _) in row.iter().enumerate().filter(|(_, &v)| v > 0.0) {
                        firing[((l * h + hi) * n + j) * words + at / 64] |= 1 << (at % 64);
                    }
                }
            }
        }
        Ok(())
    })?;
    let all: Vec<NeuronComplexity> = firing
        .par_chunks(words)
        .enumerate()
        .map(|(u, packed)| {
            let (layer, head, neuron) = (u / (h * n), (u / n) % h, u % n);
            let s: Vec<bool> = (0..t_all).map(|i| packed[i / 64] >> (i % 64) & 1 == 1).collect();
            let lz = lz76(&s);
            let shuffled = shuffled_lz76(&s, shuffles, seed ^ u as u64);
            let rate = s.iter().filter(|&&f| f).count() as f64 / t_all as f64;
            NeuronComplexity { layer, head, neuron, rate, lz, shuffled, normalised: lz as f64 / shuffled }
        })
        .collect();
    drop(firing);
    let varying = |u: &&NeuronComplexity| u.rate >= MIN_SHARE && u.rate <= 1.0 - MIN_SHARE;
    let heads = (0..layers * h)
        .map(|lh| {
            let mut v: Vec<f64> = all[lh * n..(lh + 1) * n].iter().filter(varying).map(|u| u.normalised).collect();
            v.sort_by(f64::total_cmp);
            let q = |p: f64| if v.is_empty() { 0.0 } else { v[((v.len() - 1) as f64 * p).round() as usize] };
            let mut histogram = vec![0; BINS];
            for &x in &v {
                histogram[((x / 1.5 * BINS as f64) as usize).min(BINS - 1)] += 1;
            }
            HeadComplexity {
                layer: lh / h,
                head: lh % h,
                varying: v.len(),
                quartiles: [q(0.0), q(0.25), q(0.5), q(0.75), q(1.0)],
                histogram,
            }
        })
        .collect();
    let mut ranked: Vec<&NeuronComplexity> = all.iter().filter(varying).collect();
    ranked.sort_by(|a, b| a.normalised.total_cmp(&b.normalised));
    let least = ranked.iter().take(LISTED).map(|&u| u.clone()).collect();
    let most = ranked.iter().rev().take(LISTED).map(|&u| u.clone()).collect();
    let silent = all.iter().filter(|u| u.rate < MIN_SHARE).count();
    let always = all.iter().filter(|u| u.rate > 1.0 - MIN_SHARE).count();
    Ok(ComplexityReport { tokens: t_all, shuffles, heads, least, most, constant: (silent, always) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(s: &str) -> Vec<bool> {
        s.bytes().map(|b| b == b'1').collect()
    }

    #[test]
    fn known_sequences_have_their_known_complexity() {
        // Kaspar and Schuster's example: 0 · 001 · 10 · 100 · 1000 · 101
        assert_eq!(lz76(&bits("0001101001000101")), 6);
        assert_eq!(lz76(&bits(&"0".repeat(1000))), 2, "constant: 0 · 000…");
        assert_eq!(lz76(&bits(&"01".repeat(500))), 3, "periodic: 0 · 1 · 0101…");
        assert_eq!(lz76(&bits(&"001".repeat(300))), 3, "period 3: 0 · 01 · 001001…");
        assert_eq!((lz76(&[]), lz76(&[true])), (0, 1));
    }

    #[test]
    fn random_bits_reach_n_over_log_n_and_their_shuffles_are_as_complex() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 1 << 14;
        let s: Vec<bool> = (0..n).map(|_| rand::Rng::random_bool(&mut rng, 0.5)).collect();
        let c = lz76(&s) as f64;
        let bound = n as f64 / (n as f64).log2();
        assert!((c / bound - 1.0).abs() < 0.15, "{c} against n / log₂ n = {bound}");
        let ratio = c / shuffled_lz76(&s, 4, 1);
        assert!((ratio - 1.0).abs() < 0.03, "random bits are their own shuffle: {ratio}");
        // a periodic sequence of the same rate is far below its shuffles
        let periodic = bits(&"01".repeat(n / 2));
        assert!((lz76(&periodic) as f64 / shuffled_lz76(&periodic, 4, 1)) < 0.01);
    }
}
