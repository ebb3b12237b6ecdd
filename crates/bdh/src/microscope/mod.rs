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
//!
//! Every analysis returns plain data (serialisable to JSON); rendering is left to
//! the caller. The long ones take a [`Progress`] to tell how far they are.

pub mod ablate;
pub mod graph;
pub mod induction;
pub mod louvain;
pub mod patch;
pub mod sparsity;
pub mod stats;
pub mod synapses;
pub mod top;

/// Told `(units done, units in all)` as a long analysis goes, from any thread;
/// what a unit is depends on the analysis, but the units are of about equal cost.
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);
