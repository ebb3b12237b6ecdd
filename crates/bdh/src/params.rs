//! The trained parameters, with bdh.py's names, shapes and initialisation.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::config::BdhConfig;
use crate::rope;

/// Parameters shared by all layers, each a row-major f32 buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Token embedding, (V, D). bdh.py: `embed.weight`.
    pub embed: Vec<f32>,
    /// Neuron encoder per head, (H, D, N).
    pub encoder: Vec<f32>,
    /// Encoder of the attention output per head, (H, D, N).
    pub encoder_v: Vec<f32>,
    /// Decoder from all neurons back to the residual stream, (H·N, D).
    pub decoder: Vec<f32>,
    /// Output head, (D, V).
    pub lm_head: Vec<f32>,
}

/// Names and shapes of the trained tensors, in bdh.py's `state_dict` names.
pub const PARAM_NAMES: [&str; 5] = ["embed.weight", "encoder", "encoder_v", "decoder", "lm_head"];

/// Name of the RoPE frequency buffer in bdh.py's `state_dict`, shape (1, 1, 1, N).
pub const FREQS_NAME: &str = "attn.freqs";

impl Params {
    /// All zeros, sized for `cfg` (the layout of gradients and optimizer moments).
    pub fn zeros(cfg: &BdhConfig) -> Self {
        let (v, d, hn) = (cfg.vocab_size, cfg.n_embd, cfg.total_neurons());
        Params {
            embed: vec![0.0; v * d],
            encoder: vec![0.0; hn * d],
            encoder_v: vec![0.0; hn * d],
            decoder: vec![0.0; hn * d],
            lm_head: vec![0.0; d * v],
        }
    }

    /// bdh.py's initialisation: every tensor drawn from N(0, 0.02²), from `seed`.
    pub fn init(cfg: &BdhConfig, seed: u64) -> Self {
        let mut p = Params::zeros(cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, 0.02).expect("0.02 is a valid std");
        for (_, t) in p.tensors_mut() {
            t.iter_mut().for_each(|x| *x = normal.sample(&mut rng));
        }
        p
    }

    /// The shape of each tensor in bdh.py's layout, by name.
    pub fn shape(cfg: &BdhConfig, name: &str) -> Vec<usize> {
        let (v, d, h, n) = (cfg.vocab_size, cfg.n_embd, cfg.n_head, cfg.n_neurons());
        match name {
            "embed.weight" => vec![v, d],
            "encoder" | "encoder_v" => vec![h, d, n],
            "decoder" => vec![h * n, d],
            "lm_head" => vec![d, v],
            FREQS_NAME => vec![1, 1, 1, n],
            _ => unreachable!("no parameter named {name}"),
        }
    }

    /// The tensors in [`PARAM_NAMES`] order.
    pub fn tensors(&self) -> [(&'static str, &[f32]); 5] {
        [
            (PARAM_NAMES[0], &self.embed),
            (PARAM_NAMES[1], &self.encoder),
            (PARAM_NAMES[2], &self.encoder_v),
            (PARAM_NAMES[3], &self.decoder),
            (PARAM_NAMES[4], &self.lm_head),
        ]
    }

    /// The tensors in [`PARAM_NAMES`] order, mutably.
    pub fn tensors_mut(&mut self) -> [(&'static str, &mut Vec<f32>); 5] {
        [
            (PARAM_NAMES[0], &mut self.embed),
            (PARAM_NAMES[1], &mut self.encoder),
            (PARAM_NAMES[2], &mut self.encoder_v),
            (PARAM_NAMES[3], &mut self.decoder),
            (PARAM_NAMES[4], &mut self.lm_head),
        ]
    }
}

/// A model: its config, parameters and RoPE frequencies (a buffer, not trained).
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The hyper-parameters.
    pub config: BdhConfig,
    /// The trained weights.
    pub params: Params,
    /// `attn.freqs`, (N): RoPE frequency of each neuron (pairs share one).
    pub freqs: Vec<f32>,
}

impl Model {
    /// A freshly initialised model, as `BDH(config)` with `torch.manual_seed(seed)`
    /// would build one (same distribution, not the same numbers).
    pub fn new(config: BdhConfig, seed: u64) -> crate::Result<Self> {
        config.validate()?;
        let params = Params::init(&config, seed);
        let freqs = rope::freqs(config.n_neurons());
        Ok(Model { config, params, freqs })
    }
}
