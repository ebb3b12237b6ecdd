//! The GPT baseline's configuration, with nanoGPT's `GPTConfig` field names.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::bdh::config::MAX_SIZE;

/// The hyper-parameters of a GPT-2-architecture model, named as nanoGPT's `GPTConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Context length: rows of the learned position embedding.
    pub block_size: usize,
    /// V: vocabulary size (256 for bytes).
    pub vocab_size: usize,
    /// L: number of transformer blocks.
    pub n_layer: usize,
    /// H: attention heads per block.
    pub n_head: usize,
    /// D: embedding width (a multiple of H).
    pub n_embd: usize,
    /// Dropout on the embeddings, the attention probabilities and both residual branches.
    pub dropout: f32,
    /// Biases in every Linear and LayerNorm.
    pub bias: bool,
}

impl GptConfig {
    /// Width of one attention head, D / H.
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Trained parameters: wte (tied with lm_head, counted once), wpe, the blocks and ln_f.
    pub fn param_count(&self) -> usize {
        self.checked_param_count().unwrap_or(usize::MAX)
    }

    fn checked_param_count(&self) -> Option<usize> {
        let (d, b) = (self.n_embd, usize::from(self.bias));
        // ln_1, c_attn, attn.c_proj, ln_2, c_fc, mlp.c_proj.
        let block = (d + b * d)
            + (3 * d * d + b * 3 * d)
            + (d * d + b * d)
            + (d + b * d)
            + (4 * d * d + b * 4 * d)
            + (4 * d * d + b * d);
        let embeddings = self.vocab_size.checked_mul(d)?.checked_add(self.block_size.checked_mul(d)?)?;
        embeddings.checked_add(block.checked_mul(self.n_layer)?)?.checked_add(d + b * d)
    }

    /// Model FLOPs of one forward pass per token over a window of `t` tokens: per
    /// block the four weight products (2·12·D²) and causal attention (scores and
    /// values over on average t/2 keys: 2·D·t), then the head (2·D·V).
    pub fn forward_flops_per_token(&self, t: usize) -> f64 {
        let (d, l) = (self.n_embd as f64, self.n_layer as f64);
        l * (24.0 * d * d + 2.0 * d * t as f64) + 2.0 * d * self.vocab_size as f64
    }

    /// Checks that the sizes describe a model we can build and run.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("block_size", self.block_size),
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ];
        if let Some((name, v)) = sizes.iter().find(|(_, v)| *v == 0 || *v > MAX_SIZE) {
            return Err(Error::Config(format!("GPT {name} = {v} must be in 1..={MAX_SIZE}")));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::Config(format!(
                "GPT n_embd = {} is not divisible by n_head = {}",
                self.n_embd, self.n_head
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!("GPT dropout = {} must be in [0, 1)", self.dropout)));
        }
        let count = self.checked_param_count().ok_or_else(|| Error::Config("GPT parameter count overflows".into()))?;
        crate::memory::ensure_fits(crate::memory::f32_bytes(Some(count)), "the GPT's parameters")
    }
}
