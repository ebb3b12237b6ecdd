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
//! f64: excitatory and inhibitory sums cancel before each threshold. A node's
//! integrators (X^e, X^i, Y^e, Y^i) live only within its round: each is summed over the
//! node's in-edges and used at once, which is the round's integrate, fire and reset.
//!
//! **Spikes.** A spiking brain ([`Brain::spiking`]) realises each product of two node
//! values — the Hebbian write Y(i)·X(j) and the gate (Y^e − Y^i)^+·X(k) — as the
//! paper's stochastic AND: each factor's vector is scaled into [0, 1] by its largest
//! value c, every node fires independently with probability value / c, and the
//! product is c_a·c_b when both ends fire, else 0 ([`spiked`]). Each such rule is
//! unbiased for its own step; what follows a threshold is not, so the mean of many
//! spiking runs approaches the deterministic run only down to a floor.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::trace::{top_nodes, Heaviest, Kind, Round, TOP};
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
    x: Vec<f64>,      // (n)
    y: Vec<f64>,      // (n)
    a: Vec<f64>,      // (H, sources) the read, per head of the postsynaptic neuron
    token: Vec<f64>,  // (V) the input nodes' Y
    logits: Vec<f64>, // (V) the output nodes
    /// The spikes' random source, for a spiking brain.
    spikes: Option<ChaCha8Rng>,
    fired: [Vec<f64>; 2],      // two spiked vectors of a product (scratch)
    trace: Option<Vec<Round>>, // the rounds of the token being traced
    heaviest: Heaviest,        // the round's heaviest synapses, while tracing
}

