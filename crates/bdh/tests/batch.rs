//! The step of many streams: B streams advanced together equal B one-stream steps
//! at every position, while streams join and leave between steps.

use bdh::infer::{Prepared, State};
use bdh::io::checkpoint::load;
use bdh::model::bdh::{Action, Decay, Edit, Edits, Site, NO_EDITS};
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
fn batched_vs_single(b: usize, steps: usize, decay: Decay, edits: &Edits) -> ((f32, f32), (f32, f32)) {
    batched_vs_single_of(b, steps, &|c| c.decay = decay.clone(), edits)
}

/// [`batched_vs_single`] of the trained small model with its config changed by `change`.
fn batched_vs_single_of(
    b: usize,
    steps: usize,
    change: &dyn Fn(&mut bdh::model::bdh::BdhConfig),
    edits: &Edits,
) -> ((f32, f32), (f32, f32)) {
    let Model::Bdh(mut model) = load(&golden_dir("ref-small-trained"), None).unwrap() else { unreachable!("BDH") };
    change(&mut model.config);
    let prepared = Prepared::new(Model::Bdh(model)).unwrap();
    let mut single = prepared.scratch();
    let mut batch = prepared.scratch();
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
        let out = prepared.step(&mut rows, &mut batch, &toks, edits).unwrap().to_vec();
        for (i, k) in (first..solo.len()).enumerate() {
            let one = prepared.step(&mut [&mut solo[k]], &mut single, &[toks[i]], edits).unwrap();
            worst(&mut logits, diffs(&out[i * 256..(i + 1) * 256], one));
        }
    }
    for (a, s) in together.iter().zip(&solo) {
        let (State::Bdh(a), State::Bdh(s)) = (a, s) else { unreachable!("BDH states") };
        assert_eq!((a.pos, &a.keys, &a.queue), (s.pos, &s.keys, &s.queue));
        worst(&mut rho, diffs(&a.rho.to_f32().unwrap(), &s.rho.to_f32().unwrap()));
    }
    (logits, rho)
}

#[test]
fn batched_step_equals_single_steps_bit_for_bit_up_to_16_rows() {
    for decay in [Decay::None, Decay::Alibi] {
        let (logits, rho) = batched_vs_single(16, 40, decay.clone(), &NO_EDITS);
        println!(
            "B ≤ 16, decay {decay:?}: logits max abs {:.2e} rel {:.2e}; ρ max abs {:.2e} rel {:.2e}",
            logits.0, logits.1, rho.0, rho.1
        );
        assert_eq!((logits, rho), ((0.0, 0.0), (0.0, 0.0)), "{decay:?}");
    }
}

#[test]
fn batched_step_with_the_residual_in_the_neurons_equals_single_steps() {
    // Each stream carries its own x from layer to layer within a token.
    let change = |c: &mut bdh::model::bdh::BdhConfig| {
        c.residual = bdh::model::bdh::Residual::N;
        c.decay = Decay::Alibi;
    };
    let (logits, rho) = batched_vs_single_of(12, 30, &change, &NO_EDITS);
    println!("residual n, B ≤ 12: logits max rel {:.2e}; ρ max rel {:.2e}", logits.1, rho.1);
    assert_eq!((logits, rho), ((0.0, 0.0), (0.0, 0.0)));
}

#[test]
fn batched_step_with_traces_at_the_write_key_equals_single_steps() {
    // Each stream carries its own traces (and the comparison checks them with ρ).
    let change = |c: &mut bdh::model::bdh::BdhConfig| {
        c.trace = bdh::model::bdh::Trace::Fixed(0.6);
        c.decay = Decay::Alibi;
    };
    let (logits, rho) = batched_vs_single_of(12, 30, &change, &NO_EDITS);
    println!("trace 0.6, B ≤ 12: logits max rel {:.2e}; ρ max rel {:.2e}", logits.1, rho.1);
    assert_eq!((logits, rho), ((0.0, 0.0), (0.0, 0.0)));
}

