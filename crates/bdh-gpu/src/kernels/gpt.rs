//! The GPT baseline's kernels (twins: `bdh_kernels`' `rows` and
//! `softmax_attention`, and the embedding of `bdh::model::gpt::forward`). The
//! attention is one unit per query (forward, and the queries' gradient) or per key
//! (the keys' and values' gradient), each forming its scores again from q and k;
//! the backward reads each query's saved log-sum-exp. Layout as nanoGPT's:
//! `qkv` (B, T, 3·H·S) with q, k, v of head h at columns h·S of each third,
//! `y` (B, T, H·S), `lse` (B, H, T).

use cubecl::prelude::*;

/// `x[r] = wte[ids[r]] + wpe[r mod t]`, rows of `d`.
#[cube(launch)]
pub fn embed_positions(
    wte: &Array<f32>,
    wpe: &Array<f32>,
    ids: &Array<u32>,
    x: &mut Array<f32>,
    len: usize,
    t: usize,
    d: usize,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let (r, c) = (i / d, i % d);
        x[i] = wte[ids[r] as usize * d + c] + wpe[(r % t) * d + c];
    }
}

/// `out = xhat ⊙ w + b` on rows of `d` (a LayerNorm's weight and bias).
#[cube(launch)]
pub fn affine(
    out: &mut Array<f32>,
    xhat: &Array<f32>,
    w: &Array<f32>,
    b: &Array<f32>,
    len: usize,
    d: usize,
    #[comptime] bias: bool,
) {
    let i = ABSOLUTE_POS;
    if i < len {
        let mut v = xhat[i] * w[i % d];
        if bias {
            v += b[i % d];
        }
        out[i] = v;
    }
}

/// `x += b` on rows of `n` (a Linear's bias).
#[cube(launch)]
pub fn add_bias(x: &mut Array<f32>, b: &Array<f32>, len: usize, n: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        x[i] += b[i % n];
    }
}

/// `x += y`.
#[cube(launch)]
pub fn add_into(x: &mut Array<f32>, y: &Array<f32>, len: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        x[i] += y[i];
    }
}

/// erf by Abramowitz & Stegun 7.1.26, as the CPU's `bdh_kernels::special::erf`.
#[cube]
fn erf(x: f32) -> f32 {
    let a = f32::abs(x);
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * Exp::exp(-a * a);
    let mut out = y;
    if x < 0.0 {
        out = -y;
    }
    out
}

/// `out = x · Φ(x)` (exact GELU, `nn.GELU()`).
#[cube(launch)]
pub fn gelu(out: &mut Array<f32>, x: &Array<f32>, len: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        let v = x[i];
        out[i] = 0.5 * v * (1.0 + erf(v * 0.707_106_77));
    }
}

/// `g ⊙= Φ(x) + x φ(x)`: GELU's input gradient from its output's.
#[cube(launch)]
pub fn gelu_backward(g: &mut Array<f32>, x: &Array<f32>, len: usize) {
    let i = ABSOLUTE_POS;
    if i < len {
        let v = x[i];
        let cdf = 0.5 * (1.0 + erf(v * 0.707_106_77));
        let pdf = Exp::exp(-0.5 * v * v) * 0.398_942_3;
        g[i] *= cdf + v * pdf;
    }
}

/// Per column `c` of rows of `d`: `dw[c] += Σ g ⊙ xhat`, `db[c] += Σ g` (with a
/// `bias`), then `g ⊙= w` — a LayerNorm's affine backward, rows summed in order.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn affine_backward(
    g: &mut Array<f32>,
    xhat: &Array<f32>,
    w: &Array<f32>,
    dw: &mut Array<f32>,
    db: &mut Array<f32>,
    rows: usize,
    d: usize,
    #[comptime] bias: bool,
) {
    let c = ABSOLUTE_POS;
    if c < d {
        let mut sw = dw[c];
        let mut sb = 0.0f32;
        if bias {
            sb = db[c];
        }
        for r in 0..rows {
            let v = g[r * d + c];
            sw += v * xhat[r * d + c];
            sb += v;
            g[r * d + c] = v * w[c];
        }
        dw[c] = sw;
        if bias {
            db[c] = sb;
        }
    }
}

/// `out[c] += Σ_r x[r, c]` over rows of `n` (a bias's gradient), rows in order.
#[cube(launch)]
pub fn column_sums(out: &mut Array<f32>, x: &Array<f32>, rows: usize, n: usize) {
    let c = ABSOLUTE_POS;
    if c < n {
        let mut s = out[c];
        for r in 0..rows {
            s += x[r * n + c];
        }
        out[c] = s;
    }
}

/// `dwpe[p] += Σ_b dx[b, p]`: the position embedding's gradient, rows in order.
#[cube(launch)]
pub fn positions_backward(dwpe: &mut Array<f32>, dx: &Array<f32>, b: usize, t: usize, d: usize) {
    let i = ABSOLUTE_POS;
    if i < t * d {
        let mut s = dwpe[i];
        for row in 0..b {
            s += dx[row * t * d + i];
        }
        dwpe[i] = s;
    }
}

