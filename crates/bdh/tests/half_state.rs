//! ρ stored in 16 bits (`StateDtype`): steps of bf16 and f16 states follow the f32
//! parallel forward at every position within their rounding, on bdh.py's model and
//! with mechanisms at the state's sites (which widen a head's ρ around the f32 step);
//! prefill, files, conversion on load, the stream evaluation, and what refuses them.

use bdh::eval::evaluate_stream;
use bdh::infer::{Prepared, State};
use bdh::io::checkpoint::load;
use bdh::io::state;
use bdh::model::bdh::{BdhConfig, Decay, StateDtype, Trace, NO_EDITS};
use bdh::model::gpt::GptConfig;
use bdh::{forward, Activations, Mode, Model, ModelConfig};

use crate::common::{bdh_model, golden_dir, max_rel_diff, temp_dir, tiny_config, tokens};

const HALF: [StateDtype; 2] = [StateDtype::Bf16, StateDtype::F16];

/// Max diff, relative to each position's max |logit|, between `dtype` steps and the
/// f32 parallel forward over `toks`; and whether every greedy choice agreed.
fn steps_vs_parallel(model: &Model, toks: &[u32], dtype: StateDtype) -> (f32, bool) {
    let v = model.config().vocab_size();
    let mut acts = Activations::new(model, 1, toks.len()).unwrap();
    forward(model, toks, &mut acts, Mode::Eval).unwrap();
    let prepared = Prepared::new(model.clone()).unwrap().with_state_dtype(dtype).unwrap();
    let (mut state, mut scratch) = (prepared.state().unwrap(), prepared.scratch());
    let State::Bdh(s) = &state else { unreachable!("a BDH") };
    assert_eq!(s.rho.dtype(), dtype);
    let (mut worst, mut agree) = (0.0f32, true);
    for (t, &tok) in toks.iter().enumerate() {
        let step = prepared.step(&mut [&mut state], &mut scratch, &[tok], &NO_EDITS).unwrap();
        let want = &acts.logits()[t * v..(t + 1) * v];
        worst = worst.max(max_rel_diff(step, want));
        agree &= bdh::infer::argmax(step) == bdh::infer::argmax(want);
    }
    (worst, agree)
}

#[test]
fn half_states_step_close_to_the_f32_forward() {
    let plain = tiny_config(2, 64, 4, 16);
    let configs = [
        ("bdh.py's", plain.clone()),
        ("a decay per head", BdhConfig { decay: Decay::Retention(vec![0.5, 0.8, 0.95, 1.0]), ..plain.clone() }),
        ("a trace", BdhConfig { trace: Trace::Fixed(0.5), ..plain.clone() }),
    ];
    for (i, (what, cfg)) in configs.into_iter().enumerate() {
        let model = bdh_model(cfg, i as u64);
        let toks = tokens(300, i as u64);
        for dtype in HALF {
            let (worst, _) = steps_vs_parallel(&model, &toks, dtype);
            println!("{what}, {dtype}: max rel diff of the logits over 300 positions {worst:.2e}");
            // bf16 keeps 8 significant bits, f16 11: each ρ value within 2^-9 or 2^-12
            let bound = if dtype == StateDtype::Bf16 { 3e-2 } else { 5e-3 };
            assert!(worst < bound, "{what} {dtype}: {worst}");
        }
    }
}

#[test]
fn a_decay_slower_than_the_type_resolves_is_refused() {
    // bf16 resolves a fade of 1 − γ ≥ 2^-5, f16 of ≥ 2^-8
    let cases = [(0.95, true, true), (0.99, false, true), (0.999, false, false)];
    for (gamma, bf16, f16) in cases {
        let cfg = BdhConfig { decay: Decay::Retention(vec![0.5, gamma]), ..tiny_config(1, 16, 2, 4) };
        let prepared = Prepared::new(bdh_model(cfg, 1)).unwrap();
        for (dtype, ok) in [(StateDtype::Bf16, bf16), (StateDtype::F16, f16)] {
            match prepared.clone().with_state_dtype(dtype) {
                Ok(_) => assert!(ok, "γ {gamma} {dtype}: taken"),
                Err(e) => {
                    assert!(!ok, "γ {gamma} {dtype}: {e}");
                    assert!(e.to_string().contains("keep f32 for it"), "{e}");
                }
            }
            // a state of that type asked of an f32 model, new or loaded, alike
            assert_eq!(prepared.state_of(dtype).is_ok(), ok, "γ {gamma} {dtype}: state_of");
            let tmp = temp_dir("slow-fade");
            let path = tmp.path().join("s.safetensors");
            state::save(&prepared, &prepared.state().unwrap(), &path).unwrap();
            assert_eq!(state::load_in(&prepared, &path, Some(dtype)).is_ok(), ok, "γ {gamma} {dtype}: load_in");
        }
    }
    let alibi = Prepared::new(bdh_model(BdhConfig { decay: Decay::Alibi, ..tiny_config(1, 16, 4, 4) }, 1)).unwrap();
    assert!(alibi.with_state_dtype(StateDtype::Bf16).is_err(), "ALiBi's slowest head fades by 2^-8 a token");
}

