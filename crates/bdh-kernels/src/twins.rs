//! Every fast kernel equals its scalar twin, on random shapes including odd T,
//! T = 1 and N = 2, and sizes large enough to be split over threads. Each prints its
//! max abs / rel difference.

use crate::attention::{causal_linear_attention_backward_scalar, causal_linear_attention_scalar};
use crate::elementwise::scalar as elementwise_scalar;
use crate::keyed_attention::keyed_attention_scalar;
use crate::layer_norm::{layer_norm_backward_scalar, layer_norm_scalar};
use crate::matmul::matmul_scalar;
use crate::neuron_decay::neuron_decay_attention_scalar;
use crate::recurrent::{
    decay_state_scalar, gather_dot_scalar, rho_read_write_scalar, rho_write_scalar, sparse_row_sum_scalar,
};
use crate::rope::rope_scalar;
use crate::rows::scalar as rows_scalar;
use crate::softmax_attention::scalar as softmax_scalar;
use crate::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn random(r: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

/// Sparse like ReLU output: about `density` of the entries positive, the rest zero.
fn sparse(r: &mut ChaCha8Rng, len: usize, density: f64) -> Vec<f32> {
    (0..len).map(|_| if r.random_bool(density) { r.random_range(0.0f32..1.0) } else { 0.0 }).collect()
}

/// Asserts max |a − b| ≤ tol · max(1, max |b|) and prints both diffs.
fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let max_abs = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    let scale = b.iter().map(|v| v.abs()).fold(0.0f32, f32::max).max(1.0);
    println!("{what}: max abs {max_abs:.2e}, max rel {:.2e}", max_abs / scale);
    assert!(max_abs <= tol * scale, "{what}: max abs diff {max_abs} > {tol}·{scale}");
}

/// (T, N, D) shapes: odd T, T = 1, N = 2, and sizes around SIMD and block widths.
const SHAPES: [(usize, usize, usize); 8] =
    [(1, 2, 1), (1, 8, 4), (3, 2, 5), (7, 6, 3), (17, 34, 9), (64, 32, 16), (129, 66, 33), (200, 16, 8)];

