//! BDH, "The Dragon Hatchling" (Kosowski et al., 2025): a language model of
//! sparse positive neurons with a Hebbian synapse state, exactly as the reference
//! `bdh.py` computes it.
//!
//! Shape legend, used in every comment: B batch, T time, D `n_embd`, H `n_head`,
//! N = `mlp_internal_dim_multiplier·D/H` neurons per head, V vocabulary, L layers.
//!
//! - [`config`]: the hyper-parameters and derived sizes.
//! - [`params`]: the weights, named and shaped as bdh.py.
//! - [`forward()`] / [`backward()`]: the parallel pass over (B, T) and its explicit gradient.
//! - [`Recurrent`]: the same model one token at a time with a state ρ per layer.
//! - [`AdamW`]: the reference's optimizer; [`Trainer`] one step; [`run`] a whole
//!   resumable training run in a run directory, on a [`data`] corpus, configured by
//!   a [`RunConfig`] ([`preset`]s in `configs/`).
//! - [`generate`]: sampling and streaming generation; [`eval`]: loss, bits per byte
//!   and answer accuracy.
//! - [`checkpoint`]: safetensors and PyTorch `.pt` input, safetensors output.
//! - [`verify`]: compare a model against golden tensors of the reference.
//! - [`microscope`]: sparsity, the neuron graph and the synapse state.
//! - [`bench`](mod@bench): throughput of training steps, forward passes and generation.
//!
//! ```
//! use bdh::{forward, Activations, BdhConfig, Mode, Model, Recurrent};
//! let cfg = BdhConfig { n_layer: 2, n_embd: 16, n_head: 2, mlp_internal_dim_multiplier: 4,
//!                       vocab_size: 256, dropout: 0.0 };
//! let model = Model::new(cfg, 0).unwrap();
//! let tokens: Vec<u32> = b"hello".iter().map(|&b| b as u32).collect();
//! let mut acts = Activations::new(&model, 1, tokens.len());
//! forward(&model, &tokens, &mut acts, Mode::Eval).unwrap();
//! let mut rec = Recurrent::new(&model);
//! let last = rec.prefill(&tokens).unwrap();
//! assert_eq!(last.len(), 256);
//! ```

pub mod backward;
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod eval;
pub mod forward;
pub mod generate;
mod loss;
pub mod microscope;
pub mod optim;
pub mod params;
pub mod preset;
mod pt;
pub mod recurrent;
pub mod rope;
pub mod run;
pub mod train;
pub mod verify;

pub use backward::{backward, loss, Gradients};
pub use config::BdhConfig;
pub use error::{Error, Result};
pub use forward::{forward, Activations, Dims, Mode};
pub use optim::{AdamW, AdamWConfig};
pub use params::{Model, Params};
pub use preset::{RunConfig, TrainingConfig};
pub use recurrent::{Recurrent, State};
pub use train::Trainer;
