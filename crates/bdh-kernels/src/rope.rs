//! Rotary position encoding on neuron pairs (2j, 2j+1), as bdh.py's `Attention.rope`.

use rayon::prelude::*;

use crate::elementwise::PAR_MIN;
use crate::simd::multiversion;

/// Which way to rotate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeDirection {
    /// `R_t`: the forward rotation of bdh.py.
    Forward,
    /// `R_tᵀ = R_t⁻¹`: used to carry a gradient back through the rotation.
    Inverse,
}

/// Rotates each row of `x` (rows × n) into `out`. The tables hold T positions,
/// (T, n/2), and row r sits at position `r mod T`, so a (B, H, T, N) tensor takes
/// (T, N/2) tables: pair j of row r turns by the angle whose cosine and sine are
/// `cos[(r mod T)·n/2 + j]`, `sin[…]`:
/// `out[2j] = x[2j]·c − x[2j+1]·s`, `out[2j+1] = x[2j+1]·c + x[2j]·s`.
pub fn rope(out: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32], n: usize, dir: RopeDirection) {
    let _span = crate::profile::span("rope", [x.len(), n, 0], 0.0);
    assert!(n >= 2 && n.is_multiple_of(2) && out.len() == x.len() && cos.len() == sin.len(), "rope: sizes");
    let period = cos.len() * 2;
    assert!(period > 0 && x.len().is_multiple_of(period), "rope: {} values are not whole (T, N) blocks", x.len());
    if x.len() < PAR_MIN {
        return out.chunks_mut(period).zip(x.chunks(period)).for_each(|(o, x)| rope_block(o, x, cos, sin, n, dir));
    }
    out.par_chunks_mut(period).zip(x.par_chunks(period)).for_each(|(o, x)| rope_block(o, x, cos, sin, n, dir));
}

multiversion! {
/// [`rope`] of one (T, n) block with (T, n/2) tables, on the calling thread.
pub(crate) fn rope_block(out: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32], n: usize, dir: RopeDirection) {
    let sign = match dir {
        RopeDirection::Forward => 1.0,
        RopeDirection::Inverse => -1.0,
    };
    let half = n / 2;
    for (row, (orow, xrow)) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)).enumerate() {
        let c = &cos[row * half..(row + 1) * half];
        let s = &sin[row * half..(row + 1) * half];
        for (j, (o, xv)) in orow.chunks_exact_mut(2).zip(xrow.chunks_exact(2)).enumerate() {
            let (cj, sj) = (c[j], sign * s[j]);
            o[0] = xv[0] * cj - xv[1] * sj;
            o[1] = xv[1] * cj + xv[0] * sj;
        }
    }
}
}

/// Scalar twin of [`rope`], written as bdh.py writes it:
/// `v_rot = stack(−v[1::2], v[::2])`, `out = v·cos + v_rot·sin`, cos/sin per element.
#[cfg(test)]
pub(crate) fn rope_scalar(out: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32], n: usize, dir: RopeDirection) {
    let rows = x.len() / n;
    let positions = cos.len() * 2 / n;
    for r in 0..rows {
        let t = r % positions;
        for i in 0..n {
            let v = x[r * n + i];
            let v_rot = if i % 2 == 0 { -x[r * n + i + 1] } else { x[r * n + i - 1] };
            let c = cos[t * n / 2 + i / 2];
            let s = sin[t * n / 2 + i / 2];
            let s = if dir == RopeDirection::Inverse { -s } else { s };
            out[r * n + i] = v * c + v_rot * s;
        }
    }
}
