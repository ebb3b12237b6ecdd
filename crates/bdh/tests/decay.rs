//! The decay of the synapse state (`model.decay`): the config's forms, ALiBi's
//! slopes, the decayed scores against their definition, and the three equalities
//! with a decay — recurrent == parallel at every position, chunks with a carried
//! state == one pass, the backward (through ρ₀ too) == finite differences.

use bdh::model::bdh::config::alibi_slopes;
use bdh::model::bdh::{forward, Activations, BdhConfig, Decay, Pass};
use bdh::{Model, ModelConfig};

use crate::carry::{backward_matches_finite_differences, chunks_equal_one_forward, model};
use crate::common::{bdh_model, max_rel_diff, tiny_config, tokens};
use crate::recurrent::recurrent_vs_parallel;

fn with(decay: Decay, cfg: BdhConfig) -> BdhConfig {
    BdhConfig { decay, ..cfg }
}

#[test]
fn decay_is_written_as_none_alibi_or_a_list_and_checked() {
    let parse = |json: &str| serde_json::from_str::<ModelConfig>(json);
    let base = r#"{"family":"bdh","n_layer":1,"n_embd":8,"n_head":2,"mlp_internal_dim_multiplier":2,"vocab_size":256,"dropout":0.0"#;
    let cfg = |tail: &str| parse(&format!("{base}{tail}}}"));
    let decay_of = |c: ModelConfig| match c {
        ModelConfig::Bdh(c) => c.decay,
        ModelConfig::Gpt(_) => unreachable!("a BDH config"),
    };
    assert_eq!(decay_of(cfg("").unwrap()), Decay::None, "absent: the reference model");
    assert_eq!(decay_of(cfg(r#","decay":"none""#).unwrap()), Decay::None);
    assert_eq!(decay_of(cfg(r#","decay":"alibi""#).unwrap()), Decay::Alibi);
    assert_eq!(decay_of(cfg(r#","decay":[0.5,1.0]"#).unwrap()), Decay::Retention(vec![0.5, 1.0]));
    let err = cfg(r#","decay":"fast""#).unwrap_err().to_string();
    assert!(err.contains("alibi"), "{err}");
    // Round trip; no decay writes no field, so configs stay bdh.py's.
    let c = with(Decay::Retention(vec![0.9, 0.99]), tiny_config(1, 8, 2, 2));
    let json = serde_json::to_string(&ModelConfig::Bdh(c.clone())).unwrap();
    assert_eq!(decay_of(parse(&json).unwrap()), c.decay);
    assert!(!serde_json::to_string(&ModelConfig::Bdh(tiny_config(1, 8, 2, 2))).unwrap().contains("decay"));
    // Validation names the problem.
    for (decay, needle) in [
        (Decay::Retention(vec![0.9]), "n_head = 2"),
        (Decay::Retention(vec![0.9, 0.0]), "(0, 1]"),
        (Decay::Retention(vec![0.9, 1.5]), "(0, 1]"),
        (Decay::Retention(vec![f32::NAN, 0.9]), "(0, 1]"),
    ] {
        let err = with(decay, tiny_config(1, 8, 2, 2)).validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn alibi_slopes_are_those_of_its_reference_code() {
    let p = |k: i32| 2f64.powi(-k);
    assert_eq!(alibi_slopes(4), vec![p(2), p(4), p(6), p(8)]);
    assert_eq!(alibi_slopes(2), vec![p(4), p(8)]);
    // Six heads: the four of H = 4, then every other one of H = 8 (2^−1, 2^−3).
    assert_eq!(alibi_slopes(6), vec![p(2), p(4), p(6), p(8), p(1), p(3)]);
    let gamma = Decay::Alibi.initial(2);
    assert!((gamma[0] as f64 - (-p(4)).exp()).abs() < 1e-7 && (gamma[1] as f64 - (-p(8)).exp()).abs() < 1e-7);
}

#[test]
fn decayed_scores_are_the_plain_ones_times_gamma_to_the_distance() {
    let cfg = tiny_config(1, 16, 2, 4);
    let gamma = [0.8f32, 0.95];
    let (plain, decayed) = (bdh_model(cfg.clone(), 5), bdh_model(with(Decay::Retention(gamma.to_vec()), cfg), 5));
    let t = 24;
    let toks = tokens(t, 9);
    let scores = |m: &Model| {
        let Model::Bdh(m) = m else { unreachable!("a BDH") };
        let mut acts = Activations::new(m, 1, t).unwrap();
        forward(m, &toks, &mut acts, Pass::default()).unwrap();
        (acts.x_rotated(0).to_vec(), acts)
    };
    let ((q, _), (q_decayed, acts)) = (scores(&plain), scores(&decayed));
    assert_eq!(q, q_decayed, "the first layer's neurons do not depend on the decay");
    let n = acts.dims.n;
    let mut worst = 0.0f64;
    for (h, &g) in gamma.iter().enumerate() {
        for i in 0..t {
            for j in 0..t {
                let dot: f64 = (0..n).map(|k| q[(h * t + i) * n + k] as f64 * q[(h * t + j) * n + k] as f64).sum();
                let want = if j < i { dot * (g as f64).powi((i - j) as i32) } else { 0.0 };
                let got = acts.scores(0)[(h * t + i) * t + j] as f64;
                worst = worst.max((got - want).abs() / dot.abs().max(1.0));
            }
        }
    }
    println!("decayed scores: max rel diff {worst:.2e}");
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn recurrent_equals_parallel_with_a_decay() {
    let configs = [
        with(Decay::Alibi, tiny_config(2, 32, 2, 8)),
        with(Decay::Retention(vec![0.5, 0.9, 1.0]), tiny_config(3, 24, 3, 6)),
        with(Decay::Alibi, tiny_config(2, 64, 4, 16)),
    ];
    for (i, cfg) in configs.into_iter().enumerate() {
        let model = bdh_model(cfg.clone(), i as u64);
        let toks = tokens(300, i as u64);
        let (sparse, dense) = (recurrent_vs_parallel(&model, &toks, false), recurrent_vs_parallel(&model, &toks, true));
        println!("{:?} T300: max rel diff sparse {sparse:.2e}, dense {dense:.2e}", cfg.decay);
        assert!(sparse < 5e-6 && dense < 5e-6, "{cfg:?}: {sparse} {dense}");
    }
}

#[test]
fn a_retention_of_one_is_no_decay_exactly() {
    let cfg = tiny_config(2, 32, 2, 8);
    let toks = tokens(50, 1);
    let logits = |cfg: BdhConfig| {
        let Model::Bdh(m) = bdh_model(cfg, 3) else { unreachable!("a BDH") };
        let mut acts = Activations::new(&m, 1, toks.len()).unwrap();
        forward(&m, &toks, &mut acts, Pass::default()).unwrap();
        acts.logits
    };
    assert_eq!(logits(cfg.clone()), logits(with(Decay::Retention(vec![1.0, 1.0]), cfg.clone())));
    assert_ne!(logits(cfg.clone()), logits(with(Decay::Alibi, cfg)), "a decay changes the output");
}

#[test]
fn chunks_with_a_decaying_carried_state_equal_one_forward() {
    chunks_equal_one_forward(&model(1.0, Decay::Retention(vec![0.7, 0.97])));
}

#[test]
fn backward_with_a_decay_and_a_carried_state_matches_finite_differences() {
    // (γ = 0.6 for head 0 here puts a ReLU kink within the differences' step of ±1e-4.)
    let m = model(10.0, Decay::Retention(vec![0.7, 0.9]));
    backward_matches_finite_differences(&m, 1e-4);
    // The decayed and the plain model's gradients differ: the decay is in the backward.
    let plain = model(10.0, Decay::None);
    let grads = |m: &bdh::model::bdh::Bdh| {
        let (b, t) = (1, 12);
        let (toks, targets) = (tokens(b * t, 1), tokens(b * t, 2));
        let mut acts = Activations::new(m, b, t).unwrap();
        forward(m, &toks, &mut acts, Pass::mode(bdh::Mode::Train { seed: 0 })).unwrap();
        let mut g = m.params.zeros_like();
        let mut scratch = bdh::model::bdh::Backward::new(m, b, t).unwrap();
        bdh::model::bdh::backward(m, &acts, &targets, &mut g, &mut scratch).unwrap();
        g
    };
    assert!(max_rel_diff(grads(&m).data(), grads(&plain).data()) > 1e-3);
}

#[test]
fn backward_with_a_decay_matches_finite_differences() {
    let cfg = with(Decay::Retention(vec![0.6, 0.9]), tiny_config(2, 16, 2, 4));
    crate::backward::check_gradients(bdh_model(cfg, 11), bdh::Mode::Eval, 10.0, 1e-4);
}

#[test]
fn a_learned_decay_starts_at_alibi_and_trains_its_logits() {
    let cfg = with(Decay::Learned, tiny_config(2, 16, 2, 4));
    let Model::Bdh(m) = bdh_model(cfg.clone(), 11) else { unreachable!("a BDH") };
    // θ after bdh.py's five tensors, drawn as without it; γ = sigmoid(θ) = ALiBi's
    let Model::Bdh(plain) = bdh_model(with(Decay::Alibi, cfg.clone()), 11) else { unreachable!("a BDH") };
    assert_eq!(&m.params.data()[..plain.params.len()], plain.params.data());
    assert_eq!(m.params.slots().last().unwrap().name, "attn.decay");
    assert!(max_rel_diff(&m.retention(), &Decay::Alibi.initial(2)) < 1e-6);
    assert_eq!(cfg.param_count(), plain.config.param_count() + 2);
    // the same model as ALiBi's until θ moves
    let toks = tokens(40, 3);
    let logits = |m: &bdh::model::bdh::Bdh| {
        let mut acts = Activations::new(m, 1, 40).unwrap();
        forward(m, &toks, &mut acts, Pass::default()).unwrap();
        acts.logits
    };
    assert!(max_rel_diff(&logits(&m), &logits(&plain)) < 1e-6);
    let mut moved = m.clone();
    moved.params.get_mut("attn.decay").unwrap()[1] = -1.0;
    assert!(max_rel_diff(&logits(&moved), &logits(&m)) > 1e-3, "γ comes from θ");
    // θ is not weight-decayed (it would pull γ to ½)
    assert_eq!(Model::Bdh(m).weight_decay_mask(), [true, true, true, true, true, false]);
}

#[test]
fn a_learned_decay_steps_as_it_runs_in_parallel() {
    let Model::Bdh(mut m) = bdh_model(with(Decay::Learned, tiny_config(2, 32, 2, 8)), 4) else { unreachable!() };
    m.params.get_mut("attn.decay").unwrap().copy_from_slice(&[-0.5, 3.0]);
    let toks = tokens(200, 4);
    let m = Model::Bdh(m);
    let (sparse, dense) = (recurrent_vs_parallel(&m, &toks, false), recurrent_vs_parallel(&m, &toks, true));
    println!("learned γ T200: max rel diff sparse {sparse:.2e}, dense {dense:.2e}");
    assert!(sparse < 5e-6 && dense < 5e-6, "{sparse} {dense}");
}

#[test]
fn the_gradient_of_a_learned_decay_matches_finite_differences() {
    let cfg = with(Decay::Learned, tiny_config(2, 16, 2, 4));
    crate::backward::check_gradients(bdh_model(cfg, 11), bdh::Mode::Eval, 10.0, 1e-4);
    // through the read of a carried state too
    backward_matches_finite_differences(&model(10.0, Decay::Learned), 1e-4);
    chunks_equal_one_forward(&model(1.0, Decay::Learned));
}
