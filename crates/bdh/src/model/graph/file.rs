//! A graph on disk: one safetensors file, each graph as three tensors
//! (`<name>.offsets` i64 (targets + 1), `<name>.sources` i32 and `<name>.weights` f32,
//! one per edge), its description ([`super::Info`]) as JSON under the metadata key
//! `graph`. Loading checks every size against the description before using it.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::{Graph, Info, Signed, Sparse};
use crate::error::{Error, Result};
use crate::io::{read_bounded, write_atomic};
use crate::model::bdh::config::MAX_SIZE;

/// The metadata key of the description.
const INFO_KEY: &str = "graph";

/// Writes `graph` to `path` (atomically: the old file, if any, stays whole until
/// the new one is).
pub fn save(graph: &Graph, path: &Path) -> Result<()> {
    let info = serde_json::to_string(&graph.info).map_err(|e| Error::Input(format!("describing the graph: {e}")))?;
    let mut bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, g) in graph.parts() {
        let offsets: Vec<u8> = g.offsets.iter().flat_map(|&o| (o as i64).to_le_bytes()).collect();
        let sources: Vec<u8> = g.sources.iter().flat_map(|&s| (s as i32).to_le_bytes()).collect();
        let weights: Vec<u8> = g.weights.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.push((format!("{name}.offsets"), Dtype::I64, vec![g.offsets.len()], offsets));
        bytes.push((format!("{name}.sources"), Dtype::I32, vec![g.edges()], sources));
        bytes.push((format!("{name}.weights"), Dtype::F32, vec![g.edges()], weights));
    }
    let mut views = Vec::with_capacity(bytes.len());
    for (name, dtype, shape, data) in &bytes {
        let view = TensorView::new(*dtype, shape.clone(), data).map_err(|e| Error::Input(format!("`{name}`: {e}")))?;
        views.push((name.clone(), view));
    }
    let meta = HashMap::from([(INFO_KEY.to_string(), info)]);
    let out = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Input(format!("serialising: {e}")))?;
    write_atomic(path, &out)
}

/// Reads a graph written by [`save`], refusing one larger than memory before reading
/// it, a truncated file, and any size that disagrees with its description.
pub fn load(path: &Path) -> Result<Graph> {
    let size = std::fs::metadata(path).map_err(|e| Error::io("reading", path, e))?.len();
    crate::memory::ensure_fits(usize::try_from(size).unwrap_or(usize::MAX), &format!("the graph {}", path.display()))?;
    let bytes = read_bounded(path, size)?;
    let bad = |m: String| Error::format(path, m);
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a graph file: {e}")))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a graph file: {e}")))?;
    let info =
        meta.metadata().as_ref().and_then(|m| m.get(INFO_KEY)).ok_or_else(|| {
            bad(format!("no `{INFO_KEY}` description in its metadata: not made by `bdh graph build`"))
        })?;
    let info: Info = serde_json::from_str(info).map_err(|e| bad(format!("its description: {e}")))?;
    if info.format != super::FORMAT {
        return Err(bad(format!(
            "a graph file of format {}; this program reads format {}",
            info.format,
            super::FORMAT
        )));
    }
    let sizes = [
        ("n_layer", info.n_layer),
        ("n_head", info.n_head),
        ("n_neurons", info.n_neurons),
        ("vocab_size", info.vocab_size),
    ];
    if let Some((name, v)) = sizes.iter().find(|(_, v)| *v == 0 || *v > MAX_SIZE) {
        return Err(bad(format!("its description gives {name} = {v} (1 to {MAX_SIZE})")));
    }
    if info.n_layer > super::MAX_LAYERS {
        return Err(bad(format!(
            "its description gives {} layers; a graph runs at most {}",
            info.n_layer,
            super::MAX_LAYERS
        )));
    }
    if info.n_head.checked_mul(info.n_neurons).is_none_or(|n| n > MAX_SIZE) {
        return Err(bad(format!("its description gives n = H·N past {MAX_SIZE}")));
    }
    if !(info.retention.is_empty() || info.retention.len() == info.n_head)
        || info.retention.iter().any(|&g| !(g > 0.0 && g <= 1.0))
    {
        return Err(bad("its retention is not one γ in (0, 1] per head".into()));
    }
    if info.keep == Some(0) {
        return Err(bad("its description gives keep = 0".into()));
    }
    let part = |name: &str| -> Result<Sparse> { sparse(&tensors, name, Graph::shape_of(&info, name)).map_err(bad) };
    let signed = |name: &str| -> Result<Signed> {
        Ok(Signed { e: part(&format!("{name}.e"))?, i: part(&format!("{name}.i"))? })
    };
    Ok(Graph {
        gx: signed("gx")?,
        gy: signed("gy")?,
        gs: part("gs")?,
        gx_in: signed("gx_in")?,
        gy_in: signed("gy_in")?,
        gs_in: part("gs_in")?,
        readout: signed("readout")?,
        info,
    })
}

/// The graph `name` of a file, checked: (sources, targets) as the description says,
/// offsets from 0 rising to the edge count, sources in range, weights finite, ≥ 0.
fn sparse(t: &SafeTensors, name: &str, (sources_n, targets): (usize, usize)) -> std::result::Result<Sparse, String> {
    let get = |suffix: &str, dtype: Dtype, width: usize| -> std::result::Result<(&[u8], usize), String> {
        let key = format!("{name}.{suffix}");
        let v = t.tensor(&key).map_err(|_| format!("no tensor `{key}`"))?;
        if v.dtype() != dtype || v.shape().len() != 1 {
            return Err(format!("`{key}` is {:?} {:?}, not a list of {dtype:?}", v.dtype(), v.shape()));
        }
        Ok((v.data(), v.data().len() / width))
    };
    let (offsets, count) = get("offsets", Dtype::I64, 8)?;
    if count != targets + 1 {
        return Err(format!("`{name}` has {} targets; its description gives {targets}", count.saturating_sub(1)));
    }
    let offsets: Vec<i64> =
        offsets.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
    let (sources, edges) = get("sources", Dtype::I32, 4)?;
    let (weights, w_edges) = get("weights", Dtype::F32, 4)?;
    if w_edges != edges || offsets.first() != Some(&0) || offsets.last() != Some(&(edges as i64)) {
        return Err(format!("`{name}`: its offsets, sources and weights disagree on the number of edges"));
    }
    if offsets.windows(2).any(|w| w[1] < w[0]) {
        return Err(format!("`{name}`: its offsets fall"));
    }
    let sources: Vec<u32> =
        sources.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as u32).collect();
    if let Some(s) = sources.iter().find(|&&s| s as usize >= sources_n) {
        return Err(format!("`{name}` has an edge from node {} of {sources_n}", *s as i32));
    }
    let weights: Vec<f32> =
        weights.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
    if let Some(w) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(format!("`{name}` has a weight {w}: weights are finite and ≥ 0"));
    }
    Ok(Sparse { sources_n, offsets: offsets.into_iter().map(|o| o as usize).collect(), sources, weights })
}
