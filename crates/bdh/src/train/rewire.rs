//! Hebbian rewiring of a sparse connectivity (`training.rewire = { every = K,
//! fraction = f }`, with `model.connectivity`): every K steps, each masked matrix drops
//! the fraction f of its kept weights that are smallest in magnitude and grows as many
//! new ones where its inputs and outputs fired together most on the step's last batch —
//! cells that fire together wire together. A grown weight starts at 0 with fresh
//! optimizer moments, as does a dropped one's place.
//!
//! The co-activity of a matrix's input i and output j is `|Σ_tokens pre_i · post_j|`
//! over every layer of the last micro-batch (averaged over the processes, so they all
//! rewire alike): `encoder` pairs the residual stream v with its own output (x, or x's
//! increment with the residual in the neurons), `encoder_v` the
//! attention read with y, `decoder` x ⊙ y with the normalised decoder output.

use serde::{Deserialize, Serialize};

use bdh_kernels::{matmul, MatMul};

use super::optimizer::AdamW;
use crate::error::Result;
use crate::model::bdh::connectivity::{apply, MASKED, MASK_NAMES};
use crate::model::bdh::{Activations, Bdh};

/// How often and how much a sparse connectivity rewires.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewire {
    /// K: steps between rewirings, ≥ 1.
    pub every: u64,
    /// f: the fraction of kept weights replaced each time, in (0, 1).
    pub fraction: f64,
}

impl Rewire {
    /// An error naming what is wrong.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        if self.every == 0 {
            return Err("training.rewire.every must be ≥ 1 step".into());
        }
        if !(self.fraction > 0.0 && self.fraction < 1.0) {
            return Err(format!("training.rewire.fraction = {} must be in (0, 1)", self.fraction));
        }
        Ok(())
    }
}

/// The co-activity `Σ pre ⊗ post` of each masked matrix on the activations `acts`
/// (one row of B per process), laid out as the matrix.
pub fn coactivity(model: &Bdh, acts: &Activations) -> [Vec<f32>; 3] {
    let c = &model.config;
    let (d, h, n) = (c.n_embd, c.n_head, c.n_neurons());
    let (b, t) = (acts.dims.b, acts.dims.t);
    let (mut enc, mut enc_v, mut dec) = (vec![0.0f32; h * d * n], vec![0.0f32; h * d * n], vec![0.0f32; h * n * d]);
    let mut z = vec![0.0f32; t * n];
    for l in 0..c.n_layer {
        // (the encoder's own output: x's increment with the residual in the neurons)
        let layer = &acts.layers[l];
        let enc_out = if layer.inc.is_empty() { &layer.x } else { &layer.inc };
        let (v, x, y, a, w) = (acts.residual(l), acts.x(l), acts.y(l), acts.attention_read(l), &layer.w);
        for row in 0..b {
            let vr = &v[row * t * d..(row + 1) * t * d];
            let wr = &w[row * t * d..(row + 1) * t * d];
            for hi in 0..h {
                let at = (row * h + hi) * t;
                let (xh, yh, ah) = (&x[at * n..(at + t) * n], &y[at * n..(at + t) * n], &a[at * d..(at + t) * d]);
                let eo = &enc_out[at * n..(at + t) * n];
                let (eh, evh) = (&mut enc[hi * d * n..(hi + 1) * d * n], &mut enc_v[hi * d * n..(hi + 1) * d * n]);
                matmul(eh, vr, eo, MatMul::new(d, t, n).a_t().acc());
                matmul(evh, ah, yh, MatMul::new(d, t, n).a_t().acc());
                z.iter_mut().zip(xh.iter().zip(yh)).for_each(|(z, (&p, &q))| *z = p * q);
                matmul(&mut dec[hi * n * d..(hi + 1) * n * d], &z, wr, MatMul::new(n, t, d).a_t().acc());
            }
        }
    }
    [enc, enc_v, dec]
}

/// One rewiring of `model`'s masks from the last forward's `acts`, the optimizer's
/// moments of the changed weights cleared; `reduce` averages the co-activity over
/// the processes. Returns how many weights each matrix replaced.
pub fn rewire(
    model: &mut Bdh,
    acts: &Activations,
    opt: &mut AdamW,
    fraction: f64,
    reduce: &dyn Fn(&mut [f32]) -> Result<()>,
) -> Result<[usize; 3]> {
    let mut together = coactivity(model, acts);
    let mut replaced = [0; 3];
    for (k, (mask_name, weight)) in MASK_NAMES.into_iter().zip(MASKED).enumerate() {
        reduce(&mut together[k])?;
        let Some(mask) = model.params.get(mask_name).map(<[f32]>::to_vec) else { return Ok(replaced) };
        let w = model.params.get(weight).expect("a BDH weight").to_vec();
        let mut kept: Vec<usize> = (0..mask.len()).filter(|&i| mask[i] == 1.0).collect();
        let mut free: Vec<usize> = (0..mask.len()).filter(|&i| mask[i] == 0.0).collect();
        let count = ((fraction * kept.len() as f64).round() as usize).min(free.len());
        // the weakest kept, the most co-active free (ties by index, so every process agrees)
        kept.sort_by(|&i, &j| w[i].abs().total_cmp(&w[j].abs()).then(i.cmp(&j)));
        free.sort_by(|&i, &j| together[k][j].abs().total_cmp(&together[k][i].abs()).then(i.cmp(&j)));
        let changed: Vec<(usize, f32)> =
            kept.iter().take(count).map(|&i| (i, 0.0)).chain(free.iter().take(count).map(|&i| (i, 1.0))).collect();
        let range = model.params.slot(weight).expect("a BDH weight").range.clone();
        let m = model.params.get_mut(mask_name).expect("above");
        for &(i, to) in &changed {
            m[i] = to;
        }
        for &(i, _) in &changed {
            model.params.get_mut(weight).expect("above")[i] = 0.0;
            opt.m.data_mut()[range.start + i] = 0.0;
            opt.v.data_mut()[range.start + i] = 0.0;
        }
        replaced[k] = count;
    }
    apply(&mut model.params);
    Ok(replaced)
}
