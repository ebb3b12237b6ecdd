//! Recurrent == parallel: logits of one-token steps equal the parallel forward's at
//! every position, for T up to 320 on several configs and the trained fixture; and
//! the sparse step equals the dense one.

use bdh::infer::{Prepared, State};
use bdh::io::checkpoint::load;
use bdh::model::bdh::{BdhConfig, Decay, NO_EDITS};
use bdh::{forward, Activations, Mode, Model};

use crate::common::{bdh_model, golden_dir, max_rel_diff, tiny_config, tokens};

/// Max diff between step-by-step and parallel logits over all positions, relative to
/// each position's max |logit|.
pub fn recurrent_vs_parallel(model: &Model, toks: &[u32], dense: bool) -> f32 {
    let v = model.config().vocab_size();
    let mut acts = Activations::new(model, 1, toks.len()).unwrap();
    forward(model, toks, &mut acts, Mode::Eval).unwrap();
    let prepared = Prepared::new(model.clone()).unwrap();
    let scratch = if dense { prepared.scratch().dense() } else { prepared.scratch() };
    let (mut state, mut scratch) = (prepared.state().unwrap(), scratch);
    let mut worst = 0.0f32;
    for (t, &tok) in toks.iter().enumerate() {
        let step = prepared.step(&mut [&mut state], &mut scratch, &[tok], &NO_EDITS).unwrap();
        worst = worst.max(max_rel_diff(step, &acts.logits()[t * v..(t + 1) * v]));
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
        let model = bdh_model(cfg.clone(), i as u64);
        let toks = tokens(t, i as u64);
        let (sparse, dense) = (recurrent_vs_parallel(&model, &toks, false), recurrent_vs_parallel(&model, &toks, true));
        println!("{cfg:?} T{t}: max rel diff sparse {sparse:.2e}, dense {dense:.2e}");
        assert!(sparse < 5e-6 && dense < 5e-6, "{cfg:?}: {sparse} {dense}");
    }
}

#[test]
fn recurrent_equals_parallel_on_the_trained_model() {
    let model = load(&golden_dir("ref-small-trained"), None).unwrap();
    let text = b"The hatchling keeps what it reads in its synapses; ask it later and it recalls.\n".repeat(5);
    let toks: Vec<u32> = text.iter().take(300).map(|&b| b as u32).collect();
    let worst = recurrent_vs_parallel(&model, &toks, false);
    println!("ref-small-trained T{}: max rel diff {worst:.2e}", toks.len());
    assert!(worst < 5e-6, "{worst}");
}

#[test]
fn prefill_then_steps_equals_steps_alone() {
    // With a decay too: the prefill's chunk reads ρ₀ with γ^(i+1) and leaves γ^T ρ₀ + …
    for decay in [Decay::None, Decay::Alibi, Decay::Retention(vec![0.5, 0.7])] {
        println!("decay {decay:?}");
        prefill_then_steps(BdhConfig { decay, ..tiny_config(2, 32, 2, 8) });
    }
}

