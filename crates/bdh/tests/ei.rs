//! The E/I normalisation (`model.norm = "ei"`): the config's form, a fresh circuit
//! equal to LayerNorm, and with its weights moved — recurrent == parallel at every
//! position, prefill and chunks with a carried state, the batched step, the
//! gradient against finite differences; merge and the graph form refuse it.

use bdh::infer::{Prepared, State};
use bdh::model::bdh::norm::NORM_NAME;
use bdh::model::bdh::{forward, Activations, Bdh, BdhConfig, Norm, Pass, Residual, NO_EDITS};
use bdh::{Model, ModelConfig};

use crate::carry::{backward_matches_finite_differences, chunks_equal_one_forward};
use crate::common::{bdh_model, max_rel_diff, tiny_config, tokens};
use crate::recurrent::{prefill_then_steps, recurrent_vs_parallel};

fn ei(cfg: BdhConfig) -> BdhConfig {
    BdhConfig { norm: Norm::Ei, ..cfg }
}

/// A model of `cfg` (E/I) whose circuits' logits are spread by ±`spread` around
/// their start, so that no weight is its LayerNorm value.
fn moved(cfg: BdhConfig, seed: u64, spread: f32) -> Bdh {
    let Model::Bdh(mut m) = bdh_model(cfg, seed) else { unreachable!("a BDH") };
    let logits = m.params.get_mut(NORM_NAME).unwrap();
    let count = logits.len();
    logits
        .iter_mut()
        .enumerate()
        .for_each(|(i, x)| *x += spread * (2.0 * ((i * 7919) % count) as f32 / count as f32 - 1.0));
    m
}

fn logits(m: &Bdh, toks: &[u32]) -> Vec<f32> {
    let mut acts = Activations::new(m, 1, toks.len()).unwrap();
    forward(m, toks, &mut acts, Pass::default()).unwrap();
    acts.logits
}

#[test]
fn the_ei_norm_is_written_and_checked() {
    let parse = |json: &str| serde_json::from_str::<ModelConfig>(json);
    let base = r#""family": "bdh", "n_layer": 2, "n_embd": 16, "n_head": 2, "mlp_internal_dim_multiplier": 4, "vocab_size": 256, "dropout": 0.0"#;
    let ModelConfig::Bdh(c) = parse(&format!(r#"{{{base}, "norm": "ei"}}"#)).unwrap() else { unreachable!() };
    assert_eq!(c.norm, Norm::Ei);
    // four sites, four weights (e, s, f, r) of D each
    assert_eq!(c.param_count(), BdhConfig { norm: Norm::Layer, ..c.clone() }.param_count() + 4 * 4 * 16);
    assert_eq!(c.variant().as_deref(), Some("norm = \"ei\""), "what a GPU names when it refuses it");
    let err = parse(&format!(r#"{{{base}, "norm": "batch"}}"#)).expect_err("refused").to_string();
    assert!(err.contains("unknown variant `batch`, expected one of `layer`, `none`, `ei`"), "{err}");
}

#[test]
fn a_fresh_ei_circuit_is_layer_norm() {
    let cfg = tiny_config(2, 32, 2, 8);
    let toks = tokens(60, 2);
    let Model::Bdh(plain) = bdh_model(cfg.clone(), 3) else { unreachable!("a BDH") };
    let Model::Bdh(m) = bdh_model(ei(cfg.clone()), 3) else { unreachable!("a BDH") };
    assert_eq!(&m.params.data()[..plain.params.len()], plain.params.data(), "bdh.py's draws unchanged");
    let diff = max_rel_diff(&logits(&m, &toks), &logits(&plain, &toks));
    println!("fresh E/I vs LayerNorm: max rel diff {diff:.2e}");
    assert!(diff < 1e-5, "e = f = 1/D, s = r = 1 is the mean and the variance: {diff}");
    assert!(max_rel_diff(&logits(&moved(ei(cfg), 3, 1.0), &toks), &logits(&plain, &toks)) > 1e-3, "N comes through");
}

#[test]
fn the_ei_norm_steps_as_it_runs_in_parallel_and_carries_its_state() {
    for (i, cfg) in [ei(tiny_config(2, 32, 2, 8)), ei(BdhConfig { residual: Residual::N, ..tiny_config(2, 32, 2, 8) })]
        .into_iter()
        .enumerate()
    {
        let m = moved(cfg.clone(), i as u64, 1.0);
        chunks_equal_one_forward(&m);
        let toks = tokens(150, i as u64);
        let m = Model::Bdh(m);
        let (sparse, dense) = (recurrent_vs_parallel(&m, &toks, false), recurrent_vs_parallel(&m, &toks, true));
        println!("E/I {i} T150: max rel diff sparse {sparse:.2e}, dense {dense:.2e}");
        assert!(sparse < 5e-6 && dense < 5e-6, "{cfg:?}: {sparse} {dense}");
        prefill_then_steps(cfg);
    }
}

#[test]
fn the_ei_norm_steps_many_streams_as_one_by_one() {
    let prepared = Prepared::new(Model::Bdh(moved(ei(tiny_config(2, 32, 2, 8)), 4, 1.0))).unwrap();
    let (mut single, mut batch) = (prepared.scratch(), prepared.scratch());
    let mut solo: Vec<State> = (0..5).map(|_| prepared.state().unwrap()).collect();
    let mut together = solo.clone();
    for step in 0..20 {
        let toks: Vec<u32> = (0..5).map(|k| tokens(1, (step * 31 + k) as u64)[0]).collect();
        let mut rows: Vec<&mut State> = together.iter_mut().collect();
        let out = prepared.step(&mut rows, &mut batch, &toks, &NO_EDITS).unwrap().to_vec();
        for (k, s) in solo.iter_mut().enumerate() {
            let one = prepared.step(&mut [s], &mut single, &[toks[k]], &NO_EDITS).unwrap();
            assert_eq!(&out[k * 256..(k + 1) * 256], one, "stream {k} at step {step}");
        }
    }
}

#[test]
fn the_gradient_of_the_ei_norm_matches_finite_differences() {
    for cfg in [ei(tiny_config(2, 16, 2, 4)), ei(BdhConfig { residual: Residual::N, ..tiny_config(2, 16, 2, 4) })] {
        crate::backward::check_gradients(Model::Bdh(moved(cfg.clone(), 11, 1.0)), bdh::Mode::Eval, 10.0, 1e-4);
        // (weights of std 0.2, as the other checks: a loss with real curvature)
        let mut m = moved(cfg, 12, 1.0);
        crate::backward::scale_weights(&mut m.params, 10.0);
        backward_matches_finite_differences(&m, 1e-4);
    }
}

#[test]
fn merge_and_the_graph_form_refuse_the_ei_norm() {
    let m = moved(ei(tiny_config(2, 16, 2, 4)), 1, 1.0);
    let err = bdh::model::bdh::merge(&m, &m).expect_err("refused").to_string();
    assert!(err.contains("norm = \"ei\""), "{err}");
    let normfree =
        BdhConfig { residual: Residual::N, position: bdh::model::bdh::Position::None, ..ei(tiny_config(2, 16, 2, 4)) };
    let err = bdh::model::graph::check_model(&moved(normfree, 1, 1.0)).expect_err("refused").to_string();
    assert!(err.contains("norm = \"none\""), "{err}");
}
