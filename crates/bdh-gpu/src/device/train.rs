//! The launchers of the training kernels: the backward's, the optimizer's and
//! dropout's.

use bdh::Result;
use cubecl::prelude::*;

use super::{grid, line, Buf, Device};
use crate::kernels::{backward, dropout, optimizer};

/// Values each part of [`Device::sum_squares`] sums.
const PART: usize = 1024;

/// The scalars of one AdamW update (see `kernels::optimizer::adamw`), formed on the
/// host in f64 and rounded to f32 as the CPU's optimizer forms them.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub scale: f32,
    pub clip: f32,
    pub decay: f32,
    pub w1: f32,
    pub beta2: f32,
    pub w2: f32,
    pub bc2: f32,
    pub eps: f32,
    pub step: f32,
}

impl<R: Runtime> Device<R> {
    /// Rows of `v` logits: the mean cross-entropy's gradient into `grad`, `scale` = 1/rows.
    pub fn cross_entropy_backward(&self, logits: &Buf, targets: &Buf, grad: &Buf, v: usize, scale: f32) {
        let rows = targets.len;
        backward::cross_entropy_backward::launch::<R>(
            &self.client,
            grid(rows),
            line(),
            self.arg(logits),
            self.arg(targets),
            self.arg(grad),
            rows,
            v,
            scale,
        );
    }

    /// The LayerNorm's backward of rows of `d`, in place on `g`.
    pub fn layer_norm_backward(&self, g: &Buf, xhat: &Buf, rstd: &Buf, d: usize) {
        let rows = g.len / d;
        backward::layer_norm_backward::launch::<R>(
            &self.client,
            grid(rows),
            line(),
            self.arg(g),
            self.arg(xhat),
            self.arg(rstd),
            rows,
            d,
        );
    }

    /// The gate's backward (dz in `dx`; dy, dx and z out), with dropout's scales if given.
    pub fn gate_backward(&self, dx: &Buf, dy: &Buf, z: &Buf, x: &Buf, y: &Buf, keep: Option<&Buf>) -> Result<()> {
        let len = dx.len;
        let none;
        let keep_or = match keep {
            Some(k) => k,
            None => {
                none = self.scratch(1, "no dropout")?;
                &none
            }
        };
        backward::gate_backward::launch::<R>(
            &self.client,
            grid(len),
            line(),
            self.arg(dx),
            self.arg(dy),
            self.arg(z),
            self.arg(x),
            self.arg(y),
            self.arg(keep_or),
            len,
            keep.is_some(),
        );
        Ok(())
    }

    /// `dx = [x > 0] ⊙ (dx + extra)`.
    pub fn relu_backward_add(&self, dx: &Buf, extra: &Buf, x: &Buf) {
        let len = dx.len;
        backward::relu_backward_add::launch::<R>(
            &self.client,
            grid(len),
            line(),
            self.arg(dx),
            self.arg(extra),
            self.arg(x),
            len,
        );
    }

    /// `out[g] += Σ_j src[g, j]`, groups of `len` values, `k` per group.
    pub fn add_groups(&self, out: &Buf, src: &Buf, len: usize, k: usize) {
        let total = out.len;
        backward::add_groups::launch::<R>(
            &self.client,
            grid(total),
            line(),
            self.arg(out),
            self.arg(src),
            total,
            len,
            k,
        );
    }

    /// The embedding's gradient: row r of `grad` (V, D) += the rows of `dv` at the
    /// positions of token r (`positions[starts[r]..starts[r + 1]]`).
    pub fn embed_backward(&self, grad: &Buf, dv: &Buf, positions: &Buf, starts: &Buf, d: usize) {
        let vocab = grad.len / d;
        backward::embed_backward::launch::<R>(
            &self.client,
            grid(vocab * d),
            line(),
            self.arg(grad),
            self.arg(dv),
            self.arg(positions),
            self.arg(starts),
            vocab,
            d,
        );
    }

    /// The mean cross-entropy of rows of `v` logits against `targets` (the rows'
    /// losses into `losses`), summed in f64 as the CPU sums it.
    pub fn mean_cross_entropy(&self, logits: &Buf, targets: &Buf, losses: &Buf, v: usize) -> Result<f32> {
        self.cross_entropy(logits, targets, losses, v);
        let each = self.read(losses)?;
        Ok((each.iter().map(|&l| l as f64).sum::<f64>() / each.len() as f64) as f32)
    }

    /// `dst = src`.
    pub fn copy(&self, src: &Buf, dst: &Buf) {
        let len = dst.len;
        backward::copy::launch::<R>(&self.client, grid(len), line(), self.arg(src), self.arg(dst), len);
    }

    /// `dst = 0`.
    pub fn zero(&self, dst: &Buf) {
        let len = dst.len;
        backward::zero::launch::<R>(&self.client, grid(len), line(), self.arg(dst), len);
    }

    /// Σ (g · scale)² over every buffer of `gs`: parts of 1024 squares summed on the
    /// device in f32, the parts read back at once and added here in f64 (the CPU adds
    /// every square in f64).
    pub fn sum_squares(&self, gs: &[&Buf], scale: f32) -> Result<f64> {
        let parts: usize = gs.iter().map(|g| g.len.div_ceil(PART)).sum();
        let out = self.scratch(parts.max(1), "the gradient's norm")?;
        let mut first = 0;
        for g in gs {
            let mine = g.len.div_ceil(PART);
            optimizer::sum_squares::launch::<R>(
                &self.client,
                grid(mine),
                line(),
                self.arg(g),
                self.arg(&out),
                g.len,
                PART,
                first,
                scale,
            );
            first += mine;
        }
        Ok(self.read(&out)?.iter().take(parts).map(|&x| x as f64).sum())
    }

    /// One AdamW update of `p` from `g` (zeroed after), moments `m` and `v`.
    pub fn adamw(&self, p: &Buf, g: &Buf, m: &Buf, v: &Buf, s: AdamStep) {
        let len = p.len;
        optimizer::adamw::launch::<R>(
            &self.client,
            grid(len),
            line(),
            self.arg(p),
            self.arg(g),
            self.arg(m),
            self.arg(v),
            len,
            s.scale,
            s.clip,
            s.decay,
            s.w1,
            s.beta2,
            s.w2,
            s.bc2,
            s.eps,
            s.step,
        );
    }

    /// Dropout's scales into `keep`, blocks of `block` values, block j from ChaCha8
    /// stream `first + j` under `key` (8 words).
    pub fn dropout_mask(&self, keep: &Buf, key: &Buf, block: usize, first: u32, prob: f32) {
        let units = (keep.len / block) * block.div_ceil(16);
        dropout::dropout_mask::launch::<R>(
            &self.client,
            grid(units),
            line(),
            self.arg(keep),
            self.arg(key),
            keep.len,
            block,
            first,
            prob,
            1.0 / (1.0 - prob),
        );
    }
}
