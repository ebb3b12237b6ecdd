//! The neurons' thresholds (`model.threshold`): the config's forms and checks, a fresh
//! model equal to bdh.py's, and with thresholds set — recurrent == parallel at every
//! position, chunks with a carried state == one pass, a learned θ's gradient == finite
//! differences; the homeostatic rule's firing fractions and update, and its run
//! resumed exactly.

use std::sync::atomic::AtomicBool;

use bdh::model::bdh::threshold::{homeostasis, ACTIVITY_NAME, FIRING_NAME, THRESHOLD_NAME};
use bdh::model::bdh::{forward, Activations, Bdh, BdhConfig, Homeostasis, Pass, Residual, Threshold};
use bdh::train::run::train;
use bdh::{Model, ModelConfig, RunConfig};

use crate::carry::{backward_matches_finite_differences, chunks_equal_one_forward};
use crate::common::{bdh_model, max_rel_diff, temp_dir, tiny_config, tokens};
use crate::recurrent::recurrent_vs_parallel;

const RULE: Threshold = Threshold::Homeostatic(Homeostasis { target: 0.1, rate: 0.5, step: 0.2, gain: false });

/// A model of `cfg` with thresholds spread over [−0.02, 0.1] (most neurons fire less,
/// a few more), its other weights times `scale`.
fn thresholds(cfg: BdhConfig, seed: u64, scale: f32) -> Bdh {
    let Model::Bdh(mut m) = bdh_model(cfg, seed) else { unreachable!("a BDH") };
    crate::backward::scale_weights(&mut m.params, scale);
    let theta = m.params.get_mut(THRESHOLD_NAME).unwrap();
    let count = theta.len();
    theta.iter_mut().enumerate().for_each(|(i, t)| *t = -0.02 + 0.12 * ((i * 7919) % count) as f32 / count as f32);
    m
}

fn logits(m: &Bdh, toks: &[u32]) -> Vec<f32> {
    let mut acts = Activations::new(m, 1, toks.len()).unwrap();
    forward(m, toks, &mut acts, Pass::default()).unwrap();
    acts.logits
}

