//! Inference sessions: chunked prefill equals one pass, states save, restore and
//! fork, generation continues a given state and stops when its reader does.

use std::ops::ControlFlow;

use bdh::data::Tokenizer;
use bdh::infer::{generate, Generation, Prepared, Sampler, SamplingConfig, State};
use bdh::io::checkpoint::load;
use bdh::io::state;
use bdh::model::bdh::{Decay, NO_EDITS};
use bdh::model::gpt::GptConfig;
use bdh::{Model, ModelConfig};

use crate::common::{golden_dir, max_rel_diff, temp_dir, tiny_config, tokens};

fn tiny_prepared(seed: u64) -> Prepared {
    Prepared::new(Model::new(&ModelConfig::Bdh(tiny_config(2, 32, 2, 8)), seed).unwrap()).unwrap()
}

fn rho(state: &State) -> &[f32] {
    let State::Bdh(s) = state else { unreachable!("a BDH") };
    s.rho.f32("a test").expect("an f32 state")
}

#[test]
fn chunked_prefill_equals_one_pass_and_steps() {
    // The trained model as it is, and with its state decaying (the equalities hold for
    // any weights).
    for decay in [Decay::None, Decay::Alibi] {
        let Model::Bdh(mut model) = load(&golden_dir("ref-small-trained"), None).unwrap() else {
            unreachable!("a BDH")
        };
        model.config.decay = decay;
        chunked_prefill(Prepared::new(Model::Bdh(model)).unwrap());
    }
}

fn chunked_prefill(prepared: Prepared) {
    let Prepared::Bdh(p) = &prepared else { unreachable!("a BDH") };
    // A prompt several chunks long, and the same read token by token.
    let chunk = p.prefill_chunk();
    let toks = tokens(2 * chunk + 37, 5);
    let (mut a, mut sa) = (prepared.state().unwrap(), prepared.scratch());
    let chunked = prepared.prefill(&mut a, &mut sa, &toks, &NO_EDITS).unwrap().to_vec();
    let (mut b, mut sb) = (prepared.state().unwrap(), prepared.scratch());
    let mut stepped = Vec::new();
    for &t in &toks {
        stepped = prepared.step(&mut [&mut b], &mut sb, &[t], &NO_EDITS).unwrap().to_vec();
    }
    let (dl, dr) = (max_rel_diff(&chunked, &stepped), max_rel_diff(rho(&a), rho(&b)));
    println!("{} tokens in chunks of {chunk}: logits rel {dl:.2e}, ρ rel {dr:.2e}", toks.len());
    assert!(dl < 5e-6 && dr < 1e-5, "logits {dl}, ρ {dr}");
    assert_eq!((a.pos(), b.pos()), (toks.len(), toks.len()));
    // A second prefill continues from the position reached.
    let more = tokens(20, 6);
    let cont = prepared.prefill(&mut a, &mut sa, &more, &NO_EDITS).unwrap().to_vec();
    for &t in &more {
        stepped = prepared.step(&mut [&mut b], &mut sb, &[t], &NO_EDITS).unwrap().to_vec();
    }
    assert!(max_rel_diff(&cont, &stepped) < 5e-6);
}

