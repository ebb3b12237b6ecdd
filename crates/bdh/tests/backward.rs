//! The explicit backward against finite differences of the loss, on a tiny config,
//! in eval mode and in training mode with dropout.

use bdh::model::bdh::delay::DELAY_NAME;
use bdh::model::bdh::key::{ASTROCYTE_NAME, TRACE_NAME};
use bdh::model::bdh::norm::NORM_NAME;
use bdh::model::bdh::BdhConfig;
use bdh::{backward, forward, loss, Activations, Gradients, Mode, Model, Params};

use crate::common::{bdh_model, tiny_config, tokens};

fn loss_at(model: &Model, toks: &[u32], targets: &[u32], b: usize, mode: Mode) -> f64 {
    let mut acts = Activations::new(model, b, toks.len() / b).unwrap();
    forward(model, toks, &mut acts, mode).unwrap();
    loss(&acts, targets).unwrap() as f64
}

/// Unit vector, half along `g` and half random, so the directional derivative is
/// large enough to measure in f32 while still probing every direction.
fn direction(g: &[f32], seed: u64) -> Vec<f32> {
    let gn = g.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    let r: Vec<f32> = tokens(g.len(), seed).iter().map(|&t| t as f32 / 128.0 - 1.0).collect();
    let rn = r.iter().map(|x| x * x).sum::<f32>().sqrt();
    let d: Vec<f32> = g.iter().zip(&r).map(|(a, b)| a / gn + b / rn).collect();
    let dn = d.iter().map(|x| x * x).sum::<f32>().sqrt();
    d.iter().map(|x| x / dn).collect()
}

/// The tensors of BDH's layer mechanisms: a learned decay's θ, a trace's φ, a gate's
/// β, learned delays' ψ, an E/I norm's logits.
const MECHANISMS: [&str; 5] = [bdh::model::bdh::DECAY_NAME, TRACE_NAME, ASTROCYTE_NAME, DELAY_NAME, NORM_NAME];

/// Multiplies every weight by `scale` but the mechanisms' (which would saturate).
pub fn scale_weights(params: &mut Params, scale: f32) {
    let names: Vec<String> = params.slots().iter().map(|s| s.name.clone()).collect();
    for name in names.iter().filter(|n| !MECHANISMS.contains(&n.as_str())) {
        params.get_mut(name).unwrap().iter_mut().for_each(|x| *x *= scale);
    }
}

/// The finite differences' step for tensor `name`: a mechanism's parameters (few
/// values) move the loss little per unit, and smoothly (no ReLU kink): a step of
/// 1e-2 lifts their difference above f32's noise in the loss. But learned delays':
/// ψ moves whole diagonals of scores, so within 1e-2 many of y's ReLUs cross zero
/// (measured: central differences reach the gradient within 0.4% only at 3e-4).
pub fn step_for(name: &str, eps: f32) -> f32 {
    match name {
        DELAY_NAME => 3e-4,
        _ if MECHANISMS.contains(&name) => 1e-2,
        _ => eps,
    }
}

/// The relative error central differences of [`step_for`] are held to: 1e-2, but
/// 5e-2 for learned delays, whose small step leaves a few percent of f32's noise in
/// a directional derivative (`delay.rs` checks each head's alone within 1e-2).
pub fn tolerance_for(name: &str) -> f64 {
    if name == DELAY_NAME {
        5e-2
    } else {
        1e-2
    }
}

/// Whether tensor `name` of `model` is moved by a homeostatic rule, not by its
/// gradient: its gradient slot holds what the rule reads (firing, activity), or
/// nothing (the rule's θ). Finite differences do not apply to it.
pub fn by_rule(model: &Model, name: &str) -> bool {
    use bdh::model::bdh::threshold::{ACTIVITY_NAME, FIRING_NAME, THRESHOLD_NAME};
    let homeostatic =
        matches!(model, Model::Bdh(m) if matches!(m.config.threshold, bdh::model::bdh::Threshold::Homeostatic(_)));
    homeostatic && [THRESHOLD_NAME, FIRING_NAME, ACTIVITY_NAME].contains(&name)
}

