//! The write's key site (`trace`, `astrocyte`): the config's forms, the keys against
//! their definition, and the three equalities — recurrent == parallel at every
//! position, chunks with a carried state == one pass, the backward (through the
//! carried traces too) == finite differences — alone, together and with the other
//! variants and a learned decay.

use bdh::model::bdh::key::{KeySite, ASTROCYTE_NAME, TRACE_NAME};
use bdh::model::bdh::{forward, Activations, Astrocyte, Bdh, BdhConfig, Decay, Norm, Pass, Position, Residual, Trace};
use bdh::{Model, ModelConfig};

use crate::carry::{backward_matches_finite_differences, chunks_equal_one_forward};
use crate::common::{bdh_model, max_rel_diff, tiny_config, tokens};
use crate::recurrent::{prefill_then_steps, recurrent_vs_parallel};

const GLIA: Option<Astrocyte> = Some(Astrocyte { alpha: 0.8 });

/// The key sites the tests run: a fixed and a learned trace, the gate, both.
fn sites() -> Vec<(Trace, Option<Astrocyte>)> {
    vec![(Trace::Fixed(0.6), None), (Trace::Learned, None), (Trace::None, GLIA), (Trace::Learned, GLIA)]
}

/// A model of `cfg` with its weights times `scale`, and the key site's parameters
/// away from their start (λ of 0.3…0.8 per neuron, β = ±0.8), so the gate gates.
fn model(cfg: BdhConfig, scale: f32, seed: u64) -> Bdh {
    let Model::Bdh(mut m) = bdh_model(cfg, seed) else { unreachable!("a BDH") };
    crate::backward::scale_weights(&mut m.params, scale);
    if let Some(phi) = m.params.get_mut(TRACE_NAME) {
        phi.iter_mut().enumerate().for_each(|(i, p)| *p = -0.8 + 0.3 * (i % 7) as f32);
    }
    if let Some(beta) = m.params.get_mut(ASTROCYTE_NAME) {
        beta.iter_mut().enumerate().for_each(|(i, b)| *b = if i % 2 == 0 { 0.8 } else { -0.8 });
    }
    m
}

fn with((trace, astrocyte): (Trace, Option<Astrocyte>), cfg: BdhConfig) -> BdhConfig {
    BdhConfig { trace, astrocyte, ..cfg }
}

