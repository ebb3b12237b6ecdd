//! Modular sparse connectivity and its Hebbian rewiring (`model.connectivity`,
//! `training.rewire`): the masks' density and modules, dropped weights 0 from the start
//! and through training, a rewiring that keeps the count and grows where activity
//! correlates most, exact resume, and bad values refused by name.

use std::sync::atomic::AtomicBool;

use bdh::model::bdh::connectivity::{densities, MASK_NAMES};
use bdh::model::bdh::{forward, Activations, BdhConfig, Connectivity, Pass};
use bdh::train::rewire::{coactivity, rewire};
use bdh::train::run::train;
use bdh::train::AdamW;
use bdh::{Model, RunConfig};

use crate::common::{bdh_model, temp_dir, tiny_config, tokens};

fn sparse(modules: usize, density: f32) -> BdhConfig {
    BdhConfig { connectivity: Some(Connectivity { modules, density }), ..tiny_config(2, 32, 2, 4) }
    // D 32, N 64
}

#[test]
fn masks_keep_their_modules_at_their_density_and_drop_their_weights() {
    for (modules, density) in [(4, 0.25), (4, 0.5), (2, 0.1), (1, 1.0)] {
        let Model::Bdh(m) = bdh_model(sparse(modules, density), 3) else { unreachable!("a BDH") };
        let (kept, binary) = densities(&m.params).unwrap();
        assert!(binary);
        for k in kept {
            assert!((k - density as f64).abs() < 0.02, "M {modules} p {density}: kept {k}");
        }
        // encoder (H, D, N): the weights within a module, all kept at p ≥ 1/M, only they below
        let mask = m.params.get(MASK_NAMES[0]).unwrap();
        let (d, n) = (32, 64);
        let within = |i: usize| (i % (d * n)) / n * modules / d == (i % n) * modules / n;
        let inside = mask.iter().enumerate().filter(|(i, _)| within(*i));
        let outside = mask.iter().enumerate().filter(|(i, _)| !within(*i));
        if density >= 1.0 / modules as f32 {
            assert!(inside.clone().all(|(_, &x)| x == 1.0), "M {modules} p {density}");
        } else {
            assert!(outside.clone().all(|(_, &x)| x == 0.0), "M {modules} p {density}");
        }
        let w = m.params.get("encoder").unwrap();
        assert!(w.iter().zip(mask).all(|(&w, &m)| m == 1.0 || w == 0.0), "dropped weights are 0");
    }
}

#[test]
fn a_rewiring_keeps_the_count_and_grows_where_activity_correlates_most() {
    let Model::Bdh(mut m) = bdh_model(sparse(4, 0.25), 5) else { unreachable!("a BDH") };
    let mut acts = Activations::new(&m, 2, 16).unwrap();
    forward(&m, &tokens(32, 1), &mut acts, Pass::default()).unwrap();
    let together = coactivity(&m, &acts);
    let before: Vec<Vec<f32>> = MASK_NAMES.iter().map(|n| m.params.get(n).unwrap().to_vec()).collect();
    let mut opt = AdamW::new(Default::default(), &m.params);
    opt.m.data_mut().fill(1.0);
    let replaced = rewire(&mut m, &acts, &mut opt, 0.1, &|_| Ok(())).unwrap();
    for (k, name) in MASK_NAMES.iter().enumerate() {
        let after = m.params.get(name).unwrap();
        let count = |mask: &[f32]| mask.iter().filter(|&&x| x == 1.0).count();
        assert_eq!(count(after), count(&before[k]), "{name}: as many kept");
        assert_eq!(replaced[k], (0.1 * count(&before[k]) as f64).round() as usize);
        let grown: Vec<usize> = (0..after.len()).filter(|&i| after[i] == 1.0 && before[k][i] == 0.0).collect();
        assert_eq!(grown.len(), replaced[k]);
        // no position left free is more co-active than the least co-active grown one
        let least = grown.iter().map(|&i| together[k][i].abs()).fold(f32::MAX, f32::min);
        let still_free = |i: usize| after[i] == 0.0 && before[k][i] == 0.0;
        let free_most = (0..after.len()).filter(|&i| still_free(i)).map(|i| together[k][i].abs()).fold(0.0, f32::max);
        assert!(least >= free_most, "{name}: grew {least}, left {free_most}");
        // a grown weight starts at 0 with fresh moments
        let range = m.params.slot(["encoder", "encoder_v", "decoder"][k]).unwrap().range.clone();
        assert!(grown.iter().all(|&i| m.params.data()[range.start + i] == 0.0 && opt.m.data()[range.start + i] == 0.0));
    }
}

