//! Dense matrix product, backed by the `gemm` crate (AVX-512 kernels chosen at run time).

use rayon::prelude::*;

use crate::elementwise::relu_block as relu;
use crate::simd::{dot16, multiversion};

/// Dimensions and operand layouts of `C (m×n) [+]= op(A) (m×k) · op(B) (k×n)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMul {
    /// Rows of C and of op(A).
    pub m: usize,
    /// Inner dimension.
    pub k: usize,
    /// Columns of C and of op(B).
    pub n: usize,
    /// A is stored transposed, as a row-major k×m matrix.
    pub a_t: bool,
    /// B is stored transposed, as a row-major n×k matrix.
    pub b_t: bool,
    /// Add the product to C instead of overwriting it.
    pub accumulate: bool,
    /// Let the product use every thread of the current rayon pool (for products
    /// large enough to be worth splitting and not already inside a parallel loop).
    pub parallel: bool,
    /// Row strides of A, B and C as stored (0: packed, the stored row length), to
    /// work on a block of a larger matrix.
    pub ld: [usize; 3],
    /// Apply `max(·, 0)` to C after the product (a ReLU epilogue, while C is in cache).
    pub relu: bool,
}

impl MatMul {
    /// `C = A · B` with A m×k and B k×n, both stored as is.
    pub fn new(m: usize, k: usize, n: usize) -> Self {
        MatMul { m, k, n, a_t: false, b_t: false, accumulate: false, parallel: false, ld: [0; 3], relu: false }
    }
    /// Row strides of the stored A, B and C (see [`MatMul::ld`]).
    pub fn ld(self, a: usize, b: usize, c: usize) -> Self {
        MatMul { ld: [a, b, c], ..self }
    }
    /// Stored shapes (rows, cols) and row strides of A, B and C.
    fn layout(&self) -> [(usize, usize, usize); 3] {
        let a = if self.a_t { (self.k, self.m) } else { (self.m, self.k) };
        let b = if self.b_t { (self.n, self.k) } else { (self.k, self.n) };
        let c = (self.m, self.n);
        let with = |(r, c): (usize, usize), ld: usize| (r, c, if ld == 0 { c } else { ld });
        [with(a, self.ld[0]), with(b, self.ld[1]), with(c, self.ld[2])]
    }
    /// A is stored transposed (k×m).
    pub fn a_t(self) -> Self {
        MatMul { a_t: true, ..self }
    }
    /// B is stored transposed (n×k).
    pub fn b_t(self) -> Self {
        MatMul { b_t: true, ..self }
    }
    /// Accumulate into C.
    pub fn acc(self) -> Self {
        MatMul { accumulate: true, ..self }
    }
    /// Split the product over the rayon pool.
    pub fn par(self) -> Self {
        MatMul { parallel: true, ..self }
    }
    /// Follow the product with a ReLU on C.
    pub fn relu(self) -> Self {
        MatMul { relu: true, ..self }
    }
    /// Times `items` such products (see [`crate::profile`]), named by their layout
    /// and whether they were asked for as a batch.
    fn span(&self, items: usize, batched: bool) -> crate::profile::Span {
        const NAMES: [&str; 8] = [
            "matmul",
            "matmul Bᵀ",
            "matmul Aᵀ",
            "matmul AᵀBᵀ",
            "batched matmul",
            "batched matmul Bᵀ",
            "batched matmul Aᵀ",
            "batched matmul AᵀBᵀ",
        ];
        let name = NAMES[usize::from(self.b_t) + 2 * usize::from(self.a_t) + 4 * usize::from(batched)];
        let flops = 2.0 * (self.m * self.k * self.n * items) as f64;
        crate::profile::span(name, [self.m, self.k, self.n], flops)
    }
    /// Panics unless every element the product touches lies inside its slice.
    fn check(&self, c: &[f32], a: &[f32], b: &[f32]) {
        for ((name, len), (rows, cols, ld)) in
            [("A", a.len()), ("B", b.len()), ("C", c.len())].into_iter().zip(self.layout())
        {
            assert!(ld >= cols, "matmul: {name} row stride {ld} < {cols} columns");
            let need = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * ld + cols };
            assert!(len >= need, "matmul: {name} ({rows}×{cols}, stride {ld}) needs {need} elements, has {len}");
        }
    }
}

