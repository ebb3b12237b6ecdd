//! What a traced token does in the graph: each round's active nodes and, where the
//! round is a synapse's, the strongest synapses read or written.

use serde::Serialize;

/// Nodes and synapses listed per round.
pub const TOP: usize = 12;

/// One round of one token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Round {
    /// The layer (0-based); `None` for the input and the readout.
    pub layer: Option<usize>,
    /// `input` (token → X), `read` (4l), `write` (4l+1), `prods` (4l+2), `wires`
    /// (4l+3) or `readout` (Y → logits).
    pub round: &'static str,
    /// Which node values the round leaves: `X`, `A`, `σ`, `Y` or `logits`.
    pub of: &'static str,
    /// How many of them are non-zero (for A: source nodes with a non-zero read in some head).
    pub active: usize,
    /// Of how many.
    pub of_count: usize,
    /// The largest: (node, value), largest first.
    pub top: Vec<(u32, f64)>,
    /// The synapses that carried the most: (source, target, value) — for `read` the
    /// message σ(i, j)·X(j), for `write` the increment Gs(i, j)·Y(i)·X(j).
    pub synapses: Vec<(u32, u32, f64)>,
}

/// The `k` largest non-zero values of `values` as (index, value), largest first,
/// and how many are non-zero.
pub fn top_nodes(values: &[f64], k: usize) -> (Vec<(u32, f64)>, usize) {
    let mut nz: Vec<(u32, f64)> =
        values.iter().enumerate().filter(|(_, &v)| v != 0.0).map(|(i, &v)| (i as u32, v)).collect();
    let count = nz.len();
    nz.sort_unstable_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then(a.0.cmp(&b.0)));
    nz.truncate(k);
    (nz, count)
}

/// Keeps the `TOP` heaviest synapses seen, by |value|, and counts the non-zero ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct Heaviest {
    pub(crate) list: Vec<(u32, u32, f64)>,
    pub(crate) seen: usize,
}

impl Heaviest {
    pub(crate) fn offer(&mut self, i: usize, j: usize, value: f64) {
        if value == 0.0 {
            return;
        }
        self.seen += 1;
        let list = &mut self.list;
        if list.len() == TOP && list.last().is_some_and(|l| l.2.abs() >= value.abs()) {
            return;
        }
        let at = list.partition_point(|e| e.2.abs() >= value.abs());
        list.insert(at, (i as u32, j as u32, value));
        list.truncate(TOP);
    }
}
