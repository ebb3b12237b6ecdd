//! Setting a run up: a new run from a preset and a model to start from, a resumed
//! run with overrides, and the overrides each refuses.

use std::path::Path;

use bdh::train::compare::continues;
use bdh::train::setup::{resume, NewRun};
use bdh::RunConfig;

use crate::common::{temp_dir, train_to_end};

fn new_run(overrides: &[&str]) -> NewRun {
    let mut all = vec!["training.block_size=32", "training.batch_size=2", "training.max_steps=2"];
    all.extend_from_slice(overrides);
    NewRun { preset: "tiny".into(), overrides: all.iter().map(|s| s.to_string()).collect(), ..NewRun::default() }
}

/// A finished two-step run in `dir`.
fn finished(dir: &Path) -> RunConfig {
    let run = new_run(&["model.n_embd=32", "training.eval_batches=1", "training.sample_tokens=8"]).setup().unwrap().run;
    train_to_end(&run, dir);
    run
}

#[test]
fn a_resumed_run_takes_overrides_but_not_of_its_model() {
    let tmp = temp_dir("setup-resume");
    let dir = tmp.path().join("run");
    let first = finished(&dir);
    let s = resume(&dir, &["training.max_steps=6".into()]).unwrap();
    let (run_dir, before) = s.resumed.unwrap();
    assert_eq!((run_dir.path(), &before), (dir.as_path(), &first));
    assert_eq!(s.run.changes(&before), ["training.max_steps: 2 → 6"]);
    let err = resume(&dir, &["model.n_layer=3".into()]).unwrap_err().to_string();
    assert!(err.starts_with("a run's model is fixed: --resume cannot change it (`--set model.n_layer=3`)"), "{err}");
    let err = resume(&tmp.path().join("nope"), &[]).unwrap_err().to_string();
    assert!(err.contains("is not a run directory to resume"), "{err}");
}

#[test]
fn a_run_started_from_a_model_takes_its_config() {
    let tmp = temp_dir("setup-init");
    let dir = tmp.path().join("run");
    let first = finished(&dir);
    let from = NewRun { init_from: Some(dir.clone()), ..new_run(&["training.max_steps=3"]) };
    let s = from.setup().unwrap();
    assert_eq!((&s.run.model, s.run.training.max_steps), (&first.model, 3));
    assert_eq!(s.run.training.init_from.as_deref(), Some(dir.as_path()));
    assert!(s.resumed.is_none());
    let refused = NewRun { init_from: Some(dir.clone()), ..new_run(&["model.n_layer=3"]) };
    let err = refused.setup().unwrap_err().to_string();
    assert!(err.starts_with("--init-from takes the model's config from the model"), "{err}");
    let missing = NewRun { init_from: Some(tmp.path().join("missing")), ..new_run(&[]) };
    let err = missing.setup().unwrap_err().to_string();
    assert!(err.starts_with("reading the config of the model to start from"), "{err}");
}

#[test]
fn a_comparison_continues_only_a_run_of_its_own_settings() {
    let tmp = temp_dir("setup-compare");
    let dir = tmp.path().join("run");
    assert!(!continues(&new_run(&[]).setup().unwrap().run, &dir).unwrap(), "nothing there yet");
    let first = finished(&dir);
    assert!(continues(&first, &dir).unwrap());
    let longer = RunConfig { training: bdh::TrainingConfig { max_steps: 4, ..first.training.clone() }, ..first };
    let err = continues(&longer, &dir).unwrap_err().to_string();
    assert!(err.contains("made with other settings (training.max_steps: 2 → 4"), "{err}");
}

/// `gpt-nanogpt` is nanoGPT's CPU recipe for tiny Shakespeare, and `bdh-nanogpt`
/// trains BDH of about its size on the same batches and schedule.
#[test]
fn the_nanogpt_presets_are_its_cpu_recipe_for_both_families() {
    let gpt = RunConfig::resolve("gpt-nanogpt", &[]).unwrap();
    let bdh = RunConfig::resolve("bdh-nanogpt", &[]).unwrap();
    let bdh::ModelConfig::Gpt(g) = &gpt.model else { panic!("gpt-nanogpt is a GPT") };
    assert_eq!((g.n_layer, g.n_head, g.n_embd, g.block_size, g.dropout, g.bias), (4, 4, 128, 64, 0.0, false));
    let t = &gpt.training;
    assert_eq!((t.batch_size, t.block_size, t.max_steps, t.warmup_steps, t.grad_accum), (12, 64, 2000, 100, 1));
    assert_eq!((t.lr, t.min_lr, t.beta1, t.beta2, t.weight_decay, t.grad_clip), (1e-3, 1e-4, 0.9, 0.99, 0.1, 1.0));
    let (b, mut same) = (&bdh.training, gpt.training.clone());
    same.lr = b.lr;
    same.min_lr = b.min_lr;
    assert_eq!(*b, same, "the BDH preset differs from the GPT's in its learning rate only");
    let (pg, pb) = (gpt.model.param_count() as f64, bdh.model.param_count() as f64);
    assert!((pb / pg - 1.0).abs() < 0.05, "parameters {pb} against {pg}");
}
