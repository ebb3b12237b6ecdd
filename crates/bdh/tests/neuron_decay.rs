//! A learned retention per neuron (`decay_per = "neuron"`): the config's checks, a
//! fresh model equal to one retention per head, and the three equalities with
//! neurons that forget at different rates — recurrent == parallel at every position,
//! chunks with a carried state == one pass, the backward (through ρ₀ too) == finite
//! differences — alone and with a trace at the write's key and the layer's variants.

use bdh::model::bdh::{forward, Activations, Bdh, BdhConfig, Decay, DecayPer, Norm, Pass, Position, Residual, Trace};
use bdh::{Model, ModelConfig};

use crate::carry::{backward_matches_finite_differences, chunks_equal_one_forward};
use crate::common::{bdh_model, max_rel_diff, tiny_config, tokens};
use crate::recurrent::recurrent_vs_parallel;

fn per_neuron(cfg: BdhConfig) -> BdhConfig {
    BdhConfig { decay: Decay::Learned, decay_per: DecayPer::Neuron, ..cfg }
}

/// A model of `cfg` whose neurons' θ are spread over [−1, 4] (γ from 0.27 to 0.98),
/// its other weights times `scale`.
fn spread(cfg: BdhConfig, seed: u64, scale: f32) -> Bdh {
    let Model::Bdh(mut m) = bdh_model(cfg, seed) else { unreachable!("a BDH") };
    crate::backward::scale_weights(&mut m.params, scale);
    let theta = m.params.get_mut("attn.decay").unwrap();
    let count = theta.len();
    theta.iter_mut().enumerate().for_each(|(i, t)| *t = -1.0 + 5.0 * ((i * 7919) % count) as f32 / count as f32);
    m
}