fn config(extra: &[&str]) -> Result<RunConfig, String> {
    crate::common::tiny_run(extra)
}

#[test]
fn a_rewiring_run_keeps_dropped_weights_at_zero_and_resumes_exactly() {
    let sets = [
        "model.connectivity={modules=4, density=0.3}",
        "training.rewire={every=2, fraction=0.2}",
        "training.max_steps=8",
        "training.eval_interval=4",
    ];
    let c = config(&sets).unwrap();
    let corpus = c.data.corpus(48).unwrap();
    let straight = temp_dir("rewire-straight");
    let whole = train(&c, &corpus, straight.path(), false, &AtomicBool::new(false), |_| {}).unwrap();
    let load = |dir: &std::path::Path| bdh::io::checkpoint::load(&dir.join("last"), None).unwrap();
    let Model::Bdh(end) = load(straight.path()) else { unreachable!("a BDH") };
    for (mask, weight) in MASK_NAMES.iter().zip(["encoder", "encoder_v", "decoder"]) {
        let (m, w) = (end.params.get(mask).unwrap(), end.params.get(weight).unwrap());
        assert!(w.iter().zip(m).all(|(&w, &m)| m == 1.0 || w == 0.0), "{weight}: a dropped weight moved");
        assert!(w.iter().zip(m).filter(|(_, &m)| m == 1.0).any(|(&w, _)| w != 0.0));
    }
    let Model::Bdh(fresh) = Model::new(&c.model, c.training.seed).unwrap() else { unreachable!("a BDH") };
    assert_ne!(fresh.params.get(MASK_NAMES[0]), end.params.get(MASK_NAMES[0]), "the masks moved");
    let resumed = temp_dir("rewire-resumed");
    let losses = crate::common::stopped_and_resumed(&c, &corpus, resumed.path(), 5);
    assert_eq!(losses, whole.losses);
    assert_eq!(load(resumed.path()).params().data(), end.params.data());
}

#[test]
fn bad_connectivities_are_refused_by_name() {
    for (set, want) in [
        ("model.connectivity={modules=0, density=0.5}", "connectivity.modules = 0 must be in 1..=32"),
        ("model.connectivity={modules=64, density=0.5}", "connectivity.modules = 64 must be in 1..=32"),
        ("model.connectivity={modules=2, density=0.0}", "connectivity.density = 0 must be in (0, 1]"),
        ("model.connectivity={modules=2, density=1.5}", "connectivity.density = 1.5 must be in (0, 1]"),
        ("training.rewire={every=2, fraction=0.1}", "set model.connectivity too"),
    ] {
        let err = config(&[set]).unwrap_err();
        assert!(err.contains(want), "{set}: {err}");
    }
    for (set, want) in [
        ("training.rewire={every=0, fraction=0.1}", "training.rewire.every must be ≥ 1"),
        ("training.rewire={every=2, fraction=1.0}", "training.rewire.fraction = 1 must be in (0, 1)"),
    ] {
        let err = config(&["model.connectivity={modules=2, density=0.5}", set]).unwrap_err();
        assert!(err.contains(want), "{set}: {err}");
    }
    // a model whose masks are not 0 or 1
    let Model::Bdh(m) = bdh_model(sparse(2, 0.5), 1) else { unreachable!("a BDH") };
    let mut params = m.params.clone();
    params.get_mut(MASK_NAMES[1]).unwrap()[0] = 0.5;
    let err = match bdh::model::bdh::Bdh::from_parts(m.config.clone(), params, m.freqs.clone()) {
        Ok(_) => panic!("masks of 0.5 accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("other than 0 and 1"), "{err}");
}
