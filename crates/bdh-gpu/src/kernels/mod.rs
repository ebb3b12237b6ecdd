//! The device kernels, one source for CUDA and for WGSL (Vulkan, Metal, DX12).
//!
//! Each is the twin of a CPU kernel of `bdh-kernels` (named at each) and is
//! checked against it (`tests/twins.rs`). They are launched bounds-checked: an
//! index past a buffer reads 0 and writes nothing, so a wrong size can give wrong
//! numbers (which the twins catch) but never touch memory it does not own.
//! Reductions run in the CPU kernels' order, one unit per row: on lavapipe most
//! results are bit-identical to the CPU's, on a real GPU within a few ulps
//! (fused multiply-adds).

use cubecl::prelude::*;

pub mod backward;
pub mod dropout;
pub mod gpt;
pub mod optimizer;
pub mod serve;

/// Units per cube of the element-wise and per-row kernels.
pub const LINE: u32 = 256;
/// Rows and columns of C one unit of [`matmul`] computes (a 4×4 block).
pub const BLOCK: usize = 4;
/// Units per side of a [`matmul`] cube: a cube makes a 64×64 tile of C.
pub const SIDE: u32 = 16;

/// `x` rounded to the nearest bfloat16 (ties to even), as an f32: what a product's
/// input becomes under bf16 autocast.
#[cube]
pub fn round_bf16(x: f32) -> f32 {
    let b = u32::reinterpret(x);
    f32::reinterpret((b + 0x7FFFu32 + ((b >> 16u32) & 1u32)) & 0xFFFF_0000u32)
}

/// C (+)= op(A) · op(B) for a batch of products, each unit a 4×4 block of C
/// (`bdh_kernels::matmul_batched`). Item z of the batch is (z / count1, z % count1)
/// and its operands start at `i0·s0 + i1·s1` of each buffer (strides 0 share one).
/// A is (m, k) or, with `a_t`, stored (k, m); B is (k, n) or, with `b_t`, (n, k).
/// `causal` keeps only entries below the diagonal (column < row), `relu` clamps at
/// 0 after `acc` has added the product to C; `bf16` rounds every input to bfloat16
/// first (the sums stay f32). k is summed in order, as the CPU's scalar twin sums it.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
// (`if causal { if … } }`: the outer test is a compile-time flag, the inner a run-time one)
#[allow(clippy::collapsible_if)]
pub fn matmul(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &mut Array<f32>,
    m: usize,
    k: usize,
    n: usize,
    count1: usize,
    a_base: usize,
    b_base: usize,
    c_base: usize,
    a0: usize,
    a1: usize,
    b0: usize,
    b1: usize,
    c0: usize,
    c1: usize,
    #[comptime] a_t: bool,
    #[comptime] b_t: bool,
    #[comptime] causal: bool,
    #[comptime] relu: bool,
    #[comptime] acc: bool,
    #[comptime] bf16: bool,
) {
    let z = CUBE_POS_Z as usize;
    let i0 = z / count1;
    let i1 = z % count1;
    let ao = a_base + i0 * a0 + i1 * a1;
    let bo = b_base + i0 * b0 + i1 * b1;
    let co = c_base + i0 * c0 + i1 * c1;
    let row0 = ABSOLUTE_POS_Y as usize * 4;
    let col0 = ABSOLUTE_POS_X as usize * 4;
    if row0 < m && col0 < n {
        let mut sum = Array::<f32>::new(16usize);
        #[unroll]
        for i in 0..16usize {
            sum[i] = 0.0;
        }
        for p in 0..k {
            #[unroll]
            for i in 0..4usize {
                let r = usize::min(row0 + i, m - 1);
                let mut av = if a_t { a[ao + p * m + r] } else { a[ao + r * k + p] };
                if bf16 {
                    av = round_bf16(av);
                }
                #[unroll]
                for j in 0..4usize {
                    let col = usize::min(col0 + j, n - 1);
                    let mut bv = if b_t { b[bo + col * k + p] } else { b[bo + p * n + col] };
                    if bf16 {
                        bv = round_bf16(bv);
                    }
                    sum[i * 4 + j] += av * bv;
                }
            }
        }
        #[unroll]
        for i in 0..4usize {
            #[unroll]
            for j in 0..4usize {
                let r = row0 + i;
                let col = col0 + j;
                if r < m && col < n {
                    let mut v = sum[i * 4 + j];
                    if causal {
                        if col >= r {
                            v = 0.0;
                        }
                    }
                    if acc {
                        v += c[co + r * n + col];
                    }
                    if relu {
                        v = f32::max(v, 0.0);
                    }
                    c[co + r * n + col] = v;
                }
            }
        }
    }
}

