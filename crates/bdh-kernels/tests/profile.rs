//! The per-kernel times: what counts, once, at what weight, and nothing while off.
//! (Its own test binary: the table is the process's.)

use std::time::Instant;

use bdh_kernels::profile::{start, stop};
use bdh_kernels::{
    causal_linear_attention, layer_norm, matmul, matmul_batched, transpose, Attention, Batch, Lags, MatMul,
};
use rayon::prelude::*;

#[test]
fn kernels_count_once_by_layout_and_shape_and_nothing_while_off() {
    let threads = rayon::current_num_threads() as f64;
    let (a, b) = (vec![0.5f32; 64 * 32], vec![0.25f32; 32 * 16]);
    let mut c = vec![0.0f32; 4 * 64 * 16];
    drop(stop());
    matmul(&mut c, &a, &b, MatMul::new(64, 32, 16).par());
    assert!(stop().is_empty(), "counted while off");

    start();
    // kernels called outside the pool (from this thread): once each, at the wall time
    // of every pool thread, whether they split their work over the pool or not
    matmul(&mut c, &a, &b, MatMul::new(64, 32, 16).par());
    matmul(&mut c, &a, &b, MatMul::new(64, 32, 16));
    let batch = Batch { count: [2, 2], a: [0, 0], b: [0, 0], c: [2 * 64 * 16, 64 * 16] };
    matmul_batched(&mut c, &a, &b, MatMul::new(64, 32, 16), batch);
    let mut big = vec![0.0f32; 512 * 512];
    let wall = Instant::now();
    transpose(&mut big, &vec![1.0f32; 512 * 512], 512, 512);
    let transposed = wall.elapsed().as_secs_f64();
    // a pool kernel whose tasks call products: only itself
    let s = Attention { b: 2, h: 2, t: 96, n: 32, d: 16 };
    let (mut out, mut scores, mut q) =
        (vec![0.0; 2 * 2 * 96 * 16], vec![0.0; 2 * 2 * 96 * 96], vec![0.0; 2 * 2 * 96 * 32]);
    let (x, v, cs) = (vec![0.5f32; q.len()], vec![0.5f32; 2 * 96 * 16], vec![0.5f32; 96 * 16]);
    let wall = Instant::now();
    causal_linear_attention(&mut out, &mut scores, &mut q, &x, &v, (&cs, &cs), Lags::default(), s);
    let attended = wall.elapsed().as_secs_f64();
    // kernels on pool threads, in a loop that is no kernel: each call its own time
    c.par_chunks_mut(64 * 16).for_each(|c| {
        matmul(c, &a, &b, MatMul::new(16, 32, 16).b_t().ld(32, 32, 16));
        layer_norm(&mut c[..64], &mut [0.0; 4], 16);
    });
    let table = stop();
    let find = |name: &str, shape: [usize; 3]| {
        table.iter().find(|k| (k.name, k.shape) == (name, shape)).unwrap_or_else(|| panic!("{name} in {table:?}"))
    };
    let plain = find("matmul", [64, 32, 16]);
    assert_eq!((plain.calls, plain.flops), (2, 2.0 * 2.0 * 64.0 * 32.0 * 16.0));
    let batched = find("batched matmul", [64, 32, 16]);
    assert_eq!((batched.calls, batched.flops), (1, 4.0 * 2.0 * 64.0 * 32.0 * 16.0));
    let t = find("transpose", [512, 512, 0]);
    assert!(t.seconds >= threads * transposed * 0.5 && t.seconds <= threads * transposed * 1.01, "{t:?}");
    let att = find("linear attention", [96, 32, 16]);
    assert!(att.seconds >= threads * attended * 0.5 && att.seconds <= threads * attended * 1.01, "{att:?}");
    assert_eq!(find("matmul Bᵀ", [16, 32, 16]).calls, 4);
    assert_eq!(find("layer norm", [4, 16, 0]).calls, 4);
    assert_eq!(table.len(), 6, "the attention's products are its own: {table:?}");
    assert!(table.iter().all(|k| k.seconds > 0.0));
    assert!(table.windows(2).all(|w| w[0].seconds >= w[1].seconds), "slowest first");
}