#[test]
fn the_trained_model_decodes_alike_with_a_half_state() {
    let model = load(&golden_dir("ref-small-trained"), None).unwrap();
    let text = b"The hatchling keeps what it reads in its synapses; ask it later and it recalls.\n".repeat(5);
    let toks: Vec<u32> = text.iter().take(300).map(|&b| b as u32).collect();
    for dtype in HALF {
        let (worst, agree) = steps_vs_parallel(&model, &toks, dtype);
        println!("ref-small-trained, {dtype}: max rel diff {worst:.2e}, every greedy choice the same: {agree}");
        assert!(worst < 2e-2, "{dtype}: {worst}");
        assert!(agree, "{dtype}: a greedy choice differs from f32's");
    }
}

#[test]
fn a_half_prefill_stores_what_f32_steps_leave_rounded() {
    for dtype in HALF {
        let model = bdh_model(tiny_config(2, 32, 2, 8), 7);
        let toks = tokens(40, 3);
        let narrow = Prepared::new(model.clone()).unwrap().with_state_dtype(dtype).unwrap();
        let (mut a, mut sa) = (narrow.state().unwrap(), narrow.scratch());
        narrow.prefill(&mut a, &mut sa, &toks, &NO_EDITS).unwrap();
        let wide = Prepared::new(model).unwrap();
        let (mut b, mut sb) = (wide.state().unwrap(), wide.scratch());
        wide.prefill(&mut b, &mut sb, &toks, &NO_EDITS).unwrap();
        let (State::Bdh(ra), State::Bdh(rb)) = (&a, &b) else { unreachable!("a BDH") };
        assert_eq!((ra.rho.dtype(), ra.pos), (dtype, 40));
        // one prefill chunk: the f32 state rounded once
        assert_eq!(ra.rho, rb.rho.converted(dtype).unwrap(), "{dtype}");
        // and steps go on from it
        narrow.step(&mut [&mut a], &mut sa, &[1], &NO_EDITS).unwrap();
    }
}

#[test]
fn half_states_round_trip_their_files_and_convert_on_load() {
    let tmp = temp_dir("half-state");
    let model = bdh_model(tiny_config(1, 8, 1, 2), 3);
    let f32s = Prepared::new(model.clone()).unwrap();
    for dtype in HALF {
        let narrow = f32s.clone().with_state_dtype(dtype).unwrap();
        let (mut s, mut scratch) = (narrow.state().unwrap(), narrow.scratch());
        narrow.prefill(&mut s, &mut scratch, &tokens(20, 1), &NO_EDITS).unwrap();
        let path = tmp.path().join(format!("{dtype}.safetensors"));
        state::save(&narrow, &s, &path).unwrap();
        let (back, note) = state::load_noting(&narrow, &path).unwrap();
        assert_eq!((back, note), (s.clone(), None), "{dtype}: read back as written");
        // in its own type whatever the session's, or in a type asked for
        assert_eq!(state::load_in(&f32s, &path, None).unwrap(), (s.clone(), None));
        assert_eq!(state::load_in(&f32s, &path, Some(dtype)).unwrap().0.dtype(), dtype);
        let fresh = f32s.state_of(dtype).unwrap();
        assert_eq!((fresh.dtype(), fresh.pos()), (dtype, 0));
        // (version 3, ρ in its own type)
        let bytes = std::fs::read(&path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap()["version"], "3");
        // an f32 model's session reads it widened, and says so
        let (wide, note) = state::load_noting(&f32s, &path).unwrap();
        let (State::Bdh(w), State::Bdh(n)) = (&wide, &s) else { unreachable!("a BDH") };
        assert_eq!(w.rho, n.rho.converted(StateDtype::F32).unwrap());
        let note = note.expect("a note");
        assert!(note.contains(&format!("holds ρ in {dtype}: converted to f32")), "{note}");
        // and an f32 file is narrowed for a 16-bit session
        let wide_path = tmp.path().join("f32.safetensors");
        state::save(&f32s, &wide, &wide_path).unwrap();
        let (narrowed, note) = state::load_noting(&narrow, &wide_path).unwrap();
        assert!(note.unwrap().contains(&format!("holds ρ in f32: converted to {dtype}")));
        assert_eq!(narrowed, s, "{dtype}: widening then rounding gives the values back");
    }
}

