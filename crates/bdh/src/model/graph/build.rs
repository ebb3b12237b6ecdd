//! The exact graphs of a BDH-Normfree model: each dense product of two of its
//! matrices, split into its positive and negative parts, optionally pruned to each
//! node's strongest in-edges.

use rayon::prelude::*;

use super::{Graph, Info, Signed, Sparse};
use crate::error::{Error, Result};
use crate::model::bdh::{Bdh, Norm, Position, Residual};

/// The graph form of `model`, which must be BDH-Normfree (see [`check_model`]).
/// `keep`: each node keeps its `K` strongest in-edges in every graph but the
/// synapses' (`None`: all, the exact graphs); `synapses_on_wires`: Gs keeps only the
/// edges of Gx (else all ones).
pub fn build<'a>(model: &'a Bdh, keep: Option<usize>, synapses_on_wires: bool) -> Result<Graph> {
    check_model(model)?;
    if keep == Some(0) {
        return Err(Error::Input("keeping 0 in-edges per node would keep no edge: give K ≥ 1".into()));
    }
    let c = &model.config;
    // D, N (neurons per head), H, V; n = H·N neurons in all
    let (d, per, heads, v) = (c.n_embd, c.n_neurons(), c.n_head, c.vocab_size);
    let n = heads * per;
    // Every graph at its densest: n² for Gx, Gy and Gs, V·n for the three input
    // graphs and the readout; an edge is a source (u32) and a weight (f32).
    let edges = n.checked_mul(n).and_then(|nn| nn.checked_mul(3)?.checked_add(v.checked_mul(n)?.checked_mul(4)?));
    crate::memory::ensure_fits(
        edges.and_then(|e| e.checked_mul(8)).unwrap_or(usize::MAX),
        &format!("the graphs of a model of n = {n} neurons"),
    )?;
    let w = model.weights();
    // column k of a per-head (H, D, N) matrix: its head's column k mod N
    let per_head = |m: &'a [f32]| move |dd: usize, k: usize| m[(k / per) * d * per + dd * per + k % per];
    let lm_head = |dd: usize, o: usize| w.lm_head[dd * v + o];
    let cut = keep.unwrap_or(usize::MAX);
    let gx = product(w.decoder, (n, d), per_head(w.encoder), n, cut);
    let gs = synapses(&gx, n, synapses_on_wires);
    let gx_in = product(w.embed, (v, d), per_head(w.encoder), n, cut);
    let gs_in = synapses(&gx_in, v, synapses_on_wires);
    Ok(Graph {
        info: Info {
            n_layer: c.n_layer,
            format: super::FORMAT,
            n_head: heads,
            n_neurons: per,
            vocab_size: v,
            retention: model.retention(),
            keep,
            synapses_on_wires,
            weights: model.params.fingerprint(),
        },
        gy: product(w.decoder, (n, d), per_head(w.encoder_v), n, cut),
        gy_in: product(w.embed, (v, d), per_head(w.encoder_v), n, cut),
        readout: product(w.decoder, (n, d), lm_head, v, cut),
        gx,
        gs,
        gx_in,
        gs_in,
    })
}

