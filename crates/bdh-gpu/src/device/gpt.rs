//! The launchers of the GPT baseline's kernels.

use cubecl::prelude::*;

use super::{grid, line, Buf, Device};
use crate::kernels::gpt;

/// Sizes of a softmax attention: B, T, H and a head's width S.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub s: usize,
}

impl Heads {
    fn scale(&self) -> f32 {
        1.0 / (self.s as f32).sqrt()
    }
}

impl<R: Runtime> Device<R> {
    /// `x[r] = wte[ids[r]] + wpe[r mod t]`, rows of `d`.
    pub fn embed_positions(&self, wte: &Buf, wpe: &Buf, ids: &Buf, x: &Buf, t: usize, d: usize) {
        let len = x.len;
        let (a, b, c, o) = (self.arg(wte), self.arg(wpe), self.arg(ids), self.arg(x));
        gpt::embed_positions::launch::<R>(&self.client, grid(len), line(), a, b, c, o, len, t, d);
    }

    /// `out = xhat ⊙ w + b` on rows of `w.len()`.
    pub fn affine(&self, out: &Buf, xhat: &Buf, w: &Buf, b: Option<&Buf>) {
        let (len, d) = (out.len, w.len);
        let (o, x, wa, ba) = (self.arg(out), self.arg(xhat), self.arg(w), self.arg(b.unwrap_or(w)));
        gpt::affine::launch::<R>(&self.client, grid(len), line(), o, x, wa, ba, len, d, b.is_some());
    }

    /// `x += b` on rows of `b.len()`.
    pub fn add_bias(&self, x: &Buf, b: &Buf) {
        let len = x.len;
        gpt::add_bias::launch::<R>(&self.client, grid(len), line(), self.arg(x), self.arg(b), len, b.len);
    }

    /// `x += y`.
    pub fn add_into(&self, x: &Buf, y: &Buf) {
        let len = x.len;
        gpt::add_into::launch::<R>(&self.client, grid(len), line(), self.arg(x), self.arg(y), len);
    }

    /// `out = gelu(x)`.
    pub fn gelu(&self, out: &Buf, x: &Buf) {
        let len = out.len;
        gpt::gelu::launch::<R>(&self.client, grid(len), line(), self.arg(out), self.arg(x), len);
    }

    /// `g ⊙= gelu'(x)`.
    pub fn gelu_backward(&self, g: &Buf, x: &Buf) {
        let len = g.len;
        gpt::gelu_backward::launch::<R>(&self.client, grid(len), line(), self.arg(g), self.arg(x), len);
    }

    /// A LayerNorm's affine backward on rows of `w.len()`: `dw += Σ g ⊙ xhat`,
    /// `db += Σ g`, `g ⊙= w`.
    pub fn affine_backward(&self, g: &Buf, xhat: &Buf, w: &Buf, dw: &Buf, db: Option<&Buf>) {
        let d = w.len;
        let rows = g.len / d;
        let (ga, xa, wa, dwa, dba) =
            (self.arg(g), self.arg(xhat), self.arg(w), self.arg(dw), self.arg(db.unwrap_or(dw)));
        gpt::affine_backward::launch::<R>(&self.client, grid(d), line(), ga, xa, wa, dwa, dba, rows, d, db.is_some());
    }

    /// `out[c] += Σ_r x[r, c]`, rows of `out.len()`.
    pub fn column_sums(&self, out: &Buf, x: &Buf) {
        let n = out.len;
        gpt::column_sums::launch::<R>(&self.client, grid(n), line(), self.arg(out), self.arg(x), x.len / n, n);
    }

    /// `dwpe[p] += Σ_b dx[b, p]` for `dx` (B, T, D).
    pub fn positions_backward(&self, dwpe: &Buf, dx: &Buf, b: usize, t: usize, d: usize) {
        gpt::positions_backward::launch::<R>(&self.client, grid(t * d), line(), self.arg(dwpe), self.arg(dx), b, t, d);
    }

    /// Causal softmax attention of `qkv` into `y` and each query's `lse`.
    pub fn attention(&self, qkv: &Buf, y: &Buf, lse: &Buf, a: Heads) {
        let Heads { b, t, h, s } = a;
        let (q, ya, l) = (self.arg(qkv), self.arg(y), self.arg(lse));
        gpt::attention::launch::<R>(&self.client, grid(b * h * t), line(), q, ya, l, b, t, h, s, a.scale());
    }

    /// The attention's backward: `dqkv` (overwritten) from `dy`.
    pub fn attention_backward(&self, dqkv: &Buf, dy: &Buf, qkv: &Buf, y: &Buf, lse: &Buf, a: Heads) {
        let Heads { b, t, h, s } = a;
        let args = || (self.arg(dqkv), self.arg(dy), self.arg(qkv), self.arg(y), self.arg(lse));
        let (g, dya, q, ya, l) = args();
        gpt::attention_backward_q::launch::<R>(
            &self.client,
            grid(b * h * t),
            line(),
            g,
            dya,
            q,
            ya,
            l,
            b,
            t,
            h,
            s,
            a.scale(),
        );
        let (g, dya, q, ya, l) = args();
        gpt::attention_backward_kv::launch::<R>(
            &self.client,
            grid(b * h * t),
            line(),
            g,
            dya,
            q,
            ya,
            l,
            b,
            t,
            h,
            s,
            a.scale(),
        );
    }
}
