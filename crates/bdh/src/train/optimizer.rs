//! AdamW, step for step as `torch.optim.AdamW` (decoupled weight decay, bias
//! correction, ε added to the corrected √v), on flat buffers. Weight decay applies
//! to the slots its mask names: every tensor for BDH (as the reference), tensors of
//! two or more dimensions for GPT (as nanoGPT groups its parameters).

use crate::params::Params;

/// AdamW hyper-parameters; the defaults are those the reference trains with.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// β₁, β₂.
    pub betas: (f64, f64),
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// The reference recipe: lr 1e-3, weight decay 0.1, torch's β (0.9, 0.999), ε 1e-8.
    fn default() -> Self {
        AdamWConfig { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.1 }
    }
}

/// The optimizer's state: first and second moments per parameter, and the step count.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamW {
    /// Hyper-parameters (`lr` may be changed between steps by a schedule).
    pub config: AdamWConfig,
    /// Steps taken.
    pub step: u64,
    /// First moments, laid out as the parameters.
    pub m: Params,
    /// Second moments, laid out as the parameters.
    pub v: Params,
    /// Per slot: whether weight decay applies.
    pub decay: Vec<bool>,
}

impl AdamW {
    /// Zero moments for parameters laid out as `params`, weight decay on every slot.
    pub fn new(config: AdamWConfig, params: &Params) -> Self {
        Self::with_decay(config, params, vec![true; params.slots().len()])
    }

    /// Zero moments for `params`, weight decay on the slots where `decay` is true.
    pub fn with_decay(config: AdamWConfig, params: &Params, decay: Vec<bool>) -> Self {
        assert_eq!(decay.len(), params.slots().len(), "AdamW: a decay flag per slot");
        AdamW { config, step: 0, m: params.zeros_like(), v: params.zeros_like(), decay }
    }

    /// One update of `params` from `grads`, in torch's order of operations:
    /// `p ← p(1 − lr·wd)`, `m ← m + (1−β₁)(g − m)`, `v ← β₂v + (1−β₂)g²`,
    /// `p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)`.
    pub fn update(&mut self, params: &mut Params, grads: &Params) {
        assert!(params.same_layout(grads) && params.same_layout(&self.m), "AdamW: buffers of different layouts");
        self.step += 1;
        let AdamWConfig { lr, betas: (b1, b2), eps, weight_decay } = self.config;
        // torch forms every scalar in Python floats (f64), then applies it in f32.
        let t = self.step as i32;
        let step_size = (lr / (1.0 - b1.powi(t))) as f32;
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt() as f32;
        let decay = (1.0 - lr * weight_decay) as f32;
        let (w1, beta2, w2, eps) = ((1.0 - b1) as f32, b2 as f32, (1.0 - b2) as f32, eps as f32);
        let slots = params.slots().to_vec();
        let (m, v, p) = (self.m.data_mut(), self.v.data_mut(), params.data_mut());
        for (slot, &decays) in slots.iter().zip(&self.decay) {
            let r = slot.range.clone();
            let decay = if decays { decay } else { 1.0 };
            let parts = p[r.clone()].iter_mut().zip(&grads.data()[r.clone()]).zip(&mut m[r.clone()]).zip(&mut v[r]);
            for (((pi, &gi), mi), vi) in parts {
                *pi *= decay;
                *mi += w1 * (gi - *mi); // torch: exp_avg.lerp_(grad, 1 − β₁)
                *vi = beta2 * *vi + w2 * gi * gi;
                let denom = vi.sqrt() / bc2_sqrt + eps;
                *pi -= step_size * *mi / denom;
            }
        }
    }
}
