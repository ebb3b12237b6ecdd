//! The layer's architectural variants, each a config field whose default is bdh.py's:
//! the normalisation site ([`super::norm::Norm`], in a module of its own), the residual
//! site ([`Residual`]) and the position encoding ([`Position`]). With `norm = "none"`, `residual = "n"` and
//! `position = "none"` the layer is the paper's BDH-Normfree (its Eq. 7), the form
//! that has an exactly equal graph of neurons and synapses ([`crate::model::graph`]).
//!
//! Each is one module called at one place by the parallel forward, its backward and
//! the recurrent step. The position encoding needs no code of its own: `"none"` is
//! RoPE with every frequency zero, whose rotation is the identity exactly
//! (cos 0 = 1, sin 0 = 0), so every path, a device's included, computes `x_τ · x_t`.

use serde::{Deserialize, Serialize};

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
