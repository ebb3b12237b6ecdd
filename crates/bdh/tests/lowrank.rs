//! Low-rank starts and the weights' movement from the start (`training.init`,
//! `training.keep_every`): the init's forms and checks, its rank and scale, and a
//! run's evaluations measuring each layer matrix against its kept start, resumed too.

use std::sync::atomic::{AtomicBool, Ordering};

use bdh::microscope::weights::{singular_values, weight_change};
use bdh::model::bdh::params::Init;
use bdh::train::run::{train, Event};
use bdh::{Model, RunConfig};

use crate::common::{bdh_model, temp_dir, tiny_config};

fn config(extra: &[&str]) -> Result<RunConfig, String> {
    crate::common::tiny_run(extra)
}

#[test]
fn a_low_rank_start_has_its_rank_and_bdh_pys_scale() {
    let cfg = tiny_config(2, 32, 2, 8); // D 32, N 128
    let Model::Bdh(plain) = bdh_model(cfg.clone(), 7) else { unreachable!("a BDH") };
    let mut p = plain.params.clone();
    Init::LowRank(3).apply(&mut p, &cfg, 7);
    for (name, rows, cols) in [("encoder", 32, 128), ("encoder_v", 32, 128), ("decoder", 128, 32)] {
        let w = p.get(name).unwrap();
        for head in w.chunks_exact(rows * cols) {
            let s = singular_values(head, rows, cols);
            assert!(s[2] > 1e-3 && s[3] < 1e-5 * s[0], "{name}: rank 3, singular values {:?}", &s[..5]);
        }
        let std = (w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        assert!((std - 0.02).abs() < 0.004, "{name}: entries of std {std}");
    }
    for name in ["embed.weight", "lm_head"] {
        assert_eq!(p.get(name), plain.params.get(name), "{name} keeps bdh.py's draw");
    }
}

#[test]
fn the_init_is_written_and_checked() {
    assert_eq!(config(&["training.init=lowrank:4"]).unwrap().training.init, Init::LowRank(4));
    assert_eq!(config(&[]).unwrap().training.init, Init::Normal);
    for (set, want) in [
        ("training.init=lowrank:0", "with a rank r ≥ 1"),
        ("training.init=lowrank:x", "expected \"normal\" or \"lowrank:r\""),
        ("training.init=dense", "expected \"normal\" or \"lowrank:r\""),
        ("training.init=lowrank:33", "of rank at most 32"),
    ] {
        let err = config(&[set]).unwrap_err();
        assert!(err.contains(want), "{set}: {err}");
    }
    let gpt = RunConfig::resolve("gpt-tiny", &["training.init=lowrank:2".to_string()]).unwrap_err().to_string();
    assert!(gpt.contains("this is a GPT"), "{gpt}");
}

#[test]
fn a_run_that_keeps_models_measures_its_weights_from_the_start_and_resumes_exactly() {
    let c = config(&[
        "training.init=lowrank:2",
        "training.keep_every=5",
        "training.max_steps=10",
        "training.eval_interval=5",
    ])
    .unwrap();
    let corpus = c.data.corpus(c.training.block_size).unwrap();
    let records = |dir: &std::path::Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("weights").is_some())
            .collect()
    };
    let straight = temp_dir("weights-straight");
    train(&c, &corpus, straight.path(), false, &AtomicBool::new(false), |_| {}).unwrap();
    // the start is kept, and the evaluations compare with it
    let start = bdh::io::checkpoint::load(&straight.path().join("steps/step-000000"), None);
    let Ok(Model::Bdh(start)) = start else { panic!("step 0 kept: {start:?}") };
    let Model::Bdh(end) = bdh::io::checkpoint::load(&straight.path().join("last"), None).unwrap() else { panic!() };
    let measured = weight_change(&start, &end).unwrap();
    let logged = records(straight.path());
    assert_eq!(logged.len(), 2, "an evaluation at steps 5 and 10");
    let last: Vec<bdh::microscope::weights::WeightChange> =
        serde_json::from_value(logged[1]["weights"].clone()).unwrap();
    // (as logged: JSON's shortest decimals, read back within an ulp)
    let near = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs();
    for (l, m) in last.iter().zip(&measured) {
        assert!(l.name == m.name && near(l.relative_change, m.relative_change), "{l:?} {m:?}");
        assert!(near(l.effective_rank, m.effective_rank) && near(l.start_rank, m.start_rank), "{l:?} {m:?}");
    }
    assert!(last.iter().all(|w| w.relative_change > 0.0 && w.start_rank < 2.01 && w.effective_rank > w.start_rank));
    // stopped at step 7 and resumed: the start comes back from its kept copy
    let resumed = temp_dir("weights-resumed");
    let stop = AtomicBool::new(false);
    train(&c, &corpus, resumed.path(), false, &stop, |e| {
        if matches!(e, Event::Step { step: 7, .. }) {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    train(&c, &corpus, resumed.path(), true, &AtomicBool::new(false), |_| {}).unwrap();
    let again = records(resumed.path());
    assert_eq!(again.last().unwrap()["weights"], logged[1]["weights"]);
}
