//! Training runs: determinism, exact resume, interruption, divergence, bad configs.

use std::sync::atomic::{AtomicBool, Ordering};

use bdh::train::config::PRESETS;
use bdh::train::learning_rate;
use bdh::train::run::{train, Event, RunOutcome};
use bdh::{ModelConfig, RunConfig};

use crate::common::temp_dir;

fn tiny(overrides: &[&str]) -> RunConfig {
    let mut all = vec![
        "model.n_embd=32",
        "training.block_size=48",
        "training.batch_size=2",
        "training.eval_batches=1",
        "model.dropout=0.1",
    ];
    all.extend_from_slice(overrides);
    RunConfig::resolve("tiny", &all.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

fn run(cfg: &RunConfig, dir: &std::path::Path, resume: bool) -> RunOutcome {
    let corpus = cfg.data.corpus(cfg.training.block_size).unwrap();
    train(cfg, &corpus, dir, resume, &AtomicBool::new(false), |_| {}).unwrap()
}

/// A fresh run stopped by the stop flag after step `step`.
fn run_until(cfg: &RunConfig, dir: &std::path::Path, step: usize) -> RunOutcome {
    let corpus = cfg.data.corpus(cfg.training.block_size).unwrap();
    let stop = AtomicBool::new(false);
    train(cfg, &corpus, dir, false, &stop, |e| {
        if matches!(e, Event::Step { step: s, .. } if s == step) {
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap()
}

#[test]
fn same_seed_gives_the_same_losses() {
    let cfg = tiny(&["training.max_steps=4", "training.eval_interval=2"]);
    let a = run(&cfg, temp_dir("det-a").path(), false);
    let b = run(&cfg, temp_dir("det-b").path(), false);
    assert_eq!(a.losses, b.losses);
    assert_eq!(a.losses.len(), 4);
    let other = run(
        &tiny(&["training.max_steps=4", "training.eval_interval=2", "training.seed=2"]),
        temp_dir("det-c").path(),
        false,
    );
    assert_ne!(a.losses, other.losses);
}

/// AdamW's β₁, β₂ and ε come from the config (defaults: PyTorch's), and each one
/// changes the training.
#[test]
fn the_optimizer_takes_its_betas_and_eps_from_the_config() {
    let base = ["training.max_steps=3", "training.eval_interval=3"];
    let t = tiny(&base).training;
    assert_eq!((t.beta1, t.beta2, t.eps), (0.9, 0.999, 1e-8));
    let losses = |extra: &str| run(&tiny(&[&base[..], &[extra]].concat()), temp_dir("betas").path(), false).losses;
    let default = losses("training.beta1=0.9");
    for other in ["training.beta1=0.8", "training.beta2=0.99", "training.eps=1e-3"] {
        assert_ne!(losses(other)[1..], default[1..], "{other} changes the steps after the first");
    }
    let bad = |o: &str| RunConfig::resolve("tiny", &[o.to_string()]).unwrap_err().to_string();
    for (o, want) in [
        ("training.beta1=1", "training.beta1 = 1 must be in [0, 1)"),
        ("training.beta2=-0.1", "training.beta2 = -0.1 must be in [0, 1)"),
        ("training.eps=0", "training.eps = 0 must be finite and > 0"),
        ("training.eps=nan", "training.eps = NaN must be finite and > 0"),
    ] {
        let m = bad(o);
        assert!(m.contains(want), "{o}: {m}");
    }
}

#[test]
fn resumed_run_continues_exactly() {
    let straight =
        run(&tiny(&["training.max_steps=6", "training.eval_interval=3"]), temp_dir("straight").path(), false);
    let tmp = temp_dir("resumed");
    let dir = tmp.path();
    // Same schedule (max_steps 6), stopped after step 3 by the stop flag.
    let cfg = tiny(&["training.max_steps=6", "training.eval_interval=3"]);
    let first = run_until(&cfg, dir, 3);
    assert!(first.interrupted);
    assert_eq!(first.step, 3);
    let second = run(&cfg, dir, true);
    let resumed: Vec<f32> = first.losses.iter().chain(&second.losses).copied().collect();
    println!("straight {:?}\nresumed  {resumed:?}", straight.losses);
    assert_eq!(resumed, straight.losses, "a resumed run must equal an uninterrupted one");
    // metrics.jsonl holds each step once.
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4, 5, 6]);
    assert!(dir.join("best/model.safetensors").exists() && dir.join("last/optimizer.safetensors").exists());
}

#[test]
fn a_fresh_run_refuses_a_directory_that_holds_one() {
    let tmp = temp_dir("occupied");
    let dir = tmp.path();
    let cfg = tiny(&["training.max_steps=1"]);
    run(&cfg, dir, false);
    let corpus = cfg.data.corpus(cfg.training.block_size).unwrap();
    let err = train(&cfg, &corpus, dir, false, &AtomicBool::new(false), |_| {}).unwrap_err().to_string();
    assert!(err.contains("already holds a run"), "{err}");
}

/// A run whose learning rate makes the loss blow up within a few steps, checkpointing
/// every `eval_interval` steps: the error it ends with.
fn diverge(dir: &std::path::Path, eval_interval: usize) -> bdh::Error {
    let interval = format!("training.eval_interval={eval_interval}");
    let cfg = tiny(&[
        "training.lr=1e30",
        "training.min_lr=1e30",
        "training.warmup_steps=0",
        "training.grad_clip=0.0",
        &interval,
        "training.max_steps=50",
    ]);
    let corpus = cfg.data.corpus(cfg.training.block_size).unwrap();
    train(&cfg, &corpus, dir, false, &AtomicBool::new(false), |_| {}).unwrap_err()
}

#[test]
fn divergence_stops_and_keeps_the_last_good_checkpoint() {
    let tmp = temp_dir("diverge");
    let dir = tmp.path();
    let err = diverge(dir, 1);
    let msg = err.to_string();
    println!("{msg}");
    // The loss turns NaN (Diverged, naming the step) or the weights do first
    // (NonFinite, caught before the evaluation's checkpoint); either way no
    // checkpoint holds anything but finite numbers.
    let last_good = match err {
        bdh::Error::Diverged { step, .. } => step - 1,
        bdh::Error::NonFinite { step, .. } => step - 1,
        _ => panic!("{msg}"),
    };
    if last_good > 0 {
        assert!(msg.contains("last good checkpoint"), "{msg}");
        let state = std::fs::read_to_string(dir.join("last/trainer.json")).unwrap();
        assert!(state.contains(&format!("\"step\": {last_good}")), "{state}");
        let model = bdh::io::checkpoint::load(&dir.join("last"), None).unwrap();
        assert!(model.params().data().iter().all(|v| v.is_finite()));
    } else {
        assert!(msg.contains("no checkpoint") && !dir.join("last").exists(), "{msg}");
    }
}

#[test]
fn overrides_are_checked() {
    let bad = |o: &str| RunConfig::resolve("tiny", &[o.to_string()]).unwrap_err().to_string();
    let m = bad("training.learning_rate=1");
    assert!(m.contains("unknown key"), "{m}");
    let m = bad("training.batch_size=big");
    assert!(m.contains("integer"), "{m}");
    let m = bad("nosuch.key=1");
    assert!(m.contains("no section"), "{m}");
    let m = bad("training.lr");
    assert!(m.contains("section.key=value"), "{m}");
    let m = bad("model.n_head=3");
    assert!(m.contains("divisible"), "{m}");
    assert!(RunConfig::resolve("huge", &[]).unwrap_err().to_string().contains("no preset"));
    let ok = RunConfig::resolve("small", &["training.lr=1".into(), "training.schedule=linear".into()]).unwrap();
    assert_eq!(ok.training.lr, 1.0);
}

#[test]
fn presets_parse_and_round_trip() {
    for (name, _) in PRESETS {
        let cfg = RunConfig::resolve(name, &[]).unwrap();
        let again = RunConfig::from_toml(&cfg.to_toml(), std::path::Path::new(name), &[]).unwrap();
        assert_eq!(cfg, again);
    }
    let ModelConfig::Bdh(s) = RunConfig::resolve("small", &[]).unwrap().model else { unreachable!("a BDH") };
    assert_eq!((s.n_layer, s.n_embd, s.n_head, s.mlp_internal_dim_multiplier), (4, 128, 4, 32));
    let p = RunConfig::resolve("paper", &[]).unwrap();
    let ModelConfig::Bdh(m) = &p.model else { unreachable!("a BDH") };
    assert_eq!((m.n_layer, m.n_embd, m.mlp_internal_dim_multiplier, p.training.block_size), (6, 256, 128, 512));
}

#[test]
fn schedule_warms_up_then_decays_to_min_lr() {
    let cfg = tiny(&["training.max_steps=100", "training.warmup_steps=10", "training.lr=1.0", "training.min_lr=0.1"])
        .training;
    assert!((learning_rate(&cfg, 0) - 0.1).abs() < 1e-12);
    assert!((learning_rate(&cfg, 9) - 1.0).abs() < 1e-12);
    assert!((learning_rate(&cfg, 55) - 0.55).abs() < 1e-9, "cosine midpoint");
    assert!((learning_rate(&cfg, 100) - 0.1).abs() < 1e-12);
    let lin = tiny(&[
        "training.max_steps=100",
        "training.warmup_steps=0",
        "training.lr=1.0",
        "training.min_lr=0.0",
        "training.schedule=linear",
    ])
    .training;
    assert!((learning_rate(&lin, 25) - 0.75).abs() < 1e-12);
}

#[test]
fn divergence_before_any_checkpoint_says_so() {
    let tmp = temp_dir("diverge-early");
    let dir = tmp.path();
    let msg = diverge(dir, 1000).to_string();
    assert!(msg.contains("no checkpoint had been written yet"), "{msg}");
    assert!(!dir.join("last").exists());
}

#[test]
fn a_run_carrying_its_state_resumes_exactly_and_detaching_changes_the_gradient() {
    let carry = ["training.max_steps=6", "training.eval_interval=3", "training.carry_state=true"];
    let straight = run(&tiny(&carry), temp_dir("carry-straight").path(), false);
    let plain = run(&tiny(&carry[..2]), temp_dir("carry-plain").path(), false);
    assert_ne!(straight.losses, plain.losses, "carrying the state changes what is trained");
    let tmp = temp_dir("carry-resumed");
    let dir = tmp.path();
    let cfg = tiny(&carry);
    let first = run_until(&cfg, dir, 3);
    assert!(dir.join("last/carry.safetensors").exists());
    let second = run(&cfg, dir, true);
    let resumed: Vec<f32> = first.losses.iter().chain(&second.losses).copied().collect();
    println!("carrying: straight {:?}\n          resumed  {resumed:?}", straight.losses);
    assert_eq!(resumed, straight.losses, "a resumed carrying run must equal an uninterrupted one");
    let mut detach = carry.to_vec();
    detach.push("training.detach_state=true");
    let detached = run(&tiny(&detach), temp_dir("carry-detached").path(), false);
    assert_eq!(detached.losses[..1], straight.losses[..1], "the same first forward");
    assert_ne!(detached.losses, straight.losses, "another gradient from the second step on");
    for (bad, why) in [
        (&["training.detach_state=true"][..], "needs training.carry_state"),
        (&["training.carry_state=true", "training.grad_accum=2"][..], "grad_accum must be 1"),
    ] {
        let all: Vec<String> = ["model.n_embd=32"].iter().chain(bad).map(|s| s.to_string()).collect();
        let err = RunConfig::resolve("tiny", &all).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    let err = RunConfig::resolve("gpt-tiny", &["training.carry_state=true".to_string()]).unwrap_err().to_string();
    assert!(err.contains("has none"), "{err}");
}

#[test]
fn a_run_stopped_before_its_first_checkpoint_resumes_by_starting_again() {
    let cfg = tiny(&["training.max_steps=3", "training.eval_interval=3"]);
    let straight = run(&cfg, temp_dir("restart-straight").path(), false);
    // What a run killed before its first evaluation leaves: its config, no last/.
    let tmp = temp_dir("restart");
    std::fs::write(tmp.path().join("config.toml"), cfg.to_toml()).unwrap();
    // Its metrics: a record of a step it runs again, and a line a kill cut short.
    let log = "{\"step\": 1, \"loss\": 9.0, \"lr\": 0.1}\n{\"step\": 2, \"lo";
    std::fs::write(tmp.path().join("metrics.jsonl"), log).unwrap();
    let corpus = cfg.data.corpus(cfg.training.block_size).unwrap();
    let mut restarted = None;
    let resumed = train(&cfg, &corpus, tmp.path(), true, &AtomicBool::new(false), |e| {
        if let Event::Start { restarted: r, .. } = e {
            restarted = Some(r);
        }
    })
    .unwrap();
    assert_eq!(restarted, Some(true), "it says it starts again");
    assert_eq!(resumed.losses, straight.losses);
    let m = bdh::io::run_dir::RunDir::open(tmp.path()).unwrap().metrics().unwrap();
    assert_eq!((m.steps.len(), m.skipped_lines.clone()), (3, vec![1]), "the cut line is kept, to be reported");
    // Once it has a checkpoint, a resume continues it.
    let again = run(&tiny(&["training.max_steps=4", "training.eval_interval=3"]), tmp.path(), true);
    assert_eq!(again.losses.len(), 1);
}

#[test]
fn bf16_on_the_cpu_is_refused_before_the_run_directory_is_made_and_f32_configs_say_nothing_of_it() {
    let tmp = temp_dir("bf16-cpu");
    let dir = tmp.path().join("run");
    let cfg = tiny(&["training.precision=bf16"]);
    assert_eq!(cfg.training.precision, bdh::Precision::Bf16);
    let corpus = cfg.data.corpus(cfg.training.block_size).unwrap();
    let err = train(&cfg, &corpus, &dir, false, &AtomicBool::new(false), |_| {}).unwrap_err().to_string();
    assert!(err.contains("trains on a GPU") && err.contains("training.precision=f32"), "{err}");
    assert!(!dir.exists());
    // A config in f32 (the default) is written as before: no precision field.
    assert!(!tiny(&[]).to_toml().contains("precision"));
    assert!(cfg.to_toml().contains("precision = \"bf16\""));
    // A resume that switches precision says so, either way.
    let to_bf16 = cfg.changes(&tiny(&[]));
    assert!(to_bf16.contains(&"training.precision: \"f32\" → \"bf16\"".to_string()), "{to_bf16:?}");
    let to_f32 = tiny(&[]).changes(&cfg);
    assert_eq!(to_f32, vec!["training.precision: \"bf16\" → \"f32\"".to_string()]);
}
