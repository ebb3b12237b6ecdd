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
        common::skipped("the endless-file cases", "no /dev/zero here");
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

/// `bdh train --preset tiny` into `out` with `sets`, stopped by SIGTERM once the
/// records of its metrics log are `ready`: it must exit within 10 s, save `last/`,
/// and exit 143 (128 + SIGTERM), so that a following `&&` command does not run.
fn train_then_stop(out: &std::path::Path, sets: &[&str], ready: impl Fn(&[serde_json::Value]) -> bool) {
    let mut args = vec!["train", "--preset", "tiny", "--threads", "1", "--quiet", "--out", out.to_str().unwrap()];
    sets.iter().for_each(|s| args.extend(["--set", s]));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bdh"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let metrics = out.join("metrics.jsonl");
    let logged = || {
        let Ok(text) = std::fs::read_to_string(&metrics) else { return false };
        ready(&text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect::<Vec<_>>())
    };
    while !logged() {
        assert!(start.elapsed() < Duration::from_secs(60), "the run never got ready");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it got ready");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    assert_eq!(status.code(), Some(143), "{status}");
    assert!(out.join("last").exists(), "no last/ saved");
}

/// The records of a run's metrics log, without the timings (which differ run to run).
fn records(run: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines.iter_mut().for_each(|v| {
        v.as_object_mut().unwrap().remove("tokens_per_second");
    });
    lines
}

#[test]
fn sigterm_during_a_long_accumulated_step_stops_within_seconds_and_saves() {
    let tmp = temp("sigterm");
    let sets = ["training.max_steps=2", "training.grad_accum=1000000", "training.eval_interval=1"];
    // The first step never ends: stopped once the log exists.
    train_then_stop(&tmp.path().join("run"), &sets, |_| true);
}

/// A stop during the evaluation or the sample at a step's end stops at once; the
/// resumed run does that work first and logs what an uninterrupted run logs.
#[test]
fn sigterm_during_an_evaluation_or_a_sample_stops_within_seconds_and_resume_finishes_it() {
    let tmp = temp("sigterm-eval");
    let steps = ["training.max_steps=3", "training.eval_interval=2", "training.sample_interval=2"];
    let short = ["training.eval_batches=2", "training.sample_tokens=5"];
    let whole = tmp.path().join("whole");
    let mut args = vec!["train", "--preset", "tiny", "--threads", "1", "--quiet", "--out", whole.to_str().unwrap()];
    steps.iter().chain(&short).for_each(|s| args.extend(["--set", s]));
    let o = bdh(&args);
    assert!(o.status.success(), "{}", text(&o));
    // (stopped in, the long setting, the record logged just before it)
    let step_2 = |r: &[serde_json::Value]| r.iter().any(|v| v["step"] == 2 && v.get("loss").is_some());
    let eval_2 = |r: &[serde_json::Value]| r.iter().any(|v| v["step"] == 2 && v.get("val_loss").is_some());
    type Ready<'a> = &'a dyn Fn(&[serde_json::Value]) -> bool;
    let cases: [(&str, &str, Ready); 2] = [
        ("evaluation", "training.eval_batches=1000000000", &step_2),
        ("sample", "training.sample_tokens=1000000000", &eval_2),
    ];
    for (what, long, ready) in cases {
        let run = tmp.path().join(what);
        let sets: Vec<&str> = steps.iter().chain(&short).copied().chain([long]).collect();
        train_then_stop(&run, &sets, ready);
        let mut args = vec!["train", "--resume", run.to_str().unwrap(), "--threads", "1", "--quiet"];
        short.iter().for_each(|s| args.extend(["--set", s]));
        let o = bdh(&args);
        assert!(o.status.success(), "{what}: {}", text(&o));
        assert!(text(&o).contains(&format!("resuming {} at step 2 of 3", run.display())), "{}", text(&o));
        assert_eq!(records(&run), records(&whole), "stopped during the {what}");
        for checkpoint in ["best", "last"] {
            let a = std::fs::read(run.join(checkpoint).join("model.safetensors")).unwrap();
            assert!(a == std::fs::read(whole.join(checkpoint).join("model.safetensors")).unwrap(), "{checkpoint}/");
        }
    }
}

/// A byte-level tokenizer of 2²⁰ tokens (the most `bdh` reads) trains as far as
/// memory allows: a batch past it is refused naming the bytes, never an abort.
#[test]
fn a_tokenizer_of_a_million_tokens_in_training_is_refused_by_its_size_not_an_abort() {
    let tmp = temp("million");
    // GPT-2's byte-to-character table, then three-character tokens up to 2²⁰ ids.
    let mut chars: Vec<u32> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).map(u32::from).collect();
    let others = (0..=255u32).filter(|b| !chars.contains(b)).count() as u32;
    chars.extend(256..256 + others);
    let chars: Vec<char> = chars.into_iter().map(|c| char::from_u32(c).unwrap()).collect();
    let mut vocab = serde_json::Map::new();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    for id in 256..1usize << 20 {
        let k = id - 256;
        let token: String = [chars[k >> 16], chars[(k >> 8) & 255], chars[k & 255]].iter().collect();
        vocab.insert(token, id.into());
    }
    let byte_level =
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    let path = tmp.path().join("million.json");
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    let data = tmp.path().join("text.txt");
    std::fs::write(&data, "To be, or not to be, that is the question.\n".repeat(200)).unwrap();
    let (path, data) = (path.to_str().unwrap(), data.to_str().unwrap());
    let args = ["train", "--preset", "tiny", "--tokenizer", path, "--data", data, "--out"];
    let out = tmp.path().join("run");
    refused(&[&args[..], &[out.to_str().unwrap(), "--set", "training.batch_size=4096"]].concat(), 3, "would need");
}

/// Ctrl-C during `bdh compare` stops the run in training, says how to continue and
/// exits 130 (128 + SIGINT), so that a following `&&` command does not run.
#[test]
fn ctrl_c_during_compare_stops_and_exits_130() {
    let tmp = temp("compare-int");
    let out = tmp.path().join("cmp");
    let args = ["compare", "--sizes", "xs", "--tokens", "100000000", "--threads", "1", "--out", out.to_str().unwrap()];
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_bdh"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join("xs-bdh/lr-1e-3/metrics.jsonl").exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "the comparison never started training");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(130), "{said}");
    assert!(said.contains("interrupted; run the same command again to continue"), "{said}");
}
