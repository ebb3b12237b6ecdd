//! The kernels of many streams stepped together, each stream's ρ in a slot of a
//! pool (S, H, N, D) per layer; `slots` (B) names each stepped stream's slot and
//! the step's activations are (H, B, ·), head-major. Twins: the CPU's batched
//! step (`bdh::model::bdh::Prepared::step`), whose `decay_state` and
//! `rho_read_write` they do for every stream at once.

use cubecl::prelude::*;

/// `dst[dst0 + i] = src[src0 + i]` for `i < len`: a stream's state into or out of
/// its slot.
#[cube(launch)]
pub fn copy_range(src: &Array<f32>, dst: &mut Array<f32>, src0: usize, dst0: usize, len: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        dst[dst0 + i] = src[src0 + i];
    }
}

/// The read of B streams, a unit per output value:
/// `a[h, b, j] = Σ_i xr[h, b, i] · ρ'[slots[b], h, i, j]` with `ρ' = γ_h ρ` under a
/// `decay` (the state faded before it is read), else ρ. Rows of silent neurons
/// (xr = 0) are not read.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn read_slots(
    rho: &Array<f32>,
    slots: &Array<u32>,
    xr: &Array<f32>,
    gamma: &Array<f32>,
    a: &mut Array<f32>,
    b: usize,
    h: usize,
    n: usize,
    d: usize,
    #[comptime] decay: bool,
) {
    let idx = ABSOLUTE_POS;
    if idx < b * h * d {
        let j = idx % d;
        let row = idx / d; // h·B + b
        let head = row / b;
        let slot = slots[row % b] as usize;
        let base = (slot * h + head) * n * d + j;
        let mut g = 1.0f32;
        if decay {
            g = gamma[head];
        }
        let mut acc = 0.0f32;
        for i in 0..n {
            let q = xr[row * n + i];
            if q != 0.0 {
                acc += q * (g * rho[base + i * d]);
            }
        }
        a[idx] = acc;
    }
}

/// The Hebbian write of B streams, a unit per value of their states:
/// `ρ[slots[b], h, i, j] = γ_h ρ + xr[h, b, i] · v[b, j]` (without a `decay`,
/// `ρ += xr · v`, and rows of silent neurons are left as they are).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn write_slots(
    rho: &mut Array<f32>,
    slots: &Array<u32>,
    xr: &Array<f32>,
    v: &Array<f32>,
    gamma: &Array<f32>,
    b: usize,
    h: usize,
    n: usize,
    d: usize,
    #[comptime] decay: bool,
) {
    let idx = ABSOLUTE_POS;
    if idx < b * h * n * d {
        let j = idx % d;
        let i = (idx / d) % n;
        let head = (idx / (d * n)) % h;
        let row = idx / (d * n * h);
        let at = ((slots[row] as usize * h + head) * n + i) * d + j;
        let q = xr[(head * b + row) * n + i];
        if decay {
            rho[at] = gamma[head] * rho[at] + q * v[row * d + j];
        } else if q != 0.0 {
            rho[at] += q * v[row * d + j];
        }
    }
}
