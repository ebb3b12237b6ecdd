//! The layer's variants (`norm`, `residual`, `position`): how configs write them, and
//! for each variant alone, combined and with a decay, the three equalities — recurrent
//! == parallel at every position (sparse and dense steps), chunks with a carried state
//! == one pass, prefill then steps == steps — and the backward (from an empty and from
//! a carried state) against finite differences.

use bdh::model::bdh::{forward, Activations, Bdh, BdhConfig, Decay, Norm, Pass, Position, Residual};
use bdh::{Model, ModelConfig};

use crate::carry::{backward_matches_finite_differences, chunks_equal_one_forward};
use crate::common::{bdh_model, max_rel_diff, tiny_config, tokens};
use crate::recurrent::{prefill_then_steps, recurrent_vs_parallel};

fn variant(norm: Norm, residual: Residual, position: Position, decay: Decay) -> BdhConfig {
    BdhConfig { norm, residual, position, decay, ..tiny_config(2, 16, 2, 4) }
}

/// Every combination of the three fields but bdh.py's own, each with and without a
/// decay: the paper's BDH-Normfree (all three set) among them.
fn variants() -> Vec<BdhConfig> {
    let mut all = Vec::new();
    for norm in [Norm::Layer, Norm::None] {
        for residual in [Residual::D, Residual::N] {
            for position in [Position::Rope, Position::None] {
                if norm.is_layer() && residual.is_d() && position.is_rope() {
                    continue;
                }
                all.push(variant(norm, residual, position, Decay::None));
                all.push(variant(norm, residual, position, Decay::Retention(vec![0.8, 0.95])));
            }
        }
    }
    all
}

fn bdh(cfg: BdhConfig, scale: f32, seed: u64) -> Bdh {
    let Model::Bdh(mut m) = bdh_model(cfg, seed) else { unreachable!("a BDH") };
    m.params.data_mut().iter_mut().for_each(|x| *x *= scale);
    m
}

