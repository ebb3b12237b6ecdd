//! Interventions as data: edits of BDH's activations or synapse state, applied right
//! after the kernel that produces the edited site. An empty list costs nothing.

use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::config::BdhConfig;
use crate::error::{Error, Result};

/// Where an edit applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Site {
    /// The sparse neurons `x = relu(v · encoder)`, before RoPE and attention read them.
    X,
    /// `y = relu(a · encoder_v)`, before the gate.
    Y,
    /// The gated product `x ⊙ y` the decoder reads.
    Xy,
    /// The synapse state ρ: row `neuron` of ρ (its D values), before the step at
    /// `position` reads it. Only the recurrent form holds ρ.
    Rho,
    /// The layer's output, the residual stream `v` after it: `neuron` is one of its
    /// D dimensions and `head` is ignored. Parallel forward only.
    Out,
}

/// What an edit does to the values it selects.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Set them to 0 (ablate).
    Zero,
    /// Set them to this value (patch).
    Set(f32),
}

impl Action {
    /// The value written.
    fn value(self) -> f32 {
        match self {
            Action::Zero => 0.0,
            Action::Set(v) => v,
        }
    }
}

/// One edit: a site, which of its values (`None`: every layer, head, neuron or
/// position), and what to do to them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    /// The site.
    pub site: Site,
    /// Layer, or every layer.
    pub layer: Option<usize>,
    /// Head, or every head.
    pub head: Option<usize>,
    /// Neuron within the head, or every neuron.
    pub neuron: Option<usize>,
    /// Position in the sequence (counted from its first token), or every position.
    pub position: Option<usize>,
    /// Zero or replace.
    pub action: Action,
}

/// Values of one site of one layer taken from another run of the same length
/// (activation patching): written over the edited run's values at `positions`,
/// for the chosen head and neurons. Parallel forward only.
#[derive(Clone, Debug, PartialEq)]
pub struct Patch {
    /// X, Y, Xy or Out.
    pub site: Site,
    /// The layer.
    pub layer: usize,
    /// One head, or every head (ignored for `Out`).
    pub head: Option<usize>,
    /// Which neurons (for `Out`: dimensions of D), or every one.
    pub neurons: Option<Vec<u32>>,
    /// Positions patched (counted from the first token).
    pub positions: Range<usize>,
    /// The source run's values of the site at this layer, from position 0: (H, T, N)
    /// for x, y and x⊙y, (T, D) for `Out`.
    pub values: Arc<Vec<f32>>,
}

/// A list of edits, applied in order, so a later one wins where two overlap; then
/// the patches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Edits {
    list: Vec<Edit>,
    #[serde(skip)]
    patches: Vec<Patch>,
}

/// No edits: what every pass without interventions uses.
pub static NO_EDITS: Edits = Edits::new();

/// Which part of a (B, H, T, N, W) tensor a buffer holds: heads `head0..head0 + heads`
/// (of every batch row), positions `pos0..pos0 + t`, N neurons of `width` values each
/// (1 for activations, D for the rows of ρ).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub head0: usize,
    pub heads: usize,
    pub pos0: usize,
    pub t: usize,
    pub n: usize,
    pub width: usize,
}

impl Edits {
    /// An empty list.
    pub const fn new() -> Self {
        Edits { list: Vec::new(), patches: Vec::new() }
    }

    /// Adds an edit.
    pub fn push(&mut self, edit: Edit) {
        self.list.push(edit);
    }

    /// Adds a patch.
    pub fn patch(&mut self, patch: Patch) {
        self.patches.push(patch);
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty() && self.patches.is_empty()
    }

    /// Whether any edit is of `site`.
    pub fn touches(&self, site: Site) -> bool {
        self.list.iter().any(|e| e.site == site) || self.patches.iter().any(|p| p.site == site)
    }

    /// Checks every index against the model and every value: x, y and x⊙y stay
    /// finite and non-negative (they are ReLU outputs), ρ and layer outputs finite.
    /// A patch's values must cover its positions whole.
    pub fn validate(&self, cfg: &BdhConfig) -> Result<()> {
        let width = |site| if site == Site::Out { cfg.n_embd } else { cfg.n_neurons() };
        for (i, p) in self.patches.iter().enumerate() {
            let bad = |m: String| Err(Error::Input(format!("patch {i} ({:?}): {m}", p.site)));
            let per_position = if p.site == Site::Out { cfg.n_embd } else { cfg.n_head * cfg.n_neurons() };
            if p.site == Site::Rho {
                return bad("ρ is patched by copying states, not by a forward patch".into());
            }
            if p.layer >= cfg.n_layer || p.head.is_some_and(|h| h >= cfg.n_head) {
                return bad(format!("layer {} or head {:?} out of range", p.layer, p.head));
            }
            if p.neurons.iter().flatten().any(|&n| n as usize >= width(p.site)) {
                return bad(format!("a neuron ≥ {}", width(p.site)));
            }
            if p.values.len() % per_position != 0 || p.values.len() < p.positions.end.saturating_mul(per_position) {
                return bad(format!(
                    "values for {} positions, fewer than {}",
                    p.values.len() / per_position,
                    p.positions.end
                ));
            }
        }
        for (i, e) in self.list.iter().enumerate() {
            let bad = |m: String| Err(Error::Input(format!("edit {i} ({:?}): {m}", e.site)));
            let limits =
                [("layer", e.layer, cfg.n_layer), ("head", e.head, cfg.n_head), ("neuron", e.neuron, width(e.site))];
            for (what, value, limit) in limits {
                if let Some(v) = value.filter(|&v| v >= limit) {
                    return bad(format!("{what} {v} ≥ {limit}"));
                }
            }
            if e.site == Site::Out && e.head.is_some() {
                return bad("a layer's output has no heads: leave the head unset".into());
            }
            let signed = matches!(e.site, Site::Rho | Site::Out);
            if let Action::Set(v) = e.action {
                if !v.is_finite() || (!signed && v < 0.0) {
                    return bad(format!("value {v} must be finite{}", if signed { "" } else { " and ≥ 0" }));
                }
            }
        }
        Ok(())
    }

