//! A device and its buffers: upload, download, and one safe launcher per kernel.
//!
//! cubecl binds a buffer to a kernel through an `unsafe` constructor whose contract
//! is that the length given is the buffer's; [`Buf`] records the length it was made
//! with and is the only way buffers reach a kernel here, so the contract holds by
//! construction (and the kernels are launched bounds-checked besides).
#![allow(unsafe_code)]

use bdh::{Error, Result};
use bdh_kernels::{Batch, MatMul};
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::kernels::{self, BLOCK, COLUMNS, LANES, LINE, SIDE};

mod gpt;
mod serve;
mod train;
pub use gpt::Heads;
pub use train::AdamStep;

/// A buffer of 4-byte values (f32, or u32 token ids) on a device.
#[derive(Clone, Debug)]
pub struct Buf {
    handle: Handle,
    len: usize,
}

impl Buf {
    /// Its values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A device: a compute client of runtime `R` and what was learnt about it.
pub struct Device<R: Runtime> {
    client: ComputeClient<R>,
    /// What it is, e.g. "CUDA: NVIDIA H200" or "Vulkan: llvmpipe (software)".
    pub name: String,
    max_buffer: u64,
    memory: Option<u64>, // bytes the device has, where its driver says
    bf16: bool,          // products take their inputs rounded to bfloat16
}

/// The most cubes along one dimension of a launch grid that every backend takes.
const MAX_CUBES: usize = 32768;

impl<R: Runtime> Device<R> {
    /// The device of `client`, called `name`, with `memory` bytes if known. Buffers
    /// are bounded by the backend's largest and by 2³² values (kernels index in 32 bits).
    pub fn new(client: ComputeClient<R>, name: String, memory: Option<u64>) -> Self {
        let max_buffer = client.properties().memory.max_page_size.min(4 * u32::MAX as u64);
        Device { client, name, max_buffer, memory, bf16: false }
    }

    /// From now on every product rounds its inputs to bfloat16 (sums stay f32), or not.
    pub fn set_bf16(&mut self, on: bool) {
        self.bf16 = on;
    }

    /// Bytes this process may still take on the device, keeping a tenth of it for the
    /// driver and the runtime; `None` where the device does not say its size.
    pub fn free_bytes(&self) -> Option<u64> {
        self.memory.map(|m| (m - m / 10).saturating_sub(self.reserved_bytes()))
    }

    /// Compiles, runs and reads back a first kernel: an error if this device cannot.
    pub fn check_runs(&self) -> Result<()> {
        let (a, b) = (self.upload(&[1.5, -2.0], "a check")?, self.upload(&[0.25, 4.0], "a check")?);
        let out = self.scratch(2, "a check")?;
        self.add(&a, &b, &out);
        match self.read(&out)?[..] {
            [x, y] if x == 1.75 && y == 2.0 => Ok(()),
            ref other => {
                Err(Error::Device(format!("the GPU ({}) computed 1.5 + 0.25, −2 + 4 as {other:?}", self.name)))
            }
        }
    }

    /// Whether a buffer of `len` values may be allocated on this device.
    pub fn fits(&self, len: usize) -> bool {
        len.checked_mul(4).is_some_and(|b| b as u64 <= self.max_buffer)
    }

    /// Bytes of the largest buffer this device allocates.
    pub fn max_buffer(&self) -> u64 {
        self.max_buffer
    }

    /// An error unless a buffer of `len` values may be allocated on this device.
    fn check(&self, len: usize, what: &str) -> Result<usize> {
        let bytes = len.checked_mul(4).filter(|&b| b as u64 <= self.max_buffer);
        bytes.ok_or_else(|| Error::TooLarge {
            what: format!("{what} on the GPU ({}; one buffer at most)", self.name),
            need: len.checked_mul(4).map(|b| b as u64),
            have: Some(self.max_buffer),
        })
    }

    /// A buffer holding `data`.
    pub fn upload(&self, data: &[f32], what: &str) -> Result<Buf> {
        if data.is_empty() {
            return self.scratch(0, what);
        }
        self.check(data.len(), what)?;
        Ok(Buf { handle: self.client.create_from_slice(f32::as_bytes(data)), len: data.len() })
    }

    /// A buffer holding token ids.
    pub fn upload_ids(&self, ids: &[u32]) -> Result<Buf> {
        self.check(ids.len(), "token ids")?;
        Ok(Buf { handle: self.client.create_from_slice(u32::as_bytes(ids)), len: ids.len() })
    }

