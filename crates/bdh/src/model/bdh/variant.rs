//! The layer's architectural variants, each a config field whose default is bdh.py's:
//! the normalisation site ([`Norm`]), the residual site ([`Residual`]) and the position
//! encoding ([`Position`]). With `norm = "none"`, `residual = "n"` and
//! `position = "none"` the layer is the paper's BDH-Normfree (its Eq. 7), the form
//! that has an exactly equal graph of neurons and synapses ([`crate::model::graph`]).
//!
//! Each is one module called at one place by the parallel forward, its backward and
//! the recurrent step. The position encoding needs no code of its own: `"none"` is
//! RoPE with every frequency zero, whose rotation is the identity exactly
//! (cos 0 = 1, sin 0 = 0), so every path, a device's included, computes `x_τ · x_t`.

use bdh_kernels::{layer_norm, layer_norm_backward};
use serde::{Deserialize, Serialize};

/// N(z): what normalises the residual stream, the attention read and the decoder's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// bdh.py's parameter-free LayerNorm.
    #[default]
    Layer,
    /// No normalisation: every LayerNorm of bdh.py removed.
    None,
}

impl Norm {
    /// Whether this is bdh.py's LayerNorm.
    pub fn is_layer(&self) -> bool {
        *self == Norm::Layer
    }

    /// `x ← N(x)` over rows of `d`, keeping each row's 1/std for the backward (1
    /// without a norm).
    pub(crate) fn forward(self, x: &mut [f32], rstd: &mut [f32], d: usize) {
        match self {
            Norm::Layer => layer_norm(x, rstd, d),
            Norm::None => rstd.fill(1.0),
        }
    }

    /// Turns `g`, d loss / d N(x), into d loss / d x, given the forward's output and 1/std.
    pub(crate) fn backward(self, g: &mut [f32], out: &[f32], rstd: &[f32], d: usize) {
        if self == Norm::Layer {
            layer_norm_backward(g, out, rstd, d);
        }
    }
}

/// Where a layer keeps what it passes on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Residual {
    /// bdh.py: in the D-dimensional stream, `x_l = relu(v_{l−1}·E)`,
    /// `v_l = N(v_{l−1} + N(y_l·D))`.
    #[default]
    #[serde(rename = "d")]
    D,
    /// The paper's Eq. 4 and 8: in the neurons, `x_l = x_{l−1} + relu(v_{l−1}·E)`
    /// with `x_0 = 0` (keys, queries and the gate of y read this x), and
    /// `v_l = N(y_l·D)`.
    #[serde(rename = "n")]
    N,
}

impl Residual {
    /// Whether this is bdh.py's residual.
    pub fn is_d(&self) -> bool {
        *self == Residual::D
    }
}

/// How attention sees position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    /// bdh.py's RoPE on neuron pairs.
    #[default]
    Rope,
    /// No rotation: scores `x_τ · x_t`; position comes only from a decay.
    None,
}

impl Position {
    /// Whether this is bdh.py's RoPE.
    pub fn is_rope(&self) -> bool {
        *self == Position::Rope
    }

    /// `attn.freqs` for `n` neurons per head: bdh.py's, or all zero (no rotation).
    pub fn freqs(self, n: usize) -> Vec<f32> {
        match self {
            Position::Rope => super::rope::freqs(n),
            Position::None => vec![0.0; n],
        }
    }
}
