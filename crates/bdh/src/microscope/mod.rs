//! The microscope: what happens inside a BDH, as numbers.
//!
//! - [`sparsity`]: how many neurons fire, per layer, head, token and RoPE frequency.
//! - [`graph`]: the neuron interaction graph of the weights, its degree
//!   distributions and modularity against random baselines.
//! - [`synapses`]: the Hebbian synapse state σ over a text, and which synapses
//!   and neurons carry a concept.
//!
//! - [`ablate`]: neurons ranked by selectivity for a concept and removed, with
//!   random controls; the influence path of a logit; the overlap of two concepts.
//! - [`patch`]: activation and synapse patching between texts that differ in one
//!   fact: which layers, heads, neurons and synapses hold it.
//! - [`induction`]: induction and previous-token heads on repeated random text.
//! - [`top`]: a neuron's strongest contexts over a text, clustered into facets.
//! - [`connectome`]: which groups of neurons co-activate when, by a non-negative
//!   tensor factorisation of their affinities over windows of a text.
//! - [`geometry`]: concept codes as sets of neurons: their overlap, how many
//!   superpose before they collide, and a t-SNE map.
//! - [`seeds`]: a set of models that differ in seed, neuron by neuron: matched
//!   features, stable importance, and whether the neurons are the activity's axes.
//! - [`complexity`]: the Lempel–Ziv complexity of each neuron's firing over a text,
//!   against shuffles of the same rate.
//!
//! Every analysis returns plain data (serialisable to JSON); rendering is left to
//! the caller. The long ones take a [`Progress`] to tell how far they are.

pub mod ablate;
pub mod complexity;
pub mod connectome;
pub mod geometry;
pub mod graph;
pub mod induction;
pub mod louvain;
pub mod patch;
pub mod seeds;
pub mod sparsity;
pub mod stats;
pub mod synapses;
pub mod top;
pub mod weights;

/// Told `(units done, units in all)` as a long analysis goes, from any thread;
/// what a unit is depends on the analysis, but the units are of about equal cost.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

use std::cell::RefCell;

use crate::engine::Traced;
use crate::error::Result;
use crate::model::bdh::{Activations, Bdh, Pass};

/// A model under the microscope and where its forward passes run: the CPU, or a
/// device that hands every layer's activations back ([`Traced`]). Dereferences to
/// the model.
pub struct Scope<'m> {
    model: &'m Bdh,
    device: Option<RefCell<&'m mut dyn Traced>>,
}

impl<'m> Scope<'m> {
    /// `model`, its forwards on the CPU.
    pub fn cpu(model: &'m Bdh) -> Self {
        Scope { model, device: None }
    }

    /// `model`, its forwards on `device`, which holds the same model.
    pub fn on(model: &'m Bdh, device: &'m mut dyn Traced) -> Self {
        Scope { model, device: Some(RefCell::new(device)) }
    }

    /// Where the forwards run, e.g. `CPU`.
    pub fn device(&self) -> String {
        self.device.as_ref().map_or_else(|| "CPU".into(), |d| d.borrow().device())
    }

    /// Whether the forwards run on a device. (The recurrent steps some analyses
    /// take — edits of ρ, patches of ρ — run on the CPU either way.)
    pub fn on_device(&self) -> bool {
        self.device.is_some()
    }

    /// [`crate::model::bdh::forward`], where this scope runs it.
    pub(crate) fn forward(&self, tokens: &[u32], acts: &mut Activations, pass: Pass<'_>) -> Result<()> {
        match &self.device {
            None => crate::model::bdh::forward(self.model, tokens, acts, pass),
            Some(device) => device.borrow_mut().forward(tokens, acts, pass),
        }
    }
}

impl std::ops::Deref for Scope<'_> {
    type Target = Bdh;
    fn deref(&self) -> &Bdh {
        self.model
    }
}

impl<'m> From<&'m Bdh> for Scope<'m> {
    fn from(model: &'m Bdh) -> Self {
        Scope::cpu(model)
    }
}
