//! The graph form run as the paper's synchronous scheduler (Table 1): per token, the
//! token's input node fires and drives the neurons' x, then each layer l runs four
//! rounds, each a communication along edges followed by a computation at nodes:
//!
//! | round | along edges                                   | at nodes                               |
//! |-------|-----------------------------------------------|----------------------------------------|
//! | 4l    | A_h(i) += Σ_{j∈h} σ_l(i, j) X(j)               | σ_l ← γ σ_l first (the damping)         |
//! | 4l+1  | σ_l(i, j) += Gs(i, j) Y(i) X(j)                | Y ← 0                                   |
//! | 4l+2  | Y^e(k) += Σ_i Gy^e(i, k) A_h(k)(i), Y^i alike  | Y(k) = (Y^e − Y^i)^+ X(k); A, Y^e, Y^i ← 0 |
//! | 4l+3  | X^e(j) += Σ_k Gx^e(k, j) Y(k), X^i alike       | X(j) += (X^e − X^i)^+; X^e, X^i ← 0       |
//!
//! The source side i of the first layer is the token nodes (Y = 1 on the token
//! read), of later ones the neurons' Y of the layer before; the read's A is kept per
//! head h of the postsynaptic neuron j, as the tensor form's per-head attention
//! requires. X starts each token at 0 (x_0 = 0); after the last layer the readout
//! sends Y to the V output nodes, whose values are the logits. Node values and σ are
//! f64: excitatory and inhibitory sums cancel before each threshold.

use super::{Graph, Signed, Sparse};
use crate::error::{Error, Result};

/// A graph model running one stream: its synapses σ_l and node state.
#[derive(Clone, Debug)]
pub struct Brain<'g> {
    graph: &'g Graph,
    /// σ_l on the edges of Gs (layer 0: of the input synapses), in their order.
    sigma: Vec<Vec<f64>>,
    /// Tokens read so far.
    pub pos: usize,
    x: Vec<f64>,       // (n)
    y: Vec<f64>,       // (n)
    excite: Vec<f64>,  // (n) X^e or Y^e, integrated in one round and reset
    inhibit: Vec<f64>, // (n) X^i or Y^i
    a: Vec<f64>,       // (H, sources) the read, per head of the postsynaptic neuron
    token: Vec<f64>,   // (V) the input nodes' Y
    logits: Vec<f64>,  // (V) the output nodes
}

impl<'g> Brain<'g> {
    /// An empty brain (σ = 0) on `graph`; an error before allocating if σ of every
    /// layer would not fit in memory.
    pub fn new(graph: &'g Graph) -> Result<Self> {
        let info = &graph.info;
        let (n, v, h) = (info.neurons(), info.vocab_size, info.n_head);
        let per_layer = |l: usize| if l == 0 { graph.gs_in.edges() } else { graph.gs.edges() };
        let values = (0..info.n_layer).try_fold(0usize, |acc, l| acc.checked_add(per_layer(l)));
        let values = values.and_then(|s| s.checked_add(h.checked_mul(n.max(v))?)?.checked_add(5 * n + 2 * v));
        crate::memory::ensure_fits(
            values.and_then(|s| s.checked_mul(8)).unwrap_or(usize::MAX),
            "the synapses σ and node state of this graph",
        )?;
        Ok(Brain {
            graph,
            sigma: (0..info.n_layer).map(|l| vec![0.0; per_layer(l)]).collect(),
            pos: 0,
            x: vec![0.0; n],
            y: vec![0.0; n],
            excite: vec![0.0; n],
            inhibit: vec![0.0; n],
            a: vec![0.0; h * n.max(v)],
            token: vec![0.0; v],
            logits: vec![0.0; v],
        })
    }

    /// σ of layer `l` with the synapses it lives on (layer 0: from the token nodes).
    pub fn sigma(&self, l: usize) -> (&Sparse, &[f64]) {
        (if l == 0 { &self.graph.gs_in } else { &self.graph.gs }, &self.sigma[l])
    }

    /// Reads `token` and returns the logits for the next one, (V).
    pub fn step(&mut self, token: u32) -> Result<&[f64]> {
        let g = self.graph;
        let info = &g.info;
        let v = info.vocab_size;
        if token as usize >= v {
            return Err(Error::Input(format!("token {token} is past the graph's {v} input nodes")));
        }
        // The token's input node fires; the input wires drive the neurons from x = 0.
        self.token.fill(0.0);
        self.token[token as usize] = 1.0;
        self.x.fill(0.0);
        self.wires(&g.gx_in, true);
        for l in 0..info.n_layer {
            let (gy, first) = if l == 0 { (&g.gy_in, true) } else { (&g.gy, false) };
            self.read(l);
            self.write(l, first);
            self.prods(gy, first);
            if l + 1 < info.n_layer {
                self.wires(&g.gx, false);
            }
        }
        // The readout: the output nodes integrate Y through its signed graph.
        self.logits.fill(0.0);
        for (o, out) in self.logits.iter_mut().enumerate() {
            let e: f64 = g.readout.e.in_edges(o).map(|(k, w)| w as f64 * self.y[k]).sum();
            let i: f64 = g.readout.i.in_edges(o).map(|(k, w)| w as f64 * self.y[k]).sum();
            *out = e - i;
        }
        self.pos += 1;
        Ok(&self.logits)
    }

