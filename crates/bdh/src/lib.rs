//! BDH, "The Dragon Hatchling" (Kosowski et al., 2025): a language model of
//! sparse positive neurons with a Hebbian synapse state, exactly as the reference
//! `bdh.py` computes it — trained, run and dissected.
//!
//! Shape legend, used in every comment: B batch, T time, D `n_embd`, H `n_head`,
//! N = `mlp_internal_dim_multiplier·D/H` neurons per head, V vocabulary, L layers.
//!
//! The tree follows the pipeline:
//! - [`model`]: one folder per model family ([`model::bdh`]: config, parameter
//!   layout, parallel forward and backward, recurrent step, RoPE, interventions,
//!   the layer's variants), [`model::graph`] (a BDH-Normfree model as the paper's
//!   graph of neurons and synapses, run by its four-round scheduler), and the enums [`Model`], [`ModelConfig`], [`Activations`], [`Gradients`] that
//!   dispatch to them in a few `match`es.
//! - [`params`]: parameters of any family as one flat buffer with named slots.
//! - [`train`]: one optimizer step ([`Trainer`]), AdamW, the learning-rate schedule,
//!   gradient averaging across processes ([`train::Collective`]; Open MPI with the
//!   `mpi` feature; [`train::parallel`]), run configs ([`RunConfig`], presets in
//!   `configs/`) and whole resumable runs in a run directory ([`train::run`]).
//! - [`infer`]: a prepared model shared by all sequences, a per-sequence state
//!   (save, restore, fork), per-worker scratch, sampling and streaming generation.
//! - [`io`]: safetensors and PyTorch `.pt` input, checkpoints, run directories
//!   ([`io::run_dir::RunDir`]), saved states.
//! - [`data`]: bytes of any file, the built-in synthetic corpus, the tokenizer.
//! - [`engine`]: what runs a model — the CPU engine or a device backend — behind
//!   the two traits evaluation, verification and generation take.
//! - [`eval`]: loss, bits per byte and answer accuracy; [`verify`]: a model against
//!   golden tensors of the reference.
//! - [`microscope`]: sparsity, the neuron graph and the synapse state.
//!
//! The hot loops (and their thread schedule) live in the `bdh-kernels` crate.
//!
//! ```
//! use bdh::infer::Prepared;
//! use bdh::model::bdh::{BdhConfig, NO_EDITS};
//! use bdh::{forward, Activations, Mode, Model, ModelConfig};
//! let cfg = ModelConfig::Bdh(BdhConfig { n_layer: 2, n_embd: 16, n_head: 2, mlp_internal_dim_multiplier: 4,
//!                                        vocab_size: 256, dropout: 0.0, ..BdhConfig::default() });
//! let model = Model::new(&cfg, 0).unwrap();
//! let tokens: Vec<u32> = b"hello".iter().map(|&b| b as u32).collect();
//! let mut acts = Activations::new(&model, 1, tokens.len()).unwrap();
//! forward(&model, &tokens, &mut acts, Mode::Eval).unwrap();
//! // The same model one token at a time, from a state that can be saved or forked.
//! let prepared = Prepared::new(model).unwrap();
//! let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
//! let last = prepared.prefill(&mut state, &mut scratch, &tokens, &NO_EDITS).unwrap();
//! assert_eq!(last.len(), 256);
//! ```

pub mod data;
pub mod engine;
pub mod error;
pub mod eval;
pub mod infer;
pub mod io;
pub mod memory;
pub mod microscope;
pub mod model;
pub mod params;
pub mod train;
pub mod verify;

pub use error::{Error, Result};
pub use model::{backward, forward, loss, Activations, Gradients, Mode, Model, ModelConfig};
pub use params::{Params, Slot};
pub use train::{AdamW, AdamWConfig, Precision, RunConfig, Trainer, TrainingConfig};