/// Checks every tensor's gradient of `model` (any family) along one direction,
/// after scaling its weights by `scale`, by central differences of step `eps`.
pub fn check_gradients(mut model: Model, mode: Mode, scale: f32, eps: f32) {
    let (b, t) = (2, 9);
    scale_weights(model.params_mut(), scale);
    let toks = tokens(b * t, 1);
    let targets = tokens(b * t, 2);
    let mut acts = Activations::new(&model, b, t).unwrap();
    forward(&model, &toks, &mut acts, mode).unwrap();
    let mut grads = Gradients::new(&model, b, t).unwrap();
    backward(&model, &acts, &targets, &mut grads).unwrap();

    for (k, (slot, g)) in grads.params.tensors().enumerate() {
        let name = &slot.name;
        if by_rule(&model, name) {
            continue;
        }
        let eps = step_for(name, eps);
        let d = direction(g, 100 + k as u64);
        let analytic: f64 = g.iter().zip(&d).map(|(a, b)| *a as f64 * *b as f64).sum();
        let shifted = |sign: f32| {
            let mut m = model.clone();
            let p = m.params_mut().get_mut(name).unwrap();
            p.iter_mut().zip(&d).for_each(|(x, dx)| *x += sign * eps * dx);
            loss_at(&m, &toks, &targets, b, mode)
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps as f64);
        let rel = (numeric - analytic).abs() / analytic.abs();
        println!("{mode:?} {name:<36} analytic {analytic:+.6e} numeric {numeric:+.6e} rel {rel:.1e}");
        assert!(rel < tolerance_for(name), "{name}: analytic {analytic} vs numeric {numeric}");
    }
}

/// Small enough to stay clear of ReLU kinks, large enough for f32 loss noise (~3e-3 here).
const EPS: f32 = 1e-4;

#[test]
fn backward_matches_finite_differences() {
    // Weights of std 0.2 instead of 0.02 put the loss in a regime with real curvature.
    check_gradients(bdh_model(tiny_config(2, 16, 2, 4), 11), Mode::Eval, 10.0, EPS);
}

#[test]
fn backward_matches_finite_differences_with_dropout() {
    let cfg = BdhConfig { dropout: 0.25, ..tiny_config(2, 16, 2, 4) };
    check_gradients(bdh_model(cfg, 11), Mode::Train { seed: 5 }, 10.0, EPS);
}

#[test]
fn gradients_accumulate_until_zeroed() {
    let model = bdh_model(tiny_config(1, 16, 2, 4), 3);
    let (toks, targets) = (tokens(8, 1), tokens(8, 2));
    let mut acts = Activations::new(&model, 1, 8).unwrap();
    forward(&model, &toks, &mut acts, Mode::Eval).unwrap();
    let mut grads = Gradients::new(&model, 1, 8).unwrap();
    backward(&model, &acts, &targets, &mut grads).unwrap();
    let once: Params = grads.params.clone();
    backward(&model, &acts, &targets, &mut grads).unwrap();
    let (a, b) = (once.data(), grads.params.data());
    assert!(a.iter().zip(b).all(|(x, y)| (2.0 * x - y).abs() <= 1e-6 * x.abs().max(1e-3)));
    grads.zero();
    assert!(grads.params.data().iter().all(|&x| x == 0.0));
}

#[test]
fn an_eval_forward_after_a_training_one_uses_no_dropout() {
    // Regression: an eval pass on buffers that a training pass filled kept its masks.
    let cfg = BdhConfig { dropout: 0.5, ..tiny_config(2, 16, 2, 4) };
    let model = bdh_model(cfg, 2);
    let (toks, targets) = (tokens(16, 1), tokens(16, 2));
    let mut fresh = Activations::new(&model, 2, 8).unwrap();
    forward(&model, &toks, &mut fresh, Mode::Eval).unwrap();
    let mut reused = Activations::new(&model, 2, 8).unwrap();
    forward(&model, &toks, &mut reused, Mode::Train { seed: 3 }).unwrap();
    forward(&model, &toks, &mut reused, Mode::Eval).unwrap();
    assert_eq!(fresh.logits(), reused.logits());
    // And its backward is the eval backward.
    let mut a = Gradients::new(&model, 2, 8).unwrap();
    let mut b = Gradients::new(&model, 2, 8).unwrap();
    backward(&model, &fresh, &targets, &mut a).unwrap();
    backward(&model, &reused, &targets, &mut b).unwrap();
    assert_eq!(a.params.data(), b.params.data());
}
