//! The shape of a graph: how many edges, how they spread over nodes (degree
//! distributions), and the balance of excitation and inhibition at each node.

use serde::Serialize;

use super::{Graph, Sparse};

/// Quantiles of a list of numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// Mean.
    pub mean: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// The spread of `values` (all zero if there are none).
    pub fn of(mut values: Vec<f64>) -> Self {
        if values.is_empty() {
            return Spread { min: 0.0, median: 0.0, mean: 0.0, p99: 0.0, max: 0.0 };
        }
        values.sort_unstable_by(f64::total_cmp);
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        Spread { min: values[0], median: at(0.5), mean, p99: at(0.99), max: values[values.len() - 1] }
    }
}

/// One graph's size and degrees.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Degrees {
    /// Its name in files (`gx.e`, …).
    pub name: &'static str,
    /// Edges.
    pub edges: usize,
    /// Edges over sources × targets.
    pub density: f64,
    /// In-edges per target.
    pub in_degree: Spread,
    /// Out-edges per source: a heavy tail (a few hubs) shows as max ≫ median.
    pub out_degree: Spread,
}

/// The excitatory and inhibitory parts of one signed graph, per target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Balance {
    /// The graph (`gx`, `gy`, …).
    pub name: &'static str,
    /// Total excitatory weight.
    pub excitatory: f64,
    /// Total inhibitory weight.
    pub inhibitory: f64,
    /// Per target: its excitatory in-weight over its excitatory plus inhibitory.
    pub excitatory_share: Spread,
}

/// Degrees of every graph of `g` and the E/I balance of each signed one.
pub fn stats(g: &Graph) -> (Vec<Degrees>, Vec<Balance>) {
    let degrees = g.parts().into_iter().map(|(name, s)| degrees(name, s)).collect();
    let signed = [("gx", &g.gx), ("gy", &g.gy), ("gx_in", &g.gx_in), ("gy_in", &g.gy_in), ("readout", &g.readout)];
    let balance = signed
        .into_iter()
        .map(|(name, s)| {
            let sum = |p: &Sparse, j: usize| p.in_edges(j).map(|(_, w)| w as f64).sum::<f64>();
            let shares = (0..s.e.targets())
                .filter_map(|j| {
                    let (e, i) = (sum(&s.e, j), sum(&s.i, j));
                    (e + i > 0.0).then(|| e / (e + i))
                })
                .collect();
            let total = |p: &Sparse| p.weights.iter().map(|&w| w as f64).sum::<f64>();
            Balance { name, excitatory: total(&s.e), inhibitory: total(&s.i), excitatory_share: Spread::of(shares) }
        })
        .collect();
    (degrees, balance)
}

fn degrees(name: &'static str, s: &Sparse) -> Degrees {
    let mut out = vec![0usize; s.sources_n];
    s.sources.iter().for_each(|&i| out[i as usize] += 1);
    let in_degree = (0..s.targets()).map(|j| (s.offsets[j + 1] - s.offsets[j]) as f64).collect();
    let cells = (s.sources_n * s.targets()).max(1) as f64;
    Degrees {
        name,
        edges: s.edges(),
        density: s.edges() as f64 / cells,
        in_degree: Spread::of(in_degree),
        out_degree: Spread::of(out.into_iter().map(|d| d as f64).collect()),
    }
}