#[test]
fn a_retention_per_neuron_is_written_and_checked() {
    let parse = |json: &str| serde_json::from_str::<ModelConfig>(json);
    let base = r#""family": "bdh", "n_layer": 2, "n_embd": 16, "n_head": 2, "mlp_internal_dim_multiplier": 4, "vocab_size": 256, "dropout": 0.0"#;
    let cfg = parse(&format!(r#"{{{base}, "decay": "learned", "decay_per": "neuron"}}"#)).unwrap();
    cfg.validate().unwrap();
    let ModelConfig::Bdh(c) = &cfg else { unreachable!("a BDH") };
    assert!(c.per_neuron_decay());
    // θ per neuron: H·N values more than bdh.py's tensors
    let plain = BdhConfig { decay: Decay::None, decay_per: DecayPer::Head, ..c.clone() };
    assert_eq!(c.param_count(), plain.param_count() + 2 * 32);
    // the default is one per head, and a config without the field says nothing of it
    let json = serde_json::to_string(&ModelConfig::Bdh(BdhConfig { decay: Decay::Learned, ..plain.clone() })).unwrap();
    assert!(!json.contains("decay_per"), "{json}");
    // (an unknown value fails to parse; a known one the config cannot take, to validate)
    let err = |json: String| match parse(&json) {
        Err(e) => e.to_string(),
        Ok(c) => c.validate().expect_err("refused").to_string(),
    };
    assert!(err(format!(r#"{{{base}, "decay_per": "synapse"}}"#)).contains("synapse"));
    let fixed = err(format!(r#"{{{base}, "decay": "alibi", "decay_per": "neuron"}}"#));
    assert!(fixed.contains("needs decay = \"learned\""), "{fixed}");
    let delayed = err(format!(r#"{{{base}, "decay": "learned", "decay_per": "neuron", "delays": [0, 2]}}"#));
    assert!(delayed.contains("does not combine with delays"), "{delayed}");
}

#[test]
fn a_fresh_retention_per_neuron_is_the_heads_one() {
    // each neuron starts at its head's ALiBi γ: the same model as one γ per head
    let cfg = BdhConfig { decay: Decay::Learned, ..tiny_config(2, 32, 2, 8) };
    let Model::Bdh(head) = bdh_model(cfg.clone(), 5) else { unreachable!("a BDH") };
    let Model::Bdh(neuron) = bdh_model(per_neuron(cfg), 5) else { unreachable!("a BDH") };
    let n = neuron.config.n_neurons();
    let expanded: Vec<f32> = head.retention().iter().flat_map(|&g| vec![g; n]).collect();
    assert_eq!(neuron.retention(), expanded);
    let toks = tokens(100, 3);
    let logits = |m: &Bdh| {
        let mut acts = Activations::new(m, 1, 100).unwrap();
        forward(m, &toks, &mut acts, Pass::default()).unwrap();
        acts.logits
    };
    let diff = max_rel_diff(&logits(&neuron), &logits(&head));
    println!("per neuron vs per head, fresh, T100: max rel diff {diff:.2e}");
    assert!(diff < 1e-5, "{diff}");
    // and they part once the neurons of a head differ
    let moved = spread(neuron.config.clone(), 5, 1.0);
    assert!(max_rel_diff(&logits(&moved), &logits(&head)) > 1e-3);
}

#[test]
fn a_retention_per_neuron_steps_as_it_runs_in_parallel() {
    let plain = per_neuron(tiny_config(2, 32, 2, 8));
    let traced = BdhConfig { trace: Trace::Learned, ..plain.clone() };
    let variants = BdhConfig { norm: Norm::None, residual: Residual::N, position: Position::None, ..plain.clone() };
    for (i, cfg) in [plain, traced, variants].into_iter().enumerate() {
        let m = Model::Bdh(spread(cfg.clone(), i as u64, 1.0));
        let toks = tokens(150, i as u64);
        let (sparse, dense) = (recurrent_vs_parallel(&m, &toks, false), recurrent_vs_parallel(&m, &toks, true));
        println!("per-neuron γ {i} T150: max rel diff sparse {sparse:.2e}, dense {dense:.2e}");
        assert!(sparse < 5e-6 && dense < 5e-6, "{cfg:?}: {sparse} {dense}");
    }
}

#[test]
fn chunks_with_a_carried_state_and_a_retention_per_neuron_equal_one_forward() {
    chunks_equal_one_forward(&spread(per_neuron(tiny_config(2, 16, 2, 4)), 11, 1.0));
    let traced = BdhConfig { trace: Trace::Learned, ..per_neuron(tiny_config(2, 16, 2, 4)) };
    chunks_equal_one_forward(&spread(traced, 11, 1.0));
}

#[test]
fn the_gradient_of_a_retention_per_neuron_matches_finite_differences() {
    let cfg = per_neuron(tiny_config(2, 16, 2, 4));
    crate::backward::check_gradients(Model::Bdh(spread(cfg.clone(), 11, 10.0)), bdh::Mode::Eval, 1.0, 1e-4);
    let traced = BdhConfig { trace: Trace::Learned, ..cfg.clone() };
    crate::backward::check_gradients(Model::Bdh(spread(traced, 12, 10.0)), bdh::Mode::Eval, 1.0, 1e-4);
    // through the read of a carried state too
    backward_matches_finite_differences(&spread(cfg, 11, 10.0), 1e-4);
}

#[test]
fn what_reads_one_retention_per_head_refuses_a_retention_per_neuron() {
    let m = spread(
        per_neuron(BdhConfig {
            norm: Norm::None,
            residual: Residual::N,
            position: Position::None,
            ..tiny_config(2, 16, 2, 4)
        }),
        1,
        1.0,
    );
    let graph = bdh::model::graph::check_model(&m).expect_err("the graph form refuses it").to_string();
    assert!(graph.contains("one per neuron"), "{graph}");
    let scores = bdh::microscope::induction::induction(&bdh::microscope::Scope::cpu(&m), 8, 2, 0)
        .expect_err("induction refuses it")
        .to_string();
    assert!(scores.contains("retention per neuron"), "{scores}");
}
