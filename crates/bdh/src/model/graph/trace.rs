//! What a traced token does in the graph: each round's active nodes and, where the
//! round is a synapse's, the strongest synapses read or written.

use serde::Serialize;

/// Nodes and synapses listed per round.
pub const TOP: usize = 12;

/// The rounds of a token, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The token's input node drives X.
    Input,
    /// 4l: σ fades and is read into A.
    Read,
    /// 4l+1: the Hebbian write into σ.
    Write,
    /// 4l+2: Y from A through the prods, gated by X.
    Prods,
    /// 4l+3: X from Y through the wires.
    Wires,
    /// Y to the output nodes: the logits.
    Readout,
}

impl Kind {
    /// Its name, as the JSON writes it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Input => "input",
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Prods => "prods",
            Kind::Wires => "wires",
            Kind::Readout => "readout",
        }
    }

    /// The node values the round leaves: `X`, `A`, `σ`, `Y` or `logits`.
    pub fn leaves(self) -> &'static str {
        match self {
            Kind::Input | Kind::Wires => "X",
            Kind::Read => "A",
            Kind::Write => "σ",
            Kind::Prods => "Y",
            Kind::Readout => "logits",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// One round of one token.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Round {
    /// The layer (0-based); `None` for the input and the readout.
    pub layer: Option<usize>,
    /// Which round.
    pub round: Kind,
    /// Which node values the round leaves: `X`, `A`, `σ`, `Y` or `logits`.
    pub values: &'static str,
    /// How many of them are non-zero (for A: source nodes with a non-zero read in
    /// some head; for σ: the synapses that grew).
    pub active: usize,
    /// Of how many (nodes, source nodes, or synapses of the layer).
    pub out_of: usize,
    /// The largest values, largest first (the logits by value, the rest by size).
    pub top: Vec<Top>,
    /// The synapses that carried the most: (source, target neuron, value) — for
    /// `read` the message σ(i, j)·X(j), for `write` the increment Gs(i, j)·Y(i)·X(j).
    pub synapses: Vec<(u32, u32, f64)>,
}

/// One of a round's largest values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Top {
    /// The node: a neuron (0..n, head = node / N), a source of the layer's synapses
    /// (for A: a token node in the first layer), or an output node (a byte).
    pub node: u32,
    /// For A, kept per head of the reading neurons: that head.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<u32>,
    /// The value.
    pub value: f64,
}

/// The `k` largest non-zero values of `values` (by size, or by value if `signed`),
/// and how many are non-zero; `per_head`: the values are (H, this many), for A.
pub fn top_nodes(values: &[f64], k: usize, signed: bool, per_head: Option<usize>) -> (Vec<Top>, usize) {
    let mut nz: Vec<(u32, f64)> =
        values.iter().enumerate().filter(|(_, &v)| v != 0.0).map(|(i, &v)| (i as u32, v)).collect();
    let count = nz.len();
    let key = |v: f64| if signed { v } else { v.abs() };
    nz.sort_unstable_by(|a, b| key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0)));
    nz.truncate(k);
    let top = nz
        .into_iter()
        .map(|(i, value)| match per_head {
            Some(s) => Top { node: i % s as u32, head: Some(i / s as u32), value },
            None => Top { node: i, head: None, value },
        })
        .collect();
    (top, count)
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
