//! The GPT-2-architecture baseline, as nanoGPT's `model.py`: the family's config,
//! parameters, parallel forward and backward, and generation with a KV cache —
//! the same pieces, in the same shape, as BDH's folder beside it.

pub mod backward;
pub mod config;
pub mod forward;
pub mod infer;
pub mod params;

pub use backward::{backward, Backward};
pub use config::GptConfig;
pub use forward::{forward, Activations, Dims};
pub use infer::{Prepared, Scratch, State};

use crate::error::{Error, Result};
use crate::params::Params;

/// A GPT model: its config and its parameters (flat, in nanoGPT's names and layout,
/// the output head tied to the token embedding).
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt {
    /// The hyper-parameters.
    pub config: GptConfig,
    /// The trained weights, laid out by [`params::layout`].
    pub params: Params,
}

impl Gpt {
    /// A freshly initialised model, with nanoGPT's initialisation drawn from `seed`.
    pub fn new(config: GptConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let params = params::init(&config, seed)?;
        Ok(Gpt { config, params })
    }

    /// A model from its parts, checking that they fit the config.
    pub fn from_parts(config: GptConfig, params: Params) -> Result<Self> {
        config.validate()?;
        if !params.has_layout(&params::named(&params::layout(&config))) {
            return Err(Error::Config("the parameters are not laid out for this GPT config".into()));
        }
        Ok(Gpt { config, params })
    }
}
