//! Element-wise steps of the BDH layer and their gradients, split into blocks over
//! the rayon pool when the tensors are large.

use rayon::prelude::*;

use crate::simd::multiversion;

/// Elements below which an element-wise kernel runs on the calling thread: a
/// fork–join costs more than the work (a recurrent step's vectors are this small).
pub(crate) const PAR_MIN: usize = 1 << 15;

/// Elements per parallel block.
const BLOCK: usize = 1 << 14;

multiversion! {
/// `x = max(x, 0)` in place, on the calling thread (the ReLU epilogue of products).
pub(crate) fn relu_block(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = v.max(0.0);
    }
}
}

multiversion! {
fn gated_product_block(z: &mut [f32], x: &[f32], y: &[f32], keep: &[f32]) {
    for ((zi, &xi), &yi) in z.iter_mut().zip(x).zip(y) {
        *zi = xi * yi;
    }
    if !keep.is_empty() {
        z.iter_mut().zip(keep).for_each(|(zi, &k)| *zi *= k);
    }
}
}

/// `z = x ⊙ y ⊙ keep`: the sparse product the decoder reads, through the dropout
/// scale `keep` (empty: no dropout).
pub fn gated_product(z: &mut [f32], x: &[f32], y: &[f32], keep: &[f32]) {
    let _span = crate::profile::span("gated product", [z.len(), 0, 0], 0.0);
    debug_assert!(x.len() == z.len() && y.len() == z.len() && (keep.is_empty() || keep.len() == z.len()));
    if z.len() < PAR_MIN {
        return gated_product_block(z, x, y, keep);
    }
    let keep_blocks = keep.par_chunks(BLOCK.min(keep.len().max(1)));
    let blocks = (z.par_chunks_mut(BLOCK), x.par_chunks(BLOCK), y.par_chunks(BLOCK));
    if keep.is_empty() {
        blocks.into_par_iter().for_each(|(z, x, y)| gated_product_block(z, x, y, &[]));
    } else {
        (blocks.0, blocks.1, blocks.2, keep_blocks)
            .into_par_iter()
            .for_each(|(z, x, y, k)| gated_product_block(z, x, y, k));
    }
}

multiversion! {
fn gated_product_backward_block(dx: &mut [f32], dy: &mut [f32], x: &[f32], y: &[f32], keep: &[f32]) {
    if !keep.is_empty() {
        dx.iter_mut().zip(keep).for_each(|(g, &k)| *g *= k);
    }
    for (((gx, gy), &xi), &yi) in dx.iter_mut().zip(dy.iter_mut()).zip(x).zip(y) {
        let on = if yi > 0.0 { 1.0 } else { 0.0 };
        *gy = *gx * xi * on;
        *gx *= yi;
    }
}
}

/// Backward of [`gated_product`] with `y = relu(y_latent)`: `dx` holds dL/dz on
/// entry; on return `dy = dz ⊙ keep ⊙ x ⊙ [y > 0]` (dL/dy_latent) and
/// `dx = dz ⊙ keep ⊙ y` (dL/dx through this path).
pub fn gated_product_backward(dx: &mut [f32], dy: &mut [f32], x: &[f32], y: &[f32], keep: &[f32]) {
    let _span = crate::profile::span("gated product backward", [dx.len(), 0, 0], 0.0);
    if dx.len() < PAR_MIN {
        return gated_product_backward_block(dx, dy, x, y, keep);
    }
    let (dxb, dyb) = (dx.par_chunks_mut(BLOCK), dy.par_chunks_mut(BLOCK));
    let (xb, yb) = (x.par_chunks(BLOCK), y.par_chunks(BLOCK));
    if keep.is_empty() {
        (dxb, dyb, xb, yb).into_par_iter().for_each(|(gx, gy, x, y)| gated_product_backward_block(gx, gy, x, y, &[]));
    } else {
        let kb = keep.par_chunks(BLOCK);
        (dxb, dyb, xb, yb, kb)
            .into_par_iter()
            .for_each(|(gx, gy, x, y, k)| gated_product_backward_block(gx, gy, x, y, k));
    }
}

multiversion! {
/// `dx = [x > 0] ⊙ (dx + extra)`: the ReLU's backward of a gradient arriving by two
/// paths, on the calling thread (the end of the attention's backward).
pub(crate) fn relu_backward_add_block(dx: &mut [f32], extra: &[f32], x: &[f32]) {
    for ((g, &e), &xi) in dx.iter_mut().zip(extra).zip(x) {
        let on = if xi > 0.0 { 1.0 } else { 0.0 };
        *g = (*g + e) * on;
    }
}
}

