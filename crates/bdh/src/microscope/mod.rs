//! The microscope: what happens inside a BDH, as numbers.
//!
//! - [`sparsity`]: how many neurons fire, per layer, head, token and RoPE frequency.
//! - [`graph`]: the neuron interaction graph of the weights, its degree
//!   distributions and modularity against random baselines.
//! - [`synapses`]: the Hebbian synapse state σ over a text, and which synapses
//!   and neurons carry a concept.
//!
//! Every analysis returns plain data (serialisable to JSON); rendering is left to
//! the caller.

pub mod graph;
pub mod louvain;
pub mod sparsity;
pub mod stats;
pub mod synapses;
