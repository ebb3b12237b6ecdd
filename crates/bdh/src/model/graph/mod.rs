//! BDH as the paper's graph of neurons and synapses (its Sec. 2, Def. 3, Table 1):
//! n = H·N neurons exchanging messages over non-negative parameter graphs, with a
//! synapse state σ_l on the edges of each layer, run by a synchronous four-round
//! cycle per layer in which every operation is local to one node or one edge.
//!
//! A model whose layer is the paper's BDH-Normfree (`norm = "none"`,
//! `residual = "n"`, `position = "none"`, any decay) has an exactly equal graph:
//! [`build()`] makes it, [`Brain`] runs it. Names: bdh.py's throughout; the paper's
//! letters only here.
//!
//! | graph          | paper          | from (bdh.py)           | edges          |
//! |----------------|----------------|-------------------------|----------------|
//! | `gx`           | Gx^e − Gx^i    | `decoder · encoder`     | neuron → neuron |
//! | `gy`           | Gy^e − Gy^i    | `decoder · encoder_v`   | neuron → neuron |
//! | `gs`           | Gs             | all ones                | neuron → neuron |
//! | `gx_in`        | (input)        | `embed · encoder`       | token → neuron |
//! | `gy_in`        | (input)        | `embed · encoder_v`     | token → neuron |
//! | `gs_in`        | (input)        | all ones                | token → neuron |
//! | `readout`      | (output)       | `decoder · lm_head`     | neuron → output |
//!
//! (The paper's E is bdh.py's `decoder`, its D_x `encoder`, its D_y `encoder_v`.)
//! Each signed graph is stored as its excitatory part (the positive entries) and its
//! inhibitory part (minus the negative ones), both with weights ≥ 0. The first
//! layer's values are the token's embedding, not a decoder row, so the token enters
//! as V input nodes with their own graphs and synapses (`*_in`); the logits leave as
//! V output nodes. See `docs/design.md`, "The graph form", for the derivation.

mod build;
mod file;
mod run;
mod stats;
mod trace;

pub use build::{build, check_model};
pub use file::{load, save};
pub use run::{mean_loss, score, score_spiking, spiked, Brain};
pub use stats::{stats, Balance, Degrees, Spread};
pub use trace::{Kind, Round, Top};

use serde::{Deserialize, Serialize};

/// The version of the graph file this code writes and reads.
pub const FORMAT: u32 = 1;

/// The most layers a graph runs: every token passes every layer's four rounds.
pub const MAX_LAYERS: usize = 4096;

/// What a graph was made from and its sizes: the description saved beside its edges.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Info {
    /// The file format's version ([`FORMAT`]).
    pub format: u32,
    /// L: layers (every layer reads the same graphs, with its own σ).
    pub n_layer: usize,
    /// H: heads; neuron `i` belongs to head `i / N`.
    pub n_head: usize,
    /// N: neurons per head.
    pub n_neurons: usize,
    /// V: token (input) and output nodes.
    pub vocab_size: usize,
    /// The damping: σ's retention per head of its postsynaptic neuron (empty: none).
    pub retention: Vec<f32>,
    /// The in-edges kept per node and graph, if the graphs were pruned.
    pub keep: Option<usize>,
    /// Whether Gs keeps only the edges of Gx (a pruned graph's synapses).
    pub synapses_on_wires: bool,
    /// The fingerprint of the model's weights it was built from
    /// ([`crate::Params::fingerprint`]).
    pub weights: String,
}

impl Info {
    /// Whether the graphs are the model's exact ones (nothing pruned).
    pub fn is_exact(&self) -> bool {
        self.keep.is_none() && !self.synapses_on_wires
    }
}

impl Info {
    /// n: neurons in all heads.
    pub fn neurons(&self) -> usize {
        self.n_head * self.n_neurons
    }
}

/// A graph with non-negative weights, by target: the in-edges of target `j` are
/// `sources[offsets[j]..offsets[j + 1]]` with `weights[…]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sparse {
    /// Source nodes.
    pub sources_n: usize,
    /// `targets + 1` offsets into `sources` and `weights`.
    pub offsets: Vec<usize>,
    /// The source of each edge.
    pub sources: Vec<u32>,
    /// The weight of each edge, ≥ 0.
    pub weights: Vec<f32>,
}

impl Sparse {
    /// Number of edges.
    pub fn edges(&self) -> usize {
        self.sources.len()
    }

    /// Target nodes.
    pub fn targets(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// The in-edges of target `j`: (source, weight).
    pub fn in_edges(&self, j: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let r = self.offsets[j]..self.offsets[j + 1];
        self.sources[r.clone()].iter().map(|&s| s as usize).zip(self.weights[r].iter().copied())
    }

    /// `Σ_i w(i, j) · value[i]` over target `j`'s in-edges, accumulated in f64.
    pub fn gather(&self, j: usize, value: &[f64]) -> f64 {
        self.in_edges(j).map(|(i, w)| w as f64 * value[i]).sum()
    }
}

/// A signed graph as its excitatory and inhibitory parts.
#[derive(Clone, Debug, PartialEq)]
pub struct Signed {
    /// The positive entries.
    pub e: Sparse,
    /// Minus the negative entries.
    pub i: Sparse,
}

impl Signed {
    /// What target `j` integrates from `value` over its excitatory and its
    /// inhibitory in-edges.
    pub fn integrate(&self, j: usize, value: &[f64]) -> (f64, f64) {
        (self.e.gather(j, value), self.i.gather(j, value))
    }
}

/// The parameter graphs of a BDH graph model and their description.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// Sizes and provenance.
    pub info: Info,
    /// Wires y → x between neurons (Gx), read after every layer but the last.
    pub gx: Signed,
    /// Prods from attention to y (Gy), for every layer after the first.
    pub gy: Signed,
    /// The plastic synapses of every layer after the first (Gs), weights their rates.
    pub gs: Sparse,
    /// Wires from the token nodes into the first layer's x.
    pub gx_in: Signed,
    /// Prods from the token nodes' attention to the first layer's y.
    pub gy_in: Signed,
    /// The first layer's plastic synapses, from the token nodes.
    pub gs_in: Sparse,
    /// From the last layer's y to the V output nodes (the logits).
    pub readout: Signed,
}

impl Graph {
    /// Every graph by its name in files.
    pub fn parts(&self) -> [(&'static str, &Sparse); 12] {
        [
            ("gx.e", &self.gx.e),
            ("gx.i", &self.gx.i),
            ("gy.e", &self.gy.e),
            ("gy.i", &self.gy.i),
            ("gs", &self.gs),
            ("gx_in.e", &self.gx_in.e),
            ("gx_in.i", &self.gx_in.i),
            ("gy_in.e", &self.gy_in.e),
            ("gy_in.i", &self.gy_in.i),
            ("gs_in", &self.gs_in),
            ("readout.e", &self.readout.e),
            ("readout.i", &self.readout.i),
        ]
    }

    /// (sources, targets) of the graph named `name`, from the sizes in `info`.
    pub fn shape_of(info: &Info, name: &str) -> (usize, usize) {
        let (n, v) = (info.neurons(), info.vocab_size);
        match name.split('.').next() {
            Some("gx_in" | "gy_in" | "gs_in") => (v, n),
            Some("readout") => (n, v),
            _ => (n, n),
        }
    }
}