/// `out[g] += Σ_{j<k} src[g·k + j]` over blocks of `len` elements: `dv (B, T, D) +=
/// Σ_h dv_h (B, H, T, D)` with `len = T·D`, `k = H`: gradients summed over heads.
pub fn add_groups(out: &mut [f32], src: &[f32], len: usize, k: usize) {
    let _span = crate::profile::span("add groups", [out.len(), k, 0], 0.0);
    assert!(len > 0 && out.len().is_multiple_of(len) && out.len() * k == src.len(), "add_groups: sizes");
    let work = |(o, s): (&mut [f32], &[f32])| {
        for part in s.chunks_exact(len) {
            o.iter_mut().zip(part).for_each(|(o, &v)| *o += v);
        }
    };
    if src.len() < PAR_MIN {
        out.chunks_mut(len).zip(src.chunks(len * k)).for_each(work);
    } else {
        out.par_chunks_mut(len).zip(src.par_chunks(len * k)).for_each(work);
    }
}

/// `out = a + b`, element by element (the residual connection).
pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    let _span = crate::profile::span("add", [out.len(), 0, 0], 0.0);
    assert!(a.len() == out.len() && b.len() == out.len(), "add: sizes");
    let work = |(o, (a, b)): (&mut [f32], (&[f32], &[f32]))| {
        o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&x, &y))| *o = x + y);
    };
    if out.len() < PAR_MIN {
        work((out, (a, b)));
    } else {
        out.par_chunks_mut(BLOCK).zip(a.par_chunks(BLOCK).zip(b.par_chunks(BLOCK))).for_each(work);
    }
}

/// `buf[b, h, i, :] *= factors[h, i]` for `buf` (B, H, T, W) and `factors` (H, T):
/// a per-head, per-position scale, as a decay's powers γ_h^k weigh the rows of a
/// head (its own twin: one product per element).
pub fn scale_rows(buf: &mut [f32], factors: &[f32], h: usize, t: usize, w: usize) {
    let _span = crate::profile::span("scale rows", [buf.len(), 0, 0], 0.0);
    assert!(factors.len() == h * t && w > 0 && buf.len().is_multiple_of(h * t * w), "scale_rows: sizes");
    buf.par_chunks_mut(t * w).enumerate().for_each(|(bh, item)| {
        for (row, &f) in item.chunks_exact_mut(w).zip(&factors[bh % h * t..(bh % h + 1) * t]) {
            row.iter_mut().for_each(|x| *x *= f);
        }
    });
}

/// Scalar twins of [`relu_block`], of [`gated_product`], of [`gated_product_backward`],
/// of [`relu_backward_add_block`] and of [`add_groups`]: the definitions index by index
/// ([`add`] is its own twin).
#[cfg(test)]
pub(crate) mod scalar {
    /// Twin of [`super::relu_block`].
    pub fn relu(x: &mut [f32]) {
        for v in x.iter_mut() {
            if *v < 0.0 {
                *v = 0.0;
            }
        }
    }
    /// Twin of [`super::gated_product`].
    pub fn gated_product(z: &mut [f32], x: &[f32], y: &[f32], keep: &[f32]) {
        for i in 0..z.len() {
            z[i] = x[i] * y[i] * if keep.is_empty() { 1.0 } else { keep[i] };
        }
    }
    /// Twin of [`super::gated_product_backward`].
    pub fn gated_product_backward(dx: &mut [f32], dy: &mut [f32], x: &[f32], y: &[f32], keep: &[f32]) {
        for i in 0..dx.len() {
            let dz = dx[i] * if keep.is_empty() { 1.0 } else { keep[i] };
            dy[i] = if y[i] > 0.0 { dz * x[i] } else { 0.0 };
            dx[i] = dz * y[i];
        }
    }
    /// Twin of [`super::relu_backward_add_block`].
    pub fn relu_backward_add(dx: &mut [f32], extra: &[f32], x: &[f32]) {
        for i in 0..dx.len() {
            dx[i] = if x[i] > 0.0 { dx[i] + extra[i] } else { 0.0 };
        }
    }
    /// Twin of [`super::add_groups`].
    pub fn add_groups(out: &mut [f32], src: &[f32], len: usize, k: usize) {
        for g in 0..out.len() / len {
            for j in 0..k {
                for e in 0..len {
                    out[g * len + e] += src[(g * k + j) * len + e];
                }
            }
        }
    }
}
