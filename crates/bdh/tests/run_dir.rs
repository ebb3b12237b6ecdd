//! Run directories: what a run leaves where, and clear errors for a directory that
//! holds no run or no checkpoint yet.

use std::path::Path;

use bdh::io::checkpoint;
use bdh::io::run_dir::{Checkpoint, RunDir};
use bdh::RunConfig;

use crate::common::{temp_dir, train_to_end};

/// A run of a few steps of a small model into `dir`, keeping the model every two steps.
fn short_run(dir: &Path) -> RunConfig {
    let sets = [
        "model.n_embd=32",
        "training.block_size=32",
        "training.batch_size=2",
        "training.eval_batches=1",
        "training.max_steps=4",
        "training.eval_interval=2",
        "training.keep_every=2",
        "training.sample_tokens=8",
    ];
    let run = RunConfig::resolve("tiny", &sets.map(String::from)).unwrap();
    train_to_end(&run, dir);
    run
}

#[test]
fn a_run_directory_names_its_config_checkpoints_kept_steps_and_metrics() {
    let tmp = temp_dir("run-dir");
    let dir = tmp.path().join("run");
    let config = short_run(&dir);
    let run = RunDir::open(&dir).unwrap();
    assert_eq!(run.path(), dir);
    assert_eq!(run.config(&[]).unwrap(), config);
    let lr = run.config(&["training.lr=0.5".into()]).unwrap();
    assert_eq!(lr.training.lr, 0.5);
    assert!(run.has(Checkpoint::Best) && run.has(Checkpoint::Last) && run.has(Checkpoint::Step(2)));
    assert!(!run.has(Checkpoint::Step(3)));
    assert_eq!(run.model().unwrap(), run.checkpoint_dir(Checkpoint::Best));
    assert_eq!(checkpoint::model_path(&dir).unwrap(), run.checkpoint_dir(Checkpoint::Best));
    checkpoint::load(&run.model().unwrap(), None).unwrap();
    let kept: Vec<usize> = run.kept_steps().unwrap().into_iter().map(|(step, _)| step).collect();
    assert_eq!(kept, [0, 2, 4], "the start is kept too");
    assert_eq!(run.kept_steps().unwrap()[1].1, run.checkpoint_dir(Checkpoint::Step(2)));
    assert_eq!(run.tokenizer(), None, "a run read as bytes keeps no tokenizer");
    let m = run.metrics().unwrap();
    let steps: Vec<f64> = m.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!((m.evals.len(), m.samples.len(), m.skipped), (2, 1, 0));
    assert!(run.metrics_path().is_file());
    // A model named by its run, a checkpoint of it or a weights file in one: the same run.
    let best = run.checkpoint_dir(Checkpoint::Best);
    for named in [dir.clone(), best.clone(), best.join("model.safetensors")] {
        assert_eq!(RunDir::of_model(&named), Some(run.clone()), "{}", named.display());
    }
}

#[test]
fn a_directory_without_a_run_config_is_not_a_run() {
    let tmp = temp_dir("not-a-run");
    let err = RunDir::open(tmp.path()).unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains(&tmp.path().display().to_string()) && err.contains("is not a run directory"), "{err}");
    let err = RunDir::open_to_resume(&tmp.path().join("missing")).unwrap_err().to_string();
    assert!(err.contains("is not a run directory to resume"), "{err}");
    assert_eq!(RunDir::of_model(tmp.path()), None);
    // Not a run: a path a user gave names the model itself.
    assert_eq!(checkpoint::model_path(tmp.path()).unwrap(), tmp.path());
}

#[test]
fn a_run_with_no_checkpoint_yet_says_so() {
    let tmp = temp_dir("no-checkpoint");
    let dir = tmp.path();
    std::fs::write(dir.join("config.toml"), RunConfig::resolve("tiny", &[]).unwrap().to_toml()).unwrap();
    let run = RunDir::open(dir).unwrap();
    assert!(!run.has(Checkpoint::Best) && !run.has(Checkpoint::Last));
    let err = run.model().unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("no checkpoint yet") && err.contains(&dir.display().to_string()), "{err}");
    let err = checkpoint::model_path(dir).unwrap_err().to_string();
    assert!(err.contains("no checkpoint yet"), "{err}");
    assert!(run.kept_steps().unwrap().is_empty(), "no steps/ folder: no kept models");
    let err = run.metrics().unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl"), "{err}");
    // A new run may start there; once it has a checkpoint, another may not.
    short_run(dir);
    let err = RunDir::create(dir).unwrap_err().to_string();
    assert!(err.contains("already holds a run"), "{err}");
}

