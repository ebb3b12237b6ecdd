//! Per-kernel timings at the shapes of config S (D128 H4 N1024, T256) and of the
//! GPT baseline's gpt-small (D180 H6, T256), named by shape.
//! `cargo bench -p bdh-kernels`.

use bdh_kernels::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn data(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2000) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// ReLU-sparse: about a quarter of the entries positive, as x in a trained model.
fn sparse(len: usize, seed: u32) -> Vec<f32> {
    data(len, seed).into_iter().map(|v| if v > 0.5 { v } else { 0.0 }).collect()
}

fn dense_kernels(c: &mut Criterion) {
    let (t, d, n) = (256, 128, 1024);
    let mut g = c.benchmark_group("dense");
    let (a, b) = (data(t * d, 1), data(d * n, 2));
    let mut out = vec![0.0; t * n];
    g.throughput(Throughput::Elements((2 * t * d * n) as u64));
    g.bench_function("matmul T256xD128 . D128xN1024", |bch| {
        bch.iter(|| matmul(&mut out, black_box(&a), black_box(&b), MatMul::new(t, d, n)))
    });
    let q = sparse(t * n, 3);
    let v = data(t * d, 4);
    let (mut o, mut s) = (vec![0.0; t * d], vec![0.0; t * t]);
    let one = Attention { b: 1, h: 1, t, n, d };
    let (cos, sin) = (data(t * n / 2, 7), data(t * n / 2, 8));
    let mut qr = vec![0.0; t * n];
    g.throughput(Throughput::Elements((t * t * (n + d)) as u64));
    g.bench_function("rope + causal_linear_attention T256 N1024 D128", |bch| {
        bch.iter(|| {
            causal_linear_attention(
                &mut o,
                &mut s,
                &mut qr,
                black_box(&q),
                black_box(&v),
                (&cos, &sin),
                Lags::default(),
                one,
            )
        })
    });
    causal_linear_attention(&mut o, &mut s, &mut qr, &q, &v, (&cos, &sin), Lags::default(), one);
    let da = data(t * d, 5);
    let (mut dq, mut dv, mut ds, mut dlog) = (vec![0.0; t * n], vec![0.0; t * d], vec![0.0; t * t], [0.0; 2]);
    let mut dx = data(t * n, 9);
    let saved = AttentionSaved { x: &q, q: &qr, v: &v, scores: &s, cos: &cos, sin: &sin, lags: Lags::default() };
    g.throughput(Throughput::Elements((2 * t * t * (n + d)) as u64));
    g.bench_function("causal_linear_attention_backward T256 N1024 D128", |bch| {
        bch.iter(|| {
            causal_linear_attention_backward(&mut dx, &mut dq, &mut dv, &mut ds, &mut dlog, black_box(&da), saved, one)
        })
    });
    let mut qt = vec![0.0; t * n];
    g.throughput(Throughput::Elements((t * n) as u64));
    g.bench_function("transpose T256xN1024", |bch| bch.iter(|| transpose(&mut qt, black_box(&qr), t, n)));
    let mut x = data(t * d * 8, 6);
    let mut rstd = vec![0.0; t * 8];
    g.throughput(Throughput::Elements((t * d * 8) as u64));
    g.bench_function("layer_norm 2048xD128", |bch| bch.iter(|| layer_norm(black_box(&mut x), &mut rstd, d)));
    let mut r = vec![0.0; t * n];
    g.throughput(Throughput::Elements((t * n) as u64));
    g.bench_function("rope T256 N1024", |bch| {
        bch.iter(|| rope(&mut r, black_box(&q), &cos, &sin, n, RopeDirection::Forward))
    });
    g.finish();
}

fn recurrent_kernels(c: &mut Criterion) {
    let (d, n) = (128, 1024);
    let mut g = c.benchmark_group("recurrent");
    let x = sparse(n, 9);
    // Rows of the RoPE pairs with an active neuron, as a recurrent step uses them.
    let rows: Vec<u32> = (0..n as u32 / 2)
        .filter(|&j| x[2 * j as usize] > 0.0 || x[2 * j as usize + 1] > 0.0)
        .flat_map(|j| [2 * j, 2 * j + 1])
        .collect();
    let cols: Vec<u32> = (0..n as u32).filter(|&i| x[i as usize] > 0.0).collect();
    let (mut rho, v) = (data(n * d, 10), data(d, 11));
    let mut a = vec![0.0; d];
    g.bench_function(format!("rho_read_write N1024 D128 rows{}", rows.len()), |bch| {
        bch.iter(|| rho_read_write(&mut a, &mut rho, black_box(&x), &v, &rows))
    });
    let all: Vec<u32> = (0..n as u32).collect();
    g.bench_function("rho_read_write N1024 D128 dense", |bch| {
        bch.iter(|| rho_read_write(&mut a, &mut rho, black_box(&x), &v, &all))
    });
    let w_t = data(n * d, 12);
    let mut y = vec![0.0; cols.len()];
    g.bench_function(format!("gather_dot N1024 D128 cols{}", cols.len()), |bch| {
        bch.iter(|| gather_dot(&mut y, black_box(&v), &w_t, &cols))
    });
    let w = data(d * n, 13);
    let mut out = vec![0.0; n];
    g.bench_function("matmul 1xD128 . D128xN1024", |bch| {
        bch.iter(|| matmul(&mut out, black_box(&v), &w, MatMul::new(1, d, n)))
    });
    let mut u = vec![0.0; d];
    g.bench_function(format!("sparse_row_sum N1024 D128 rows{}", cols.len()), |bch| {
        bch.iter(|| sparse_row_sum(&mut u, black_box(&x), &w_t, &cols))
    });
    g.finish();
}

/// The GPT baseline's attention at gpt-small's shape and at nanoGPT's recipe's: one
/// training step's batch.
fn softmax_kernels(c: &mut Criterion) {
    let mut g = c.benchmark_group("softmax");
    for a in [
        SoftmaxAttention { b: 8, t: 256, h: 6, s: 30, dropout: 0.0, seed: 0 },
        SoftmaxAttention { b: 12, t: 64, h: 4, s: 32, dropout: 0.0, seed: 0 },
    ] {
        softmax_pair(&mut g, a);
    }
}

fn softmax_pair(g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>, a: SoftmaxAttention) {
    let d = a.h * a.s;
    let name = format!("B{} T{} H{} S{}", a.b, a.t, a.h, a.s);
    let qkv = data(a.b * a.t * 3 * d, 11);
    let (mut y, mut lse) = (vec![0.0; a.b * a.t * d], vec![0.0; a.b * a.h * a.t]);
    // (the model's count of the causal products)
    g.throughput(Throughput::Elements((2 * a.b * a.t * a.t * d) as u64));
    g.bench_function(format!("causal_softmax_attention {name}"), |bch| {
        bch.iter(|| causal_softmax_attention(&mut y, &mut lse, black_box(&qkv), a))
    });
    causal_softmax_attention(&mut y, &mut lse, &qkv, a);
    let dy = data(y.len(), 12);
    let mut dqkv = vec![0.0; qkv.len()];
    g.throughput(Throughput::Elements((4 * a.b * a.t * a.t * d) as u64));
    g.bench_function(format!("causal_softmax_attention_backward {name}"), |bch| {
        bch.iter(|| causal_softmax_attention_backward(&mut dqkv, black_box(&dy), &qkv, &y, &lse, a))
    });
}

criterion_group!(benches, dense_kernels, recurrent_kernels, softmax_kernels);
criterion_main!(benches);
