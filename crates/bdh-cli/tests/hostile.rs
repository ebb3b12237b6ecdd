//! The `bdh` binary given hostile inputs: endless files, absurd numbers. Each must
//! end soon with a clear error and a non-zero status, never a panic or an abort.

use std::time::{Duration, Instant};

mod common;
use common::{bdh, golden, temp, text};

/// Runs `bdh` with `args`, expecting a clear error with `status` that says `want`,
/// within a few seconds.
fn refused(args: &[&str], status: i32, want: &str) {
    let start = Instant::now();
    let o = bdh(args);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(status), "{args:?}: {out}");
    assert!(out.contains(want), "{args:?}: wanted {want:?} in {out}");
    assert!(!out.contains("panicked"), "{args:?}: {out}");
    assert!(start.elapsed() < Duration::from_secs(20), "{args:?} took {:?}", start.elapsed());
}

/// `/dev/zero`, if this system has one (it is endless: a size from `stat` says 0).
fn dev_zero() -> Option<&'static str> {
    let found = std::path::Path::new("/dev/zero").exists();
    if !found {
        println!("no /dev/zero here: the endless-file cases are skipped");
    }
    found.then_some("/dev/zero")
}

#[test]
fn an_endless_file_given_for_any_flag_is_refused_on_the_read() {
    let Some(zero) = dev_zero() else { return };
    let tiny = golden("ref-tiny");
    let model = ["--model", tiny.as_str()];
    let generate =
        |more: &[&'static str]| -> Vec<&str> { [&["generate"][..], &model, &["--max-tokens", "1"], more].concat() };
    refused(&generate(&["--prompt", "a", "--tokenizer", zero]), 2, "/dev/zero");
    refused(&generate(&["--prompt", "a", "--load-state", zero]), 2, "/dev/zero");
    refused(&generate(&["--prompt-file", zero]), 2, "/dev/zero");
    let config = golden("ref-tiny/model.safetensors");
    refused(&["generate", "--model", &config, "--config", zero, "--prompt", "a"], 2, "/dev/zero");
    refused(&["verify", "--model", &tiny, "--golden", zero], 2, "/dev/zero");
    let tmp = temp("endless-preset");
    let preset = tmp.path().join("endless.toml");
    std::os::unix::fs::symlink(zero, &preset).unwrap();
    let out = tmp.path().join("out").display().to_string();
    refused(&["train", "--preset", &preset.display().to_string(), "--out", &out, "--quiet"], 2, "endless.toml");
}

#[test]
fn eval_of_a_run_whose_config_cannot_be_read_is_an_error() {
    let Some(zero) = dev_zero() else { return };
    let tmp = temp("endless-config");
    let run = tmp.path();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden(&format!("ref-tiny/{f}")), run.join(f)).unwrap();
    }
    std::os::unix::fs::symlink(zero, run.join("config.toml")).unwrap();
    refused(&["eval", "--model", &run.display().to_string(), "--batches", "1"], 2, "config.toml");
}

#[test]
fn a_malformed_tokenizer_is_a_clean_error_without_a_panic_message() {
    let tmp = temp("malformed-tokenizer");
    let p = |name: &str| tmp.path().join(name).display().to_string();
    let corpus: String = (0..200).map(|i| format!("the dragon keeps its map {}\n", i % 7)).collect();
    std::fs::write(p("text.txt"), corpus).unwrap();
    let o = bdh(&["tokenizer", "train", "--data", &p("text.txt"), "--vocab-size", "300", "--out", &p("tok.json")]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // A decoder with a number for a key, which the tokenizers library panics on.
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p("tok.json")).unwrap()).unwrap();
    let bad = json.to_string().replacen(r#""decoder":{"#, r#""decoder":{7:1,"#, 1);
    std::fs::write(p("bad.json"), bad).unwrap();
    let tiny = golden("ref-tiny");
    let args = ["generate", "--model", &tiny, "--prompt", "a", "--max-tokens", "1", "--tokenizer", &p("bad.json")];
    refused(&args, 2, "not a Hugging Face tokenizer file");
    let o = bdh(&args);
    assert!(!text(&o).contains("panicked") && !text(&o).contains("RUST_BACKTRACE"), "{}", text(&o));
}

#[test]
fn absurd_numbers_are_clear_errors() {
    let tmp = temp("absurd");
    let out = tmp.path().join("out").display().to_string();
    let max = u64::MAX.to_string();
    let bench = |more: &[&str]| -> Vec<String> {
        ["bench", "forward", "--preset", "tiny"].iter().chain(more).map(|s| s.to_string()).collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (bench(&["--iters", &max]), "--iters"),
        (bench(&["--warmup", &max]), "--warmup"),
        (bench(&["--threads", "100000"]), "--threads 100000"),
        (
            ["bench", "generate", "--preset", "tiny", "--prompt-len", "4294967296"].map(String::from).to_vec(),
            "--prompt-len 4294967296",
        ),
        (
            ["train", "--preset", "tiny", "--set", "data.distance=4294967296", "--out", &out, "--quiet"]
                .map(String::from)
                .to_vec(),
            "data.distance = 4294967296",
        ),
        (
            ["serve", "--model", &golden("ref-tiny"), "--grace-seconds", "1e20"].map(String::from).to_vec(),
            "--grace-seconds",
        ),
        (
            ["generate", "--model", &golden("ref-tiny"), "--prompt", "a", "--temperature", "1e39"]
                .map(String::from)
                .to_vec(),
            "finite",
        ),
    ];
    for (args, want) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&args, 2, want);
    }
}

#[test]
fn sigterm_during_a_long_accumulated_step_stops_within_seconds_and_saves() {
    let tmp = temp("sigterm");
    let out = tmp.path().join("run");
    let sets = ["training.max_steps=2", "training.grad_accum=1000000", "training.eval_interval=1"];
    let mut args = vec!["train", "--preset", "tiny", "--threads", "1", "--quiet", "--out", out.to_str().unwrap()];
    sets.iter().for_each(|s| args.extend(["--set", s]));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bdh")).args(&args).spawn().unwrap();
    // The run's config is written once the signal handler is in place.
    let start = Instant::now();
    while !out.join("config.toml").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "the run never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    let kill = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("still training 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("stopped {:?} after SIGTERM: {status}", sent.elapsed());
    assert!(out.join("last").exists(), "no last/ saved");
}
