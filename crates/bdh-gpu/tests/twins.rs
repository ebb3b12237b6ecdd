#![cfg(feature = "gpu")]
//! Each device kernel against its CPU twin from `bdh-kernels` (or, where the CPU has
//! none of its own, a plain loop), on the first Vulkan adapter here — in CI,
//! lavapipe. Without one each test says it skipped, unless `BDH_REQUIRE_GPU=1`.

use bdh_kernels::{
    causal_linear_attention, layer_norm, matmul_batched, rope, Attention, Batch, Lags, MatMul, RopeDirection,
};

mod common;
use common::{device, random, rel};
use rand::SeedableRng;

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
    dev.rope(&up(&x), &up(&table.cos), &up(&table.sin), &out, t, n, false);
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
    causal_linear_attention(
        &mut out,
        &mut scores,
        &mut q,
        &x,
        &v,
        (&table.cos, &table.sin),
        Lags::decay(&decay),
        shape,
    );

    // The device forward's sequence: RoPE, masked scores, decay, scores · v.
    let dt = bdh::model::bdh::decay::DecayTable::new(decay.to_vec(), (Vec::new(), Vec::new()), (h, t));
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
    dev.rope(&gx, &up(&table.cos), &up(&table.sin), &gq, t, n, false);
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
    dev.mul(&up(&a), &up(&b), None, &out);
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

#[test]
fn the_backward_kernels_equal_the_cpu() {
    let Some(dev) = device("GPU backward twins") else { return };
    let up = |v: &[f32]| dev.upload(v, "test").unwrap();
    let (rows, v, d) = (37, 70, 48);
    // cross-entropy's gradient
    let logits: Vec<f32> = random(rows * v, 20).iter().map(|x| 4.0 * x).collect();
    let targets: Vec<u32> = (0..rows as u32).map(|r| (r * 7) % v as u32).collect();
    let mut want = vec![0.0; rows * v];
    bdh::model::loss::cross_entropy_backward(&mut want, &logits, &targets, v);
    let got = dev.scratch(rows * v, "test").unwrap();
    dev.cross_entropy_backward(&up(&logits), &dev.upload_ids(&targets).unwrap(), &got, v, 1.0 / rows as f32);
    let got = dev.read(&got).unwrap();
    assert!(rel(&got, &want) < 1e-6, "cross-entropy backward: {}", rel(&got, &want));
    // LayerNorm's backward
    let (mut xhat, g) = (random(rows * d, 21), random(rows * d, 22));
    let mut rstd = vec![0.0; rows];
    layer_norm(&mut xhat, &mut rstd, d);
    let mut want = g.clone();
    bdh_kernels::layer_norm_backward(&mut want, &xhat, &rstd, d);
    let got = up(&g);
    dev.layer_norm_backward(&got, &up(&xhat), &up(&rstd), d);
    assert!(rel(&dev.read(&got).unwrap(), &want) < 1e-6);
    // the gate's backward, with and without dropout's scales
    let len = 1000;
    let (x, y, dz) = (random(len, 23), random(len, 24), random(len, 25));
    let (x, y): (Vec<f32>, Vec<f32>) = (x.iter().map(|v| v.max(0.0)).collect(), y.iter().map(|v| v.max(0.0)).collect());
    let keep: Vec<f32> = (0..len).map(|i| if i % 3 == 0 { 0.0 } else { 1.25 }).collect();
    for k in [&[][..], &keep[..]] {
        let (mut dx, mut dy, mut z) = (dz.clone(), vec![0.0; len], vec![0.0; len]);
        bdh_kernels::gated_product(&mut z, &x, &y, k);
        bdh_kernels::gated_product_backward(&mut dx, &mut dy, &x, &y, k);
        let (gdx, gdy, gz) = (up(&dz), dev.scratch(len, "t").unwrap(), dev.scratch(len, "t").unwrap());
        let kept = up(k);
        dev.gate_backward(&gdx, &gdy, &gz, &up(&x), &up(&y), (!k.is_empty()).then_some(&kept)).unwrap();
        for (got, want) in [(&gdx, &dx), (&gdy, &dy), (&gz, &z)] {
            assert_eq!(&dev.read(got).unwrap(), want, "the gate's backward, dropout: {}", !k.is_empty());
        }
    }
    // the ReLU's backward of two paths
    let extra = random(len, 26);
    let want: Vec<f32> = (0..len).map(|i| if x[i] > 0.0 { dz[i] + extra[i] } else { 0.0 }).collect();
    let got = up(&dz);
    dev.relu_backward_add(&got, &up(&extra), &up(&x));
    assert_eq!(dev.read(&got).unwrap(), want);
    // the heads summed into the residual's gradient
    let (groups, k, each) = (3, 4, 50);
    let (out, src) = (random(groups * each, 27), random(groups * k * each, 28));
    let mut want = out.clone();
    bdh_kernels::add_groups(&mut want, &src, each, k);
    let got = up(&out);
    dev.add_groups(&got, &up(&src), each, k);
    assert_eq!(dev.read(&got).unwrap(), want);
    // the embedding's gradient, a token repeated
    let (vocab, ids) = (11usize, [3u32, 7, 3, 0, 10, 3]);
    let (grad, dv) = (random(vocab * d, 29), random(ids.len() * d, 30));
    let mut want = grad.clone();
    for (row, &tok) in dv.chunks(d).zip(&ids) {
        want[tok as usize * d..][..d].iter_mut().zip(row).for_each(|(o, &g)| *o += g);
    }
    let got = up(&grad);
    let mut positions: Vec<u32> = (0..ids.len() as u32).collect();
    positions.sort_by_key(|&i| ids[i as usize]); // (stable: in order within a token)
    let starts: Vec<u32> = (0..=vocab as u32).map(|r| ids.iter().filter(|&&t| t < r).count() as u32).collect();
    let (positions, starts) = (dev.upload_ids(&positions).unwrap(), dev.upload_ids(&starts).unwrap());
    dev.embed_backward(&got, &up(&dv), &positions, &starts, d);
    assert_eq!(dev.read(&got).unwrap(), want);
    // RoPE back by its angles
    let (t, n) = (5, 8);
    let freqs: Vec<f32> = (0..n).map(|i| 0.1 + 0.05 * (i / 2) as f32).collect();
    let table = bdh::model::bdh::rope::RopeTable::new(&freqs, 9, t);
    let xs = random(2 * t * n, 31);
    let mut want = vec![0.0; xs.len()];
    rope(&mut want, &xs, &table.cos, &table.sin, n, RopeDirection::Inverse);
    let got = dev.scratch(xs.len(), "t").unwrap();
    dev.rope(&up(&xs), &up(&table.cos), &up(&table.sin), &got, t, n, true);
    assert_eq!(dev.read(&got).unwrap(), want);
}