#[test]
fn long_prompt_runs_in_bounded_memory() {
    // 20 kB of prompt: the chunk activations stay those of one chunk.
    let prepared = tiny_prepared(2);
    let Prepared::Bdh(p) = &prepared else { unreachable!("a BDH") };
    let (mut s, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let before = s.bytes();
    prepared.prefill(&mut s, &mut scratch, &tokens(20_000, 1), &NO_EDITS).unwrap();
    assert_eq!(s.pos(), 20_000);
    assert_eq!(s.bytes(), before);
    assert!(p.prefill_chunk() <= 512);
}

#[test]
fn state_save_restore_and_fork() {
    let prepared = tiny_prepared(3);
    let (mut s, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    prepared.prefill(&mut s, &mut scratch, &tokens(50, 2), &NO_EDITS).unwrap();
    let dir = temp_dir("state");
    let path = dir.path().join("session.safetensors");
    state::save(&prepared, &s, &path).unwrap();
    let restored = state::load(&prepared, &path).unwrap();
    assert_eq!(restored, s, "bit-exact round trip");
    // A fork is a clone: both continue alike, and apart once fed differently.
    let mut fork = s.clone();
    let a = prepared.step(&mut [&mut s], &mut scratch, &[7], &NO_EDITS).unwrap().to_vec();
    let b = prepared.step(&mut [&mut fork], &mut scratch, &[7], &NO_EDITS).unwrap().to_vec();
    assert_eq!(a, b);
    prepared.step(&mut [&mut fork], &mut scratch, &[8], &NO_EDITS).unwrap();
    assert_ne!(rho(&fork), rho(&s));
    // A state of another model is refused: of other sizes, or of the same sizes
    // with other weights.
    for other in [tiny_config(1, 32, 2, 8), tiny_config(2, 32, 2, 8)] {
        let other = Prepared::new(Model::new(&ModelConfig::Bdh(other), 0).unwrap()).unwrap();
        let err = state::load(&other, &path).unwrap_err().to_string();
        assert!(err.contains("model"), "{err}");
    }
    std::fs::write(&path, b"not a state").unwrap();
    assert!(state::load(&prepared, &path).is_err());
}

fn run(prepared: &Prepared, state: &mut State, prompt: &[u8], max_tokens: usize) -> Vec<u8> {
    let tok = Tokenizer::Bytes;
    let mut sampler = Sampler::new(SamplingConfig { temperature: 0.0, ..SamplingConfig::default() }).unwrap();
    let mut scratch = prepared.scratch();
    let g = Generation { max_tokens, ..Generation::default() };
    let out =
        generate(prepared, state, &mut scratch, &tok.encode(prompt), &g, &mut sampler, |_| ControlFlow::Continue(()))
            .unwrap();
    out.text
}

#[test]
fn generation_continues_a_given_state() {
    let model = load(&golden_dir("ref-small-trained"), None).unwrap();
    let prepared = Prepared::new(model).unwrap();
    // In two calls: "ROMEO:" + 30 tokens, then "\n" + 30 more.
    let mut s = prepared.state().unwrap();
    let first = run(&prepared, &mut s, b"ROMEO:", 30);
    assert_eq!(s.pos(), 6 + 30, "the state read the prompt and every generated token");
    let second = run(&prepared, &mut s, b"\n", 30);
    // In one call, from the whole text.
    let mut whole = b"ROMEO:".to_vec();
    whole.extend_from_slice(&first);
    whole.push(b'\n');
    let mut fresh = prepared.state().unwrap();
    let again = run(&prepared, &mut fresh, &whole, 30);
    assert_eq!(second, again);
    assert_eq!(fresh.pos(), s.pos());
}

#[test]
fn the_output_callback_stops_generation() {
    let prepared = tiny_prepared(4);
    let tok = Tokenizer::Bytes;
    let mut sampler = Sampler::new(SamplingConfig { temperature: 0.0, ..SamplingConfig::default() }).unwrap();
    let (mut s, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let g = Generation { max_tokens: 4000, ..Generation::default() };
    let mut calls = 0;
    let out = generate(&prepared, &mut s, &mut scratch, &tok.encode(b"abc"), &g, &mut sampler, |_| {
        calls += 1;
        if calls == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert!(out.stats.cancelled);
    assert!(out.tokens.len() < 100, "stopped after {} tokens", out.tokens.len());
    assert_eq!(calls, 3);
}

#[test]
fn state_bytes_are_known_without_making_a_state() {
    let gpt =
        GptConfig { block_size: 16, vocab_size: 256, n_layer: 2, n_head: 2, n_embd: 16, dropout: 0.0, bias: true };
    for config in [ModelConfig::Bdh(tiny_config(2, 32, 2, 8)), ModelConfig::Gpt(gpt)] {
        let prepared = Prepared::new(Model::new(&config, 1).unwrap()).unwrap();
        let before = bdh::infer::states_made();
        let bytes = prepared.state_bytes();
        assert_eq!(bdh::infer::states_made(), before, "state_bytes made a state");
        let state = prepared.state().unwrap();
        assert_eq!(bdh::infer::states_made(), before + 1);
        assert_eq!(bytes, state.bytes());
    }
}