#[test]
fn matmul_equals_twin_for_every_layout() {
    let mut r = rng(1);
    for &(m, k, n) in &[(1, 1, 1), (1, 7, 3), (5, 1, 9), (17, 33, 65), (64, 128, 96), (3, 200, 2)] {
        for a_t in [false, true] {
            for b_t in [false, true] {
                for acc in [false, true] {
                    for par in [false, true] {
                        let a = random(&mut r, m * k);
                        let b = random(&mut r, k * n);
                        let init = random(&mut r, m * n);
                        let p = MatMul { m, k, n, a_t, b_t, accumulate: acc, parallel: par, ld: [0; 3], relu: acc };
                        let (mut fast, mut slow) = (init.clone(), init);
                        matmul(&mut fast, &a, &b, p);
                        matmul_scalar(&mut slow, &a, &b, p);
                        assert_close(&format!("matmul {p:?}"), &fast, &slow, 1e-5);
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_with_empty_inner_dimension_zeroes_or_keeps() {
    let mut c = vec![3.0f32; 6];
    matmul(&mut c, &[], &[], MatMul::new(2, 0, 3).acc());
    assert_eq!(c, vec![3.0; 6]);
    matmul(&mut c, &[], &[], MatMul::new(2, 0, 3));
    assert_eq!(c, vec![0.0; 6]);
}

#[test]
fn layer_norm_and_backward_equal_twins() {
    let mut r = rng(2);
    for &(rows, d) in &[(1, 1), (1, 2), (3, 7), (16, 32), (5, 129), (700, 128)] {
        let x = random(&mut r, rows * d);
        let (mut fast, mut slow) = (x.clone(), x);
        let (mut rs_fast, mut rs_slow) = (vec![0.0; rows], vec![0.0; rows]);
        layer_norm(&mut fast, &mut rs_fast, d);
        layer_norm_scalar(&mut slow, &mut rs_slow, d);
        assert_close(&format!("layer_norm {rows}×{d}"), &fast, &slow, 1e-5);
        assert_close(&format!("layer_norm rstd {rows}×{d}"), &rs_fast, &rs_slow, 1e-5);

        let g = random(&mut r, rows * d);
        let (mut gf, mut gs) = (g.clone(), g);
        layer_norm_backward(&mut gf, &slow, &rs_slow, d);
        layer_norm_backward_scalar(&mut gs, &slow, &rs_slow, d);
        assert_close(&format!("layer_norm_backward {rows}×{d}"), &gf, &gs, 1e-4);
    }
}

#[test]
fn rope_equals_twin_and_inverse_undoes_it() {
    let mut r = rng(3);
    for &(t, n, bh) in &SHAPES {
        // bh (row, head) blocks of (T, N), all read against one (T, N/2) table.
        let x = random(&mut r, bh * t * n);
        let angles = random(&mut r, t * n / 2);
        let cos: Vec<f32> = angles.iter().map(|a| (a * 3.0).cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| (a * 3.0).sin()).collect();
        for dir in [RopeDirection::Forward, RopeDirection::Inverse] {
            let (mut fast, mut slow) = (vec![0.0; bh * t * n], vec![0.0; bh * t * n]);
            rope(&mut fast, &x, &cos, &sin, n, dir);
            rope_scalar(&mut slow, &x, &cos, &sin, n, dir);
            assert_close(&format!("rope {dir:?} T{t} N{n}"), &fast, &slow, 1e-6);
        }
        let (mut rot, mut back) = (vec![0.0; bh * t * n], vec![0.0; bh * t * n]);
        rope(&mut rot, &x, &cos, &sin, n, RopeDirection::Forward);
        rope(&mut back, &rot, &cos, &sin, n, RopeDirection::Inverse);
        assert_close(&format!("rope round trip T{t} N{n}"), &back, &x, 1e-5);
    }
}

#[test]
fn causal_linear_attention_and_backward_equal_twins() {
    let mut r = rng(4);
    for (i, &(t, n, d)) in SHAPES.iter().enumerate() {
        let (b, h) = (1 + i % 2, 1 + i % 3);
        // Every other shape with a decay, a retention per head; 0.5^(t−τ) falls below
        // f32's smallest normal past 126 positions (T = 200), where both flush to 0.
        let decay: Vec<f32> = if i % 2 == 1 { [0.5, 0.97, 1.0][..h].to_vec() } else { vec![] };
        // and a delay per head on every third shape
        let delays: Vec<f32> = if i % 3 == 2 { [0.0, 2.0, 4.25][..h].to_vec() } else { vec![] };
        let lags = Lags { decay: &decay, delays: &delays };
        let shape = Attention { b, h, t, n, d };
        let x = sparse(&mut r, b * h * t * n, 0.3);
        let v = random(&mut r, b * t * d);
        let angles = random(&mut r, t * n / 2);
        let cos: Vec<f32> = angles.iter().map(|a| (a * 3.0).cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| (a * 3.0).sin()).collect();
        let (mut out_f, mut out_s) = (vec![0.0; b * h * t * d], vec![0.0; b * h * t * d]);
        let (mut s_f, mut s_s) = (vec![7.0; b * h * t * t], vec![7.0; b * h * t * t]);
        let (mut q_f, mut q_s) = (vec![0.0; b * h * t * n], vec![0.0; b * h * t * n]);
        causal_linear_attention(&mut out_f, &mut s_f, &mut q_f, &x, &v, (&cos, &sin), lags, shape);
        causal_linear_attention_scalar(&mut out_s, &mut s_s, &mut q_s, &x, &v, (&cos, &sin), lags, shape);
        assert_close(&format!("attention {shape:?} {lags:?}"), &out_f, &out_s, 1e-5);
        assert_close(&format!("attention rotated q {shape:?}"), &q_f, &q_s, 1e-6);
        assert_close(&format!("attention scores {shape:?}"), &s_f, &s_s, 1e-5);

        let da = random(&mut r, b * h * t * d);
        let (mut dq_f, mut dq_s) = (vec![0.0; b * h * t * n], vec![0.0; b * h * t * n]);
        let (mut dv_f, mut dv_s) = (vec![0.0; b * h * t * d], vec![0.0; b * h * t * d]);
        let (mut ds_f, mut ds_s) = (vec![0.0; b * h * t * t], vec![0.0; b * h * t * t]);
        let dx = random(&mut r, b * h * t * n);
        let (mut dx_f, mut dx_s) = (dx.clone(), dx);
        let saved = |q, scores| AttentionSaved { x: &x, q, v: &v, scores, cos: &cos, sin: &sin, lags };
        let (fast, slow) = (saved(&q_f, &s_f), saved(&q_s, &s_s));
        let (mut dl_f, mut dl_s) = (vec![7.0; 2 * b * h], vec![7.0; 2 * b * h]);
        causal_linear_attention_backward(&mut dx_f, &mut dq_f, &mut dv_f, &mut ds_f, &mut dl_f, &da, fast, shape);
        causal_linear_attention_backward_scalar(
            &mut dx_s, &mut dq_s, &mut dv_s, &mut ds_s, &mut dl_s, &da, slow, shape,
        );
        assert_close(&format!("attention backward d ln γ, d δ {shape:?} {lags:?}"), &dl_f, &dl_s, 1e-4);
        assert_close(&format!("attention backward dq {shape:?}"), &dq_f, &dq_s, 1e-5);
        assert_close(&format!("attention backward dv {shape:?}"), &dv_f, &dv_s, 1e-5);
        assert_close(&format!("attention backward dx {shape:?}"), &dx_f, &dx_s, 1e-5);
        assert_close(&format!("attention backward dscores {shape:?}"), &ds_f, &ds_s, 1e-5);
    }
}

#[test]
fn attention_never_looks_at_the_present_or_future() {
    let mut r = rng(5);
    let shape = Attention { b: 1, h: 1, t: 9, n: 4, d: 3 };
    let (t, n, d) = (9, 4, 3);
    let x = sparse(&mut r, t * n, 0.8);
    let v = random(&mut r, t * d);
    let (cos, sin) = (vec![1.0; t * n / 2], vec![0.0; t * n / 2]);
    let (mut out, mut s, mut q) = (vec![0.0; t * d], vec![0.0; t * t], vec![0.0; t * n]);
    causal_linear_attention(&mut out, &mut s, &mut q, &x, &v, (&cos, &sin), Lags::default(), shape);
    // Changing the last token's values must not change any output.
    let mut v2 = v.clone();
    v2[(t - 1) * d..].iter_mut().for_each(|x| *x += 5.0);
    let mut out2 = vec![0.0; t * d];
    causal_linear_attention(&mut out2, &mut s, &mut q, &x, &v2, (&cos, &sin), Lags::default(), shape);
    assert_eq!(out, out2);
    assert!(out[..d].iter().all(|&x| x == 0.0), "t = 0 attends to nothing");
}

#[test]
fn sparse_recurrent_kernels_equal_dense_twins() {
    let mut r = rng(6);
    for &(m, d) in &[(2, 1), (2, 5), (34, 9), (256, 64)] {
        let coef = sparse(&mut r, m, 0.25);
        let rows: Vec<u32> = (0..m as u32).filter(|&i| coef[i as usize] != 0.0).collect();
        let mat = random(&mut r, m * d);
        let (mut f, mut s) = (vec![9.0; d], vec![9.0; d]);
        sparse_row_sum(&mut f, &coef, &mat, &rows);
        sparse_row_sum_scalar(&mut s, &coef, &mat, &rows);
        assert_close(&format!("sparse_row_sum {m}×{d}"), &f, &s, 1e-5);

        let v = random(&mut r, d);
        let (mut rf, mut rs) = (mat.clone(), mat.clone());
        let (mut af, mut as_) = (vec![3.0; d], vec![3.0; d]);
        rho_read_write(&mut af, &mut rf, &coef, &v, &rows);
        rho_read_write_scalar(&mut as_, &mut rs, &coef, &v, &rows);
        assert_close(&format!("rho_read_write read {m}×{d}"), &af, &as_, 1e-5);
        assert_close(&format!("rho_read_write write {m}×{d}"), &rf, &rs, 1e-6);
        rho_write(&mut rf, &coef, &v, &rows);
        rho_write_scalar(&mut rs, &coef, &v, &rows);
        assert_close(&format!("rho_write {m}×{d}"), &rf, &rs, 1e-6);

        let a = random(&mut r, d);
        let w_t = random(&mut r, m * d);
        let (mut gf, mut gs) = (vec![0.0; rows.len()], vec![0.0; rows.len()]);
        gather_dot(&mut gf, &a, &w_t, &rows);
        gather_dot_scalar(&mut gs, &a, &w_t, &rows);
        assert_close(&format!("gather_dot {m}×{d}"), &gf, &gs, 1e-5);

        let (mut df, mut ds) = (mat.clone(), mat.clone());
        df[0] = 1.5e-38; // normal, but γ·it falls under the smallest normal: flushed to 0
        ds[0] = 1.5e-38;
        decay_state(&mut df, 0.75);
        decay_state_scalar(&mut ds, 0.75);
        assert_close(&format!("decay_state {m}×{d}"), &df, &ds, 0.0);
        assert_eq!(df[0], 0.0);
    }
}

#[test]
fn scale_rows_multiplies_each_row_of_each_head() {
    let (b, h, t, w) = (2, 3, 4, 5);
    let src: Vec<f32> = (0..b * h * t * w).map(|i| i as f32).collect();
    let factors: Vec<f32> = (0..h * t).map(|i| 0.5 + i as f32).collect();
    let mut buf = src.clone();
    scale_rows(&mut buf, &factors, h, t, w);
    for (i, (&o, &x)) in buf.iter().zip(&src).enumerate() {
        let (hi, ti) = (i / (t * w) % h, i / w % t);
        assert_eq!(o, x * factors[hi * t + ti], "element {i}");
    }
}

#[test]
fn matmul_on_blocks_of_larger_matrices_equals_twin() {
    let mut r = rng(7);
    // A 5×4 block of a 9-wide A, a transposed B inside a 7-wide buffer, into a
    // 3-column window of an 8-wide C.
    for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
        let (m, k, n) = (5, 4, 3);
        let a = random(&mut r, 9 * 9);
        let b = random(&mut r, 7 * 7);
        let init = random(&mut r, 8 * 8);
        let p = MatMul::new(m, k, n).ld(9, 7, 8);
        let p = MatMul { a_t, b_t, ..p };
        let (mut fast, mut slow) = (init.clone(), init.clone());
        matmul(&mut fast, &a, &b, p);
        matmul_scalar(&mut slow, &a, &b, p);
        assert_close(&format!("strided matmul a_t={a_t} b_t={b_t}"), &fast, &slow, 1e-5);
        // Outside the 5×3 window, C is untouched.
        for i in 0..8 {
            for j in 0..8 {
                if i >= m || j >= n {
                    assert_eq!(fast[i * 8 + j], init[i * 8 + j]);
                }
            }
        }
    }
}

#[test]
fn elementwise_kernels_equal_twins() {
    let mut r = rng(8);
    for len in [1, 7, 16, 33, 1000, 70_001] {
        let (x, y) = (random(&mut r, len), sparse(&mut r, len, 0.4));
        let keep: Vec<f32> = random(&mut r, len).iter().map(|&u| if u > 0.0 { 1.25 } else { 0.0 }).collect();
        for keep in [&keep[..], &[]] {
            let (mut a, mut b) = (x.clone(), x.clone());
            crate::elementwise::relu_block(&mut a);
            elementwise_scalar::relu(&mut b);
            assert_eq!(a, b, "relu {len}");
            let (mut za, mut zb) = (vec![0.0; len], vec![0.0; len]);
            gated_product(&mut za, &x, &y, keep);
            elementwise_scalar::gated_product(&mut zb, &x, &y, keep);
            assert_close(&format!("gated_product {len}"), &za, &zb, 1e-6);
            let g = random(&mut r, len);
            let (mut dxa, mut dya, mut dxb, mut dyb) = (g.clone(), vec![9.0; len], g.clone(), vec![9.0; len]);
            gated_product_backward(&mut dxa, &mut dya, &x, &y, keep);
            elementwise_scalar::gated_product_backward(&mut dxb, &mut dyb, &x, &y, keep);
            assert_close(&format!("gated_product_backward dx {len}"), &dxa, &dxb, 1e-6);
            assert_close(&format!("gated_product_backward dy {len}"), &dya, &dyb, 1e-6);
            let (mut ga, mut gb) = (g.clone(), g.clone());
            crate::elementwise::relu_backward_add_block(&mut ga, &y, &x);
            elementwise_scalar::relu_backward_add(&mut gb, &y, &x);
            assert_close(&format!("relu_backward_add {len}"), &ga, &gb, 1e-6);
        }
    }
}

#[test]
fn transpose_equals_index_swap() {
    let mut r = rng(9);
    for (rows, cols) in [(1, 1), (3, 70), (65, 33)] {
        let src = random(&mut r, rows * cols);
        let mut dst = vec![0.0; rows * cols];
        transpose(&mut dst, &src, rows, cols);
        for i in 0..rows {
            for j in 0..cols {
                assert_eq!(dst[j * rows + i], src[i * cols + j]);
            }
        }
    }
}

#[test]
fn batched_matmul_equals_a_loop_of_twins() {
    let mut r = rng(10);
    let (b, h, t, d, n) = (3, 4, 5, 6, 8);
    let v = random(&mut r, b * t * d); //         (B, T, D), shared by the heads
    let w = random(&mut r, h * d * n); //         (H, D, N), shared by the rows
    let z = random(&mut r, b * h * t * n); //     (B, H, T, N)
    let dec = random(&mut r, h * n * d); //       (H, N, D)
                                         // Distinct outputs: x = relu(v · w_h)                            (B, H, T, N)
    let mut fast = vec![0.0; b * h * t * n];
    let batch = Batch { count: [b, h], a: [t * d, 0], b: [0, d * n], c: [h * t * n, t * n] };
    matmul_batched(&mut fast, &v, &w, MatMul::new(t, d, n).relu(), batch);
    let mut slow = vec![0.0; b * h * t * n];
    for bi in 0..b {
        for hi in 0..h {
            let c = &mut slow[(bi * h + hi) * t * n..];
            matmul_scalar(c, &v[bi * t * d..], &w[hi * d * n..], MatMul::new(t, d, n).relu());
        }
    }
    assert_close("batched, distinct outputs, relu", &fast, &slow, 1e-5);
    // Summed over the inner level: u_b = Σ_h z_bh · dec_h             (B, T, D)
    let init = random(&mut r, b * t * d);
    for acc in [false, true] {
        let p = if acc { MatMul::new(t, n, d).acc() } else { MatMul::new(t, n, d) };
        let (mut fast, mut slow) = (init.clone(), init.clone());
        let batch = Batch { count: [b, h], a: [h * t * n, t * n], b: [0, n * d], c: [t * d, 0] };
        matmul_batched(&mut fast, &z, &dec, p, batch);
        for bi in 0..b {
            for hi in 0..h {
                let q = if hi == 0 { p } else { p.acc() };
                matmul_scalar(&mut slow[bi * t * d..], &z[(bi * h + hi) * t * n..], &dec[hi * n * d..], q);
            }
        }
        assert_close(&format!("batched, summed over heads, acc={acc}"), &fast, &slow, 1e-5);
    }
    // Summed over the outer level: g_h += Σ_b v_bᵀ · z_bh              (H, D, N)
    let init = random(&mut r, h * d * n);
    let (mut fast, mut slow) = (init.clone(), init);
    let p = MatMul::new(d, t, n).a_t().acc();
    let batch = Batch { count: [b, h], a: [t * d, 0], b: [h * t * n, t * n], c: [0, d * n] };
    matmul_batched(&mut fast, &v, &z, p, batch);
    for hi in 0..h {
        for bi in 0..b {
            matmul_scalar(&mut slow[hi * d * n..], &v[bi * t * d..], &z[(bi * h + hi) * t * n..], p);
        }
    }
    assert_close("batched, summed over rows", &fast, &slow, 1e-5);
}

#[test]
fn add_groups_and_add_equal_twins() {
    let mut r = rng(11);
    for (groups, k, len) in [(1, 1, 1), (3, 4, 5), (8, 4, 4096)] {
        let src = random(&mut r, groups * k * len);
        let init = random(&mut r, groups * len);
        let (mut fast, mut slow) = (init.clone(), init.clone());
        add_groups(&mut fast, &src, len, k);
        elementwise_scalar::add_groups(&mut slow, &src, len, k);
        assert_close(&format!("add_groups {groups}×{k}×{len}"), &fast, &slow, 1e-6);
        let mut sum = vec![0.0; init.len()];
        add(&mut sum, &init, &src[..init.len()]);
        assert!(sum.iter().zip(&init).zip(&src).all(|((s, a), b)| *s == a + b));
    }
}

#[test]
fn active_pairs_and_gate_listed_select_what_fires() {
    let x = [0.0, 0.5, 0.0, 0.0, 2.0, 1.0, 0.0, 0.0];
    let (mut rows, mut cols) = (Vec::new(), Vec::new());
    active_pairs(&x, &mut rows, &mut cols, false);
    assert_eq!(rows, [0, 1, 4, 5]);
    assert_eq!(cols, [1, 4, 5]);
    let (mut z, mut z_rows) = (vec![9.0; 8], Vec::new());
    gate_listed(&mut z, &x, &[3.0, -1.0, 2.0], &cols, &mut z_rows, false);
    assert_eq!(z_rows, [1, 5]);
    assert_eq!((z[1], z[5]), (1.5, 2.0));
    active_pairs(&x, &mut rows, &mut cols, true);
    assert_eq!((rows.len(), cols.len()), (8, 8));
}

#[test]
fn causal_softmax_attention_matches_its_twin_forward_and_backward() {
    let mut r = rng(40);
    // (B, T, H, S): T = 1, odd T, T past one block of keys, S = 1, odd S.
    for (b, t, h, s) in [(1, 1, 1, 1), (2, 7, 3, 5), (1, 130, 2, 8), (3, 33, 1, 30), (2, 200, 4, 16)] {
        for dropout in [0.0, 0.3] {
            let a = SoftmaxAttention { b, t, h, s, dropout, seed: 7 };
            let d = h * s;
            let qkv: Vec<f32> = random(&mut r, b * t * 3 * d).iter().map(|v| v * 2.0).collect();
            let (mut y, mut lse) = (vec![0.0; b * t * d], vec![0.0; b * h * t]);
            causal_softmax_attention(&mut y, &mut lse, &qkv, a);
            let (want_y, want_lse) = softmax_scalar::forward(&qkv, &a);
            let what = format!("softmax attention B{b} T{t} H{h} S{s} dropout {dropout}");
            assert_close(&format!("{what}: y"), &y, &want_y, 1e-5);
            assert_close(&format!("{what}: lse"), &lse, &want_lse, 1e-5);
            let dy = random(&mut r, y.len());
            let mut dqkv = vec![1.0; qkv.len()]; // overwritten
            causal_softmax_attention_backward(&mut dqkv, &dy, &qkv, &y, &lse, a);
            assert_close(&format!("{what}: dqkv"), &dqkv, &softmax_scalar::backward(&dy, &qkv, &a), 1e-4);
        }
    }
}

#[test]
fn the_tile_product_matches_its_twin() {
    let mut r = rng(41);
    // (m, k, w, strides over the packed ones): a row block and a remainder, every
    // width block (16..64) and one past 64, k = 1 and odd.
    for (m, k, w, pad) in [(1, 1, 16, 0), (7, 30, 32, 3), (9, 64, 48, 0), (4, 5, 64, 16), (6, 17, 80, 1)] {
        let (lda, ldb, ldc) = (k + pad, w + pad, w + 2 * pad);
        let (a, b) = (random(&mut r, m * lda), random(&mut r, k * ldb));
        let mut c = random(&mut r, m * ldc);
        let mut want: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        for i in 0..m {
            for x in 0..w {
                want[i * ldc + x] += (0..k).map(|p| a[i * lda + p] as f64 * b[p * ldb + x] as f64).sum::<f64>();
            }
        }
        crate::tile::tile(&mut c, ldc, &a, lda, &b, ldb, (m, k, w));
        let want: Vec<f32> = want.into_iter().map(|v| v as f32).collect();
        assert_close(&format!("tile {m}×{k}×{w}"), &c, &want, 1e-5);
    }
}

#[test]
fn softmax_attention_step_equals_the_last_row_of_the_parallel_form() {
    let mut r = rng(41);
    for (t, h, s) in [(1, 1, 4), (9, 3, 5), (140, 2, 16)] {
        let a = SoftmaxAttention { b: 1, t, h, s, dropout: 0.0, seed: 0 };
        let d = h * s;
        let qkv = random(&mut r, t * 3 * d);
        let (want, _) = softmax_scalar::forward(&qkv, &a);
        let mut y = vec![0.0; d];
        let last = &qkv[(t - 1) * 3 * d..];
        let cache = KvCache { k: &qkv[d..], v: &qkv[2 * d..], len: t, ld: 3 * d };
        softmax_attention_step(&mut y, &last[..d], cache, h, s);
        assert_close(&format!("softmax attention step T{t} H{h} S{s}"), &y, &want[(t - 1) * d..], 1e-5);
    }
}

#[test]
fn gelu_affine_and_bias_match_their_twins() {
    let mut r = rng(42);
    for len in [1usize, 7, 1000, 70_000] {
        let x: Vec<f32> = random(&mut r, len).iter().map(|v| v * 6.0).collect();
        let mut y = vec![0.0; len];
        gelu(&mut y, &x);
        assert_close(&format!("gelu ({len})"), &y, &rows_scalar::gelu(&x), 1e-6);
        let mut g = vec![1.0; len];
        gelu_backward(&mut g, &x);
        assert_close(&format!("gelu slope ({len})"), &g, &rows_scalar::gelu_slope(&x), 1e-4);
    }
    for (rows, d) in [(1, 1), (3, 5), (300, 128)] {
        let (x, w, b) = (random(&mut r, rows * d), random(&mut r, d), random(&mut r, d));
        let mut y = x.clone();
        affine(&mut y, &w, &b);
        assert_close(&format!("affine {rows}×{d}"), &y, &rows_scalar::affine(&x, &w, &b), 1e-6);
        let mut y = x.clone();
        add_bias(&mut y, &b);
        assert_close(&format!("bias {rows}×{d}"), &y, &rows_scalar::affine(&x, &vec![1.0; d], &b), 1e-6);
        // affine_backward: dw = Σ dy ⊙ x̂, db = Σ dy, dx̂ = dy ⊙ w.
        let dy = random(&mut r, rows * d);
        let (mut g, mut dw, mut db) = (dy.clone(), vec![0.0; d], vec![0.0; d]);
        affine_backward(&mut g, &mut dw, &mut db, &x, &w);
        let want_dw: Vec<f32> = (0..d).map(|i| (0..rows).map(|k| dy[k * d + i] * x[k * d + i]).sum()).collect();
        let want_db: Vec<f32> = (0..d).map(|i| (0..rows).map(|k| dy[k * d + i]).sum()).collect();
        assert_close("affine backward dw", &dw, &want_dw, 1e-5);
        assert_close("affine backward db", &db, &want_db, 1e-5);
        assert_close("affine backward dx̂", &g, &rows_scalar::affine(&dy, &w, &[]), 1e-6);
        let mut db2 = vec![0.0; d];
        bias_grad(&mut db2, &dy);
        assert_close("bias grad", &db2, &want_db, 1e-5);
    }
}

#[test]
fn keyed_attention_and_its_backward_equal_their_twin() {
    let mut r = rng(11);
    for (i, &(t, n, d)) in SHAPES.iter().enumerate() {
        let (b, h) = (1 + i % 2, 1 + i % 3);
        let decay: Vec<f32> = if i % 2 == 0 { [0.5, 0.97, 1.0][..h].to_vec() } else { vec![] };
        let delays: Vec<f32> = if i % 3 == 1 { [2.5, 0.0, 1.0][..h].to_vec() } else { vec![] };
        let lags = Lags { decay: &decay, delays: &delays };
        let shape = Attention { b, h, t, n, d };
        let (q, k) = (random(&mut r, b * h * t * n), sparse(&mut r, b * h * t * n, 0.4));
        let (v, da) = (random(&mut r, b * t * d), random(&mut r, b * h * t * d));
        let fresh = |len: usize| (vec![7.0; len], vec![7.0; len]);
        let ((mut out_f, mut out_s), (mut s_f, mut s_s)) = (fresh(b * h * t * d), fresh(b * h * t * t));
        let ((mut dq_f, mut dq_s), (mut dk_f, mut dk_s)) = (fresh(b * h * t * n), fresh(b * h * t * n));
        let ((mut dv_f, mut dv_s), (mut dl_f, mut dl_s)) = (fresh(b * h * t * d), fresh(2 * b * h));
        let mut ds = vec![7.0; b * h * t * t];
        keyed_attention(&mut out_f, &mut s_f, &q, &k, &v, lags, shape);
        let saved = KeyedSaved { q: &q, k: &k, v: &v, scores: &s_f, lags };
        keyed_attention_backward(&mut dq_f, &mut dk_f, &mut dv_f, &mut ds, &mut dl_f, &da, saved, shape);
        let grads = (&mut dq_s[..], &mut dk_s[..], &mut dv_s[..], &mut dl_s[..]);
        keyed_attention_scalar((&mut out_s, &mut s_s), grads, (&q, &k, &v, &da), lags, shape);
        let what = |x: &str| format!("keyed attention {x} {shape:?} {lags:?}");
        assert_close(&what("out"), &out_f, &out_s, 1e-5);
        assert_close(&what("scores"), &s_f, &s_s, 1e-5);
        assert_close(&what("dq"), &dq_f, &dq_s, 1e-5);
        assert_close(&what("dk"), &dk_f, &dk_s, 1e-5);
        assert_close(&what("dv"), &dv_f, &dv_s, 1e-5);
        assert_close(&what("d ln γ, d δ"), &dl_f, &dl_s, 1e-4);
    }
}

#[test]
fn neuron_decay_attention_and_its_backward_equal_their_twin() {
    let mut r = rng(12);
    // T past one chunk, with a ragged last one; γ from 1 (no decay) down to one that
    // flushes to 0 within a few lags
    let shapes = [(1, 2, 1), (5, 4, 3), (33, 34, 9), (70, 18, 5), (96, 32, 16)];
    for (i, &(t, n, d)) in shapes.iter().enumerate() {
        let (b, h) = (1 + i % 2, 1 + i % 3);
        let levels = [1.0, 0.999, 0.9, 0.5, 1e-9];
        let gamma: Vec<f32> = (0..h * n).map(|j| levels[(j + i) % levels.len()]).collect();
        let shape = Attention { b, h, t, n, d };
        let (q, k) = (sparse(&mut r, b * h * t * n, 0.4), random(&mut r, b * h * t * n));
        let (v, da) = (random(&mut r, b * t * d), random(&mut r, b * h * t * d));
        let fresh = |len: usize| (vec![7.0; len], vec![7.0; len]);
        let ((mut out_f, mut out_s), (mut dv_f, mut dv_s)) = (fresh(b * h * t * d), fresh(b * h * t * d));
        let ((mut dq_f, mut dq_s), (mut dk_f, mut dk_s)) = (fresh(b * h * t * n), fresh(b * h * t * n));
        let (mut dl_f, mut dl_s) = fresh(b * h * n);
        neuron_decay_attention(&mut out_f, &q, &k, &v, &gamma, shape);
        let saved = (&q[..], &k[..], &v[..], &gamma[..]);
        neuron_decay_attention_backward(&mut dq_f, &mut dk_f, &mut dv_f, &mut dl_f, &da, saved, shape);
        let grads = (&mut dq_s[..], &mut dk_s[..], &mut dv_s[..], &mut dl_s[..]);
        neuron_decay_attention_scalar(&mut out_s, grads, (&q, &k, &v, &gamma), &da, shape);
        let what = |x: &str| format!("neuron-decay attention {x} {shape:?}");
        assert_close(&what("out"), &out_f, &out_s, 1e-5);
        assert_close(&what("dq"), &dq_f, &dq_s, 1e-5);
        assert_close(&what("dk"), &dk_f, &dk_s, 1e-5);
        assert_close(&what("dv"), &dv_f, &dv_s, 1e-5);
        assert_close(&what("d ln γ"), &dl_f, &dl_s, 1e-4);
    }
}
