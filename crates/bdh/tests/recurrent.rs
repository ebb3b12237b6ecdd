//! Recurrent == parallel: logits of one-token steps equal the parallel forward's at
//! every position, for T up to 320 on several configs and the trained fixture.

use bdh::checkpoint::load;
use bdh::{forward, Activations, BdhConfig, Mode, Model, Recurrent};

use crate::common::{golden_dir, tiny_config, tokens};

/// Max abs diff between step-by-step and parallel logits, relative to max |logit|.
fn recurrent_vs_parallel(model: &Model, toks: &[u32]) -> f32 {
    let v = model.config.vocab_size;
    let mut acts = Activations::new(model, 1, toks.len());
    forward(model, toks, &mut acts, Mode::Eval).unwrap();
    let mut rec = Recurrent::new(model);
    let mut worst = 0.0f32;
    for (t, &tok) in toks.iter().enumerate() {
        let step = rec.step(tok).unwrap();
        let par = &acts.logits[t * v..(t + 1) * v];
        let scale = par.iter().map(|x| x.abs()).fold(0.0f32, f32::max);
        let diff = step.iter().zip(par).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        worst = worst.max(diff / scale);
    }
    worst
}

#[test]
fn recurrent_equals_parallel_at_every_position() {
    let configs: [(BdhConfig, usize); 4] = [
        (tiny_config(1, 2, 1, 1), 301),  // N = 2: a single RoPE pair
        (tiny_config(2, 32, 2, 8), 300), // the ref-tiny shape
        (tiny_config(3, 24, 3, 6), 257), // odd sizes: D24 H3 N48
        (tiny_config(2, 64, 4, 16), 320),
    ];
    for (i, (cfg, t)) in configs.into_iter().enumerate() {
        let model = Model::new(cfg.clone(), i as u64).unwrap();
        let worst = recurrent_vs_parallel(&model, &tokens(t, i as u64));
        println!("{cfg:?} T{t}: max rel diff {worst:.2e}");
        assert!(worst < 1e-4, "{cfg:?}: {worst}");
    }
}

#[test]
fn recurrent_equals_parallel_on_the_trained_model() {
    let model = load(&golden_dir("ref-small-trained"), None).unwrap();
    let text = b"The hatchling keeps what it reads in its synapses; ask it later and it recalls.\n".repeat(5);
    let toks: Vec<u32> = text.iter().take(300).map(|&b| b as u32).collect();
    let worst = recurrent_vs_parallel(&model, &toks);
    println!("ref-small-trained T{}: max rel diff {worst:.2e}", toks.len());
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn prefill_then_steps_equals_steps_alone() {
    let model = Model::new(tiny_config(2, 32, 2, 8), 7).unwrap();
    let toks = tokens(40, 3);
    let mut a = Recurrent::new(&model);
    a.prefill(&toks[..25]).unwrap();
    let mut b = Recurrent::new(&model);
    for &t in &toks[..25] {
        b.step(t).unwrap();
    }
    let rho_diff = a.state.rho.iter().zip(&b.state.rho).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(rho_diff < 1e-4, "ρ after prefill differs by {rho_diff}");
    assert_eq!(a.state.pos, 25);
    for &t in &toks[25..] {
        let la = a.step(t).unwrap().to_vec();
        let lb = b.step(t).unwrap();
        let d = la.iter().zip(lb).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(d < 1e-4, "logits differ by {d}");
    }
    // A second prefill continues the sequence rather than restarting it.
    a.prefill(&toks[..3]).unwrap();
    assert_eq!(a.state.pos, 43);
}

#[test]
fn state_memory_does_not_grow_with_context() {
    let model = Model::new(tiny_config(2, 32, 2, 8), 1).unwrap();
    let mut rec = Recurrent::new(&model);
    let before = rec.state.bytes();
    for &t in &tokens(500, 9) {
        rec.step(t).unwrap();
    }
    assert_eq!(rec.state.bytes(), before);
    assert_eq!(before, 2 * 2 * 128 * 32 * 4);
}