#[test]
fn adamw_and_the_gradient_norm_equal_the_cpu_optimizer() {
    let Some(dev) = device("GPU AdamW twin") else { return };
    let up = |v: &[f32]| dev.upload(v, "test").unwrap();
    let layout = [("a", vec![3000]), ("b", vec![7, 11])];
    let mut params = bdh::params::Params::zeros(&layout).unwrap();
    params.data_mut().copy_from_slice(&random(3077, 40));
    let config = bdh::train::AdamWConfig { lr: 3e-3, ..Default::default() };
    let mut opt = bdh::train::AdamW::with_decay(config, &params, vec![true, false]);
    let (p, m, v) = (up(params.data()), up(opt.m.data()), up(opt.v.data()));
    for step in 1..=3 {
        let mut grads = params.zeros_like();
        grads.data_mut().copy_from_slice(&random(3077, 40 + step));
        let g = up(grads.data());
        let (head, tail) = (up(&grads.data()[..1000]), up(&grads.data()[1000..]));
        let norm = dev.sum_squares(&[&head, &tail], 0.5).unwrap().sqrt();
        let want: f64 = grads.data().iter().map(|&x| ((x * 0.5) as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - want).abs() < 1e-5 * want, "norm {norm} vs {want}");
        grads.data_mut().iter_mut().for_each(|x| *x = *x * 0.5 * 0.75);
        opt.update(&mut params, &grads);
        let (b1, b2) = (0.9f64, 0.999f64);
        let s = bdh_gpu::device::AdamStep {
            scale: 0.5,
            clip: 0.75,
            decay: (1.0 - 3e-3 * 0.1) as f32,
            w1: (1.0 - b1) as f32,
            beta2: b2 as f32,
            w2: (1.0 - b2) as f32,
            bc2: (1.0 - b2.powi(step as i32)).sqrt() as f32,
            eps: 1e-8,
            step: (3e-3 / (1.0 - b1.powi(step as i32))) as f32,
        };
        // the slot without weight decay has its own launch
        let whole = dev.read(&p).unwrap();
        let (pa, pb) = (up(&whole[..3000]), up(&whole[3000..]));
        let gv = dev.read(&g).unwrap();
        let (ma, mb) = (up(&dev.read(&m).unwrap()[..3000]), up(&dev.read(&m).unwrap()[3000..]));
        let (va, vb) = (up(&dev.read(&v).unwrap()[..3000]), up(&dev.read(&v).unwrap()[3000..]));
        let (ga, gb) = (up(&gv[..3000]), up(&gv[3000..]));
        dev.adamw(&pa, &ga, &ma, &va, s);
        dev.adamw(&pb, &gb, &mb, &vb, bdh_gpu::device::AdamStep { decay: 1.0, ..s });
        let cat =
            |a: &bdh_gpu::device::Buf, b: &bdh_gpu::device::Buf| [dev.read(a).unwrap(), dev.read(b).unwrap()].concat();
        assert!(rel(&cat(&pa, &pb), params.data()) < 1e-6, "step {step}: weights");
        assert!(rel(&cat(&ma, &mb), opt.m.data()) < 1e-6, "step {step}: first moments");
        assert!(rel(&cat(&va, &vb), opt.v.data()) < 1e-6, "step {step}: second moments");
        assert!(dev.read(&ga).unwrap().iter().all(|&x| x == 0.0), "the gradients are zeroed");
        dev.write(&p, &cat(&pa, &pb)).unwrap();
        dev.write(&m, &cat(&ma, &mb)).unwrap();
        dev.write(&v, &cat(&va, &vb)).unwrap();
    }
}