    /// The edits of `site` at `layer`.
    fn at(&self, site: Site, layer: usize) -> impl Iterator<Item = &Edit> {
        self.list.iter().filter(move |e| e.site == site && e.layer.is_none_or(|l| l == layer))
    }

    /// Whether any edit or patch of `site` applies at `layer`.
    pub fn any(&self, site: Site, layer: usize) -> bool {
        self.at(site, layer).next().is_some() || self.patches.iter().any(|p| p.site == site && p.layer == layer)
    }

    /// Whether there are patches (which only the parallel forward applies).
    pub(crate) fn has_patches(&self) -> bool {
        !self.patches.is_empty()
    }

    /// Applies the edits of `site` at `layer` to the whole site of a (B, T) pass from
    /// position `pos0`: (B, H, T, N) values of x, y or x⊙y, (B, T, D) of a layer's
    /// output — as a forward applies them, for one run elsewhere (a device).
    pub fn apply_whole(&self, site: Site, layer: usize, buf: &mut [f32], dims: super::Dims, pos0: usize) {
        let region = match site {
            Site::Out => Region { head0: 0, heads: 1, pos0, t: dims.t, n: dims.d, width: 1 },
            _ => dims.region(pos0),
        };
        self.apply(site, layer, buf, region);
    }

    /// Applies the edits of `site` at `layer` to `buf`, the (B, heads, t, n) part of
    /// the tensor that `region` names.
    pub(crate) fn apply(&self, site: Site, layer: usize, buf: &mut [f32], r: Region) {
        let (block, w) = (r.heads * r.t * r.n * r.width, r.width);
        for e in self.at(site, layer) {
            let value = e.action.value();
            let heads = span(e.head, r.head0, r.heads);
            let positions = span(e.position, r.pos0, r.t);
            let neurons = span(e.neuron, 0, r.n);
            for row in buf.chunks_exact_mut(block) {
                for h in heads.clone() {
                    for t in positions.clone() {
                        let at = (h * r.t + t) * r.n * w;
                        row[at + neurons.start * w..at + neurons.end * w].fill(value);
                    }
                }
            }
        }
        for p in self.patches.iter().filter(|p| p.site == site && p.layer == layer) {
            // Source layout: (H, T_source, N) or (T_source, D) — one "head" for Out.
            let src_heads = if site == Site::Out { 1 } else { r.heads + r.head0 };
            let src_t = p.values.len() / (src_heads * r.n);
            let heads = if site == Site::Out { 0..1 } else { span(p.head, r.head0, r.heads) };
            for row in buf.chunks_exact_mut(block) {
                for h in heads.clone() {
                    for t in 0..r.t {
                        let pos = r.pos0 + t;
                        if !p.positions.contains(&pos) || pos >= src_t {
                            continue;
                        }
                        let (dst, src) = ((h * r.t + t) * r.n, ((h + r.head0) * src_t + pos) * r.n);
                        match &p.neurons {
                            None => row[dst..dst + r.n].copy_from_slice(&p.values[src..src + r.n]),
                            Some(list) => list.iter().for_each(|&i| row[dst + i as usize] = p.values[src + i as usize]),
                        }
                    }
                }
            }
        }
    }
}

impl Edits {
    /// Applies the edits of `site` at `layer`, `head` and `pos` to values given for the
    /// listed neurons only (`values[k]` belongs to neuron `listed[k]`).
    pub(crate) fn apply_listed(
        &self,
        site: Site,
        layer: usize,
        head: usize,
        pos: usize,
        listed: &[u32],
        values: &mut [f32],
    ) {
        let here = |e: &&Edit| e.head.is_none_or(|h| h == head) && e.position.is_none_or(|p| p == pos);
        for e in self.at(site, layer).filter(here) {
            let value = e.action.value();
            for (&i, v) in listed.iter().zip(values.iter_mut()) {
                if e.neuron.is_none_or(|n| n == i as usize) {
                    *v = value;
                }
            }
        }
    }
}

/// The local indices of `wanted` (every one if `None`) within `start..start + len`.
fn span(wanted: Option<usize>, start: usize, len: usize) -> std::ops::Range<usize> {
    match wanted {
        None => 0..len,
        Some(i) if (start..start + len).contains(&i) => i - start..i - start + 1,
        Some(_) => 0..0,
    }
}