/// Columns of C one [`matvec`] cube makes, and the lanes that split k among them.
pub const COLUMNS: u32 = 32;
/// See [`COLUMNS`].
pub const LANES: u32 = 8;

/// C (+)= a · B for a batch of one-row products (the recurrent step's), B stored
/// (k, n): unit (x, y) of a cube sums every [`LANES`]-th term of k for one column,
/// reading B a row of columns at a time, and the lanes add up in shared memory; the
/// ReLU after `acc`. Item z starts at `base + z·stride` of each buffer.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn matvec(
    a: &Array<f32>,
    b: &Array<f32>,
    c: &mut Array<f32>,
    k: usize,
    n: usize,
    a_base: usize,
    b_base: usize,
    c_base: usize,
    a_stride: usize,
    b_stride: usize,
    c_stride: usize,
    #[comptime] relu: bool,
    #[comptime] acc: bool,
) {
    let z = CUBE_POS_Z as usize;
    let ao = a_base + z * a_stride;
    let bo = b_base + z * b_stride;
    let co = c_base + z * c_stride;
    let x = UNIT_POS_X as usize;
    let lane = UNIT_POS_Y as usize;
    let col = CUBE_POS_X as usize * 32 + x; // (32 columns and 8 lanes: COLUMNS and LANES)
    let mut sum = 0.0f32;
    if col < n {
        let mut p = lane;
        while p < k {
            sum += a[ao + p] * b[bo + p * n + col];
            p += 8;
        }
    }
    let mut partial = SharedMemory::<f32>::new(256usize);
    partial[lane * 32 + x] = sum;
    sync_cube();
    if lane == 0 && col < n {
        let mut v = 0.0f32;
        #[unroll]
        for l in 0..8usize {
            v += partial[l * 32 + x];
        }
        if acc {
            v += c[co + col];
        }
        if relu {
            v = f32::max(v, 0.0);
        }
        c[co + col] = v;
    }
}

/// Parameter-free LayerNorm of each row of `d` values, in place, with 1/σ per row
/// in `rstd` (`bdh_kernels::layer_norm`; ε = 1e-5).
#[cube(launch)]
pub fn layer_norm(x: &mut Array<f32>, rstd: &mut Array<f32>, rows: usize, d: usize) {
    let r = ABSOLUTE_POS;
    if r < rows {
        let o = r * d;
        let mut sum = 0.0f32;
        for i in 0..d {
            sum += x[o + i];
        }
        let mean = sum / (d as f32);
        let mut var = 0.0f32;
        for i in 0..d {
            let c = x[o + i] - mean;
            var += c * c;
        }
        let s = 1.0f32 / Sqrt::sqrt(var / (d as f32) + 1e-5f32);
        for i in 0..d {
            x[o + i] = (x[o + i] - mean) * s;
        }
        rstd[r] = s;
    }
}

/// `out[r, :] = table[ids[r], :]`, rows of `d` (the embedding's gather).
#[cube(launch)]
pub fn gather_rows(table: &Array<f32>, ids: &Array<u32>, out: &mut Array<f32>, rows: usize, d: usize) {
    let i = ABSOLUTE_POS;
    if i < rows * d {
        let r = i / d;
        out[i] = table[ids[r] as usize * d + i % d];
    }
}