#[test]
fn the_key_site_is_written_only_when_set_and_checked() {
    let base = r#"{"family":"bdh","n_layer":1,"n_embd":8,"n_head":2,"mlp_internal_dim_multiplier":2,"vocab_size":256,"dropout":0.0"#;
    let parse = |tail: &str| serde_json::from_str::<ModelConfig>(&format!("{base}{tail}}}"));
    let bdh_of = |c: ModelConfig| match c {
        ModelConfig::Bdh(c) => c,
        ModelConfig::Gpt(_) => unreachable!("a BDH config"),
    };
    let c = bdh_of(parse(r#","trace":0.5,"astrocyte":{"alpha":0.9}"#).unwrap());
    assert_eq!((c.trace, c.astrocyte), (Trace::Fixed(0.5), Some(Astrocyte { alpha: 0.9 })));
    assert_eq!(bdh_of(parse(r#","trace":"learned""#).unwrap()).trace, Trace::Learned);
    assert!(!ModelConfig::Bdh(tiny_config(1, 8, 2, 2)).to_json().contains("trace"), "bdh.py's config unchanged");
    for (tail, needle) in [(r#","trace":"slow""#, "expected"), (r#","astrocyte":{"alpha":0.9,"beta":1}"#, "beta")] {
        let e = parse(tail).unwrap_err().to_string();
        assert!(e.contains(needle), "{tail}: {e}");
    }
    for (trace, astrocyte, needle) in [
        (Trace::Fixed(1.0), None, "[0, 1)"),
        (Trace::Fixed(-0.1), None, "[0, 1)"),
        (Trace::Fixed(f32::NAN), None, "[0, 1)"),
        (Trace::None, Some(Astrocyte { alpha: 1.0 }), "(0, 1)"),
        (Trace::None, Some(Astrocyte { alpha: 0.0 }), "(0, 1)"),
    ] {
        let e = BdhConfig { trace, astrocyte, ..tiny_config(1, 8, 2, 2) }.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
    // the trained tensors: φ (H, N) with a learned trace, β (H) with the gate, both from 0
    let cfg = with((Trace::Learned, GLIA), tiny_config(1, 8, 2, 2));
    let Model::Bdh(m) = bdh_model(cfg.clone(), 1) else { unreachable!() };
    let names: Vec<&str> = m.params.slots().iter().map(|s| s.name.as_str()).skip(5).collect();
    assert_eq!(names, [TRACE_NAME, ASTROCYTE_NAME]);
    assert!(m.params.get(TRACE_NAME).unwrap().iter().chain(m.params.get(ASTROCYTE_NAME).unwrap()).all(|&x| x == 0.0));
    assert_eq!(cfg.param_count(), tiny_config(1, 8, 2, 2).param_count() + 2 * 8 + 2);
    assert_eq!(KeySite::width(&cfg), 16);
}

#[test]
fn keys_are_the_traces_the_definition_gives() {
    // Two neurons, one head, T = 4: x fires on neuron 0 at t = 0 and on neuron 1 at t = 2.
    let x = [1.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0];
    let keys = |trace, astrocyte, beta: f32| {
        let cfg = BdhConfig {
            trace,
            astrocyte,
            n_head: 1,
            n_embd: 2,
            mlp_internal_dim_multiplier: 1,
            ..tiny_config(1, 2, 1, 1)
        };
        let site = KeySite::new(&cfg, &[], &[beta]).unwrap();
        site.keys_of(&x, 4)
    };
    // λ = 0.5: c = x filtered; the key is c
    let want = [1.0, 0.0, 0.5, 0.0, 0.25, 2.0, 0.125, 1.0];
    assert_eq!(keys(Trace::Fixed(0.5), None, 0.0), want);
    // the gate alone at β = 0 is no gate; at β = 1, g = 2 sigmoid(s), s = α s' + (1 − α) x
    assert_eq!(keys(Trace::None, GLIA, 0.0), x);
    let mut s = [0.0f32; 2];
    let mut want = [0.0f32; 8];
    for t in 0..4 {
        for j in 0..2 {
            s[j] = 0.8 * s[j] + 0.2 * x[2 * t + j];
            want[2 * t + j] = x[2 * t + j] * 2.0 / (1.0 + (-s[j]).exp());
        }
    }
    assert!(max_rel_diff(&keys(Trace::None, GLIA, 1.0), &want) < 1e-6);
}

#[test]
fn a_gate_at_its_start_writes_as_bdh_py_does() {
    let plain = tiny_config(2, 32, 2, 8);
    let gated = with((Trace::None, GLIA), plain.clone());
    let toks = tokens(60, 2);
    let logits = |cfg: BdhConfig| {
        let Model::Bdh(m) = bdh_model(cfg, 5) else { unreachable!() };
        let mut acts = Activations::new(&m, 1, 60).unwrap();
        forward(&m, &toks, &mut acts, Pass::default()).unwrap();
        acts.logits
    };
    assert!(max_rel_diff(&logits(gated), &logits(plain.clone())) < 1e-6, "β = 0: g = 1");
    let traced = with((Trace::Fixed(0.5), None), plain.clone());
    assert!(max_rel_diff(&logits(traced), &logits(plain)) > 1e-3, "a trace writes other keys");
}

/// Configs with every key site, alone and with the layer's variants and decays.
fn configs() -> Vec<BdhConfig> {
    let mut all = Vec::new();
    for site in sites() {
        all.push(with(site, tiny_config(2, 32, 2, 8)));
    }
    let glia_trace = (Trace::Learned, GLIA);
    all.push(BdhConfig { decay: Decay::Learned, ..with(glia_trace.clone(), tiny_config(2, 32, 2, 8)) });
    all.push(BdhConfig {
        decay: Decay::Retention(vec![0.8, 0.95]),
        ..with((Trace::Fixed(0.6), None), tiny_config(2, 32, 2, 8))
    });
    all.push(BdhConfig {
        norm: Norm::None,
        residual: Residual::N,
        position: Position::None,
        decay: Decay::Alibi,
        ..with(glia_trace, tiny_config(2, 32, 2, 8))
    });
    all
}

fn label(c: &BdhConfig) -> String {
    format!("trace {:?}, astrocyte {:?}, decay {}, variant {:?}", c.trace, c.astrocyte, c.decay.describe(), c.variant())
}

#[test]
fn recurrent_equals_parallel_with_every_key_site() {
    for (i, cfg) in configs().into_iter().enumerate() {
        let m = Model::Bdh(model(cfg.clone(), 1.0, i as u64));
        let toks = tokens(200, i as u64);
        let (sparse, dense) = (recurrent_vs_parallel(&m, &toks, false), recurrent_vs_parallel(&m, &toks, true));
        println!("{}: max rel diff sparse {sparse:.2e}, dense {dense:.2e}", label(&cfg));
        assert!(sparse < 5e-6 && dense < 5e-6, "{}: {sparse} {dense}", label(&cfg));
    }
}

#[test]
fn chunks_and_prefills_with_carried_traces_equal_one_pass() {
    for cfg in configs() {
        println!("{}", label(&cfg));
        chunks_equal_one_forward(&model(cfg.clone(), 1.0, 11));
        prefill_then_steps(cfg);
    }
}

#[test]
fn the_key_sites_backward_matches_finite_differences() {
    for cfg in configs() {
        println!("{}", label(&cfg));
        let (scale, eps) = if cfg.norm.is_layer() { (10.0, 1e-4) } else { (20.0, 1e-3) };
        crate::backward::check_gradients(Model::Bdh(model(cfg.clone(), 1.0, 11)), bdh::Mode::Eval, scale, eps);
        // (seed 12: seed 11's weights put a ReLU kink of y within the gate's step of 1e-2)
        backward_matches_finite_differences(&model(cfg, scale, 12), eps);
    }
}