#[test]
fn dropout_masks_drawn_on_the_device_are_the_cpus() {
    let Some(dev) = device("GPU dropout twin") else { return };
    for (block, blocks, first, seed, prob) in [(40, 6, 0, 7u64, 0.1f32), (37, 5, 12, 1 << 40, 0.5), (16, 3, 3, 99, 0.9)]
    {
        let mut want = vec![0.0; block * blocks];
        bdh::model::dropout::draw(&mut want, block, seed, first as u64, prob);
        let bytes = rand_chacha::ChaCha8Rng::seed_from_u64(seed).get_seed();
        let key: Vec<u32> = bytes.chunks(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])).collect();
        let got = dev.scratch(want.len(), "test").unwrap();
        dev.dropout_mask(&got, &dev.upload_ids(&key).unwrap(), block, first, prob);
        assert_eq!(dev.read(&got).unwrap(), want, "block {block}, seed {seed}, p {prob}");
    }
}

#[test]
fn bf16_products_equal_the_cpus_on_inputs_rounded_to_bfloat16() {
    let Some(mut dev) = device("GPU bf16 products") else { return };
    dev.set_bf16(true);
    let (m, k, n) = (37, 70, 45);
    let batch = Batch { count: [2, 3], a: [3 * m * k, m * k], b: [0, k * n], c: [3 * m * n, m * n] };
    for (a_t, b_t) in [(false, false), (true, false), (false, true)] {
        let p = MatMul::new(m, k, n);
        let p = if a_t { p.a_t() } else { p };
        let p = if b_t { p.b_t() } else { p };
        let (a, b) = (random(6 * m * k, 50), random(3 * k * n, 51));
        let round = |v: &[f32]| v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect::<Vec<_>>();
        let (mut want, mut exact) = (vec![0.0; 6 * m * n], vec![0.0; 6 * m * n]);
        matmul_batched(&mut want, &round(&a), &round(&b), p, batch);
        matmul_batched(&mut exact, &a, &b, p, batch);
        let c = dev.scratch(6 * m * n, "C").unwrap();
        dev.matmul(&c, &dev.upload(&a, "A").unwrap(), &dev.upload(&b, "B").unwrap(), p, batch, false);
        let got = dev.read(&c).unwrap();
        assert!(rel(&got, &want) < 1e-5, "a_t {a_t} b_t {b_t}: {}", rel(&got, &want));
        assert!(rel(&got, &exact) > 1e-4, "the inputs were rounded");
    }
}

