//! The optimizer's kernels: the gradient's squared norm in parts, and AdamW
//! (`bdh::train::AdamW::update`, torch's order of operations).

use cubecl::prelude::*;

/// `part[first + u] = Σ (g[i] · scale)²` over the `per` values of part u, in order,
/// in f32 (the host adds the parts in f64).
#[cube(launch)]
pub fn sum_squares(g: &Array<f32>, part: &mut Array<f32>, len: usize, per: usize, first: usize, scale: f32) {
    let u = ABSOLUTE_POS;
    let start = u * per;
    if start < len {
        let end = usize::min(start + per, len);
        let mut s = 0.0f32;
        for i in start..end {
            let v = g[i] * scale;
            s += v * v;
        }
        part[first + u] = s;
    }
}

/// One AdamW update of every value, the gradient taken as `(g · scale) · clip`
/// (the mean over micro-batches, then the clipping) and zeroed after:
/// `p ← p·decay`, `m ← m + w1(g − m)`, `v ← β₂v + w2·g²`,
/// `p ← p − step · m / (√v / bc2 + ε)`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    p: &mut Array<f32>,
    g: &mut Array<f32>,
    m: &mut Array<f32>,
    v: &mut Array<f32>,
    len: usize,
    scale: f32,
    clip: f32,
    decay: f32,
    w1: f32,
    beta2: f32,
    w2: f32,
    bc2: f32,
    eps: f32,
    step: f32,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let gi = g[i] * scale * clip;
        let pi = p[i] * decay;
        let mi = m[i] + w1 * (gi - m[i]);
        let vi = beta2 * v[i] + w2 * gi * gi;
        let denom = Sqrt::sqrt(vi) / bc2 + eps;
        p[i] = pi - step * mi / denom;
        m[i] = mi;
        v[i] = vi;
        g[i] = 0.0;
    }
}
