//! The launchers of the kernels of many streams stepped together.

use cubecl::prelude::*;

use super::{grid, line, Buf, Device};
use crate::kernels::serve;

impl<R: Runtime> Device<R> {
    /// `dst[dst0..dst0 + len] = src[src0..src0 + len]` (bounds-checked by the caller).
    pub fn copy_range(&self, src: &Buf, src0: usize, dst: &Buf, dst0: usize, len: usize) {
        serve::copy_range::launch::<R>(&self.client, grid(len), line(), self.arg(src), self.arg(dst), src0, dst0, len);
    }

    /// `a` (H, B, D) read from the slots `slots` (B) of `rho` (S, H, N, D) by `xr`
    /// (H, B, N), ρ faded by `gamma` (H) first if given.
    pub fn read_slots(&self, rho: &Buf, slots: &Buf, xr: &Buf, gamma: Option<&Buf>, a: &Buf, dims: [usize; 3]) {
        let [h, n, d] = dims;
        let b = slots.len;
        serve::read_slots::launch::<R>(
            &self.client,
            grid(b * h * d),
            line(),
            self.arg(rho),
            self.arg(slots),
            self.arg(xr),
            self.arg(gamma.unwrap_or(xr)),
            self.arg(a),
            b,
            h,
            n,
            d,
            gamma.is_some(),
        );
    }

    /// The slots `slots` (B) of `rho` (S, H, N, D) faded by `gamma` (H) if given,
    /// then `+= xr (H, B, N) ⊗ v (B, D)`.
    pub fn write_slots(&self, rho: &Buf, slots: &Buf, xr: &Buf, v: &Buf, gamma: Option<&Buf>, dims: [usize; 3]) {
        let [h, n, d] = dims;
        let b = slots.len;
        serve::write_slots::launch::<R>(
            &self.client,
            grid(b * h * n * d),
            line(),
            self.arg(rho),
            self.arg(slots),
            self.arg(xr),
            self.arg(v),
            self.arg(gamma.unwrap_or(xr)),
            b,
            h,
            n,
            d,
            gamma.is_some(),
        );
    }
}