#[test]
fn the_slot_kernels_equal_the_cpus_step_of_each_stream() {
    let Some(dev) = device("GPU slot twins") else { return };
    let up = |v: &[f32]| dev.upload(v, "test").unwrap();
    // A pool of 4 slots (H 2, N 8, D 6); 3 streams stepped, in slots 3, 0, 2.
    let (s, h, n, d, slots) = (4, 2, 8, 6, [3u32, 0, 2]);
    let b = slots.len();
    let pool = random(s * h * n * d, 20);
    // R(x) (H, B, N), some neurons silent; v (B, D).
    let xr: Vec<f32> = random(h * b * n, 21).iter().map(|&x| if x < -0.3 { 0.0 } else { x }).collect();
    let v = random(b * d, 22);
    for gamma in [None, Some([0.5f32, 0.75])] {
        let (mut want_rho, mut want_a) = (pool.clone(), vec![0.0f32; h * b * d]);
        for (row, &slot) in slots.iter().enumerate() {
            for head in 0..h {
                let rho = &mut want_rho[((slot as usize * h) + head) * n * d..][..n * d];
                if let Some(g) = gamma {
                    bdh_kernels::decay_state(rho, g[head]);
                }
                let q = &xr[(head * b + row) * n..][..n];
                let listed: Vec<u32> = (0..n as u32).filter(|&i| q[i as usize] != 0.0).collect();
                let a = &mut want_a[(head * b + row) * d..][..d];
                bdh_kernels::rho_read_write(a, rho, q, &v[row * d..][..d], &listed);
            }
        }
        let (rho, a, ids) = (up(&pool), dev.scratch(h * b * d, "a").unwrap(), dev.upload_ids(&slots).unwrap());
        let g = gamma.map(|g| up(&g));
        dev.read_slots(&rho, &ids, &up(&xr), g.as_ref(), &a, [h, n, d]);
        dev.write_slots(&rho, &ids, &up(&xr), &up(&v), g.as_ref(), [h, n, d]);
        let (got_a, got_rho) = (dev.read(&a).unwrap(), dev.read(&rho).unwrap());
        assert!(rel(&got_a, &want_a) < 1e-6, "γ {gamma:?}: the read {:.2e}", rel(&got_a, &want_a));
        assert!(rel(&got_rho, &want_rho) < 1e-6, "γ {gamma:?}: the write {:.2e}", rel(&got_rho, &want_rho));
        // Slot 1, stepped by nobody, is as it was.
        assert_eq!(got_rho[h * n * d..2 * h * n * d], pool[h * n * d..2 * h * n * d]);
    }
    // A stream's state into and out of its slot.
    let (pool, one) = (up(&pool), dev.scratch(h * n * d, "one").unwrap());
    dev.copy_range(&pool, 2 * h * n * d, &one, 0, h * n * d);
    let got = dev.read(&one).unwrap();
    assert_eq!(got, dev.read(&pool).unwrap()[2 * h * n * d..3 * h * n * d]);
}

