//! The site seam: a new mechanism is one module. `Saturation` below — the gate's
//! output squashed, z ← c·tanh(z / c), c depending on the head and position — is
//! written once (its map and its derivative) and the parallel forward, the
//! backward (with dropout too), the recurrent step, the step of many streams and a
//! carried state all run it.

use std::sync::Arc;

use bdh::infer::{Prepared, State};
use bdh::model::bdh::{At, BdhConfig, Mechanism, Site, NO_EDITS};
use bdh::{forward, Activations, Mode, Model};

use crate::backward::check_gradients;
use crate::carry::chunks_equal_one_forward;
use crate::common::{bdh_model, max_rel_diff, tiny_config, tokens};
use crate::recurrent::recurrent_vs_parallel;

/// z ← c·tanh(z / c) at the gate x ⊙ y, with c = base·(1 + head + pos mod 3) (so
/// a path that gives the mechanism the wrong head or position shows): the whole
/// mechanism.
#[derive(Debug)]
struct Saturation {
    base: f32,
}

impl Saturation {
    fn c(&self, at: At) -> f32 {
        self.base * (1 + at.head + at.pos % 3) as f32
    }
}

impl Mechanism for Saturation {
    fn name(&self) -> &str {
        "saturation"
    }
    fn site(&self) -> Site {
        Site::Xy
    }
    fn forward(&self, act: &mut [f32], at: At) {
        let c = self.c(at);
        act.iter_mut().for_each(|z| *z = c * (*z / c).tanh());
    }
    fn backward(&self, grad: &mut [f32], input: &[f32], at: At) {
        let c = self.c(at);
        grad.iter_mut().zip(input).for_each(|(g, &z)| *g *= 1.0 - (z / c).tanh().powi(2));
    }
}

/// The tiny test model with weights scaled by `scale`, with or without saturation.
fn model(cfg: BdhConfig, scale: f32, saturate: bool) -> Model {
    let Model::Bdh(mut m) = bdh_model(cfg, 5) else { unreachable!("a BDH") };
    m.params.data_mut().iter_mut().for_each(|x| *x *= scale);
    if saturate {
        m.mechanisms.push(Arc::new(Saturation { base: 0.02 })).unwrap();
    }
    Model::Bdh(m)
}

#[test]
fn a_mechanism_changes_the_model_and_every_path_agrees() {
    let cfg = tiny_config(2, 32, 2, 8);
    let toks = tokens(64, 9);
    let logits = |m: &Model| {
        let mut acts = Activations::new(m, 1, toks.len()).unwrap();
        forward(m, &toks, &mut acts, Mode::Eval).unwrap();
        acts.logits().to_vec()
    };
    let (plain, saturated) = (model(cfg.clone(), 3.0, false), model(cfg, 3.0, true));
    let changed = max_rel_diff(&logits(&saturated), &logits(&plain));
    println!("saturation moves the logits by {changed:.2e} (relative)");
    assert!(changed > 1e-3, "the mechanism did nothing");
    // Recurrent == parallel at every position, sparse and dense steps.
    for dense in [false, true] {
        let d = recurrent_vs_parallel(&saturated, &toks, dense);
        println!("recurrent vs parallel with saturation (dense {dense}): max rel diff {d:.2e}");
        assert!(d < 1e-4, "{d}");
    }
    // Three streams at different positions stepped together equal each alone.
    let prepared = Prepared::new(saturated).unwrap();
    let (mut together, mut alone) = (prepared.scratch(), prepared.scratch());
    let mut states: Vec<State> = (0..3).map(|_| prepared.state().unwrap()).collect();
    for (k, s) in states.iter_mut().enumerate() {
        prepared.prefill(s, &mut alone, &toks[..5 + 4 * k], &NO_EDITS).unwrap();
    }
    let mut solo = states.clone();
    for step in 0..12 {
        let next: Vec<u32> = (0..3).map(|k| toks[20 + step + k]).collect();
        let mut rows: Vec<&mut State> = states.iter_mut().collect();
        let batch = prepared.step(&mut rows, &mut together, &next, &NO_EDITS).unwrap().to_vec();
        for (k, s) in solo.iter_mut().enumerate() {
            let one = prepared.step(&mut [s], &mut alone, &[next[k]], &NO_EDITS).unwrap();
            assert_eq!(&batch[k * 256..(k + 1) * 256], one, "stream {k} at step {step}");
        }
    }
}

#[test]
fn a_mechanism_runs_in_the_backward_and_with_a_carried_state() {
    check_gradients(model(tiny_config(2, 16, 2, 4), 10.0, true), Mode::Eval, 1.0, 1e-4);
    // With dropout, which acts after the mechanism (masks of a seed whose central
    // differences cross no ReLU kink).
    let dropping = BdhConfig { dropout: 0.2, ..tiny_config(2, 16, 2, 4) };
    check_gradients(model(dropping, 10.0, true), Mode::Train { seed: 5 }, 1.0, 1e-4);
    let Model::Bdh(m) = model(tiny_config(2, 16, 2, 4), 3.0, true) else { unreachable!("a BDH") };
    chunks_equal_one_forward(&m);
}

#[test]
fn a_site_takes_one_mechanism_where_it_can() {
    #[derive(Debug)]
    struct AtX;
    impl Mechanism for AtX {
        fn name(&self) -> &str {
            "at-x"
        }
        fn site(&self) -> Site {
            Site::X
        }
        fn forward(&self, _: &mut [f32], _: At) {}
        fn backward(&self, _: &mut [f32], _: &[f32], _: At) {}
    }
    let Model::Bdh(mut m) = model(tiny_config(1, 16, 2, 4), 1.0, true) else { unreachable!("a BDH") };
    let err = m.mechanisms.push(Arc::new(Saturation { base: 1.0 })).unwrap_err().to_string();
    assert!(err.contains("already has saturation"), "{err}");
    let err = m.mechanisms.push(Arc::new(AtX)).unwrap_err().to_string();
    assert!(err.contains("X site takes no mechanisms"), "{err}");
    // No config field names it yet, so a checkpoint would lose it: saving is refused.
    let tmp = crate::common::temp_dir("mechanism-save");
    let err = bdh::io::checkpoint::save(&Model::Bdh(m), tmp.path()).unwrap_err().to_string();
    assert!(err.contains("saturation") && err.contains("no config field"), "{err}");
}