pub fn prefill_then_steps(cfg: BdhConfig) {
    let prepared = Prepared::new(bdh_model(cfg, 7)).unwrap();
    let toks = tokens(40, 3);
    let (mut a, mut sa) = (prepared.state().unwrap(), prepared.scratch());
    // Two prefills: the second starts from a state the first left.
    prepared.prefill(&mut a, &mut sa, &toks[..12], &NO_EDITS).unwrap();
    prepared.prefill(&mut a, &mut sa, &toks[12..25], &NO_EDITS).unwrap();
    let (mut b, mut sb) = (prepared.state().unwrap(), prepared.scratch());
    for &t in &toks[..25] {
        prepared.step(&mut [&mut b], &mut sb, &[t], &NO_EDITS).unwrap();
    }
    let (State::Bdh(ra), State::Bdh(rb)) = (&a, &b) else { unreachable!("a BDH") };
    let rho_diff = max_rel_diff(&ra.rho.to_f32().unwrap(), &rb.rho.to_f32().unwrap());
    println!("ρ after prefill vs steps: max rel diff {rho_diff:.2e}");
    assert!(rho_diff < 5e-6, "ρ after prefill differs by {rho_diff}");
    // and the mechanisms' per-stream state: the write key's traces, the queued writes
    for (what, x, y) in [("the key's traces", &ra.keys, &rb.keys), ("the queue", &ra.queue, &rb.queue)] {
        assert_eq!(x.len(), y.len());
        let diff = if x.is_empty() { 0.0 } else { max_rel_diff(x, y) };
        assert!(diff < 5e-6, "{what} after prefill differ by {diff}");
    }
    assert_eq!(a.pos(), 25);
    for &t in &toks[25..] {
        let la = prepared.step(&mut [&mut a], &mut sa, &[t], &NO_EDITS).unwrap().to_vec();
        let lb = prepared.step(&mut [&mut b], &mut sb, &[t], &NO_EDITS).unwrap();
        let d = max_rel_diff(&la, lb);
        assert!(d < 5e-6, "logits differ by {d}");
    }
}

#[test]
fn state_memory_does_not_grow_with_context() {
    let prepared = Prepared::new(bdh_model(tiny_config(2, 32, 2, 8), 1)).unwrap();
    let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let before = state.bytes();
    for &t in &tokens(500, 9) {
        prepared.step(&mut [&mut state], &mut scratch, &[t], &NO_EDITS).unwrap();
    }
    assert_eq!(state.bytes(), before);
    assert_eq!(before, 2 * 2 * 128 * 32 * 4);
}

#[test]
fn a_stream_scored_in_chunks_with_the_state_carried_equals_one_pass() {
    use bdh::eval::{evaluate_bytes, evaluate_stream};
    let Model::Bdh(m) = load(&golden_dir("ref-small-trained"), None).unwrap() else { unreachable!("a BDH") };
    let text: Vec<u8> = b"First Citizen: we are accounted poor citizens, the patricians good. ".repeat(5);
    let one = evaluate_stream(&m, &text, (1024, Default::default()), &mut |_, _| {}).unwrap();
    let chunked = evaluate_stream(&m, &text, (37, Default::default()), &mut |_, _| {}).unwrap();
    let window = evaluate_bytes(&Model::Bdh(m.clone()), &text, text.len(), 1, &mut |_, _| {}).unwrap();
    println!("stream: one pass {:.6}, chunks of 37 {:.6}, one window {:.6}", one.loss, chunked.loss, window.loss);
    assert!((one.loss - chunked.loss).abs() < 1e-4 * one.loss, "{} vs {}", one.loss, chunked.loss);
    assert!((one.loss - window.loss).abs() < 1e-5 * one.loss);
    assert_eq!(one.buckets.iter().map(|b| b.tokens).sum::<usize>(), text.len() - 1);
    assert_eq!((one.buckets[0].from, one.buckets[0].to, one.buckets[1].to), (0, 256, text.len() - 1));
    let err = evaluate_stream(&m, b"a", (16, Default::default()), &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("need 2"), "{err}");
}

#[test]
fn a_state_refuses_to_read_past_two_to_the_24_positions() {
    let prepared = Prepared::new(bdh_model(tiny_config(1, 8, 2, 2), 1)).unwrap();
    let (mut s, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let State::Bdh(st) = &mut s else { unreachable!("a BDH") };
    st.pos = (1 << 24) - 2;
    // A prefill that would pass it is refused before reading anything.
    let err = prepared.prefill(&mut s, &mut scratch, &tokens(3, 1), &NO_EDITS).unwrap_err().to_string();
    assert!(err.contains("2^24") && s.pos() == (1 << 24) - 2, "{err}");
    prepared.prefill(&mut s, &mut scratch, &tokens(2, 1), &NO_EDITS).unwrap();
    let err = prepared.step(&mut [&mut s], &mut scratch, &[1], &NO_EDITS).unwrap_err().to_string();
    assert!(err.contains("2^24") && s.pos() == 1 << 24, "{err}");
}