    /// Overwrites `buf` with `data` (of its length).
    pub fn write(&self, buf: &Buf, data: &[f32]) -> Result<()> {
        if data.len() != buf.len {
            return Err(Error::Mismatch(format!("{} values for a buffer of {}", data.len(), buf.len)));
        }
        let src = self.upload(data, "a copy")?;
        self.copy(&src, buf);
        Ok(())
    }

    /// A buffer of `len` values that a kernel writes before anything reads it.
    pub fn scratch(&self, len: usize, what: &str) -> Result<Buf> {
        let bytes = self.check(len, what)?;
        Ok(Buf { handle: self.client.empty(bytes.max(4)), len })
    }

    /// The values of `buf`, once every launch before has finished.
    pub fn read(&self, buf: &Buf) -> Result<Vec<f32>> {
        let bytes = self.client.read_one(buf.handle.clone()).map_err(|e| self.lost(e))?;
        Ok(f32::from_bytes(&bytes)[..buf.len].to_vec())
    }

    /// Bytes the device holds for this process now (buffers and their pools).
    pub fn reserved_bytes(&self) -> u64 {
        self.client.memory_usage().map_or(0, |u| u.bytes_reserved)
    }

    pub(crate) fn lost(&self, e: impl std::fmt::Debug) -> Error {
        Error::Device(format!("the GPU ({}) failed: {e:?}", self.name))
    }

    fn arg(&self, buf: &Buf) -> ArrayArg<R> {
        // SAFETY: `buf.len` is the length its handle was made with (see `Buf`).
        unsafe { ArrayArg::from_raw_parts(buf.handle.clone(), buf.len) }
    }

    /// C (+)= op(A)·op(B) over `batch` (`bdh_kernels::matmul_batched`; `causal`
    /// keeps only entries below the diagonal). Items that sum into one C (a zero C
    /// offset along a level) run one launch after another, the later ones
    /// accumulating and the last applying the ReLU; the other items of a launch
    /// run side by side.
    pub fn matmul(&self, c: &Buf, a: &Buf, b: &Buf, p: MatMul, batch: Batch, causal: bool) {
        debug_assert_eq!(p.ld, [0; 3], "the device matmul takes packed operands");
        let Batch { count, a: sa, b: sb, c: sc } = batch;
        let summed = [0, 1].map(|l| sc[l] == 0 && count[l] > 1);
        // Along a summed level each launch takes one item; along the others, all.
        let runs = [0, 1].map(|l| if summed[l] { count[l] } else { 1 });
        let per = [0, 1].map(|l| if summed[l] { 1 } else { count[l].max(1) });
        let keep = |s: [usize; 2]| [0, 1].map(|l| if summed[l] { 0 } else { s[l] });
        let (ka, kb, kc) = (keep(sa), keep(sb), keep(sc));
        let x = p.n.div_ceil(BLOCK * SIDE as usize) as u32;
        let y = p.m.div_ceil(BLOCK * SIDE as usize) as u32;
        // One-row products (the step's) split k over lanes instead: a 4×4 block per
        // unit would leave most units idle and each summing all of k.
        let one_row = p.m == 1 && !p.a_t && !p.b_t && !causal && per[0] == 1 && !self.bf16;
        for i0 in 0..runs[0] {
            for i1 in 0..runs[1] {
                let base = |s: [usize; 2]| i0 * s[0] + i1 * s[1];
                let relu = p.relu && (i0, i1) == (runs[0] - 1, runs[1] - 1);
                let acc = p.accumulate || i0 + i1 > 0;
                if one_row {
                    kernels::matvec::launch::<R>(
                        &self.client,
                        CubeCount::Static(p.n.div_ceil(COLUMNS as usize) as u32, 1, per[1] as u32),
                        CubeDim::new_2d(COLUMNS, LANES),
                        self.arg(a),
                        self.arg(b),
                        self.arg(c),
                        p.k,
                        p.n,
                        base(sa),
                        base(sb),
                        base(sc),
                        ka[1],
                        kb[1],
                        kc[1],
                        relu,
                        acc,
                    );
                    continue;
                }
                kernels::matmul::launch::<R>(
                    &self.client,
                    CubeCount::Static(x, y, (per[0] * per[1]) as u32),
                    CubeDim::new_2d(SIDE, SIDE),
                    self.arg(a),
                    self.arg(b),
                    self.arg(c),
                    p.m,
                    p.k,
                    p.n,
                    per[1],
                    base(sa),
                    base(sb),
                    base(sc),
                    ka[0],
                    ka[1],
                    kb[0],
                    kb[1],
                    kc[0],
                    kc[1],
                    p.a_t,
                    p.b_t,
                    causal,
                    relu,
                    acc,
                    self.bf16,
                );
            }
        }
    }