thread_local! {
    /// Per-thread scratch for a transposed B, grown to the largest seen.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a thread's scratch buffer, taken out of its cell for the call, so a
/// task that rayon runs on this thread meanwhile (work stealing inside a parallel
/// product) finds the cell free instead of borrowed.
pub(crate) fn with_scratch<R>(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>>,
    f: impl FnOnce(&mut Vec<f32>) -> R,
) -> R {
    let mut buf = cell.take();
    let out = f(&mut buf);
    cell.set(buf);
    out
}

/// Up to this many rows of A, the product skips gemm's packing of B.
const FEW_ROWS: usize = 16;

multiversion! {
/// `C [+]= A · B` for a few rows of A (m ≤ [`FEW_ROWS`]): each row of B is read once
/// and scaled into every row of C, so B (a whole weight, for a short prompt or one
/// decoding step) is streamed once instead of packed.
#[allow(clippy::too_many_arguments)]
fn few_rows(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    accumulate: bool,
) {
    if !accumulate {
        for i in 0..m {
            c[i * ldc..i * ldc + n].fill(0.0);
        }
    }
    for p in 0..k {
        let row = &b[p * ldb..p * ldb + n];
        for i in 0..m {
            let s = a[i * lda + p];
            if s != 0.0 {
                for (o, &x) in c[i * ldc..i * ldc + n].iter_mut().zip(row) {
                    *o += s * x;
                }
            }
        }
    }
}
}

multiversion! {
/// `C [+]= A · Bᵀ` for a few rows of A (m ≤ [`FEW_ROWS`]), B stored n×k (a Linear's
/// weight, out × in): each entry is a dot product of a row of A with a row of B, both
/// contiguous, so B is streamed once instead of transposed and packed (which for one
/// decoding step's row cost more than the product).
#[allow(clippy::too_many_arguments)]
fn few_rows_bt(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    accumulate: bool,
) {
    for j in 0..n {
        let row = &b[j * ldb..j * ldb + k];
        for i in 0..m {
            let dot = dot16(row, &a[i * lda..i * lda + k]);
            let o = &mut c[i * ldc + j];
            *o = if accumulate { *o + dot } else { dot };
        }
    }
}
}

/// `dst` (packed `cols × rows`) = the transpose of `src` (`rows × cols`, row stride `ld`).
fn transpose_strided(dst: &mut [f32], src: &[f32], rows: usize, cols: usize, ld: usize) {
    let (whole_rows, whole_cols) = (rows - rows % SQUARE, cols - cols % SQUARE);
    transpose_squares(dst, src, (whole_rows, whole_cols), rows, ld);
    // the edges: the rows past the last whole square, then the columns
    for r in whole_rows..rows {
        for c in 0..cols {
            dst[c * rows + r] = src[r * ld + c];
        }
    }
    for c in whole_cols..cols {
        for r in 0..whole_rows {
            dst[c * rows + r] = src[r * ld + c];
        }
    }
}

/// Side of the squares [`transpose_squares`] moves: a row of one is a cache line.
const SQUARE: usize = 16;

multiversion! {
/// The whole `SQUARE`×`SQUARE` squares of [`transpose_strided`] (the first `whole`
/// rows and columns of `src`), each read a row and written a column at a time
/// through registers, so every cache line of `dst` is written whole, once.
fn transpose_squares(dst: &mut [f32], src: &[f32], whole: (usize, usize), rows: usize, ld: usize) {
    let (whole_rows, whole_cols) = whole;
    for r0 in (0..whole_rows).step_by(SQUARE) {
        for c0 in (0..whole_cols).step_by(SQUARE) {
            let mut square = [[0.0f32; SQUARE]; SQUARE];
            for (i, row) in square.iter_mut().enumerate() {
                row.copy_from_slice(&src[(r0 + i) * ld + c0..][..SQUARE]);
            }
            for j in 0..SQUARE {
                let out: &mut [f32; SQUARE] =
                    (&mut dst[(c0 + j) * rows + r0..][..SQUARE]).try_into().expect("a row of a square");
                for (i, o) in out.iter_mut().enumerate() {
                    *o = square[i][j];
                }
            }
        }
    }
}
}

/// `C [+]= op(A) · op(B)`, see [`MatMul`].
///
/// gemm packs a transposed B several times slower than a row-major one (a
/// transposed A costs nothing extra), so a transposed B is first copied into a
/// per-thread row-major buffer: k·n moves against the product's m·n·k.
pub fn matmul(c: &mut [f32], a: &[f32], b: &[f32], p: MatMul) {
    let _span = p.span(1, false);
    product(c, a, b, p);
    if p.relu {
        let ldc = p.layout()[2].2;
        c.chunks_mut(ldc).take(p.m).for_each(|row| relu(&mut row[..p.n]));
    }
}

/// The product of [`matmul`], without its epilogue.
fn product(c: &mut [f32], a: &[f32], b: &[f32], p: MatMul) {
    p.check(c, a, b);
    let MatMul { m, k, n, .. } = p;
    let [(_, _, lda), (br, bc, ldb), (_, _, ldc)] = p.layout();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !p.accumulate {
            c.chunks_mut(ldc).take(m).for_each(|row| row[..n].fill(0.0));
        }
        return;
    }
    if m <= FEW_ROWS && !p.a_t && !p.b_t {
        return few_rows(c, a, b, m, k, n, lda, ldb, ldc, p.accumulate);
    }
    if m <= FEW_ROWS && !p.a_t {
        return few_rows_bt(c, a, b, m, k, n, lda, ldb, ldc, p.accumulate);
    }
    let a_strides = if p.a_t { (1, lda) } else { (lda, 1) };
    if !p.b_t {
        return gemm_strided(c, a, b, (m, k, n), a_strides, (ldb, 1), ldc, p);
    }
    with_scratch(&SCRATCH, |tb| {
        tb.resize(br * bc, 0.0);
        transpose_strided(tb, b, br, bc, ldb);
        gemm_strided(c, a, tb, (m, k, n), a_strides, (n, 1), ldc, p);
    });
}