#[test]
fn variants_are_written_only_when_set_and_checked() {
    let base = r#"{"family":"bdh","n_layer":1,"n_embd":8,"n_head":2,"mlp_internal_dim_multiplier":2,"vocab_size":256,"dropout":0.0"#;
    let parse = |tail: &str| serde_json::from_str::<ModelConfig>(&format!("{base}{tail}}}"));
    let ModelConfig::Bdh(c) = parse("").unwrap() else { unreachable!("a BDH") };
    assert_eq!((c.norm, c.residual, c.position), (Norm::Layer, Residual::D, Position::Rope), "absent: bdh.py's");
    assert_eq!(c.variant(), None);
    let ModelConfig::Bdh(c) = parse(r#","norm":"none","residual":"n","position":"none""#).unwrap() else {
        unreachable!("a BDH")
    };
    assert_eq!((c.norm, c.residual, c.position), (Norm::None, Residual::N, Position::None));
    assert_eq!(c.variant().unwrap(), r#"norm = "none", residual = "n", position = "none""#);
    let json = serde_json::to_string(&ModelConfig::Bdh(c.clone())).unwrap();
    assert!(json.contains(r#""norm":"none""#) && json.contains(r#""residual":"n""#), "{json}");
    let plain = serde_json::to_string(&ModelConfig::Bdh(tiny_config(1, 8, 2, 2))).unwrap();
    assert!(!plain.contains("norm") && !plain.contains("residual") && !plain.contains("position"), "{plain}");
    for (tail, needle) in [
        (r#","norm":"rms""#, "unknown variant `rms`"),
        (r#","residual":"x""#, "unknown variant `x`"),
        (r#","position":"alibi""#, "unknown variant `alibi`"),
    ] {
        let err = parse(tail).unwrap_err().to_string();
        assert!(err.contains(needle), "{tail}: {err}");
    }
}

#[test]
fn no_position_scores_the_neurons_unrotated_and_keeps_its_frequencies_zero() {
    let cfg = BdhConfig { position: Position::None, ..tiny_config(1, 16, 2, 4) };
    let m = bdh(cfg.clone(), 1.0, 3);
    assert!(m.freqs.iter().all(|&f| f == 0.0));
    let t = 20;
    let mut acts = Activations::new(&m, 1, t).unwrap();
    forward(&m, &tokens(t, 4), &mut acts, Pass::default()).unwrap();
    assert_eq!(acts.x(0), acts.x_rotated(0), "the rotation is the identity, exactly");
    // Non-zero frequencies with no position are refused.
    let err = Bdh::from_parts(cfg, m.params.clone(), bdh::model::bdh::rope::freqs(m.config.n_neurons()));
    assert!(err.unwrap_err().to_string().contains("position = \"none\""));
}

#[test]
fn the_residual_in_the_neurons_accumulates_x_and_drops_the_stream() {
    // x_2 = x_1 + relu(v_1 · encoder) ≥ x_1 everywhere, and v_1 = N(E y_1).
    let m = bdh(BdhConfig { residual: Residual::N, ..tiny_config(2, 16, 2, 4) }, 1.0, 5);
    let t = 12;
    let mut acts = Activations::new(&m, 1, t).unwrap();
    forward(&m, &tokens(t, 6), &mut acts, Pass::default()).unwrap();
    assert!(acts.x(1).iter().zip(acts.x(0)).all(|(x2, x1)| x2 >= x1));
    assert!(acts.x(1).iter().zip(acts.x(0)).any(|(x2, x1)| x2 > x1));
    let plain = bdh(tiny_config(2, 16, 2, 4), 1.0, 5);
    let mut other = Activations::new(&plain, 1, t).unwrap();
    forward(&plain, &tokens(t, 6), &mut other, Pass::default()).unwrap();
    assert_eq!(acts.x(0), other.x(0), "the first layer is bdh.py's");
    assert_ne!(acts.x(1), other.x(1));
}

#[test]
fn no_norm_leaves_every_layer_unnormalised() {
    let m = bdh(BdhConfig { norm: Norm::None, ..tiny_config(1, 16, 2, 4) }, 1.0, 2);
    let toks = tokens(6, 1);
    let mut acts = Activations::new(&m, 1, 6).unwrap();
    forward(&m, &toks, &mut acts, Pass::default()).unwrap();
    let d = m.config.n_embd;
    let embed = m.weights().embed;
    for (row, &tok) in acts.residual(0).chunks_exact(d).zip(&toks) {
        assert_eq!(row, &embed[tok as usize * d..(tok as usize + 1) * d], "v_0 = embed[token]");
    }
}

#[test]
fn recurrent_equals_parallel_for_every_variant() {
    for (i, cfg) in variants().into_iter().enumerate() {
        let model = Model::Bdh(bdh(cfg.clone(), 1.0, i as u64));
        let toks = tokens(200, i as u64);
        let (sparse, dense) = (recurrent_vs_parallel(&model, &toks, false), recurrent_vs_parallel(&model, &toks, true));
        println!(
            "{}, decay {}: max rel diff sparse {sparse:.2e}, dense {dense:.2e}",
            label(&cfg),
            cfg.decay.describe()
        );
        assert!(sparse < 5e-6 && dense < 5e-6, "{cfg:?}: {sparse} {dense}");
    }
}

#[test]
fn chunks_and_prefills_with_a_carried_state_equal_one_pass_for_every_variant() {
    for cfg in variants() {
        println!("{}, decay {}", label(&cfg), cfg.decay.describe());
        chunks_equal_one_forward(&bdh(cfg.clone(), 1.0, 11));
        prefill_then_steps(BdhConfig { n_embd: 32, mlp_internal_dim_multiplier: 8, ..cfg });
    }
}

#[test]
fn backward_matches_finite_differences_for_every_variant() {
    for cfg in variants() {
        println!("{}, decay {}", label(&cfg), cfg.decay.describe());
        // Without a norm the activations grow with the weights: a smaller scale keeps
        // the loss in f32's reach, and a longer step above its rounding.
        let (scale, eps) = if cfg.norm.is_layer() { (10.0, 1e-4) } else { (20.0, 1e-3) };
        crate::backward::check_gradients(Model::Bdh(bdh(cfg.clone(), 1.0, 11)), bdh::Mode::Eval, scale, eps);
        backward_matches_finite_differences(&bdh(cfg, scale, 11), eps);
    }
}

#[test]
fn the_residual_in_the_neurons_carries_the_gradient_through_a_middle_layer() {
    // Three layers: d loss / d x of the last passes through the middle one to the first.
    for norm in [Norm::Layer, Norm::None] {
        let cfg = BdhConfig { norm, residual: Residual::N, ..tiny_config(3, 16, 2, 4) };
        let (scale, eps) = if norm.is_layer() { (10.0, 1e-4) } else { (20.0, 1e-3) };
        crate::backward::check_gradients(Model::Bdh(bdh(cfg.clone(), 1.0, 12)), bdh::Mode::Eval, scale, eps);
        backward_matches_finite_differences(&bdh(cfg, scale, 12), eps);
    }
}

#[test]
fn buffers_made_for_another_layer_are_refused() {
    let (plain, in_neurons) = (
        bdh(tiny_config(2, 16, 2, 4), 1.0, 1),
        bdh(variant(Norm::Layer, Residual::N, Position::Rope, Decay::None), 1.0, 1),
    );
    let mut acts = Activations::new(&plain, 1, 8).unwrap();
    let err = forward(&in_neurons, &tokens(8, 1), &mut acts, Pass::default()).unwrap_err().to_string();
    assert!(err.contains("another shape or layer"), "{err}");
    let mut acts = Activations::new(&in_neurons, 1, 8).unwrap();
    forward(&in_neurons, &tokens(8, 1), &mut acts, Pass::mode(bdh::Mode::Train { seed: 0 })).unwrap();
    let mut scratch = bdh::model::bdh::Backward::new(&plain, 1, 8).unwrap();
    let mut g = in_neurons.params.zeros_like();
    let err =
        bdh::model::bdh::backward(&in_neurons, &acts, &tokens(8, 2), &mut g, &mut scratch).unwrap_err().to_string();
    assert!(err.contains("another layer"), "{err}");
    // an E/I norm keeps two statistics per row, LayerNorm one: buffers of either are
    // refused by the other, forward and backward
    let ei = bdh(BdhConfig { norm: Norm::Ei, ..tiny_config(2, 16, 2, 4) }, 1.0, 1);
    let mut acts = Activations::new(&plain, 1, 8).unwrap();
    let err = forward(&ei, &tokens(8, 1), &mut acts, Pass::default()).unwrap_err().to_string();
    assert!(err.contains("another shape or layer"), "{err}");
    let mut acts = Activations::new(&ei, 1, 8).unwrap();
    let err = forward(&plain, &tokens(8, 1), &mut acts, Pass::default()).unwrap_err().to_string();
    assert!(err.contains("another shape or layer"), "{err}");
    forward(&ei, &tokens(8, 1), &mut acts, Pass::mode(bdh::Mode::Train { seed: 0 })).unwrap();
    let mut scratch = bdh::model::bdh::Backward::new(&plain, 1, 8).unwrap();
    let err = bdh::model::bdh::backward(&ei, &acts, &tokens(8, 2), &mut ei.params.zeros_like(), &mut scratch)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another layer"), "{err}");
}

#[test]
fn each_variant_computes_something_else() {
    let toks = tokens(30, 8);
    let logits = |cfg: BdhConfig| {
        let m = bdh(cfg, 1.0, 4);
        let mut acts = Activations::new(&m, 1, toks.len()).unwrap();
        forward(&m, &toks, &mut acts, Pass::default()).unwrap();
        acts.logits
    };
    let plain = logits(tiny_config(2, 16, 2, 4));
    for cfg in variants().into_iter().filter(|c| c.decay.is_none()) {
        let d = max_rel_diff(&logits(cfg.clone()), &plain);
        assert!(d > 1e-3, "{}: {d}", label(&cfg));
    }
}

fn label(cfg: &BdhConfig) -> String {
    cfg.variant().unwrap_or_else(|| "bdh.py's layer".into())
}

/// A variant named as `tests/golden/variants.py` names it: `norm-residual-position[-decay]`.
fn from_name(name: &str) -> BdhConfig {
    let parts: Vec<&str> = name.split('-').collect();
    let Model::Bdh(base) = bdh::io::checkpoint::load(&crate::common::golden_dir("ref-tiny"), None).unwrap() else {
        unreachable!("a BDH")
    };
    BdhConfig {
        norm: if parts[0] == "layer" { Norm::Layer } else { Norm::None },
        residual: if parts[1] == "d" { Residual::D } else { Residual::N },
        position: if parts[2] == "rope" { Position::Rope } else { Position::None },
        decay: if parts.len() == 4 { Decay::Retention(vec![0.9, 0.99]) } else { Decay::None },
        ..base.config
    }
}

#[test]
fn every_variant_matches_the_pytorch_goldens() {
    // tests/golden/variants.py: the variants in PyTorch from the paper's equations, equal
    // to bdh.py at the defaults; ref-tiny's weights ×10 and inputs.
    let golden =
        bdh::io::read_safetensors(&crate::common::golden_dir("variants").join("expected.safetensors")).unwrap();
    let inputs =
        bdh::io::read_safetensors(&crate::common::golden_dir("ref-tiny").join("expected.safetensors")).unwrap();
    let scale = golden["scale"].f32s("scale").unwrap()[0];
    let Model::Bdh(base) = bdh::io::checkpoint::load(&crate::common::golden_dir("ref-tiny"), None).unwrap() else {
        unreachable!("a BDH")
    };
    let names: std::collections::BTreeSet<&str> = golden.keys().filter_map(|k| k.strip_suffix(".loss")).collect();
    assert_eq!(names.len(), 16, "8 layers, each with and without a decay");
    for name in names {
        let cfg = from_name(name);
        let freqs = cfg.position.freqs(cfg.n_neurons());
        let mut params = base.params.clone();
        params.data_mut().iter_mut().for_each(|x| *x *= scale);
        let model = Model::Bdh(Bdh::from_parts(cfg, params, freqs).unwrap());
        let mut want = bdh::io::TensorMap::new();
        for k in ["input_ids", "targets"] {
            want.insert(k.into(), inputs[k].clone());
        }
        for (k, v) in golden.iter().filter_map(|(k, v)| Some((k.strip_prefix(&format!("{name}."))?, v))) {
            want.insert(k.into(), v.clone());
        }
        let report = bdh::verify::verify(&model, &want, std::path::Path::new(name)).unwrap();
        for t in &report.tensors {
            println!("{name:20} {:<18} max abs {:.2e}  max rel {:.2e}", t.name, t.max_abs, t.max_rel);
            let bound = if t.name.starts_with("grad.") { 1e-4 } else { 1e-5 };
            assert!(t.max_rel <= bound, "{name} {}: {:.2e}", t.name, t.max_rel);
        }
        assert_eq!(report.tensors.len(), 7, "{name}: logits, loss and five gradients");
    }
}