#[test]
fn batched_step_with_delayed_writes_equals_single_steps() {
    // Each stream carries its own queue of writes not yet due.
    let change = |c: &mut bdh::model::bdh::BdhConfig| {
        c.delays = bdh::model::bdh::Delays::Fixed((0..c.n_head).map(|h| 2 * h).collect())
    };
    let (logits, rho) = batched_vs_single_of(12, 30, &change, &NO_EDITS);
    println!("delays 0, 2, …, B ≤ 12: logits max rel {:.2e}; ρ max rel {:.2e}", logits.1, rho.1);
    assert_eq!((logits, rho), ((0.0, 0.0), (0.0, 0.0)));
}

#[test]
fn batched_step_of_many_rows_equals_single_steps() {
    let (logits, rho) = batched_vs_single(24, 40, Decay::None, &NO_EDITS);
    println!("B ≤ 24: logits max abs {:.2e} rel {:.2e}; ρ max abs {:.2e} rel {:.2e}", logits.0, logits.1, rho.0, rho.1);
    assert!(logits.1 < 1e-5 && rho.1 < 1e-5, "logits {logits:?}, ρ {rho:?}");
}

#[test]
fn batched_step_with_edits_equals_single_steps() {
    // Every stream takes the same interventions, each at its own position: the
    // streams reach positions 20 and 27 at different steps, so an edit there acts
    // on one stream of a batch and not on the others.
    let mut edits = Edits::new();
    let edit =
        |site, layer, head, neuron, position, action| Edit { site, layer: Some(layer), head, neuron, position, action };
    edits.push(edit(Site::X, 0, Some(0), Some(3), None, Action::Zero));
    edits.push(edit(Site::Y, 1, Some(1), None, Some(20), Action::Set(0.5)));
    edits.push(edit(Site::Xy, 0, None, Some(7), Some(27), Action::Set(0.25)));
    edits.push(edit(Site::Rho, 1, Some(2), Some(5), Some(20), Action::Zero));
    let (logits, rho) = batched_vs_single(5, 20, Decay::Alibi, &edits);
    println!("B ≤ 5 with edits: logits max abs {:.2e}; ρ max abs {:.2e}", logits.0, rho.0);
    assert_eq!((logits, rho), ((0.0, 0.0), (0.0, 0.0)));
}

#[test]
fn batched_step_refuses_bad_input_and_gpt_batches() {
    let prepared = Prepared::new(load(&golden_dir("ref-tiny"), None).unwrap()).unwrap();
    let mut batch = prepared.scratch();
    let (mut a, mut b) = (prepared.state().unwrap(), prepared.state().unwrap());
    let err = prepared.step(&mut [&mut a, &mut b], &mut batch, &[1], &NO_EDITS).unwrap_err();
    assert!(err.to_string().contains("2 states for 1 tokens"), "{err}");
    let err = prepared.step(&mut [&mut a, &mut b], &mut batch, &[1, 256], &NO_EDITS).unwrap_err();
    assert!(err.to_string().contains("vocab_size"), "{err}");
    assert_eq!((a.pos(), b.pos()), (0, 0), "a refused step reads nothing, in any stream");
    assert!(prepared.step(&mut [], &mut batch, &[], &NO_EDITS).unwrap().is_empty());

    let gpt = GptConfig { block_size: 8, vocab_size: 256, n_layer: 1, n_head: 1, n_embd: 8, dropout: 0.0, bias: false };
    let gpt = Prepared::new(Model::new(&ModelConfig::Gpt(gpt), 0).unwrap()).unwrap();
    let (mut g, mut h, mut scratch) = (gpt.state().unwrap(), gpt.state().unwrap(), gpt.scratch());
    assert_eq!(gpt.step(&mut [&mut g], &mut scratch, &[1], &NO_EDITS).unwrap().len(), 256);
    let err = gpt.step(&mut [&mut g, &mut h], &mut scratch, &[1, 2], &NO_EDITS).unwrap_err();
    assert!(err.to_string().contains("one at a time"), "{err}");
    let err = prepared.step(&mut [&mut g], &mut batch, &[1], &NO_EDITS).unwrap_err();
    assert!(err.to_string().contains("another family"), "{err}");
}