    /// Parameter-free LayerNorm of each row of `d` values of `x`, 1/σ into `rstd`.
    pub fn layer_norm(&self, x: &Buf, rstd: &Buf, d: usize) {
        let rows = x.len / d;
        kernels::layer_norm::launch::<R>(&self.client, grid(rows), line(), self.arg(x), self.arg(rstd), rows, d);
    }

    /// `out[r] = table[ids[r]]`, rows of `d`.
    pub fn gather(&self, table: &Buf, ids: &Buf, out: &Buf, d: usize) {
        let rows = ids.len;
        let len = rows * d;
        kernels::gather_rows::launch::<R>(
            &self.client,
            grid(len),
            line(),
            self.arg(table),
            self.arg(ids),
            self.arg(out),
            rows,
            d,
        );
    }

    /// RoPE of rows of `n` of `x` into `out`, with (t, n/2) tables; back by the
    /// angles with `inverse`.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(&self, x: &Buf, cos: &Buf, sin: &Buf, out: &Buf, t: usize, n: usize, inverse: bool) {
        let pairs = x.len / 2;
        kernels::rope::launch::<R>(
            &self.client,
            grid(pairs),
            line(),
            self.arg(x),
            self.arg(cos),
            self.arg(sin),
            self.arg(out),
            pairs,
            t,
            n,
            inverse,
        );
    }

    /// Scores (·, H, T, T) below the diagonal times the powers (H, T) at i − j.
    pub fn decay_scores(&self, s: &Buf, powers: &Buf, h: usize, t: usize) {
        let len = s.len;
        kernels::decay_scores::launch::<R>(&self.client, grid(len), line(), self.arg(s), self.arg(powers), len, h, t);
    }

    /// `out = a ⊙ b`, times `keep` if given (dropout's scales).
    pub fn mul(&self, a: &Buf, b: &Buf, keep: Option<&Buf>, out: &Buf) {
        let len = out.len;
        let k = self.arg(keep.unwrap_or(a));
        kernels::mul::launch::<R>(
            &self.client,
            grid(len),
            line(),
            self.arg(a),
            self.arg(b),
            k,
            self.arg(out),
            len,
            keep.is_some(),
        );
    }

    /// `out = a + b`.
    pub fn add(&self, a: &Buf, b: &Buf, out: &Buf) {
        let len = out.len;
        kernels::add::launch::<R>(&self.client, grid(len), line(), self.arg(a), self.arg(b), self.arg(out), len);
    }

    /// Block i of `per` values of `x` times `gamma[i]`.
    pub fn scale_blocks(&self, x: &Buf, gamma: &Buf, per: usize) {
        let len = x.len;
        kernels::scale_blocks::launch::<R>(&self.client, grid(len), line(), self.arg(x), self.arg(gamma), len, per);
    }

    /// `out = x` with row r of `n` values times `s[r mod |s|]`.
    pub fn scale_rows(&self, out: &Buf, x: &Buf, s: &Buf, n: usize) {
        let len = out.len;
        kernels::scale_rows::launch::<R>(
            &self.client,
            grid(len),
            line(),
            self.arg(out),
            self.arg(x),
            self.arg(s),
            len,
            n,
        );
    }

    /// `rho (H, N, D) += xr (H, N) ⊗ v (D)`.
    pub fn outer_add(&self, rho: &Buf, xr: &Buf, v: &Buf) {
        let (len, d) = (rho.len, v.len);
        kernels::outer_add::launch::<R>(
            &self.client,
            grid(len),
            line(),
            self.arg(rho),
            self.arg(xr),
            self.arg(v),
            len,
            d,
        );
    }

    /// Per row of `v` logits, its cross-entropy against `targets`, into `out`.
    pub fn cross_entropy(&self, logits: &Buf, targets: &Buf, out: &Buf, v: usize) {
        let rows = targets.len;
        kernels::cross_entropy::launch::<R>(
            &self.client,
            grid(rows),
            line(),
            self.arg(logits),
            self.arg(targets),
            self.arg(out),
            rows,
            v,
        );
    }
}

/// A cube of [`LINE`] units in a row.
pub(crate) fn line() -> CubeDim {
    CubeDim::new_1d(LINE)
}

/// Enough cubes of [`LINE`] units for `units`, spread over two grid dimensions so
/// that none passes [`MAX_CUBES`].
pub(crate) fn grid(units: usize) -> CubeCount {
    let cubes = units.div_ceil(LINE as usize).max(1);
    let x = cubes.min(MAX_CUBES);
    CubeCount::Static(x as u32, cubes.div_ceil(x) as u32, 1)
}
