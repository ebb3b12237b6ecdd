//! Modular sparse connectivity: which weights of the layer's three matrices exist.
//!
//! `connectivity = { modules = M, density = p }` splits each matrix's inputs and
//! outputs into M modules of consecutive units (the D dimensions, each head's N
//! neurons) and keeps the weights between a module and its own partner — group to
//! group, as ensembles of cortex talk to each other — so a fraction 1/M of them; at a
//! density p above 1/M, weights between other modules are added at random until p of
//! them are kept, and at a density below, weights within the modules are kept at
//! random, p·M of them. The masks are tensors of the model (`mask.encoder`,
//! `mask.encoder_v` (H, D, N), `mask.decoder` (H·N, D), 1 kept, 0 not), drawn from the
//! run's seed, saved with it and moved by rewiring ([`crate::train::rewire`]); the
//! weights they drop are 0 from the start and stay 0 (the trainer masks each gradient
//! and each step), so the forward needs no mask.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::BdhConfig;
use super::params::PARAM_NAMES;
use crate::params::Params;

/// The masks' names, one per masked weight, in the order of [`MASKED`].
pub const MASK_NAMES: [&str; 3] = ["mask.encoder", "mask.encoder_v", "mask.decoder"];
/// The masked weights.
pub const MASKED: [&str; 3] = [PARAM_NAMES[1], PARAM_NAMES[2], PARAM_NAMES[3]];

/// How modular and how dense the layer's matrices are.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connectivity {
    /// M: modules of inputs and of outputs, ≥ 1.
    pub modules: usize,
    /// p: the fraction of each matrix's weights kept, in (0, 1].
    pub density: f32,
}

impl Connectivity {
    /// An error naming what is wrong: M outside 1..=min(D, N), p outside (0, 1].
    pub(crate) fn validate(&self, cfg: &BdhConfig) -> Result<(), String> {
        let most = cfg.n_embd.min(cfg.n_neurons());
        if !(1..=most).contains(&self.modules) {
            return Err(format!("connectivity.modules = {} must be in 1..={most} (min of n_embd and N)", self.modules));
        }
        if !(self.density > 0.0 && self.density <= 1.0) {
            return Err(format!("connectivity.density = {} must be in (0, 1]", self.density));
        }
        Ok(())
    }

    /// Fills the masks of `params` from `seed` and zeroes the weights they drop.
    pub(crate) fn draw(&self, params: &mut Params, cfg: &BdhConfig, seed: u64) {
        let (d, n) = (cfg.n_embd, cfg.n_neurons());
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6d6f_6475_6c65);
        for (name, (rows, cols)) in MASK_NAMES.into_iter().zip([(d, n), (d, n), (n, d)]) {
            let mask = params.get_mut(name).expect("laid out with the model");
            for block in mask.chunks_exact_mut(rows * cols) {
                self.fill(block, (rows, cols), &mut rng);
            }
        }
        apply(params);
    }

    /// One (rows, cols) block's mask.
    fn fill(&self, mask: &mut [f32], (rows, cols): (usize, usize), rng: &mut ChaCha8Rng) {
        let m = self.modules;
        let module = |i: usize, count: usize| i * m / count;
        let within = |i: usize| module(i / cols, rows) == module(i % cols, cols);
        let inside = (0..rows * cols).filter(|&i| within(i)).count();
        let want = ((self.density as f64 * (rows * cols) as f64).round() as usize).max(1);
        // within the modules: all of them, or p·M of them at random
        let p_in = (want as f64 / inside as f64).min(1.0);
        let p_out = if want > inside { (want - inside) as f64 / (rows * cols - inside).max(1) as f64 } else { 0.0 };
        for (i, x) in mask.iter_mut().enumerate() {
            let p = if within(i) { p_in } else { p_out };
            *x = if p >= 1.0 || (p > 0.0 && rng.random_bool(p)) { 1.0 } else { 0.0 };
        }
    }
}

/// Zeroes every weight its mask drops (nothing without masks).
pub fn apply(params: &mut Params) {
    for (mask, weight) in MASK_NAMES.into_iter().zip(MASKED) {
        let (Some(m), Some(w)) = (params.slot(mask), params.slot(weight)) else { return };
        let (m, w) = (m.range.clone(), w.range.clone());
        // (the masks are laid out after the weights: one buffer, split between them)
        let (weights, masks) = params.data_mut().split_at_mut(m.start);
        let (w, m) = (&mut weights[w], &masks[..m.len()]);
        w.iter_mut().zip(m).filter(|(_, &m)| m == 0.0).for_each(|(w, _)| *w = 0.0);
    }
}

/// Zeroes the gradient of every weight its mask in `params` drops, and that of the
/// masks themselves (they are not trained).
pub fn mask_grads(params: &Params, grads: &mut Params) {
    for (mask, weight) in MASK_NAMES.into_iter().zip(MASKED) {
        let Some(m) = params.get(mask) else { return };
        let g = grads.get_mut(weight).expect("a BDH weight");
        g.iter_mut().zip(m).filter(|(_, &m)| m == 0.0).for_each(|(g, _)| *g = 0.0);
        grads.get_mut(mask).expect("laid out as the parameters").fill(0.0);
    }
}

/// The fraction of each masked weight kept, and whether every mask is 0 or 1 (a
/// loaded model's check); `None` without masks.
pub fn densities(params: &Params) -> Option<(Vec<f64>, bool)> {
    let masks: Vec<&[f32]> = MASK_NAMES.iter().map(|name| params.get(name)).collect::<Option<_>>()?;
    let binary = masks.iter().all(|m| m.iter().all(|&x| x == 0.0 || x == 1.0));
    Some((
        masks.iter().map(|m| m.iter().filter(|&&x| x == 1.0).count() as f64 / m.len().max(1) as f64).collect(),
        binary,
    ))
}
