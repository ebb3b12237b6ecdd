//! Powers of each head's retention γ_h over the T positions of a pass, for the
//! decay of a carried state: token i of a chunk reads ρ₀ faded by γ^(i+1), and after
//! the chunk ρ = γ^T ρ₀ + Σ_i γ^(T−1−i) R(x_i) ⊗ v_i — what T recurrent steps of
//! `ρ ← γ ρ; read; ρ += R(x) ⊗ v` leave. Powers are formed in f64, then rounded.

use super::config::Decay;

/// The powers for one model and one T; empty without decay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecayTable {
    /// The decay the table was made of.
    pub of: Decay,
    /// γ_h per head, (H); empty: no decay.
    pub gamma: Vec<f32>,
    /// γ_h^(i+1), (H, T): the weight of the carried ρ₀ in the read at position i.
    pub read: Vec<f32>,
    /// γ_h^(T−1−i), (H, T): the weight of token i's write in ρ after the chunk.
    pub write: Vec<f32>,
    /// γ_h^T, (H): what is left of ρ₀ after the chunk.
    pub whole: Vec<f32>,
}

impl DecayTable {
    /// The table of `decay` for `heads` heads and a pass of `t` positions.
    pub fn new(decay: &Decay, heads: usize, t: usize) -> Self {
        let gamma = decay.retention(heads);
        // (0 below f32's smallest normal, as the kernels flush)
        let pow = |g: f32, k: usize| match (g as f64).powi(k as i32) {
            f if f < f32::MIN_POSITIVE as f64 => 0.0,
            f => f as f32,
        };
        let table = |f: &dyn Fn(f32, usize) -> f32| gamma.iter().flat_map(|&g| (0..t).map(move |i| f(g, i))).collect();
        DecayTable {
            of: decay.clone(),
            read: table(&|g, i| pow(g, i + 1)),
            write: table(&|g, i| pow(g, t - 1 - i)),
            whole: gamma.iter().map(|&g| pow(g, t)).collect(),
            gamma,
        }
    }

    /// Whether the state decays.
    pub fn is_some(&self) -> bool {
        !self.gamma.is_empty()
    }
}
