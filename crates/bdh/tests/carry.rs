//! A synapse state carried from one chunk to the next (truncated backpropagation
//! through time, as the paper trains): the chunks together compute what one pass
//! over the whole text computes, and the backward through the read of the carried
//! state ρ₀ (held constant) matches finite differences.

use bdh::model::bdh::backward::loss;
use bdh::model::bdh::{backward, forward, Activations, Backward, Bdh, BdhConfig, Decay, Pass, State};
use bdh::{Mode, Model};

use crate::common::{bdh_model, max_rel_diff, tiny_config, tokens};

/// The test model, weights scaled by `scale`, its state decaying as `decay` says.
pub fn model(scale: f32, decay: Decay) -> Bdh {
    let Model::Bdh(mut m) = bdh_model(BdhConfig { decay, ..tiny_config(2, 16, 2, 4) }, 11) else {
        unreachable!("a BDH")
    };
    crate::backward::scale_weights(&mut m.params, scale);
    m
}

/// Rows `r` of (B, T) tokens, positions `range`.
fn part<X: Copy>(toks: &[X], b: usize, t: usize, range: std::ops::Range<usize>) -> Vec<X> {
    (0..b).flat_map(|r| toks[r * t + range.start..r * t + range.end].to_vec()).collect()
}

#[test]
fn chunks_with_a_carried_state_equal_one_forward_at_every_position() {
    chunks_equal_one_forward(&model(1.0, Decay::None));
}

/// Three chunks of 40 tokens with the state carried give one 120-token pass's
/// logits (the third starts from a state that itself started from one).
pub fn chunks_equal_one_forward(m: &Bdh) {
    let (b, t, v, k) = (2, 40, m.config.vocab_size, 3);
    let toks = tokens(b * k * t, 3);
    let mut whole = Activations::new(m, b, k * t).unwrap();
    forward(m, &toks, &mut whole, Pass::default()).unwrap();
    let mut state = State::rows(&m.config, b).unwrap();
    let mut acts = Activations::new(m, b, t).unwrap();
    let mut worst = 0.0f32;
    for c in 0..k {
        let range = c * t..(c + 1) * t;
        let pass = Pass { state: Some(&mut state), ..Pass::default() };
        forward(m, &part(&toks, b, k * t, range.clone()), &mut acts, pass).unwrap();
        let expected = part(&whole.logits, b, k * t * v, range.start * v..range.end * v);
        let d = max_rel_diff(&acts.logits, &expected);
        println!("chunk {c}: max rel diff {d:.2e} against one pass");
        worst = worst.max(d);
    }
    assert!(worst < 1e-4, "{worst}");
    assert_eq!(state.pos, k * t);
    // A state for another number of rows is refused.
    let mut one = State::rows(&m.config, 1).unwrap();
    let err = forward(m, &part(&toks, b, k * t, 0..t), &mut acts, Pass { state: Some(&mut one), ..Pass::default() });
    assert!(err.unwrap_err().to_string().contains("stream"));
}

#[test]
fn backward_through_a_carried_state_matches_finite_differences() {
    // Weights of std 0.2 give the loss real curvature, as in the backward's own test.
    backward_matches_finite_differences(&model(10.0, Decay::None), 1e-4);
}

/// The gradient of the second chunk's loss, from a state carried from the first,
/// against central differences along a direction per parameter.
pub fn backward_matches_finite_differences(m: &Bdh, eps: f32) {
    let (b, t) = (2, 9);
    let (first, second, targets) = (tokens(b * t, 1), tokens(b * t, 2), tokens(b * t, 4));
    let mut acts = Activations::new(m, b, t).unwrap();
    let mut carried = State::rows(&m.config, b).unwrap();
    let train = Mode::Train { seed: 0 }; // dropout 0: the pass is deterministic
    forward(m, &first, &mut acts, Pass { mode: train, state: Some(&mut carried), ..Pass::default() }).unwrap();
    // The loss of the second chunk from ρ₀ = `carried`, which stays fixed (the gradient
    // stops at the chunk boundary).
    let loss_from = |m: &Bdh, acts: &mut Activations| {
        let mut s = carried.clone();
        forward(m, &second, acts, Pass { mode: train, state: Some(&mut s), ..Pass::default() }).unwrap();
        loss(acts, &targets).unwrap() as f64
    };
    loss_from(m, &mut acts);
    let mut grads = m.params.zeros_like();
    backward(m, &acts, &targets, &mut grads, &mut Backward::new(m, b, t).unwrap()).unwrap();
    // Without the carried state the gradient differs: the read of ρ₀ matters.
    let mut fresh = Activations::new(m, b, t).unwrap();
    forward(m, &second, &mut fresh, Pass::mode(train)).unwrap();
    let mut without = m.params.zeros_like();
    backward(m, &fresh, &targets, &mut without, &mut Backward::new(m, b, t).unwrap()).unwrap();
    assert!(max_rel_diff(grads.data(), without.data()) > 1e-2);

    let model = bdh::Model::Bdh(m.clone());
    for (k, (slot, g)) in grads.tensors().enumerate() {
        if crate::backward::by_rule(&model, &slot.name) {
            continue;
        }
        let eps = crate::backward::step_for(&slot.name, eps);
        // Half along the gradient, half pseudo-random: large enough to measure in f32.
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        let r: Vec<f32> = tokens(g.len(), 50 + k as u64).iter().map(|&x| x as f32 / 128.0 - 1.0).collect();
        let dir: Vec<f32> = g.iter().zip(&r).map(|(a, b)| a / norm(g) + b / norm(&r)).collect();
        let dir: Vec<f32> = dir.iter().map(|x| x / norm(&dir)).collect();
        let analytic: f64 = g.iter().zip(&dir).map(|(a, b)| *a as f64 * *b as f64).sum();
        let shifted = |sign: f32| {
            let mut p = m.clone();
            p.params.get_mut(&slot.name).unwrap().iter_mut().zip(&dir).for_each(|(x, d)| *x += sign * eps * d);
            loss_from(&p, &mut Activations::new(&p, b, t).unwrap())
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps as f64);
        let rel = (numeric - analytic).abs() / analytic.abs();
        println!("{:<14} analytic {analytic:+.6e} numeric {numeric:+.6e} rel {rel:.1e}", slot.name);
        assert!(
            rel < crate::backward::tolerance_for(&slot.name),
            "{}: analytic {analytic} vs numeric {numeric}",
            slot.name
        );
    }
}
