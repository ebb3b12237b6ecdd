//! The batched step: B streams advanced together equal B independent one-token
//! steps at every position, while streams join and leave between steps.

use bdh::infer::{BatchScratch, Prepared, State};
use bdh::io::checkpoint::load;
use bdh::model::bdh::{Decay, NO_EDITS};
use bdh::model::gpt::GptConfig;
use bdh::{Model, ModelConfig};

use crate::common::{golden_dir, tokens};

/// Max |a − b| and max |a − b| / max |b| over the rows.
fn diffs(a: &[f32], b: &[f32]) -> (f32, f32) {
    let abs = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    (abs, abs / b.iter().map(|x| x.abs()).fold(f32::MIN_POSITIVE, f32::max))
}

/// Runs `b` streams of the trained small model with prompts of different lengths
/// for `steps` positions, stream k joining at step k and the first leaving halfway,
/// batched and one by one; returns the worst logits and ρ differences.
fn batched_vs_single(b: usize, steps: usize, decay: Decay) -> ((f32, f32), (f32, f32)) {
    let Model::Bdh(mut model) = load(&golden_dir("ref-small-trained"), None).unwrap() else { unreachable!("BDH") };
    model.config.decay = decay;
    let prepared = Prepared::new(Model::Bdh(model)).unwrap();
    let mut single = prepared.scratch(false);
    let mut batch = BatchScratch::default();
    let prompts: Vec<Vec<u32>> = (0..b).map(|k| tokens(3 + 7 * k, k as u64)).collect();
    let mut solo: Vec<State> = Vec::new();
    let mut together: Vec<State> = Vec::new();
    let (mut logits, mut rho) = ((0.0f32, 0.0f32), (0.0f32, 0.0f32));
    let worst = |w: &mut (f32, f32), d: (f32, f32)| *w = (w.0.max(d.0), w.1.max(d.1));
    for step in 0..steps {
        if let Some(prompt) = prompts.get(step) {
            let mut s = prepared.state().unwrap();
            prepared.prefill(&mut s, &mut single, prompt, &NO_EDITS).unwrap();
            solo.push(s.clone());
            together.push(s);
        }
        let first = usize::from(step >= steps / 2); // the first stream has left
        let toks: Vec<u32> = (first..solo.len()).map(|k| tokens(1, (step * 31 + k) as u64)[0]).collect();
        let mut rows: Vec<&mut State> = together[first..].iter_mut().collect();
        let out = prepared.step_batch(&mut rows, &mut batch, &toks).unwrap().to_vec();
        for (i, k) in (first..solo.len()).enumerate() {
            let one = prepared.step(&mut solo[k], &mut single, toks[i], &NO_EDITS).unwrap();
            worst(&mut logits, diffs(&out[i * 256..(i + 1) * 256], one));
        }
    }
    for (a, s) in together.iter().zip(&solo) {
        let (State::Bdh(a), State::Bdh(s)) = (a, s) else { unreachable!("BDH states") };
        assert_eq!(a.pos, s.pos);
        worst(&mut rho, diffs(&a.rho, &s.rho));
    }
    (logits, rho)
}

#[test]
fn batched_step_equals_single_steps_bit_for_bit_up_to_16_rows() {
    for decay in [Decay::None, Decay::Alibi] {
        let (logits, rho) = batched_vs_single(16, 40, decay.clone());
        println!(
            "B ≤ 16, decay {decay:?}: logits max abs {:.2e} rel {:.2e}; ρ max abs {:.2e} rel {:.2e}",
            logits.0, logits.1, rho.0, rho.1
        );
        assert_eq!((logits, rho), ((0.0, 0.0), (0.0, 0.0)), "{decay:?}");
    }
}

#[test]
fn batched_step_of_many_rows_equals_single_steps() {
    let (logits, rho) = batched_vs_single(24, 40, Decay::None);
    println!("B ≤ 24: logits max abs {:.2e} rel {:.2e}; ρ max abs {:.2e} rel {:.2e}", logits.0, logits.1, rho.0, rho.1);
    assert!(logits.1 < 1e-5 && rho.1 < 1e-5, "logits {logits:?}, ρ {rho:?}");
}

#[test]
fn batched_step_refuses_bad_input_and_gpt() {
    let prepared = Prepared::new(load(&golden_dir("ref-tiny"), None).unwrap()).unwrap();
    let mut batch = BatchScratch::default();
    let (mut a, mut b) = (prepared.state().unwrap(), prepared.state().unwrap());
    let err = prepared.step_batch(&mut [&mut a, &mut b], &mut batch, &[1]).unwrap_err();
    assert!(err.to_string().contains("2 states for 1 tokens"), "{err}");
    let err = prepared.step_batch(&mut [&mut a], &mut batch, &[256]).unwrap_err();
    assert!(err.to_string().contains("vocab_size"), "{err}");
    assert_eq!(a.pos(), 0, "a refused step reads nothing");
    assert!(prepared.step_batch(&mut [], &mut batch, &[]).unwrap().is_empty());

    let gpt = GptConfig { block_size: 8, vocab_size: 256, n_layer: 1, n_head: 1, n_embd: 8, dropout: 0.0, bias: false };
    let gpt = Prepared::new(Model::new(&ModelConfig::Gpt(gpt), 0).unwrap()).unwrap();
    let mut g = gpt.state().unwrap();
    let err = gpt.step_batch(&mut [&mut g], &mut batch, &[1]).unwrap_err();
    assert!(err.to_string().contains("BDH"), "{err}");
}