#[test]
fn unreadable_and_overlong_metrics_lines_are_counted_not_held() {
    let tmp = temp_dir("metrics");
    let dir = tmp.path();
    std::fs::write(dir.join("config.toml"), RunConfig::resolve("tiny", &[]).unwrap().to_toml()).unwrap();
    let long = format!("{{\"step\": 1, \"sample\": \"{}\"}}", "a".repeat(3 << 20));
    let lines = [
        r#"{"step": 1, "loss": 5.5, "lr": 0.001, "tokens_per_second": 100}"#,
        "{not json",
        &long,
        r#"{"step": 2, "val_loss": 1.0}"#,
        r#"{"what": 3}"#,
        r#"{"step": 2, "sample_prompt": "a", "sample": "b"}"#,
    ];
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
    let m = RunDir::open(dir).unwrap().metrics().unwrap();
    assert_eq!((m.steps.len(), m.evals.len(), m.samples.len(), m.skipped), (1, 1, 1, 3));
    assert_eq!(m.skipped_lines, [2, 3, 5], "which lines were skipped, to say so");
    assert_eq!(m.evals[0].bits_per_byte, 1.0 / std::f64::consts::LN_2, "bits per byte from the loss");
    assert_eq!((m.samples[0].prompt.as_str(), m.samples[0].text.as_str()), ("a", "b"));
}

#[test]
fn an_endless_metrics_log_is_read_to_a_bound_not_forever() {
    if !Path::new("/dev/zero").exists() {
        crate::skip::skipped("an endless metrics log", "no /dev/zero here");
        return;
    }
    let tmp = temp_dir("metrics-endless");
    let dir = tmp.path();
    std::fs::write(dir.join("config.toml"), RunConfig::resolve("tiny", &[]).unwrap().to_toml()).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("metrics.jsonl")).unwrap();
    let m = RunDir::open(dir).unwrap().metrics().unwrap();
    assert_eq!((m.steps.len(), m.skipped), (0, 1), "one endless line, skipped");
    // A run config that never ends is refused on the read.
    std::fs::remove_file(dir.join("config.toml")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("config.toml")).unwrap();
    let err = RunDir::open(dir).and_then(|r| r.config_text()).unwrap_err().to_string();
    assert!(err.contains("config.toml"), "{err}");
}

#[test]
fn a_run_lock_names_its_holder_and_is_let_go_of_when_dropped() {
    let tmp = temp_dir("lock");
    let run = RunDir::create(tmp.path()).unwrap();
    let held = run.lock().unwrap();
    assert_eq!(held.took_over(), None);
    let err = run.lock().unwrap_err().to_string();
    assert!(err.contains(&format!("in use by process {}", std::process::id())), "{err}");
    drop(held);
    let again = run.lock().unwrap();
    drop(again);
    assert!(!tmp.path().join(".bdh-lock").exists(), "let go of: no lock file left");
}

#[test]
fn a_stale_run_lock_is_taken_over_and_a_foreign_file_is_not() {
    let tmp = temp_dir("stale-lock");
    let run = RunDir::create(tmp.path()).unwrap();
    let lock = tmp.path().join(".bdh-lock");
    // No process has this PID (above Linux's largest, 2^22).
    std::fs::write(&lock, "bdh lock\npid 4999999\nstarted 1\n").unwrap();
    let taken = run.lock().unwrap();
    assert_eq!(taken.took_over(), Some(4_999_999));
    assert!(std::fs::read_to_string(&lock).unwrap().contains(&format!("pid {}", std::process::id())));
    drop(taken);
    // A file of that name that is not a lock of ours is neither taken over nor removed.
    std::fs::write(&lock, "my notes").unwrap();
    let err = run.lock().unwrap_err().to_string();
    assert!(err.contains("not a lock this program wrote"), "{err}");
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), "my notes");
}

#[test]
fn a_lock_of_a_process_that_ended_unreaped_is_taken_over() {
    if !Path::new("/proc/self").exists() {
        crate::skip::skipped("a lock of an unreaped process", "no /proc here");
        return;
    }
    // A child that has ended and is not waited for stays a zombie (the ranks of a
    // killed mpirun job do): it runs no more, so its lock is stale.
    let child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z") {
        assert!(t0.elapsed().as_secs() < 10, "the child did not end");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let tmp = temp_dir("zombie-lock");
    let run = RunDir::create(tmp.path()).unwrap();
    std::fs::write(tmp.path().join(".bdh-lock"), format!("bdh lock\npid {pid}\nstarted 1\n")).unwrap();
    assert_eq!(run.lock().unwrap().took_over(), Some(pid));
    drop(child);
}