/// An error unless `model` has a graph form: BDH-Normfree (`norm = "none"`,
/// `residual = "n"`, `position = "none"`; any decay), no mechanism attached, at most
/// [`super::MAX_LAYERS`] layers.
pub fn check_model(model: &Bdh) -> Result<()> {
    let c = &model.config;
    let wrong = [
        (c.norm != Norm::None, "norm = \"none\""),
        (c.residual != Residual::N, "residual = \"n\""),
        (c.position != Position::None, "position = \"none\""),
    ];
    let missing: Vec<&str> = wrong.iter().filter(|(bad, _)| *bad).map(|(_, want)| *want).collect();
    if !missing.is_empty() {
        return Err(Error::Config(format!(
            "the graph form equals BDH-Normfree only, and this model's layer is {}: it needs {} (train one with \
             `--set model.norm=none --set model.residual=n --set model.position=none`, and \
             `--set 'training.init_scale={{\"embed.weight\"=50.0,lm_head=5.0}}'` for it to learn)",
            c.variant().unwrap_or_else(|| "bdh.py's".into()),
            missing.join(", ")
        )));
    }
    if c.n_layer > super::MAX_LAYERS {
        return Err(Error::Config(format!("{} layers: a graph runs at most {}", c.n_layer, super::MAX_LAYERS)));
    }
    if !model.mechanisms.is_empty() {
        return Err(Error::Config("the graph form has no place for a mechanism attached in code".into()));
    }
    if !c.delays.is_none() {
        return Err(Error::Config(
            "the graph form writes each synapse as its token passes; this model delays its writes (delays), \
             which the graph does not run"
                .into(),
        ));
    }
    if !c.threshold.is_none() {
        return Err(Error::Config(
            "the graph form's neurons fire above 0; this model's have thresholds (threshold), which the graph \
             does not run"
                .into(),
        ));
    }
    if c.per_neuron_decay() {
        return Err(Error::Config(
            "the graph form damps σ by one retention per head; this model has one per neuron \
             (decay_per = \"neuron\"), which the graph does not run"
                .into(),
        ));
    }
    if model.key_site().is_some() {
        return Err(Error::Config(
            "the graph form's synapses update by x's Hebbian rule; this model's write has a trace or an \
             astrocyte's gate at its key (trace, astrocyte), which the graph does not run"
                .into(),
        ));
    }
    Ok(())
}

/// `src · dst` for `src` (S, D) row-major and `dst` (D, targets) read by `col(d, k)`,
/// summed in f64, as a signed graph from the S rows to the targets, each target
/// keeping its `keep` strongest in-edges of each sign.
fn product(
    src: &[f32],
    (s, d): (usize, usize),
    col: impl Fn(usize, usize) -> f32 + Sync,
    targets: usize,
    keep: usize,
) -> Signed {
    let rows: Vec<(InEdges, InEdges)> = (0..targets)
        .into_par_iter()
        .map(|k| {
            let column: Vec<f64> = (0..d).map(|dd| col(dd, k) as f64).collect();
            let (mut e, mut i) = (Vec::new(), Vec::new());
            for (r, row) in src.chunks_exact(d).enumerate().take(s) {
                let x = row.iter().zip(&column).map(|(&a, &b)| a as f64 * b).sum::<f64>() as f32;
                if x > 0.0 {
                    e.push((r as u32, x));
                } else if x < 0.0 {
                    i.push((r as u32, -x));
                }
            }
            (strongest(e, keep), strongest(i, keep))
        })
        .collect();
    let (e, i): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    Signed { e: sparse(s, e), i: sparse(s, i) }
}

/// A target's in-edges: (source, weight).
type InEdges = Vec<(u32, f32)>;

/// The `keep` heaviest of `edges`, in source order.
fn strongest(mut edges: Vec<(u32, f32)>, keep: usize) -> Vec<(u32, f32)> {
    if edges.len() > keep {
        edges.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        edges.truncate(keep);
        edges.sort_unstable_by_key(|e| e.0);
    }
    edges
}

/// A graph from each target's in-edges.
fn sparse(sources_n: usize, rows: Vec<Vec<(u32, f32)>>) -> Sparse {
    let mut g = Sparse { sources_n, offsets: vec![0], sources: Vec::new(), weights: Vec::new() };
    for row in rows {
        g.sources.extend(row.iter().map(|e| e.0));
        g.weights.extend(row.iter().map(|e| e.1));
        g.offsets.push(g.sources.len());
    }
    g
}

/// Gs with rate 1: on every (source, target) pair, or on the edges of the wires `gx`.
fn synapses(gx: &Signed, sources_n: usize, on_wires: bool) -> Sparse {
    let rows = (0..gx.e.targets())
        .map(|j| {
            if !on_wires {
                return (0..sources_n as u32).map(|i| (i, 1.0)).collect();
            }
            let mut row: Vec<(u32, f32)> =
                gx.e.in_edges(j).chain(gx.i.in_edges(j)).map(|(i, _)| (i as u32, 1.0)).collect();
            row.sort_unstable_by_key(|e| e.0);
            row
        })
        .collect();
    sparse(sources_n, rows)
}