#[test]
fn thresholds_are_written_and_checked() {
    let parse = |json: &str| serde_json::from_str::<ModelConfig>(json);
    let base = r#""family": "bdh", "n_layer": 2, "n_embd": 16, "n_head": 2, "mlp_internal_dim_multiplier": 4, "vocab_size": 256, "dropout": 0.0"#;
    let rule = parse(&format!(r#"{{{base}, "threshold": {{"target": 0.05}}}}"#)).unwrap();
    let ModelConfig::Bdh(c) = &rule else { unreachable!("a BDH") };
    assert_eq!(c.threshold, Threshold::Homeostatic(Homeostasis { target: 0.05, rate: 0.1, step: 0.02, gain: false }));
    // θ, (H, N), trained by the rule (the running rates are held, not counted)
    let plain = BdhConfig { threshold: Threshold::None, ..c.clone() };
    assert_eq!(c.param_count(), plain.param_count() + 64);
    let learned = BdhConfig { threshold: Threshold::Learned, ..plain.clone() };
    assert_eq!(learned.param_count(), plain.param_count() + 64);
    assert!(!serde_json::to_string(&ModelConfig::Bdh(plain)).unwrap().contains("threshold"));
    let err = |t: &str| match parse(&format!(r#"{{{base}, "threshold": {t}}}"#)) {
        Err(e) => e.to_string(),
        Ok(c) => c.validate().expect_err("refused").to_string(),
    };
    for (t, want) in [
        (r#"{"target": 0.0}"#, "threshold.target = 0 must be a firing rate in (0, 1)"),
        (r#"{"target": 1.5}"#, "threshold.target = 1.5 must be a firing rate in (0, 1)"),
        (r#"{"target": 0.1, "rate": 0.0}"#, "threshold.rate = 0 must be in (0, 1]"),
        (r#"{"target": 0.1, "step": -1.0}"#, "threshold.step = -1 must be > 0"),
        (r#"{"target": 0.1, "speed": 1.0}"#, "a rule { target, rate, step, gain } (only these fields)"),
        (r#""sometimes""#, "expected \"none\", \"learned\""),
    ] {
        let m = err(t);
        assert!(m.contains(want), "{t}: {m}");
    }
}

#[test]
fn a_fresh_threshold_is_bdh_pys_neuron() {
    let cfg = tiny_config(2, 32, 2, 8);
    let toks = tokens(60, 2);
    let Model::Bdh(plain) = bdh_model(cfg.clone(), 3) else { unreachable!("a BDH") };
    for rule in [Threshold::Learned, RULE] {
        let Model::Bdh(m) = bdh_model(BdhConfig { threshold: rule, ..cfg.clone() }, 3) else { unreachable!() };
        assert_eq!(&m.params.data()[..plain.params.len()], plain.params.data(), "bdh.py's draws unchanged");
        assert_eq!(logits(&m, &toks), logits(&plain, &toks), "θ = 0 is relu(v · encoder)");
    }
    let moved = thresholds(BdhConfig { threshold: Threshold::Learned, ..cfg }, 3, 1.0);
    assert!(max_rel_diff(&logits(&moved, &toks), &logits(&plain, &toks)) > 1e-3, "x comes through θ");
}

#[test]
fn the_graph_form_refuses_thresholds() {
    let normfree = BdhConfig {
        norm: bdh::model::bdh::Norm::None,
        residual: Residual::N,
        position: bdh::model::bdh::Position::None,
        threshold: Threshold::Learned,
        ..tiny_config(2, 16, 2, 4)
    };
    let err = bdh::model::graph::check_model(&thresholds(normfree, 1, 1.0)).expect_err("refused").to_string();
    assert!(err.contains("thresholds (threshold)"), "{err}");
}

#[test]
fn thresholds_step_as_they_run_in_parallel_and_carry_their_state() {
    let learned = BdhConfig { threshold: Threshold::Learned, ..tiny_config(2, 32, 2, 8) };
    let in_neurons = BdhConfig { residual: Residual::N, threshold: RULE, ..tiny_config(2, 32, 2, 8) };
    for (i, cfg) in [learned, in_neurons].into_iter().enumerate() {
        let m = thresholds(cfg.clone(), i as u64, 1.0);
        chunks_equal_one_forward(&m);
        let toks = tokens(150, i as u64);
        let m = Model::Bdh(m);
        let (sparse, dense) = (recurrent_vs_parallel(&m, &toks, false), recurrent_vs_parallel(&m, &toks, true));
        println!("thresholds {i} T150: max rel diff sparse {sparse:.2e}, dense {dense:.2e}");
        assert!(sparse < 5e-6 && dense < 5e-6, "{cfg:?}: {sparse} {dense}");
    }
}

#[test]
fn the_gradient_of_a_learned_threshold_matches_finite_differences() {
    let cfg = BdhConfig { threshold: Threshold::Learned, ..tiny_config(2, 16, 2, 4) };
    crate::backward::check_gradients(Model::Bdh(thresholds(cfg.clone(), 11, 10.0)), bdh::Mode::Eval, 1.0, 1e-4);
    backward_matches_finite_differences(&thresholds(cfg, 12, 10.0), 1e-4);
}

/// A training pass of `m` over B × T tokens and its backward: the activations and
/// what the backward left in the gradient buffer.
fn forward_backward(m: &Bdh, b: usize, t: usize) -> (Activations, bdh::Params) {
    let mut acts = Activations::new(m, b, t).unwrap();
    forward(m, &tokens(b * t, 1), &mut acts, Pass::mode(bdh::Mode::Train { seed: 0 })).unwrap();
    let mut g = m.params.zeros_like();
    let mut scratch = bdh::model::bdh::Backward::new(m, b, t).unwrap();
    bdh::model::bdh::backward(m, &acts, &tokens(b * t, 2), &mut g, &mut scratch).unwrap();
    (acts, g)
}

#[test]
fn the_homeostatic_rule_counts_firing_and_moves_each_threshold_toward_its_target() {
    let cfg = BdhConfig { threshold: RULE, ..tiny_config(2, 16, 2, 4) };
    let m = thresholds(cfg.clone(), 5, 1.0);
    let (b, t) = (2, 12);
    let (acts, mut g) = forward_backward(&m, b, t);
    // the fraction of (row, position, layer) where each neuron fired
    let (h, n, layers) = (2, m.config.n_neurons(), m.config.n_layer);
    let mut fired = vec![0.0f64; h * n];
    for l in 0..layers {
        for (i, row) in acts.x(l).chunks_exact(n).enumerate() {
            let hi = (i / t) % h;
            row.iter().enumerate().filter(|(_, &x)| x > 0.0).for_each(|(j, _)| fired[hi * n + j] += 1.0);
        }
    }
    let fired: Vec<f32> = fired.iter().map(|&c| (c / (b * t * layers) as f64) as f32).collect();
    assert!(max_rel_diff(g.get(FIRING_NAME).unwrap(), &fired) < 1e-6);
    assert!(g.get(THRESHOLD_NAME).unwrap().iter().all(|&x| x == 0.0), "θ gets no gradient: the rule moves it");
    // r ← r + rate (f − r), θ ← θ + step (r − target); both slots cleared for the optimizer
    let (mut params, before) = (m.params.clone(), m.params.get(THRESHOLD_NAME).unwrap().to_vec());
    homeostasis(&cfg, &mut params, &mut g);
    let running: Vec<f32> = fired.iter().map(|&f| 0.1 + 0.5 * (f - 0.1)).collect();
    assert!(max_rel_diff(params.get(FIRING_NAME).unwrap(), &running) < 1e-6);
    let theta: Vec<f32> = before.iter().zip(&running).map(|(&th, &r)| th + 0.2 * (r - 0.1)).collect();
    assert!(max_rel_diff(params.get(THRESHOLD_NAME).unwrap(), &theta) < 1e-6);
    assert!(g.get(FIRING_NAME).unwrap().iter().chain(g.get(THRESHOLD_NAME).unwrap()).all(|&x| x == 0.0));
}

#[test]
fn a_homeostatic_run_reaches_its_target_and_resumes_exactly() {
    let cfg = |steps: &str| {
        let sets = [
            "model.n_embd=32",
            "training.block_size=48",
            "training.batch_size=2",
            "training.eval_batches=1",
            "model.threshold={target=0.05, rate=0.2, step=0.5}",
            steps,
            "training.eval_interval=20",
        ];
        RunConfig::resolve("tiny", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    };
    let c = cfg("training.max_steps=40");
    let corpus = c.data.corpus(c.training.block_size).unwrap();
    let straight = temp_dir("homeostasis-straight");
    let whole = train(&c, &corpus, straight.path(), false, &AtomicBool::new(false), |_| {}).unwrap();
    let resumed = temp_dir("homeostasis-resumed");
    let losses = crate::common::stopped_and_resumed(&c, &corpus, resumed.path(), 25);
    assert_eq!(losses, whole.losses, "a resumed run must equal an uninterrupted one");
    // the running rates, kept with the model, near the target after 40 steps
    let model = |dir: &std::path::Path| bdh::io::checkpoint::load(&dir.join("last"), None).unwrap();
    let (a, b) = (model(straight.path()), model(resumed.path()));
    assert_eq!(a.params().data(), b.params().data());
    let rates = a.params().get(FIRING_NAME).unwrap().to_vec();
    let mean = rates.iter().sum::<f32>() / rates.len() as f32;
    println!("mean running firing rate after 40 steps: {mean:.3} (target 0.05)");
    assert!((mean - 0.05).abs() < 0.03, "{mean}");
}

const GAINED: Threshold = Threshold::Homeostatic(Homeostasis { target: 0.1, rate: 0.5, step: 0.2, gain: true });

/// [`thresholds`] with a gain whose running activities are spread over [0.005, 2]: every
/// gain other than 1, some at their tenfold bound.
fn gained(cfg: BdhConfig, seed: u64, scale: f32) -> Bdh {
    let mut m = thresholds(cfg, seed, scale);
    let activity = m.params.get_mut(ACTIVITY_NAME).unwrap();
    let count = activity.len();
    activity.iter_mut().enumerate().for_each(|(i, a)| *a = 0.005 + 2.0 * ((i * 104729) % count) as f32 / count as f32);
    m
}

#[test]
fn a_gain_is_written_starts_at_one_and_steps_as_it_runs_in_parallel() {
    let parse = |json: &str| serde_json::from_str::<ModelConfig>(json);
    let base = r#""family": "bdh", "n_layer": 2, "n_embd": 16, "n_head": 2, "mlp_internal_dim_multiplier": 4, "vocab_size": 256, "dropout": 0.0"#;
    let ModelConfig::Bdh(c) = parse(&format!(r#"{{{base}, "threshold": {{"target": 0.05, "gain": true}}}}"#)).unwrap()
    else {
        unreachable!("a BDH")
    };
    assert!(c.threshold.has_gain());
    let plain = BdhConfig { threshold: Threshold::None, ..c.clone() };
    assert_eq!(c.param_count(), plain.param_count() + 64, "θ trains; the rates and activities are held");
    let rule = BdhConfig { threshold: RULE, ..c.clone() };
    assert!(!serde_json::to_string(&ModelConfig::Bdh(rule)).unwrap().contains("gain"), "absent when off");
    // a fresh gain is 1: bdh.py's model
    let cfg = BdhConfig { threshold: GAINED, ..tiny_config(2, 32, 2, 8) };
    let toks = tokens(60, 2);
    let Model::Bdh(fresh) = bdh_model(cfg.clone(), 3) else { unreachable!("a BDH") };
    let Model::Bdh(bdhpy) = bdh_model(tiny_config(2, 32, 2, 8), 3) else { unreachable!("a BDH") };
    assert_eq!(logits(&fresh, &toks), logits(&bdhpy, &toks));
    // spread: x comes through the gain, every path alike
    let m = gained(cfg.clone(), 1, 1.0);
    assert!(max_rel_diff(&logits(&m, &toks), &logits(&thresholds(cfg.clone(), 1, 1.0), &toks)) > 1e-3);
    chunks_equal_one_forward(&m);
    let m = Model::Bdh(m);
    let long = tokens(150, 1);
    let (sparse, dense) = (recurrent_vs_parallel(&m, &long, false), recurrent_vs_parallel(&m, &long, true));
    println!("gain T150: max rel diff sparse {sparse:.2e}, dense {dense:.2e}");
    assert!(sparse < 5e-6 && dense < 5e-6, "{sparse} {dense}");
    let in_neurons = BdhConfig { residual: Residual::N, ..cfg };
    let m = Model::Bdh(gained(in_neurons, 2, 1.0));
    assert!(recurrent_vs_parallel(&m, &long, false) < 5e-6);
}

#[test]
fn the_gradient_through_a_gain_matches_finite_differences_and_its_activity_is_counted() {
    // a learned-θ check with the gain's activities held: θ and the weights see g
    let cfg = BdhConfig { threshold: GAINED, ..tiny_config(2, 16, 2, 4) };
    backward_matches_finite_differences(&gained(cfg.clone(), 12, 10.0), 1e-4);
    for residual in [Residual::D, Residual::N] {
        let m = gained(BdhConfig { residual, ..cfg.clone() }, 13, 1.0);
        crate::backward::check_gradients(Model::Bdh(m), bdh::Mode::Eval, 10.0, 1e-4);
    }
    // the backward's activity slot: each neuron's mean x before the gain
    let m = gained(cfg.clone(), 5, 1.0);
    let (b, t) = (2, 12);
    let (acts, mut g) = forward_backward(&m, b, t);
    let (h, n, layers) = (2, m.config.n_neurons(), m.config.n_layer);
    let activity = m.params.get(ACTIVITY_NAME).unwrap();
    let mean = |head: usize| activity[head * n..(head + 1) * n].iter().sum::<f32>() / n as f32;
    let gain = |j: usize| mean(j / n) / activity[j].max(mean(j / n) / 10.0);
    let mut before = vec![0.0f64; h * n];
    for l in 0..layers {
        for (i, row) in acts.x(l).chunks_exact(n).enumerate() {
            let hi = (i / t) % h;
            row.iter().enumerate().for_each(|(j, &x)| before[hi * n + j] += (x / gain(hi * n + j)) as f64);
        }
    }
    let before: Vec<f32> = before.iter().map(|&s| (s / (b * t * layers) as f64) as f32).collect();
    assert!(max_rel_diff(g.get(ACTIVITY_NAME).unwrap(), &before) < 1e-5);
    // the rule: a ← a + rate (mean − a), and the slot cleared
    let mut params = m.params.clone();
    homeostasis(&m.config, &mut params, &mut g);
    let moved: Vec<f32> = activity.iter().zip(&before).map(|(&a, &f)| a + 0.5 * (f - a)).collect();
    assert!(max_rel_diff(params.get(ACTIVITY_NAME).unwrap(), &moved) < 1e-6);
    assert!(g.get(ACTIVITY_NAME).unwrap().iter().all(|&x| x == 0.0));
    // merge refuses it: a merged head's mean changes every gain
    let err = bdh::model::bdh::merge(&m, &m).expect_err("refused").to_string();
    assert!(err.contains("homeostatic gain"), "{err}");
}
