//! Interventions as data: edits of BDH's activations or synapse state, applied right
//! after the kernel that produces the edited site. An empty list costs nothing.

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

/// A list of edits; applied in order, so a later one wins where two overlap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Edits(Vec<Edit>);

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
        Edits(Vec::new())
    }

    /// Adds an edit.
    pub fn push(&mut self, edit: Edit) {
        self.0.push(edit);
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any edit is of `site`.
    pub fn touches(&self, site: Site) -> bool {
        self.0.iter().any(|e| e.site == site)
    }

    /// Checks every index against the model and every value: activations stay
    /// finite and non-negative (they are ReLU outputs), ρ values finite.
    pub fn validate(&self, cfg: &BdhConfig) -> Result<()> {
        for (i, e) in self.0.iter().enumerate() {
            let bad = |m: String| Err(Error::Input(format!("edit {i} ({:?}): {m}", e.site)));
            let limits =
                [("layer", e.layer, cfg.n_layer), ("head", e.head, cfg.n_head), ("neuron", e.neuron, cfg.n_neurons())];
            for (what, value, limit) in limits {
                if let Some(v) = value.filter(|&v| v >= limit) {
                    return bad(format!("{what} {v} ≥ {limit}"));
                }
            }
            if let Action::Set(v) = e.action {
                if !v.is_finite() || (e.site != Site::Rho && v < 0.0) {
                    return bad(format!(
                        "value {v} must be finite{}",
                        if e.site == Site::Rho { "" } else { " and ≥ 0" }
                    ));
                }
            }
        }
        Ok(())
    }

    /// The edits of `site` at `layer`.
    fn at(&self, site: Site, layer: usize) -> impl Iterator<Item = &Edit> {
        self.0.iter().filter(move |e| e.site == site && e.layer.is_none_or(|l| l == layer))
    }

    /// Whether any edit of `site` applies at `layer`.
    pub(crate) fn any(&self, site: Site, layer: usize) -> bool {
        self.at(site, layer).next().is_some()
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
