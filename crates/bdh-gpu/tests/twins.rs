#![cfg(feature = "gpu")]
//! Each device kernel against its CPU twin from `bdh-kernels` (or, where the CPU has
//! none of its own, a plain loop), on the first Vulkan adapter here — in CI,
//! lavapipe. Without one each test says it skipped, unless `BDH_REQUIRE_GPU=1`.

use bdh_kernels::{causal_linear_attention, layer_norm, matmul_batched, rope, Attention, Batch, MatMul, RopeDirection};
use cubecl::prelude::Runtime;
use cubecl::wgpu::WgpuRuntime;
use rand::{Rng, SeedableRng};

use bdh_gpu::device::Device;
use bdh_gpu::probe;

mod common;
use common::skipped;

/// The first Vulkan device, or `None` (said) where there is none and none is required.
fn device(test: &str) -> Option<Device<WgpuRuntime>> {
    probe::quiet_vulkan();
    let Some(adapter) = probe::adapters().into_iter().next() else {
        assert_ne!(std::env::var("BDH_REQUIRE_GPU").as_deref(), Ok("1"), "BDH_REQUIRE_GPU=1 and no Vulkan device");
        skipped(test, "no Vulkan device (Debian and Ubuntu: apt-get install mesa-vulkan-drivers gives lavapipe)");
        return None;
    };
    Some(Device::new(WgpuRuntime::client(&adapter.device), adapter.name, None))
}

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Largest |a − b| over the largest |b| (or 1 when b is all zero).
fn rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn matmul_equals_the_cpu_for_every_flag_and_batching() {
    let Some(dev) = device("GPU matmul twin") else { return };
    // Sizes not multiples of the 4×4 blocks or the 64×64 tiles, and one-row products
    // (the step's, which split k over lanes instead).
    for (m, k, n) in [(37, 70, 45), (1, 300, 45), (1, 5, 70)] {
        let items = [2, 3];
        // Batchings: per-item operands; A shared by the inner level (B's stride 0 on
        // the outer); C summed over the inner level; C summed over the outer level;
        // one outer item (the step's per-head products).
        let batchings = [
            Batch { count: items, a: [3 * m * k, m * k], b: [3 * k * n, k * n], c: [3 * m * n, m * n] },
            Batch { count: items, a: [m * k, 0], b: [0, k * n], c: [3 * m * n, m * n] },
            Batch { count: items, a: [3 * m * k, m * k], b: [0, k * n], c: [m * n, 0] },
            Batch { count: items, a: [3 * m * k, m * k], b: [3 * k * n, k * n], c: [0, m * n] },
            Batch { count: [1, 3], a: [0, m * k], b: [0, k * n], c: [0, m * n] },
        ];
        for (i, batch) in batchings.into_iter().enumerate() {
            let flags = [
                (false, false, false, false),
                (true, false, true, false),
                (false, true, false, true),
                (false, false, true, true),
                (true, true, true, true),
            ];
            for (a_t, b_t, relu, acc) in flags {
                let mut p = MatMul::new(m, k, n);
                (p.a_t, p.b_t, p.relu, p.accumulate) = (a_t, b_t, relu, acc);
                let a = random(6 * m * k, 1);
                let b = random(6 * k * n, 2);
                let c0 = random(6 * m * n, 3);
                let mut want = c0.clone();
                matmul_batched(&mut want, &a, &b, p, batch);
                let (ga, gb, gc) =
                    (dev.upload(&a, "A").unwrap(), dev.upload(&b, "B").unwrap(), dev.upload(&c0, "C").unwrap());
                dev.matmul(&gc, &ga, &gb, p, batch, false);
                let got = dev.read(&gc).unwrap();
                let r = rel(&got, &want);
                assert!(
                    r < 1e-5,
                    "{m}×{k}×{n}, batching {i}, a_t {a_t} b_t {b_t} relu {relu} acc {acc}: max rel {r:.2e}"
                );
            }
        }
    }
}

#[test]
fn layer_norm_and_rope_equal_the_cpu() {
    let Some(dev) = device("GPU LayerNorm and RoPE twins") else { return };
    let (rows, d) = (33, 96);
    let x = random(rows * d, 4);
    let (mut want, mut rstd) = (x.clone(), vec![0.0; rows]);
    layer_norm(&mut want, &mut rstd, d);
    let (g, gr) = (dev.upload(&x, "x").unwrap(), dev.scratch(rows, "rstd").unwrap());
    dev.layer_norm(&g, &gr, d);
    assert!(rel(&dev.read(&g).unwrap(), &want) < 1e-6);
    assert!(rel(&dev.read(&gr).unwrap(), &rstd) < 1e-6);

    let (t, n) = (11, 64);
    let x = random(3 * t * n, 5);
    let table = bdh::model::bdh::rope::RopeTable::new(&bdh::model::bdh::rope::freqs(n), 1000, t);
    let mut want = vec![0.0; x.len()];
    rope(&mut want, &x, &table.cos, &table.sin, n, RopeDirection::Forward);
    let up = |v: &[f32]| dev.upload(v, "test").unwrap();
    let out = dev.scratch(x.len(), "out").unwrap();
    dev.rope(&up(&x), &up(&table.cos), &up(&table.sin), &out, t, n);
    assert!(rel(&dev.read(&out).unwrap(), &want) < 1e-6);
}