/// The gemm call: A (m×k) and B (k×n) with (row, column) strides, C (m×n) row-major
/// with row stride `ldc`; `matmul`'s `check` has bounded every index they form.
#[allow(clippy::too_many_arguments)]
fn gemm_strided(
    c: &mut [f32],
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    (a_rs, a_cs): (usize, usize),
    (b_rs, b_cs): (usize, usize),
    ldc: usize,
    p: MatMul,
) {
    let parallelism =
        if p.parallel { gemm::Parallelism::Rayon(rayon::current_num_threads()) } else { gemm::Parallelism::None };
    debug_assert!(a.len() > (m - 1) * a_rs + (k - 1) * a_cs && b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: `check` proved every index the strides can form lies inside its
    // slice (a transposed copy of B is packed, so it fits by construction); C is
    // borrowed mutably, so it aliases neither A nor B.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            p.accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Scalar twin of [`matmul`]: the triple loop, accumulated in f64.
#[cfg(test)]
pub(crate) fn matmul_scalar(c: &mut [f32], a: &[f32], b: &[f32], p: MatMul) {
    p.check(c, a, b);
    let MatMul { m, k, n, .. } = p;
    let [(_, _, lda), (_, _, ldb), (_, _, ldc)] = p.layout();
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for q in 0..k {
                let av = if p.a_t { a[q * lda + i] } else { a[i * lda + q] };
                let bv = if p.b_t { b[j * ldb + q] } else { b[q * ldb + j] };
                s += av as f64 * bv as f64;
            }
            let dst = &mut c[i * ldc + j];
            *dst = if p.accumulate { *dst + s as f32 } else { s as f32 };
            if p.relu {
                *dst = dst.max(0.0);
            }
        }
    }
}