#[test]
fn the_gpt_kernels_equal_the_cpus() {
    use bdh_gpu::device::Heads;
    use bdh_kernels::{affine, affine_backward, bias_grad, causal_softmax_attention, gelu, gelu_backward};
    use bdh_kernels::{causal_softmax_attention_backward, SoftmaxAttention};
    let Some(dev) = device("GPU GPT twins") else { return };
    let up = |v: &[f32]| dev.upload(v, "test").unwrap();
    let (rows, d) = (6, 8);
    let (x, w, bias) = (random(rows * d, 30), random(d, 31), random(d, 32));
    // A LayerNorm's affine and its backward; a Linear's bias and its gradient.
    let mut want = x.clone();
    affine(&mut want, &w, &bias);
    let out = dev.scratch(rows * d, "out").unwrap();
    dev.affine(&out, &up(&x), &up(&w), Some(&up(&bias)));
    assert!(rel(&dev.read(&out).unwrap(), &want) < 1e-6);
    let g = random(rows * d, 33);
    let (mut want_g, mut want_dw, mut want_db) = (g.clone(), vec![0.0; d], vec![0.0; d]);
    affine_backward(&mut want_g, &mut want_dw, &mut want_db, &x, &w);
    let (gb, dw, db) = (up(&g), up(&vec![0.0; d]), up(&vec![0.0; d]));
    dev.affine_backward(&gb, &up(&x), &up(&w), &dw, Some(&db));
    for (got, want) in [(dev.read(&gb).unwrap(), want_g), (dev.read(&dw).unwrap(), want_dw)] {
        assert!(rel(&got, &want) < 1e-6);
    }
    assert!(rel(&dev.read(&db).unwrap(), &want_db) < 1e-6);
    let mut want_bias = vec![0.0; d];
    bias_grad(&mut want_bias, &g);
    let sums = up(&vec![0.0; d]);
    dev.column_sums(&sums, &up(&g));
    assert!(rel(&dev.read(&sums).unwrap(), &want_bias) < 1e-6);
    // GELU and its backward (the CPU's erf polynomial; the exponentials differ in ulps).
    let fc: Vec<f32> = random(rows * d, 34).iter().map(|x| 4.0 * x).collect();
    let mut want = vec![0.0; fc.len()];
    gelu(&mut want, &fc);
    dev.gelu(&out, &up(&fc));
    assert!(rel(&dev.read(&out).unwrap(), &want) < 1e-5);
    let mut want = g.clone();
    gelu_backward(&mut want, &fc);
    let gb = up(&g);
    dev.gelu_backward(&gb, &up(&fc));
    assert!(rel(&dev.read(&gb).unwrap(), &want) < 1e-5);
    // The causal softmax attention and its backward: B 2, T 5, H 2, S 4.
    let (b, t, h, s) = (2, 5, 2, 4);
    let a = SoftmaxAttention { b, t, h, s, dropout: 0.0, seed: 0 };
    let qkv = random(b * t * 3 * h * s, 35);
    let (mut y, mut lse) = (vec![0.0; b * t * h * s], vec![0.0; b * h * t]);
    causal_softmax_attention(&mut y, &mut lse, &qkv, a);
    let (yd, lsed) = (dev.scratch(y.len(), "y").unwrap(), dev.scratch(lse.len(), "lse").unwrap());
    let heads = Heads { b, t, h, s };
    dev.attention(&up(&qkv), &yd, &lsed, heads);
    assert!(rel(&dev.read(&yd).unwrap(), &y) < 1e-5 && rel(&dev.read(&lsed).unwrap(), &lse) < 1e-5);
    let dy = random(y.len(), 36);
    let mut want = vec![0.0; qkv.len()];
    causal_softmax_attention_backward(&mut want, &dy, &qkv, &y, &lse, a);
    let got = dev.scratch(qkv.len(), "dqkv").unwrap();
    dev.attention_backward(&got, &up(&dy), &up(&qkv), &yd, &lsed, heads);
    assert!(rel(&dev.read(&got).unwrap(), &want) < 1e-5, "{:.2e}", rel(&dev.read(&got).unwrap(), &want));
    // The embeddings: tokens plus positions, and the positions' gradient.
    let (vocab, ids) = (7, [3u32, 0, 6, 3, 1, 2]);
    let (wte, wpe) = (random(vocab * d, 37), random(3 * d, 38));
    let xs = dev.scratch(ids.len() * d, "x").unwrap();
    dev.embed_positions(&up(&wte), &up(&wpe), &dev.upload_ids(&ids).unwrap(), &xs, 3, d);
    let want: Vec<f32> =
        (0..ids.len() * d).map(|i| wte[ids[i / d] as usize * d + i % d] + wpe[(i / d % 3) * d + i % d]).collect();
    assert_eq!(dev.read(&xs).unwrap(), want);
    let dwpe = up(&vec![0.0; 3 * d]);
    dev.positions_backward(&dwpe, &up(&g[..ids.len() * d]), 2, 3, d);
    let want: Vec<f32> = (0..3 * d).map(|i| g[i] + g[3 * d + i]).collect();
    assert!(rel(&dev.read(&dwpe).unwrap(), &want) < 1e-6);
}
