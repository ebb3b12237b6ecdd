//! The per-kernel times: what counts, once, and nothing while off. (Its own test
//! binary: the table is the process's.)

use bdh_kernels::profile::{start, stop};
use bdh_kernels::{layer_norm, matmul, matmul_batched, Batch, MatMul};
use rayon::prelude::*;

#[test]
fn kernels_count_once_by_layout_and_shape_and_nothing_while_off() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    let (a, b) = (vec![0.5f32; 64 * 32], vec![0.25f32; 32 * 16]);
    let mut c = vec![0.0f32; 4 * 64 * 16];
    drop(stop());
    pool.install(|| matmul(&mut c, &a, &b, MatMul::new(64, 32, 16).par()));
    assert!(stop().is_empty(), "counted while off");

    start();
    pool.install(|| {
        // a pool kernel from outside the pool: once, its items not separately
        matmul(&mut c, &a, &b, MatMul::new(64, 32, 16).par());
        matmul(&mut c, &a, &b, MatMul::new(64, 32, 16).par());
        let batch = Batch { count: [2, 2], a: [0, 0], b: [0, 0], c: [2 * 64 * 16, 64 * 16] };
        matmul_batched(&mut c, &a, &b, MatMul::new(64, 32, 16), batch);
        // kernels on pool threads: each call counts its own time
        c.par_chunks_mut(64 * 16).for_each(|c| {
            matmul(c, &a, &b, MatMul::new(16, 32, 16).b_t().ld(32, 32, 16));
            layer_norm(&mut c[..64], &mut [0.0; 4], 16);
        });
    });
    let table = stop();
    let find = |name: &str, shape: [usize; 3]| {
        table.iter().find(|k| (k.name, k.shape) == (name, shape)).unwrap_or_else(|| panic!("{name} in {table:?}"))
    };
    let plain = find("matmul", [64, 32, 16]);
    assert_eq!((plain.calls, plain.flops), (2, 2.0 * 2.0 * 64.0 * 32.0 * 16.0));
    let batched = find("batched matmul", [64, 32, 16]);
    assert_eq!((batched.calls, batched.flops), (1, 4.0 * 2.0 * 64.0 * 32.0 * 16.0));
    assert_eq!(find("matmul Bᵀ", [16, 32, 16]).calls, 4);
    assert_eq!(find("layer norm", [4, 16, 0]).calls, 4);
    assert_eq!(table.len(), 4, "{table:?}");
    assert!(table.iter().all(|k| k.seconds > 0.0));
    assert!(table.windows(2).all(|w| w[0].seconds >= w[1].seconds), "slowest first");
}