impl<'g> Brain<'g> {
    /// An empty brain (σ = 0) on `graph`; an error before allocating if σ of every
    /// layer would not fit in memory.
    pub fn new(graph: &'g Graph) -> Result<Self> {
        let info = &graph.info;
        let (n, v, h) = (info.neurons(), info.vocab_size, info.n_head);
        let per_layer = |l: usize| if l == 0 { graph.gs_in.edges() } else { graph.gs.edges() };
        // σ of every layer (and each layer's list), the node values
        let values = (0..info.n_layer).try_fold(0usize, |acc, l| acc.checked_add(per_layer(l))?.checked_add(4));
        let values = values.and_then(|s| s.checked_add(h.checked_mul(n.max(v))?)?.checked_add(4 * n + 2 * v));
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
            a: vec![0.0; h * n.max(v)],
            token: vec![0.0; v],
            logits: vec![0.0; v],
            spikes: None,
            fired: [Vec::new(), Vec::new()],
            trace: None,
            heaviest: Heaviest::default(),
        })
    }

    /// A brain whose products of node values are stochastic ANDs of spikes drawn from
    /// `seed` (see the module's documentation).
    pub fn spiking(graph: &'g Graph, seed: u64) -> Result<Self> {
        Ok(Brain { spikes: Some(ChaCha8Rng::seed_from_u64(seed)), ..Brain::new(graph)? })
    }

    /// σ of layer `l` with the synapses it lives on (layer 0: from the token nodes);
    /// `None` past the last layer.
    pub fn sigma(&self, l: usize) -> Option<(&Sparse, &[f64])> {
        Some((if l == 0 { &self.graph.gs_in } else { &self.graph.gs }, self.sigma.get(l)?))
    }

    /// [`Brain::step`], recording every round (see [`Round`]).
    pub fn step_traced(&mut self, token: u32) -> Result<Vec<Round>> {
        self.trace = Some(Vec::new());
        let done = self.step(token).map(|_| ());
        let rounds = self.trace.take().unwrap_or_default();
        done.map(|()| rounds)
    }

    /// The logits the last step left, (V).
    pub fn logits(&self) -> &[f64] {
        &self.logits
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
        self.note(None, Kind::Input);
        for l in 0..info.n_layer {
            let (gy, first) = if l == 0 { (&g.gy_in, true) } else { (&g.gy, false) };
            self.read(l);
            self.note(Some(l), Kind::Read);
            self.write(l, first);
            self.note(Some(l), Kind::Write);
            self.prods(gy, first);
            self.note(Some(l), Kind::Prods);
            if l + 1 < info.n_layer {
                self.wires(&g.gx, false);
                self.note(Some(l), Kind::Wires);
            }
        }
        // The readout: the output nodes integrate Y through its signed graph.
        self.logits.fill(0.0);
        for (o, out) in self.logits.iter_mut().enumerate() {
            let (e, i) = g.readout.integrate(o, &self.y);
            *out = e - i;
        }
        self.note(None, Kind::Readout);
        self.pos += 1;
        Ok(&self.logits)
    }

    /// Records the round just run, if this token is traced.
    fn note(&mut self, layer: Option<usize>, round: Kind) {
        let Some(trace) = &mut self.trace else { return };
        let Heaviest { list: synapses, seen } = std::mem::take(&mut self.heaviest);
        // A is kept per head over the layer's source nodes (tokens for the first)
        let sources = if layer == Some(0) { self.graph.gs_in.sources_n } else { self.graph.gs.sources_n };
        let values: &[f64] = match round {
            Kind::Input | Kind::Wires => &self.x,
            Kind::Read => &self.a[..self.graph.info.n_head * sources],
            Kind::Write => &[],
            Kind::Prods => &self.y,
            Kind::Readout => &self.logits,
        };
        let per_head = (round == Kind::Read).then_some(sources);
        let (top, mut active) = top_nodes(values, TOP, round == Kind::Readout, per_head);
        let mut out_of = values.len();
        match round {
            Kind::Write => (active, out_of) = (seen, self.sigma[layer.unwrap_or(0)].len()),
            Kind::Read => {
                // a source is active if its read is non-zero in some head
                active = (0..sources).filter(|&i| values.iter().skip(i).step_by(sources).any(|&a| a != 0.0)).count();
                out_of = sources;
            }
            _ => {}
        }
        trace.push(Round { layer, round, values: round.leaves(), active, out_of, top, synapses });
    }

    /// Round 4l: σ_l fades (γ of the postsynaptic neuron's head), then each source
    /// node integrates, per head, X of the neurons its synapses reach.
    fn read(&mut self, l: usize) {
        let (gs, sigma) = (if l == 0 { &self.graph.gs_in } else { &self.graph.gs }, &mut self.sigma[l]);
        let (per_head, sources) = (self.graph.info.n_neurons, gs.sources_n);
        let retention = &self.graph.info.retention;
        let tracing = self.trace.is_some();
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
                    if tracing {
                        self.heaviest.offer(i as usize, j, s * xj);
                    }
                }
            }
        }
    }

    /// Round 4l+1: each synapse grows by its rate times the activity at its two ends
    /// (the source's Y, the target's X); then the sources' Y resets.
    fn write(&mut self, l: usize, first: bool) {
        let (gs, sigma) = (if first { &self.graph.gs_in } else { &self.graph.gs }, &mut self.sigma[l]);
        let y = if first { &mut self.token } else { &mut self.y };
        let [ys, xs] = &mut self.fired;
        let (y_at, x_at): (&[f64], &[f64]) = match &mut self.spikes {
            Some(rng) => {
                spiked(y, rng, ys);
                spiked(&self.x, rng, xs);
                (ys, xs)
            }
            None => (y, &self.x),
        };
        let tracing = self.trace.is_some();
        for (j, &xj) in x_at.iter().enumerate().take(gs.targets()) {
            if xj == 0.0 {
                continue;
            }
            let edges = gs.offsets[j]..gs.offsets[j + 1];
            for ((&i, &rate), s) in
                gs.sources[edges.clone()].iter().zip(&gs.weights[edges.clone()]).zip(&mut sigma[edges])
            {
                let grow = rate as f64 * y_at[i as usize] * xj;
                *s += grow;
                if tracing {
                    self.heaviest.offer(i as usize, j, grow);
                }
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
            let (e, i) = gy.integrate(k, a);
            *yk = (e - i).max(0.0);
        }
        // the gate: Y(k) = (Y^e − Y^i)^+ · X(k), spiked or not
        match &mut self.spikes {
            Some(rng) => {
                let [ps, xs] = &mut self.fired;
                spiked(&self.y, rng, ps);
                spiked(&self.x, rng, xs);
                self.y.iter_mut().zip(ps.iter().zip(xs.iter())).for_each(|(y, (p, x))| *y = p * x);
            }
            None => self.y.iter_mut().zip(&self.x).for_each(|(y, x)| *y *= x),
        }
        self.a.fill(0.0);
    }

    /// Round 4l+3 (and the input's): each neuron integrates Y (or the token nodes')
    /// over the wires' excitatory and inhibitory edges and adds what passes the
    /// threshold to its X.
    fn wires(&mut self, gx: &Signed, from_token: bool) {
        let y = if from_token { &self.token } else { &self.y };
        for (j, x) in self.x.iter_mut().enumerate() {
            let (e, i) = gx.integrate(j, y);
            *x += (e - i).max(0.0);
        }
    }
}

