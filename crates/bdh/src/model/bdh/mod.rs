//! BDH, "The Dragon Hatchling": the family's config, parameters, parallel forward and
//! backward, recurrent step and interventions.

pub mod activations;
pub mod backward;
pub mod config;
pub mod connectivity;
pub mod decay;
pub mod delay;
pub mod edit;
pub mod forward;
pub mod key;
pub mod merge;
pub mod norm;
pub mod params;
pub mod recurrent;
pub mod rho;
pub mod rope;
pub mod site;
pub mod state;
pub mod threshold;
pub mod variant;

pub use activations::{Activations, Part};
pub use backward::{backward, Backward};
pub use config::{Astrocyte, BdhConfig, Connectivity, Decay, DecayPer, Delays, Homeostasis, Threshold, Trace};
pub use edit::{Action, Edit, Edits, Patch, Site, NO_EDITS};
pub use forward::{forward, Dims, Pass};
pub use merge::{merge, Heritage};
pub use norm::Norm;
pub use params::{Weights, WeightsMut, DECAY_NAME, FREQS_NAME, PARAM_NAMES};
pub use recurrent::{Prepared, Scratch};
pub use rho::{Rho, StateDtype};
pub use site::{At, Mechanism, Mechanisms};
pub use state::State;
pub use variant::{Position, Residual};

use crate::error::{Error, Result};
use crate::params::Params;

/// A BDH model: its config, its parameters (flat, in bdh.py's names and layout),
/// its RoPE frequencies (a buffer, not trained) and the mechanisms at its layer's
/// sites (none: bdh.py's model).
#[derive(Clone, Debug, PartialEq)]
pub struct Bdh {
    /// The hyper-parameters.
    pub config: BdhConfig,
    /// The trained weights, laid out by [`params::layout`].
    pub params: Params,
    /// `attn.freqs`, (N): RoPE frequency of each neuron (pairs share one).
    pub freqs: Vec<f32>,
    /// Mechanisms at token-local sites of every layer (see [`site`]).
    pub mechanisms: Mechanisms,
}

impl Bdh {
    /// A freshly initialised model, as `BDH(config)` with `torch.manual_seed(seed)`
    /// would build one (same distribution, not the same numbers).
    pub fn new(config: BdhConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let params = params::init(&config, seed)?;
        let freqs = config.position.freqs(config.n_neurons());
        Ok(Bdh { config, params, freqs, mechanisms: Mechanisms::default() })
    }

    /// A model from its parts, checking that they fit the config.
    pub fn from_parts(config: BdhConfig, params: Params, freqs: Vec<f32>) -> Result<Self> {
        config.validate()?;
        if !params.has_layout(&params::layout(&config)) {
            return Err(Error::Config("the parameters are not laid out for this BDH config".into()));
        }
        if freqs.len() != config.n_neurons() {
            return Err(Error::Config(format!("{} RoPE frequencies for N = {}", freqs.len(), config.n_neurons())));
        }
        if config.position == Position::None && freqs.iter().any(|&f| f != 0.0) {
            return Err(Error::Config("position = \"none\" but attn.freqs holds non-zero RoPE frequencies".into()));
        }
        if let Some((_, false)) = connectivity::densities(&params) {
            return Err(Error::Config("a sparse connectivity's masks hold values other than 0 and 1".into()));
        }
        let mut params = params;
        connectivity::apply(&mut params); // (a dropped weight is 0, whatever the file held)
        Ok(Bdh { config, params, freqs, mechanisms: Mechanisms::default() })
    }

    /// The weights by name.
    pub fn weights(&self) -> Weights<'_> {
        Weights::of(&self.params)
    }

    /// The write's key site (a trace, an astrocyte's gate), or `None` for bdh.py's key.
    pub fn key_site(&self) -> Option<key::KeySite> {
        let w = self.weights();
        key::KeySite::new(&self.config, w.trace, w.astrocyte)
    }

    /// δ_h per head: the config's fixed delays, or the learned ones'
    /// M·sigmoid(ψ_h); empty without delays.
    pub fn delays(&self) -> Vec<f32> {
        self.config.delays.per_head(self.weights().delay)
    }

    /// Each head's retention (the median of its neurons' with one per neuron), and with
    /// one per neuron each head's 10%, 50% and 90% quantiles; empty without decay.
    pub fn retention_by_head(&self) -> (Vec<f32>, Vec<[f32; 3]>) {
        let gamma = self.retention();
        if !self.config.per_neuron_decay() {
            return (gamma, Vec::new());
        }
        let spread: Vec<[f32; 3]> = gamma
            .chunks(self.config.n_neurons())
            .map(|head| {
                let mut sorted = head.to_vec();
                sorted.sort_by(f32::total_cmp);
                [0.1, 0.5, 0.9].map(|q| sorted[((sorted.len() - 1) as f64 * q).round() as usize])
            })
            .collect();
        (spread.iter().map(|s| s[1]).collect(), spread)
    }

    /// With a homeostatic threshold: the neurons' mean running firing rate and its
    /// target; else none.
    pub fn firing(&self) -> Option<(f64, f64)> {
        let threshold::Threshold::Homeostatic(rule) = self.config.threshold else { return None };
        let rates = self.params.get(threshold::FIRING_NAME)?;
        let mean = rates.iter().map(|&r| r as f64).sum::<f64>() / rates.len().max(1) as f64;
        Some((mean, rule.target as f64))
    }

    /// γ_h per head (or γ_{h,i} per neuron, (H, N), with `decay_per = "neuron"`): the
    /// config's fixed decay, or the learned one's sigmoid(θ); empty without decay.
    pub fn retention(&self) -> Vec<f32> {
        match self.config.decay.is_learned() {
            true => params::sigmoid(self.weights().decay),
            false => self.config.decay.initial(self.config.n_head),
        }
    }
}