/// `dst (cols×rows) = srcᵀ` for a row-major `src` (rows×cols), for weights whose
/// transposed copy is reused across many products.
pub fn transpose(dst: &mut [f32], src: &[f32], rows: usize, cols: usize) {
    assert!(src.len() >= rows * cols && dst.len() >= rows * cols, "transpose: {rows}×{cols} does not fit");
    let _span = crate::profile::span("transpose", [rows, cols, 0], 0.0);
    transpose_strided(dst, src, rows, cols, cols);
}

/// A two-level batch of equally shaped products, item (i, j) for `i < count[0]`,
/// `j < count[1]`: each operand of item (i, j) starts `i·stride[0] + j·stride[1]`
/// elements into its slice. A zero stride of C sums the products along that level
/// into one C (in order of the index, the first one as [`MatMul::accumulate`] says).
///
/// For BDH the levels are (batch row, head): `x = v · encoder_h` reads the same v for
/// every head (A strides `[T·D, 0]`) and the same weight for every row (B strides
/// `[0, D·N]`); the decoder sums over heads (C strides `[T·D, 0]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Items per level: (outer, inner).
    pub count: [usize; 2],
    /// Offsets of A between items, per level.
    pub a: [usize; 2],
    /// Offsets of B between items, per level.
    pub b: [usize; 2],
    /// Offsets of C between items, per level (0: summed along that level).
    pub c: [usize; 2],
}

/// `C [+]= op(A) · op(B)` for every item of `batch`, items spread over the rayon pool
/// (each product is split over it too when there are fewer items than threads).
/// A ReLU epilogue applies to each C once its sum is complete.
pub fn matmul_batched(c: &mut [f32], a: &[f32], b: &[f32], p: MatMul, batch: Batch) {
    let Batch { count: [outer, inner], a: [a0, a1], b: [b0, b1], c: [c0, c1] } = batch;
    let _span = p.span(outer * inner, true);
    if outer == 0 || inner == 0 {
        return;
    }
    // Items summed into one C run in sequence; distinct Cs run in parallel.
    let (tasks, c_step, summed) = match (c0, c1) {
        (0, 0) => (1, c.len(), outer * inner),
        (_, 0) => (outer, c0, inner),
        (0, _) => (inner, c1, outer),
        _ => {
            assert_eq!(
                c0,
                inner * c1,
                "matmul_batched: C items must be packed (outer stride = inner count × inner stride)"
            );
            (outer * inner, c1, 1)
        }
    };
    let threads = rayon::current_num_threads();
    let inner_p = MatMul { relu: false, parallel: p.parallel || tasks < threads, ..p };
    let item = |task: usize, s: usize| match (c0, c1) {
        (0, 0) => (s / inner, s % inner),
        (_, 0) => (task, s),
        (0, _) => (s, task),
        _ => (task / inner, task % inner),
    };
    let run = |task: usize, c: &mut [f32]| {
        for s in 0..summed {
            let (i, j) = item(task, s);
            let q = if s == 0 { inner_p } else { inner_p.acc() };
            product(c, &a[i * a0 + j * a1..], &b[i * b0 + j * b1..], q);
        }
        if p.relu {
            let ldc = p.layout()[2].2;
            c.chunks_mut(ldc).take(p.m).for_each(|row| relu(&mut row[..p.n]));
        }
    };
    if tasks == 1 {
        return run(0, c);
    }
    assert!(c.len() >= (tasks - 1) * c_step, "matmul_batched: C holds fewer than {tasks} items");
    c.par_chunks_mut(c_step).take(tasks).enumerate().for_each(|(task, c)| run(task, c));
}
