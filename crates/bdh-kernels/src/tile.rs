//! The products of attention tiles: `C[i][..w] += Σ_p A[i][p] · B[p][..w]` for a
//! few dozen rows, an inner dimension of a head's width or a tile's length, and
//! `w` a multiple of 16. Far too small for a general product's packing (its set-up
//! cost more than the multiply-adds): here a few rows of C stay in vector registers
//! while the rows of B stream past, every operand read where it lies.

use crate::simd::multiversion;

/// Lanes of the widest vector: every `w` is a multiple of it.
pub(crate) const LANES: usize = 16;

/// `C[i][..w] += Σ_{p<k} A[i·lda + p] · B[p·ldb..][..w]` for `i < m`: C rows of
/// stride `ldc`, `w` a multiple of [`LANES`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn tile(c: &mut [f32], ldc: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize, (m, k, w): Dims) {
    assert!(w % LANES == 0, "tile: width {w} is not a multiple of {LANES}");
    if m == 0 || k == 0 {
        return;
    }
    assert!(
        c.len() >= (m - 1) * ldc + w && a.len() >= (m - 1) * lda + k && b.len() >= (k - 1) * ldb + w,
        "tile: an operand is shorter than its {m}×{k}×{w} product"
    );
    let mut col = 0;
    while col < w {
        let (c, b) = (&mut c[col..], &b[col..]);
        match w - col {
            16 => tile16(c, ldc, a, lda, b, ldb, m, k),
            32 => tile32(c, ldc, a, lda, b, ldb, m, k),
            48 => tile48(c, ldc, a, lda, b, ldb, m, k),
            _ => tile64(c, ldc, a, lda, b, ldb, m, k),
        }
        col += (w - col).min(64);
    }
}

/// (m, k, w) of a [`tile`] product.
pub(crate) type Dims = (usize, usize, usize);

/// Rows `R` at a time, width `W`, the sums in `acc` (registers, for the sizes used).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows<const R: usize, const W: usize>(
    c: &mut [f32],
    ldc: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    k: usize,
) {
    let mut acc = [[0.0f32; W]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        acc.copy_from_slice(&c[r * ldc..r * ldc + W]);
    }
    for p in 0..k {
        let brow: &[f32; W] = b[p * ldb..p * ldb + W].try_into().expect("a row of W");
        for (r, acc) in acc.iter_mut().enumerate() {
            let av = a[r * lda + p];
            for x in 0..W {
                acc[x] += av * brow[x];
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        c[r * ldc..r * ldc + W].copy_from_slice(acc);
    }
}

macro_rules! widths {
    ($($name:ident = $w:expr, $r:expr);*) => {$(
        multiversion! {
        /// [`tile`] for one block of columns of this width, its rows a few at a time
        /// (as many as keep about sixteen vectors of sums in registers).
        #[allow(clippy::too_many_arguments)]
        fn $name(c: &mut [f32], ldc: usize, a: &[f32], lda: usize, b: &[f32], ldb: usize, m: usize, k: usize) {
            let mut i = 0;
            while i + $r <= m {
                rows::<$r, $w>(&mut c[i * ldc..], ldc, &a[i * lda..], lda, b, ldb, k);
                i += $r;
            }
            while i < m {
                rows::<1, $w>(&mut c[i * ldc..], ldc, &a[i * lda..], lda, b, ldb, k);
                i += 1;
            }
        }
        }
    )*};
}
widths!(tile16 = 16, 8; tile32 = 32, 8; tile48 = 48, 6; tile64 = 64, 4);
