#![cfg(feature = "gpu")]
//! The GPT baseline on the device (in CI, lavapipe): nanoGPT's fixtures (logits,
//! loss, every gradient, the greedy continuation), training steps against the
//! CPU's, generation with its window sliding. Without a device each test says it
//! skipped, unless `BDH_REQUIRE_GPU=1`.

use bdh::engine::Device;
use bdh::infer::Prepared;
use bdh::io::checkpoint::load;
use bdh::io::read_safetensors;
use bdh::model::gpt::GptConfig;
use bdh::train::{AdamWConfig, Single, Trainer};
use bdh::verify::{greedy, greedy_with, verify_on};
use bdh::{Model, ModelConfig};
use bdh_gpu::Want;

mod common;
use common::{golden_dir, open};

/// A small GPT with a short window (so that generation slides it), biases on.
fn small(block_size: usize, dropout: f32) -> Model {
    let cfg = GptConfig { n_layer: 2, n_head: 2, n_embd: 16, block_size, vocab_size: 256, dropout, bias: true };
    Model::new(&ModelConfig::Gpt(cfg), 5).unwrap()
}

#[test]
fn gpt_fixtures_match_nanogpt_on_the_device() {
    for fixture in ["gpt-tiny", "gpt-small-trained"] {
        let dir = golden_dir(fixture);
        let model = load(&dir.join("model.safetensors"), None).unwrap();
        let Some(mut gpu) = open(&model, "GPT fixtures on the GPU") else { return };
        let path = dir.join("expected.safetensors");
        let golden = read_safetensors(&path).unwrap();
        let report = verify_on(&model, Some(&mut gpu as &mut dyn Device), &golden, &path).unwrap();
        for t in &report.tensors {
            println!("{fixture} on the device: {:<40} max abs {:.2e} max rel {:.2e}", t.name, t.max_abs, t.max_rel);
            assert!(t.max_rel < 1e-4, "{fixture}: {} max rel {:.2e}", t.name, t.max_rel);
        }
        if let Some(g) = &report.greedy {
            println!("{fixture}: greedy {}/{}", g.matching, g.total);
        }
        assert!(report.passed(), "{fixture}: {report:?}");
    }
}

#[test]
fn gpt_training_steps_on_the_device_equal_the_cpus() {
    let (b, t) = (2, 8);
    for (lr, bound) in [(0.0, 1e-5), (3e-3, 1e-3)] {
        let model = small(16, 0.0);
        if open(&model, "GPT training on the GPU").is_none() {
            return;
        }
        let opt = AdamWConfig { lr, ..AdamWConfig::default() };
        let mut cpu = Trainer::new(model.clone(), opt.clone(), b, t).unwrap();
        let mut gpu = Trainer::lean(model, opt, b, t).unwrap();
        gpu.device = Some(bdh_gpu::trainer(&gpu, Want::Any).unwrap());
        let (mut worst_loss, mut worst_norm) = (0f32, 0f32);
        for step in 0..10u32 {
            let ids: Vec<u32> = (0..b * (t + 1) as u32 as usize).map(|i| (i as u32 * 37 + step * 11) % 256).collect();
            let (x, y): (Vec<u32>, Vec<u32>) =
                ids.chunks(t + 1).flat_map(|r| r[..t].iter().copied().zip(r[1..].iter().copied())).unzip();
            let losses = [&mut cpu, &mut gpu].map(|tr| tr.accumulate(&x, &y, 0).unwrap());
            let norms = [&mut cpu, &mut gpu].map(|tr| tr.apply(1, 1.0, lr, &Single).unwrap() as f32);
            worst_loss = worst_loss.max((losses[1] - losses[0]).abs() / losses[0]);
            worst_norm = worst_norm.max((norms[1] - norms[0]).abs() / norms[0]);
        }
        println!("lr {lr}: 10 steps, loss within {worst_loss:.1e}, gradient norm within {worst_norm:.1e} of the CPU's");
        assert!(worst_loss < bound && worst_norm < bound * 10.0, "lr {lr}: {worst_loss:.2e} {worst_norm:.2e}");
        // The weights and moments come back as the CPU's files hold them.
        gpu.sync().unwrap();
        let (w, c) = (gpu.model.params().data(), cpu.model.params().data());
        let r = common::rel(w, c);
        assert!(r < bound * 10.0, "lr {lr}: weights {r:.2e}");
        assert_eq!(gpu.opt.step, cpu.opt.step);
    }
}

#[test]
fn gpt_generation_on_the_device_is_the_cpus_and_slides_its_window() {
    let model = small(16, 0.0);
    let Some(gpu) = open(&model, "GPT generation on the GPU") else { return };
    let prepared = Prepared::new(model).unwrap();
    let prompt: Vec<u32> = b"ROMEO: ".iter().map(|&b| b as u32).collect();
    // 40 tokens through a window of 16: it slides 31 times.
    let cpu = greedy(&prepared, &prompt, 40).unwrap();
    let mut stream = gpu.stream(&prepared.state().unwrap()).unwrap();
    let dev = greedy_with(&mut *stream, &prompt, 40).unwrap();
    assert_eq!(dev, cpu);
    // Its state, handed to the CPU, goes on as the CPU's own.
    let state = stream.state().unwrap();
    // (the prompt and every generated token but the last, which nothing has read yet)
    assert_eq!(state.pos(), prompt.len() + 39);
    let (mut mine, mut scratch) = (state.clone(), prepared.scratch());
    let next = prepared.step(&mut [&mut mine], &mut scratch, &[65], &bdh::model::bdh::NO_EDITS).unwrap().to_vec();
    let there = stream.step(65).unwrap();
    let r = common::rel(there, &next);
    assert!(r < 1e-5, "the next logits: {r:.2e}");
}

#[test]
fn a_gpt_with_dropout_is_refused_with_the_reason() {
    let model = small(16, 0.1);
    let trainer = Trainer::lean(model, AdamWConfig::default(), 2, 8).unwrap();
    let e = bdh_gpu::trainer(&trainer, Want::Any).expect_err("refused");
    assert!(e.to_string().contains("a GPT with dropout (0.1) trains on the CPU"), "{e}");
}