/// `q_i · k_j` of one head: the rows of `qkv` at `qi` and `kj` (their heads' first columns).
#[cube]
fn dot(qkv: &Array<f32>, qi: usize, kj: usize, s: usize) -> f32 {
    let mut acc = 0.0f32;
    for c in 0..s {
        acc += qkv[qi + c] * qkv[kj + c];
    }
    acc
}

/// `y_i = softmax_j≤i(q_i·k_j · scale) v_j` and `lse_i`, a unit per (row, head, i).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &Array<f32>,
    y: &mut Array<f32>,
    lse: &mut Array<f32>,
    b: usize,
    t: usize,
    h: usize,
    s: usize,
    scale: f32,
) {
    let idx = ABSOLUTE_POS;
    if idx < b * h * t {
        let (i, head, row) = (idx % t, (idx / t) % h, idx / (t * h));
        let d = h * s;
        let qi = (row * t + i) * 3 * d + head * s;
        let k0 = row * t * 3 * d + d + head * s; // k of position 0; position j's is 3·D·j further
        let mut m = dot(qkv, qi, k0, s) * scale;
        for j in 1..i + 1 {
            m = f32::max(m, dot(qkv, qi, k0 + j * 3 * d, s) * scale);
        }
        let yi = (row * t + i) * d + head * s;
        for c in 0..s {
            y[yi + c] = 0.0;
        }
        let mut l = 0.0f32;
        for j in 0..i + 1 {
            let p = Exp::exp(dot(qkv, qi, k0 + j * 3 * d, s) * scale - m);
            l += p;
            let vj = k0 + j * 3 * d + d;
            for c in 0..s {
                y[yi + c] += p * qkv[vj + c];
            }
        }
        for c in 0..s {
            y[yi + c] = y[yi + c] / l;
        }
        lse[idx] = m + Log::ln(l);
    }
}

/// The queries' gradient, a unit per (row, head, i): with `δ_i = dy_i · y_i` and
/// `p_ij = exp(q_i·k_j · scale − lse_i)`, `dq_i = Σ_j≤i p_ij (dy_i·v_j − δ_i) scale k_j`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_q(
    dqkv: &mut Array<f32>,
    dy: &Array<f32>,
    qkv: &Array<f32>,
    y: &Array<f32>,
    lse: &Array<f32>,
    b: usize,
    t: usize,
    h: usize,
    s: usize,
    scale: f32,
) {
    let idx = ABSOLUTE_POS;
    if idx < b * h * t {
        let (i, head, row) = (idx % t, (idx / t) % h, idx / (t * h));
        let d = h * s;
        let qi = (row * t + i) * 3 * d + head * s;
        let yi = (row * t + i) * d + head * s;
        let mut delta = 0.0f32;
        for c in 0..s {
            delta += dy[yi + c] * y[yi + c];
        }
        for c in 0..s {
            dqkv[qi + c] = 0.0;
        }
        for j in 0..i + 1 {
            let kj = (row * t + j) * 3 * d + d + head * s;
            let p = Exp::exp(dot(qkv, qi, kj, s) * scale - lse[idx]);
            let mut dp = 0.0f32;
            for c in 0..s {
                dp += dy[yi + c] * qkv[kj + d + c];
            }
            let ds = p * (dp - delta) * scale;
            for c in 0..s {
                dqkv[qi + c] += ds * qkv[kj + c];
            }
        }
    }
}

/// The keys' and values' gradient, a unit per (row, head, j):
/// `dk_j = Σ_i≥j ds_ij q_i`, `dv_j = Σ_i≥j p_ij dy_i` (as in [`attention_backward_q`]).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_kv(
    dqkv: &mut Array<f32>,
    dy: &Array<f32>,
    qkv: &Array<f32>,
    y: &Array<f32>,
    lse: &Array<f32>,
    b: usize,
    t: usize,
    h: usize,
    s: usize,
    scale: f32,
) {
    let idx = ABSOLUTE_POS;
    if idx < b * h * t {
        let (j, head, row) = (idx % t, (idx / t) % h, idx / (t * h));
        let d = h * s;
        let kj = (row * t + j) * 3 * d + d + head * s;
        for c in 0..s {
            dqkv[kj + c] = 0.0;
            dqkv[kj + d + c] = 0.0;
        }
        for i in j..t {
            let qi = (row * t + i) * 3 * d + head * s;
            let yi = (row * t + i) * d + head * s;
            let p = Exp::exp(dot(qkv, qi, kj, s) * scale - lse[(row * h + head) * t + i]);
            let mut delta = 0.0f32;
            let mut dp = 0.0f32;
            for c in 0..s {
                delta += dy[yi + c] * y[yi + c];
                dp += dy[yi + c] * qkv[kj + d + c];
            }
            let ds = p * (dp - delta) * scale;
            for c in 0..s {
                dqkv[kj + c] += ds * qkv[qi + c];
                dqkv[kj + d + c] += p * dy[yi + c];
            }
        }
    }
}