#[test]
fn files_of_16_bit_states_that_are_not_finite_are_refused() {
    let tmp = temp_dir("half-state-nan");
    let model = bdh_model(tiny_config(1, 8, 1, 2), 3);
    for (dtype, bits) in [(StateDtype::Bf16, [0x7f80u16, 0x7fc0]), (StateDtype::F16, [0x7c00, 0x7e00])] {
        let prepared = Prepared::new(model.clone()).unwrap().with_state_dtype(dtype).unwrap();
        for bad in bits {
            let State::Bdh(mut s) = prepared.state().unwrap() else { unreachable!("a BDH") };
            let bdh::model::bdh::Rho::Half(values, _) = &mut s.rho else { unreachable!("16 bits") };
            values[5] = bad; // an infinity or a NaN
            let path = tmp.path().join("bad.safetensors");
            state::save(&prepared, &State::Bdh(s), &path).unwrap();
            let err = state::load(&prepared, &path).unwrap_err().to_string();
            assert!(err.contains("not finite"), "{dtype} {bad:#06x}: {err}");
        }
    }
}

#[test]
fn a_stream_read_with_a_half_state_scores_close_to_f32() {
    let model = load(&golden_dir("ref-small-trained"), None).unwrap();
    let Model::Bdh(bdh) = &model else { unreachable!("a BDH") };
    let text = b"To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer\n".repeat(12);
    let f32_loss = evaluate_stream(bdh, &text, (256, StateDtype::F32), &mut |_, _| {}).unwrap().loss;
    for dtype in HALF {
        let loss = evaluate_stream(bdh, &text, (256, dtype), &mut |_, _| {}).unwrap().loss;
        println!("{} bytes as one stream: f32 {f32_loss:.5}, {dtype} {loss:.5} nats/byte", text.len());
        assert!((loss - f32_loss).abs() < 0.01 * f32_loss, "{dtype}: {loss} against {f32_loss}");
    }
}

#[test]
fn training_and_a_gpt_refuse_half_states() {
    let model = bdh_model(tiny_config(1, 8, 1, 2), 3);
    let Model::Bdh(bdh) = &model else { unreachable!("a BDH") };
    let mut s = bdh::model::bdh::State::with_dtype(&bdh.config, StateDtype::Bf16).unwrap();
    let mut acts = bdh::model::bdh::Activations::new(bdh, 1, 4).unwrap();
    let pass = bdh::model::bdh::Pass { mode: Mode::Train { seed: 1 }, state: Some(&mut s), ..Default::default() };
    let err = bdh::model::bdh::forward(bdh, &[1, 2, 3, 4], &mut acts, pass).unwrap_err().to_string();
    assert!(err.contains("training keeps ρ in f32") && err.contains("bf16"), "{err}");
    assert_eq!(s.pos, 0, "the refused pass left the state");

    let gpt = Model::new(
        &ModelConfig::Gpt(GptConfig {
            block_size: 8,
            vocab_size: 256,
            n_layer: 1,
            n_head: 1,
            n_embd: 8,
            dropout: 0.0,
            bias: false,
        }),
        1,
    );
    let err = Prepared::new(gpt.unwrap()).unwrap().with_state_dtype(StateDtype::F16).unwrap_err().to_string();
    assert!(err.contains("for BDH models"), "{err}");
    let err = "f8".parse::<StateDtype>().unwrap_err().to_string();
    assert!(err.contains("f32") && err.contains("bf16") && err.contains("f16"), "{err}");
}