    /// Round 4l: σ_l fades (γ of the postsynaptic neuron's head), then each source
    /// node integrates, per head, X of the neurons its synapses reach.
    fn read(&mut self, l: usize) {
        let (gs, sigma) = (if l == 0 { &self.graph.gs_in } else { &self.graph.gs }, &mut self.sigma[l]);
        let (per_head, sources) = (self.graph.info.n_neurons, gs.sources_n);
        let retention = &self.graph.info.retention;
        self.a.fill(0.0);
        for j in 0..gs.targets() {
            let edges = gs.offsets[j]..gs.offsets[j + 1];
            let head = j / per_head;
            if let Some(&gamma) = retention.get(head).filter(|&&g| g != 1.0) {
                sigma[edges.clone()].iter_mut().for_each(|s| *s *= gamma as f64);
            }
            let xj = self.x[j];
            if xj != 0.0 {
                let a = &mut self.a[head * sources..(head + 1) * sources];
                for (&i, &s) in gs.sources[edges.clone()].iter().zip(&sigma[edges]) {
                    a[i as usize] += s * xj;
                }
            }
        }
    }

    /// Round 4l+1: each synapse grows by its rate times the activity at its two ends
    /// (the source's Y, the target's X); then the sources' Y resets.
    fn write(&mut self, l: usize, first: bool) {
        let (gs, sigma) = (if first { &self.graph.gs_in } else { &self.graph.gs }, &mut self.sigma[l]);
        let y = if first { &mut self.token } else { &mut self.y };
        for j in 0..gs.targets() {
            let xj = self.x[j];
            if xj == 0.0 {
                continue;
            }
            let edges = gs.offsets[j]..gs.offsets[j + 1];
            for ((&i, &rate), s) in
                gs.sources[edges.clone()].iter().zip(&gs.weights[edges.clone()]).zip(&mut sigma[edges])
            {
                *s += rate as f64 * y[i as usize] * xj;
            }
        }
        y.fill(0.0);
    }

    /// Round 4l+2: each neuron integrates its head's A over the prods' excitatory
    /// and inhibitory edges, fires past the threshold, gated by its X.
    fn prods(&mut self, gy: &Signed, first: bool) {
        let info = &self.graph.info;
        let sources = if first { info.vocab_size } else { info.neurons() };
        for (k, yk) in self.y.iter_mut().enumerate() {
            let a = &self.a[(k / info.n_neurons) * sources..][..sources];
            let e: f64 = gy.e.in_edges(k).map(|(i, w)| w as f64 * a[i]).sum();
            let i: f64 = gy.i.in_edges(k).map(|(i, w)| w as f64 * a[i]).sum();
            (self.excite[k], self.inhibit[k]) = (e, i);
            *yk = (e - i).max(0.0) * self.x[k];
        }
        self.a.fill(0.0);
        self.excite.fill(0.0);
        self.inhibit.fill(0.0);
    }

    /// Round 4l+3 (and the input's): each neuron integrates Y (or the token nodes')
    /// over the wires' excitatory and inhibitory edges and adds what passes the
    /// threshold to its X.
    fn wires(&mut self, gx: &Signed, from_token: bool) {
        let y = if from_token { &self.token } else { &self.y };
        gx.e.send(y, &mut self.excite);
        gx.i.send(y, &mut self.inhibit);
        for ((x, e), i) in self.x.iter_mut().zip(&mut self.excite).zip(&mut self.inhibit) {
            *x += (*e - *i).max(0.0);
            (*e, *i) = (0.0, 0.0);
        }
    }
}

/// Logits (T, V) and mean cross-entropy of a graph reading `tokens` as one stream
/// from an empty σ: position t predicts token t + 1, as `bdh eval --carry` scores.
pub fn score(graph: &Graph, tokens: &[u32]) -> Result<(Vec<f32>, f64)> {
    if tokens.len() < 2 {
        return Err(Error::Input(format!("{} token(s): scoring needs 2 or more", tokens.len())));
    }
    let mut brain = Brain::new(graph)?;
    let v = graph.info.vocab_size;
    let mut logits = Vec::new();
    logits.try_reserve_exact(tokens.len().saturating_mul(v)).map_err(|_| Error::TooLarge {
        what: "the logits of every position".into(),
        need: tokens.len().checked_mul(v * 4).map(|b| b as u64),
        have: None,
    })?;
    let mut loss = 0.0;
    for (t, &tok) in tokens.iter().enumerate() {
        let out = brain.step(tok)?;
        logits.extend(out.iter().map(|&l| l as f32));
        if let Some(&next) = tokens.get(t + 1) {
            let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = out.iter().map(|&l| (l - max).exp()).sum();
            loss += max + sum.ln() - out[next as usize];
        }
    }
    Ok((logits, loss / (tokens.len() - 1) as f64))
}
