//! Model configuration with bdh.py's field names, derived sizes and validation.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest value of any size in a config: far past any model that fits a machine,
/// small enough that products of two sizes cannot overflow.
pub const MAX_SIZE: usize = 1 << 24;

/// The hyper-parameters of a BDH model, named as bdh.py's `BDHConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdhConfig {
    /// L: number of layers (all share one set of weights).
    pub n_layer: usize,
    /// D: embedding (residual stream) width.
    pub n_embd: usize,
    /// H: number of heads.
    pub n_head: usize,
    /// N·H / D: neurons per head are `mlp_internal_dim_multiplier · D / H`.
    pub mlp_internal_dim_multiplier: usize,
    /// V: vocabulary size (256 for bytes).
    pub vocab_size: usize,
    /// Dropout probability on x⊙y during training.
    pub dropout: f32,
}

impl Default for BdhConfig {
    /// bdh.py's defaults: L6 D256 H4 mult 128, V256, dropout 0.1.
    fn default() -> Self {
        BdhConfig {
            n_layer: 6,
            n_embd: 256,
            n_head: 4,
            mlp_internal_dim_multiplier: 128,
            vocab_size: 256,
            dropout: 0.1,
        }
    }
}

impl BdhConfig {
    /// N: neurons per head, `mlp_internal_dim_multiplier · D / H` (integer division, as bdh.py).
    pub fn n_neurons(&self) -> usize {
        self.mlp_internal_dim_multiplier * self.n_embd / self.n_head
    }

    /// H·N: neurons in all heads.
    pub fn total_neurons(&self) -> usize {
        self.n_head * self.n_neurons()
    }

    /// Number of trained parameters: embed, encoder, encoder_v, decoder, lm_head.
    pub fn param_count(&self) -> usize {
        let (d, v, hn) = (self.n_embd, self.vocab_size, self.total_neurons());
        v * d + 3 * hn * d + d * v
    }

    /// [`BdhConfig::param_count`], or `None` if it overflows.
    fn checked_param_count(&self) -> Option<usize> {
        let (d, v, hn) = (self.n_embd, self.vocab_size, self.mlp_internal_dim_multiplier.checked_mul(self.n_embd)?);
        v.checked_mul(d)?.checked_mul(2)?.checked_add(hn.checked_mul(d)?.checked_mul(3)?)
    }

    /// The sizes a user sets, by name.
    fn sizes(&self) -> [(&'static str, usize); 5] {
        [
            ("n_layer", self.n_layer),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            ("mlp_internal_dim_multiplier", self.mlp_internal_dim_multiplier),
            ("vocab_size", self.vocab_size),
        ]
    }

    /// Model FLOPs of one forward pass, per token, averaged over a window of `t` tokens:
    /// per layer the three projections (`encoder`, `encoder_v`, `decoder`: 6·D·H·N)
    /// plus causal attention (scores and values over on average t/2 past tokens:
    /// H·t·(N + D)), then `lm_head` (2·D·V). A training step costs three times this.
    pub fn forward_flops_per_token(&self, t: usize) -> f64 {
        let (d, h, n) = (self.n_embd as f64, self.n_head as f64, self.n_neurons() as f64);
        let layer = 6.0 * d * h * n + h * t as f64 * (n + d);
        self.n_layer as f64 * layer + 2.0 * d * self.vocab_size as f64
    }

    /// Checks that the sizes describe a model bdh.py could build and we can run.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if let Some((name, _)) = self.sizes().into_iter().find(|&(_, v)| v == 0) {
            return bad(format!("{name} must be > 0"));
        }
        if let Some((name, v)) = self.sizes().into_iter().find(|&(_, v)| v > MAX_SIZE) {
            return bad(format!("{name} = {v} is past the largest size this engine takes ({MAX_SIZE})"));
        }
        let hn = self.mlp_internal_dim_multiplier * self.n_embd; // < 2⁴⁸: both ≤ 2²⁴
        if !hn.is_multiple_of(self.n_head) || hn < 2 * self.n_head {
            return bad(format!(
                "mlp_internal_dim_multiplier·n_embd = {hn} must be divisible by n_head = {}, giving N ≥ 2 neurons per head",
                self.n_head
            ));
        }
        let params = self.checked_param_count();
        crate::memory::ensure_fits(crate::memory::f32_bytes(params), &format!("the parameters of {self:?}"))?;
        let n = self.n_neurons();
        if !n.is_multiple_of(2) {
            return bad(format!("neurons per head N = {n} must be even (RoPE rotates pairs)"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }
}