#[test]
fn causal_attention_with_decay_equals_the_cpu() {
    let Some(dev) = device("GPU attention twin") else { return };
    let (b, h, t, n, d) = (2, 3, 19, 16, 8);
    let x = random(b * h * t * n, 6).iter().map(|v| v.max(0.0)).collect::<Vec<_>>();
    let v = random(b * t * d, 7);
    let decay = [0.9f32, 0.5, 1.0];
    let table = bdh::model::bdh::rope::RopeTable::new(&bdh::model::bdh::rope::freqs(n), 0, t);
    let (mut out, mut scores, mut q) = (vec![0.0; b * h * t * d], vec![0.0; b * h * t * t], vec![0.0; x.len()]);
    let shape = Attention { b, h, t, n, d };
    causal_linear_attention(&mut out, &mut scores, &mut q, &x, &v, (&table.cos, &table.sin), &decay, shape);

    // The device forward's sequence: RoPE, masked scores, decay, scores · v.
    let dt = bdh::model::bdh::decay::DecayTable::new(&bdh::model::bdh::Decay::Retention(decay.to_vec()), h, t);
    let powers: Vec<f32> = (0..h)
        .flat_map(|hh| (0..t).map(move |k| (hh, k)))
        .map(|(hh, k)| if k == 0 { 1.0 } else { dt.read[hh * t + k - 1] })
        .collect();
    let up = |v: &[f32]| dev.upload(v, "test").unwrap();
    let (gx, gv, gp) = (up(&x), up(&v), up(&powers));
    let (gq, gs, ga) = (
        dev.scratch(x.len(), "q").unwrap(),
        dev.scratch(scores.len(), "s").unwrap(),
        dev.scratch(out.len(), "a").unwrap(),
    );
    dev.rope(&gx, &up(&table.cos), &up(&table.sin), &gq, t, n);
    let (tn, tt, td) = (t * n, t * t, t * d);
    let sb = Batch { count: [b, h], a: [h * tn, tn], b: [h * tn, tn], c: [h * tt, tt] };
    dev.matmul(&gs, &gq, &gq, MatMul::new(t, n, t).b_t(), sb, true);
    dev.decay_scores(&gs, &gp, h, t);
    let rb = Batch { count: [b, h], a: [h * tt, tt], b: [td, 0], c: [h * td, td] };
    dev.matmul(&ga, &gs, &gv, MatMul::new(t, t, d), rb, false);
    assert!(rel(&dev.read(&gq).unwrap(), &q) < 1e-6, "rotation");
    assert!(rel(&dev.read(&gs).unwrap(), &scores) < 1e-5, "scores");
    assert!(rel(&dev.read(&ga).unwrap(), &out) < 1e-5, "output");
}

#[test]
fn elementwise_step_and_loss_kernels_equal_plain_loops() {
    let Some(dev) = device("GPU element-wise twins") else { return };
    let up = |v: &[f32]| dev.upload(v, "test").unwrap();
    let (h, n, d, v) = (3, 8, 5, 7);
    let (a, b) = (random(h * n, 8), random(h * n, 9));
    let out = dev.scratch(h * n, "out").unwrap();
    dev.mul(&up(&a), &up(&b), &out);
    assert_eq!(dev.read(&out).unwrap(), a.iter().zip(&b).map(|(x, y)| x * y).collect::<Vec<_>>());
    dev.add(&up(&a), &up(&b), &out);
    assert_eq!(dev.read(&out).unwrap(), a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>());

    // ρ ← γ_h ρ, then ρ += R(x) ⊗ v.
    let (rho, xr, val, gamma) = (random(h * n * d, 10), random(h * n, 11), random(d, 12), [0.5f32, 0.25, 1.0]);
    let g = up(&rho);
    dev.scale_blocks(&g, &up(&gamma), n * d);
    dev.outer_add(&g, &up(&xr), &up(&val));
    let want: Vec<f32> = (0..h * n * d).map(|i| rho[i] * gamma[i / (n * d)] + xr[i / d] * val[i % d]).collect();
    assert_eq!(dev.read(&g).unwrap(), want);

    // A carried state's weighted queries: rows (B, H, T) of N scaled by (H, T) powers.
    let (b, t) = (2, 5);
    let (x, powers) = (random(b * h * t * n, 15), random(h * t, 16));
    let mut want = x.clone();
    bdh_kernels::scale_rows(&mut want, &powers, h, t, n);
    let out = dev.scratch(x.len(), "out").unwrap();
    dev.scale_rows(&out, &up(&x), &up(&powers), n);
    assert_eq!(dev.read(&out).unwrap(), want);

    // The embedding's gather and the per-row cross-entropy.
    let table = random(v * d, 13);
    let ids = [3u32, 0, 6, 3];
    let rows = dev.scratch(ids.len() * d, "rows").unwrap();
    dev.gather(&up(&table), &dev.upload_ids(&ids).unwrap(), &rows, d);
    let want: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].to_vec()).collect();
    assert_eq!(dev.read(&rows).unwrap(), want);
    let logits: Vec<f32> = random(ids.len() * v, 14).iter().map(|x| 30.0 * x).collect();
    let losses = dev.scratch(ids.len(), "losses").unwrap();
    dev.cross_entropy(&up(&logits), &dev.upload_ids(&ids).unwrap(), &losses, v);
    let want: Vec<f32> = logits
        .chunks(v)
        .zip(&ids)
        .map(|(row, &t)| {
            let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            (m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() - row[t as usize] as f64) as f32
        })
        .collect();
    assert!(rel(&dev.read(&losses).unwrap(), &want) < 1e-6);
}

#[test]
fn the_device_takes_buffers_of_128_mib_at_least() {
    let Some(dev) = device("GPU buffer size") else { return };
    assert!(dev.max_buffer() >= 1 << 27, "{} allows buffers of {} bytes only", dev.name, dev.max_buffer());
}