/// RoPE of rows of `n` neurons (`bdh_kernels::rope`): pair j of row r turns by the
/// angle whose cos and sin are at `(r mod t, j)` of the (t, n/2) tables, or back
/// by it with `inverse` (the backward's).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &Array<f32>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    out: &mut Array<f32>,
    pairs: usize,
    t: usize,
    n: usize,
    #[comptime] inverse: bool,
) {
    let i = ABSOLUTE_POS;
    if i < pairs {
        let half = n / 2;
        let r = i / half;
        let j = i % half;
        let at = (r % t) * half + j;
        let c = cos[at];
        let s = if inverse { -sin[at] } else { sin[at] };
        let (x0, x1) = (x[r * n + 2 * j], x[r * n + 2 * j + 1]);
        out[r * n + 2 * j] = x0 * c - x1 * s;
        out[r * n + 2 * j + 1] = x1 * c + x0 * s;
    }
}

/// Scores (B, H, T, T) below the diagonal times γ_h^(i−j), the powers read from
/// `powers` (H, T) at i − j (`bdh_kernels`' `mask_and_decay`).
#[cube(launch)]
pub fn decay_scores(s: &mut Array<f32>, powers: &Array<f32>, len: usize, h: usize, t: usize) {
    let idx = ABSOLUTE_POS;
    if idx < len {
        let j = idx % t;
        let i = (idx / t) % t;
        let head = (idx / (t * t)) % h;
        if j < i {
            s[idx] *= powers[head * t + i - j];
        }
    }
}

/// `out = a ⊙ b` element-wise, times `keep` (dropout's scales) with `dropout`:
/// the gate x ⊙ y (`bdh_kernels::gated_product`).
#[cube(launch)]
pub fn mul(
    a: &Array<f32>,
    b: &Array<f32>,
    keep: &Array<f32>,
    out: &mut Array<f32>,
    len: usize,
    #[comptime] dropout: bool,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let mut v = a[i] * b[i];
        if dropout {
            v *= keep[i];
        }
        out[i] = v;
    }
}

/// `out = a + b` element-wise (`bdh_kernels::add`).
#[cube(launch)]
pub fn add(a: &Array<f32>, b: &Array<f32>, out: &mut Array<f32>, len: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        out[i] = a[i] + b[i];
    }
}

/// `x[i] *= gamma[(i / per) mod |gamma|]`: each head's block of ρ fades by its
/// retention, for every stream (`bdh_kernels::decay_state`).
#[cube(launch)]
pub fn scale_blocks(x: &mut Array<f32>, gamma: &Array<f32>, len: usize, per: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        x[i] *= gamma[(i / per) % gamma.len()];
    }
}

/// `out[i] = x[i] · s[(i / n) mod |s|]`: rows of `n` scaled, the row's factor
/// cycling through `s` (`bdh_kernels::scale_rows` into a copy).
#[cube(launch)]
pub fn scale_rows(out: &mut Array<f32>, x: &Array<f32>, s: &Array<f32>, len: usize, n: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        out[i] = x[i] * s[(i / n) % s.len()];
    }
}

/// ρ += R(x) ⊗ v for one token: `rho` (H, N, D), `xr` (H, N), `v` (D) — the write
/// of the recurrent step (`bdh_kernels::rho_read_write`'s second half).
#[cube(launch)]
pub fn outer_add(rho: &mut Array<f32>, xr: &Array<f32>, v: &Array<f32>, len: usize, d: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        rho[i] += xr[i / d] * v[i % d];
    }
}

/// Per row of `v` logits: `log Σ exp(row) − row[target]`, the row's cross-entropy
/// (the loss of `bdh::model::loss::cross_entropy`, before its mean).
#[cube(launch)]
pub fn cross_entropy(logits: &Array<f32>, targets: &Array<u32>, out: &mut Array<f32>, rows: usize, v: usize) {
    let r = ABSOLUTE_POS;
    if r < rows {
        let o = r * v;
        out[r] = log_sum_exp(logits, o, v) - logits[o + targets[r] as usize];
    }
}

/// `log Σ exp` of the `v` values from `o`, as the CPU computes it: the maximum
/// first, then the sum of the shifted exponentials in order.
#[cube]
pub fn log_sum_exp(logits: &Array<f32>, o: usize, v: usize) -> f32 {
    let mut m = logits[o];
    for i in 1..v {
        m = f32::max(m, logits[o + i]);
    }
    let mut sum = 0.0f32;
    for i in 0..v {
        sum += Exp::exp(logits[o + i] - m);
    }
    m + Log::ln(sum)
}