/// `values` as spikes: each node fires with probability value / c, c the largest
/// value, and a firing node carries c (so that E[out_i] = values_i, and the product of
/// two independent spiked vectors is unbiased for the product of the values).
pub fn spiked(values: &[f64], rng: &mut ChaCha8Rng, out: &mut Vec<f64>) {
    let c = values.iter().copied().fold(0.0f64, f64::max);
    out.clear();
    out.extend(values.iter().map(|&v| if c > 0.0 && rng.random::<f64>() * c < v { c } else { 0.0 }));
}

/// Logits (T, V) and mean cross-entropy of a graph reading `tokens` as one stream
/// from an empty σ: position t predicts token t + 1, as `bdh eval --carry` scores.
pub fn score(graph: &Graph, tokens: &[u32]) -> Result<(Vec<f32>, f64)> {
    score_with(Brain::new(graph)?, tokens)
}

/// [`score`] by a spiking brain drawn from `seed`.
pub fn score_spiking(graph: &Graph, tokens: &[u32], seed: u64) -> Result<(Vec<f32>, f64)> {
    score_with(Brain::spiking(graph, seed)?, tokens)
}

fn score_with(mut brain: Brain, tokens: &[u32]) -> Result<(Vec<f32>, f64)> {
    if tokens.len() < 2 {
        return Err(Error::Input(format!("{} token(s): scoring needs 2 or more", tokens.len())));
    }
    let graph = brain.graph;
    let v = graph.info.vocab_size;
    let mut logits = Vec::new();
    logits.try_reserve_exact(tokens.len().saturating_mul(v)).map_err(|_| Error::TooLarge {
        what: "the logits of every position".into(),
        need: tokens.len().checked_mul(v * 4).map(|b| b as u64),
        have: None,
    })?;
    for &tok in tokens {
        let out = brain.step(tok)?;
        logits.extend(out.iter().map(|&l| l as f32));
    }
    let loss = mean_loss(&logits, tokens, graph.info.vocab_size);
    Ok((logits, loss))
}

/// Mean cross-entropy of logits (T, V) where position t predicts token t + 1 (0 for
/// fewer than two tokens; infinite for a token past V or logits too few).
pub fn mean_loss(logits: &[f32], tokens: &[u32], v: usize) -> f64 {
    if tokens.len() < 2 || v == 0 {
        return 0.0;
    }
    let targets = &tokens[1..];
    if targets.iter().any(|&t| t as usize >= v) || logits.len() < targets.len() * v {
        return f64::INFINITY;
    }
    crate::model::loss::cross_entropy(&logits[..targets.len() * v], targets, v) as f64
}
