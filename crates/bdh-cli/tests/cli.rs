//! The `bdh` binary end to end: exit codes and what it prints.

use std::path::Path;
use std::process::Command;

mod common;
use common::figures::assert_charts_readable;
use common::{bdh, chromium, example, golden, render, temp, text};

#[test]
fn verify_passes_on_both_fixtures_and_both_formats() {
    for (model, golden_file) in [
        ("ref-tiny", "ref-tiny/expected.safetensors"),
        ("ref-tiny/model.pt", "ref-tiny/expected.safetensors"),
        ("ref-small-trained/model.safetensors", "ref-small-trained/expected.safetensors"),
        ("ref-small-trained/model.pt", "ref-small-trained/expected.safetensors"),
    ] {
        let o = bdh(&["verify", "--model", &golden(model), "--golden", &golden(golden_file)]);
        let out = text(&o);
        println!("{out}");
        assert_eq!(o.status.code(), Some(0), "{model}: {out}");
        assert!(out.contains("PASS"), "{out}");
        assert!(out.contains("logits"), "{out}");
    }
}

#[test]
fn verify_fails_with_status_1_when_a_tensor_differs() {
    let tmp = temp("tampered");
    let dir = tmp.path();
    let src = std::fs::read(golden("ref-tiny/expected.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    let grad = owned.iter_mut().find(|t| t.0 == "grad.encoder").unwrap();
    let x = f32::from_le_bytes(grad.3[..4].try_into().unwrap());
    grad.3[..4].copy_from_slice(&(x + 1.0).to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let path = dir.join("expected.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let o = bdh(&["verify", "--model", &golden("ref-tiny"), "--golden", &path.display().to_string()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("grad.encoder") && out.contains("FAIL"), "{out}");
}

#[test]
fn verify_reports_bad_input_with_status_2() {
    let o = bdh(&["verify", "--model", "/no/such/dir/model.pt", "--golden", &golden("ref-tiny/expected.safetensors")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("/no/such/dir/model.pt"), "{}", text(&o));

    let o = bdh(&["verify", "--model", &golden("ref-tiny"), "--golden", &golden("ref-tiny/config.json")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("safetensors"), "{}", text(&o));

    // The weights of one fixture against the config of the other.
    let o = bdh(&[
        "verify",
        "--model",
        &golden("ref-tiny/model.safetensors"),
        "--config",
        &golden("ref-small-trained/config.json"),
        "--golden",
        &golden("ref-tiny/expected.safetensors"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("expected"), "{}", text(&o));
}

#[test]
fn train_resume_generate_eval_end_to_end() {
    let tmp = temp("e2e");
    let dir = tmp.path();
    let run_dir = dir.join("run").display().to_string();
    let small =
        ["--set", "training.batch_size=2", "--set", "training.eval_batches=1", "--set", "training.eval_interval=2"];
    let mut args = vec!["train", "--preset", "tiny", "--out", &run_dir, "--quiet", "--set", "training.max_steps=2"];
    args.extend_from_slice(&small);
    let o = bdh(&args);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("val loss") && out.contains("answer accuracy") && out.contains("sample at step 2"), "{out}");

    let mut args = vec!["train", "--resume", &run_dir, "--quiet", "--set", "training.max_steps=4"];
    args.extend_from_slice(&small);
    let o = bdh(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let metrics = std::fs::read_to_string(dir.join("run/metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"step\":4"), "{metrics}");

    let gen = |extra: &[&str]| {
        let mut a =
            vec!["generate", "--model", &run_dir, "--prompt", "ada lives in ", "--max-tokens", "60", "--seed", "3"];
        a.extend_from_slice(extra);
        bdh(&a)
    };
    let (a, b) = (gen(&["--no-echo"]), gen(&["--no-echo"]));
    assert_eq!(a.status.code(), Some(0), "{}", text(&a));
    assert_eq!(a.stdout, b.stdout, "same seed, same text");
    assert!(String::from_utf8_lossy(&a.stderr).contains("tokens/s"));
    let full = String::from_utf8_lossy(&a.stdout).to_string();
    // Without --no-echo the prompt comes first, then the same continuation.
    let echoed = gen(&[]);
    assert_eq!(String::from_utf8_lossy(&echoed.stdout), format!("ada lives in {full}"));
    let stop =
        full.chars().skip(1).find(|c| c.is_ascii_alphanumeric()).expect("an ASCII letter in 60 bytes").to_string();
    let c = gen(&["--stop", &stop, "--no-echo"]);
    let cut = String::from_utf8_lossy(&c.stdout).trim_end_matches('\n').to_string();
    assert!(!cut.contains(&stop) && full.starts_with(&cut), "{cut:?} vs {full:?}");
    assert!(String::from_utf8_lossy(&c.stderr).contains("stopped at"), "{}", text(&c));

    let data = dir.join("data.txt");
    std::fs::write(&data, "the quick brown fox jumps over the lazy dog. ".repeat(20)).unwrap();
    let o = bdh(&["eval", "--model", &run_dir, "--data", &data.display().to_string(), "--block", "64"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("bits/byte") && out.contains("independent windows"), "{out}");
    let o = bdh(&["eval", "--model", &run_dir, "--batches", "1", "--batch", "2", "--block", "160"]);
    assert!(text(&o).contains("answer accuracy"), "{}", text(&o));
}

#[test]
fn train_rejects_bad_input_without_panicking() {
    let tmp = temp("train-bad");
    let dir = tmp.path();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    let out_dir = dir.join("out").display().to_string();
    for (args, want) in [
        (vec!["--preset", "tiny", "--data", empty.to_str().unwrap()], "empty"),
        (vec!["--preset", "tiny", "--data", short.to_str().unwrap()], "fewer than one block"),
        (vec!["--preset", "tiny", "--data", "/no/such/file.txt"], "/no/such/file.txt"),
        (vec!["--preset", "tiny", "--set", "training.nope=1"], "unknown key"),
        (vec!["--preset", "tiny", "--set", "lr=1e-3"], "unknown key `lr`; did you mean `training.lr`?"),
        (vec!["--preset", "tiny", "--set", "training.lr=fast"], "float"),
        (vec!["--preset", "nope"], "no preset"),
    ] {
        let mut a = vec!["train", "--out", &out_dir, "--quiet"];
        a.extend(args);
        let o = bdh(&a);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(2), "{a:?}: {out}");
        assert!(out.contains(want) && !out.contains("panicked"), "{a:?}: {out}");
    }
}

#[test]
fn a_bpe_tokenizer_is_trained_used_by_a_run_and_travels_with_it() {
    let tmp = temp("bpe");
    let dir = tmp.path();
    let p = |name: &str| dir.join(name).display().to_string();
    let (data, tok, run, corrupt) = (p("text.txt"), p("tok.json"), p("run"), p("corrupt.json"));
    let lines =
        ["the dragon keeps a map of the north.", "la señora reads the café's menu.", "東京の猫 finds the 🐉 egg."];
    let corpus: String = (0..600).map(|i| format!("{} {}\n", lines[i % 3], i % 7)).collect();
    std::fs::write(&data, &corpus).unwrap();
    let o = bdh(&["tokenizer", "train", "--data", &data, "--vocab-size", "300", "--out", &tok]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("bytes a token"), "{}", text(&o));
    let sets = ["training.max_steps=4", "training.eval_interval=2", "training.batch_size=2", "training.eval_batches=2"];
    let mut a = vec!["train", "--preset", "tiny", "--data", &data, "--tokenizer", &tok, "--out", &run, "--quiet"];
    sets.iter().for_each(|s| a.extend(["--set", s]));
    let o = bdh(&a);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("bits/byte") && out.contains("vocab_size = 300"), "{out}");
    assert_eq!(std::fs::read(dir.join("run/tokenizer.json")).unwrap(), std::fs::read(&tok).unwrap());
    // Its report says what it trained on, and leaves out the built-in language's settings.
    let report = std::fs::read_to_string(dir.join("run/report.html")).unwrap();
    let read =
        format!("{data} (its last 10% held out for validation; read with the BPE tokenizer {tok} (the run keeps");
    assert!(report.contains(&read), "{report}");
    assert!(!report.contains("facts = ") && !report.contains("distance = "), "{report}");

    // generate and eval find the run's tokenizer without being told.
    let o = bdh(&["generate", "--model", &run, "--prompt", "la señora ", "--max-tokens", "20", "--seed", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(String::from_utf8(o.stdout.clone()).is_ok(), "whole UTF-8 only");
    let o = bdh(&["eval", "--model", &run]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("tokens)") && out.contains("nats/token") && out.contains("bits/byte"), "{out}");

    // A model and a tokenizer that do not belong together, a corrupt tokenizer file,
    // a tokenizer for the built-in corpus: each one clear line, exit status 2.
    std::fs::write(&corrupt, "{\"model\": [1, 2").unwrap();
    let (ref_tiny, weights, again) = (golden("ref-tiny"), p("run/best/model.safetensors"), p("again"));
    let refusals: [(Vec<&str>, &str); 5] = [
        (vec!["eval", "--model", &ref_tiny, "--tokenizer", &tok], "vocabulary has 256 tokens"),
        (vec!["generate", "--model", &weights, "--tokenizer", &corrupt, "--prompt", "a"], "not a Hugging Face"),
        (vec!["train", "--data", &data, "--tokenizer", &tok, "--set", "model.vocab_size=512"], "follows the tokenizer"),
        (vec!["train", "--init-from", &run, "--out", &again], "built-in corpus"),
        (vec!["tokenizer", "train", "--data", &data, "--vocab-size", "100", "--out", &again], "need 256"),
    ];
    for (args, want) in refusals {
        let o = bdh(&args);
        let out = text(&o);
        println!("{args:?}: {out}");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {out}");
        assert!(out.contains(want) && !out.contains("panicked"), "{args:?}: {out}");
    }
}

#[test]
fn inspect_commands_run_on_the_trained_model_and_their_reports_render() {
    // Without Chromium the inspect commands and their JSON are still checked;
    // only rendering the HTML reports is skipped, and says so.
    let chromium = chromium("the inspect reports");
    let tmp = temp("inspect");
    let dir = tmp.path();
    let model = golden("ref-small-trained");
    let p = |name: &str| dir.join(name).display().to_string();
    let fingerprint =
        bdh::io::checkpoint::load(&Path::new(&model).join("model.safetensors"), None).unwrap().params().fingerprint();
    let runs: [(&str, Vec<String>, &str); 3] = [
        ("sparsity", vec!["--text".into(), example("text.txt")], "x⊙y"),
        (
            "graph",
            vec!["--head".into(), "0".into(), "--quantiles".into(), "0.99,0.999".into(), "--seeds".into(), "2".into()],
            "Q model",
        ),
        (
            "synapses",
            vec![
                "--layer".into(),
                "2".into(),
                "--head".into(),
                "1".into(),
                "--text".into(),
                example("text.txt"),
                "--concept".into(),
                example("money.txt"),
                "--contrast".into(),
                example("nature.txt"),
            ],
            "concept search",
        ),
    ];
    // An empty page, rendered the same way, is the floor a report's screenshot must clear.
    std::fs::write(dir.join("blank.html"), "<!DOCTYPE html><html><body></body></html>").unwrap();
    let blank = chromium.as_deref().map(|c| render(c, &dir.join("blank.html"), dir).1);
    for (what, extra, marker) in runs {
        let (html, json) = (p(&format!("{what}.html")), p(&format!("{what}.json")));
        let mut args: Vec<String> =
            ["inspect", what, "--model", &model, "--html", &html, "--json", &json].map(String::from).to_vec();
        args.extend(extra);
        let o = bdh(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let out = text(&o);
        println!("{out}");
        assert_eq!(o.status.code(), Some(0), "{what}: {out}");
        assert!(out.contains(marker), "{what}: {out}");
        let parsed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(parsed["provenance"]["weights (FNV-1a)"], fingerprint.as_str(), "{what}: JSON provenance");
        // Every chart shows each of its series, its legend below the data.
        assert_charts_readable(&std::fs::read_to_string(&html).unwrap(), if what == "graph" { 3 } else { 1 });
        let (Some(chromium), Some(blank)) = (chromium.as_deref(), blank) else { continue };
        let (dom, shot) = render(chromium, Path::new(&html), dir);
        let figures = dom.matches("<svg").count();
        let marks = dom.matches("<polyline").count() + dom.matches("<circle").count();
        println!("{what}: {figures} figures, {marks} marks, screenshot {shot} bytes (blank page {blank})");
        assert!(figures >= 1 && marks >= 1, "{what}: no figures in the rendered page");
        assert!(shot > 4 * blank, "{what}: the screenshot looks blank ({shot} vs {blank} bytes)");
        // Provenance: the command, the model and its weights, and the texts read.
        for fact in [format!("inspect {what}"), fingerprint.clone(), "version".into(), "\"n_layer\": 4".into()] {
            assert!(dom.contains(&fact), "{what}: the rendered page does not state {fact:?}");
        }
        if what != "graph" {
            assert!(dom.contains("examples/text.txt (1170 bytes"), "{what}: the text read is not named");
        }
        // Charts over layers and token positions have whole-number ticks only.
        if what == "sparsity" {
            for (k, svg) in dom.split("<svg").skip(1).take(2).enumerate() {
                let ticks = x_ticks(svg);
                println!("sparsity chart {k}: x ticks {ticks:?}");
                assert!(ticks.len() >= 2 && ticks.iter().all(|t| t.parse::<u64>().is_ok()), "{ticks:?}");
            }
        }
    }
}

/// The x axis's tick labels of an SVG chart: the numeric `<text>` elements of the
/// lowest row that holds two or more of them.
fn x_ticks(svg: &str) -> Vec<String> {
    let svg = svg.split("</svg>").next().unwrap_or_default();
    let mut rows: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
    for t in svg.split("<text").skip(1) {
        let (attrs, rest) = t.split_once('>').unwrap_or_default();
        let label = rest.split_once('<').map_or("", |r| r.0).trim().to_string();
        let y = attrs.split(" y=\"").nth(1).and_then(|r| r.split('"').next()).and_then(|v| v.parse::<f64>().ok());
        if let (Some(y), true) = (y, label.parse::<f64>().is_ok()) {
            rows.entry(y.round() as i64).or_default().push(label);
        }
    }
    rows.into_values().rev().find(|r| r.len() >= 2).unwrap_or_default()
}

#[test]
fn inspect_rejects_bad_arguments() {
    let model = golden("ref-small-trained");
    for (args, want) in [
        (vec!["inspect", "synapses", "--model", &model, "--layer", "0", "--head", "0", "--prompt", "hi"], "layer"),
        (
            vec!["inspect", "synapses", "--model", &model, "--layer", "1", "--head", "9", "--prompt", "hi"],
            "head in 0..=3; got 9",
        ),
        (vec!["inspect", "graph", "--model", &model, "--head", "7"], "head 7"),
        (vec!["inspect", "sparsity", "--model", &model], "--text"),
        (vec!["inspect", "sparsity", "--model", "/no/such/model", "--prompt", "x"], "/no/such/model"),
        (vec!["inspect", "graph"], "--init"),
    ] {
        let o = bdh(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(want), "{args:?}: {}", text(&o));
    }
}

#[test]
fn inspect_graph_of_a_freshly_initialised_preset() {
    let o = bdh(&["inspect", "graph", "--init", "tiny", "--head", "1", "--quantiles", "0.99"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("N256") && out.contains("0.99"), "{out}");
}

#[test]
fn generate_ends_at_once_when_its_reader_goes_away() {
    use std::io::Read;
    use std::process::Stdio;
    let model = golden("ref-small-trained");
    let args = ["generate", "--model", &model, "--prompt", "ROMEO:", "--max-tokens", "1000000", "--temperature", "0"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_bdh")).args(args).stdout(Stdio::piped()).spawn().unwrap();
    let mut first = [0u8; 20];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take()); // as `| head -c 20` does
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    // A million tokens take minutes; a closed pipe ends the run within a step or two.
    assert!(started.elapsed().as_secs() < 20, "still generating after the reader left");
    assert!(status.success(), "a closed pipe is not an error: {status:?}");
}

#[test]
fn generate_saves_and_continues_a_state() {
    let tmp = temp("state");
    let state = tmp.path().join("session.safetensors").display().to_string();
    let model = golden("ref-small-trained");
    let gen = |prompt: &str, extra: &[&str]| {
        let mut a = vec!["generate", "--model", &model, "--prompt", prompt, "--max-tokens", "30", "--temperature", "0"];
        a.extend_from_slice(extra);
        a.push("--no-echo");
        let o = bdh(&a);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim_end_matches('\n').to_string()
    };
    // In two runs, the second continuing the first's state...
    let first = gen("ROMEO:", &["--save-state", &state]);
    let second = gen("\n", &["--load-state", &state]);
    // ...equals one run over the whole text.
    let whole = gen(&format!("ROMEO:{first}\n"), &[]);
    assert_eq!(second, whole);
    // A state of another model, or no state at all, is bad input.
    let o = bdh(&["generate", "--model", &golden("ref-tiny"), "--prompt", "x", "--load-state", &state]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("session.safetensors"), "{}", text(&o));
    // A state given as the model is named as a state, and where it goes.
    let o = bdh(&["generate", "--model", &state, "--prompt", "x"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("is a saved state") && text(&o).contains("--load-state"), "{}", text(&o));
}

#[test]
fn absurd_sizes_and_wrong_paths_are_clear_errors() {
    let tmp = temp("sizes");
    let out_dir = tmp.path().join("out").display().to_string();
    let data_dir = tmp.path().display().to_string();
    // Exit status 3: a size refused before allocation; 2: what the user gave.
    for (args, want, status) in [
        (vec!["train", "--preset", "tiny", "--set", "model.n_embd=1000000"], "would need", 3),
        (vec!["train", "--preset", "tiny", "--set", "training.block_size=1000000"], "would need", 3),
        (vec!["train", "--preset", "tiny", "--data", &data_dir], "is a directory", 2),
        (vec!["bench", "forward", "--preset", "tiny", "--batch", "100000000"], "would need", 3),
    ] {
        let mut a = args.clone();
        a.extend(["--out", &out_dir, "--quiet"].iter().filter(|_| args[0] == "train"));
        let o = bdh(&a);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(status), "{a:?}: {out}");
        assert!(out.contains(want) && !out.contains("panicked"), "{a:?}: {out}");
    }
}

/// Metrics lines of a run directory: (step, loss) of every training step.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v["step"].as_u64()?, v.get("loss")?.as_f64()?)))
        .collect()
}

#[test]
fn a_kill_at_any_write_or_rename_of_a_checkpoint_loses_nothing() {
    // Debug builds abort at the k-th write/rename point when BDH_FAULT_AT=k.
    let tmp = temp("faults");
    let run = |dir: &Path, resume: bool, fault: Option<usize>| {
        let d = dir.display().to_string();
        let mut a = if resume { vec!["train", "--resume", &d] } else { vec!["train", "--preset", "tiny", "--out", &d] };
        a.push("--quiet");
        a.extend_from_slice(&["--set", "training.batch_size=2", "--set", "training.block_size=32"]);
        a.extend_from_slice(&["--set", "training.max_steps=4", "--set", "training.eval_interval=2"]);
        a.extend_from_slice(&["--set", "training.eval_batches=1", "--set", "training.sample_tokens=8"]);
        let mut c = Command::new(env!("CARGO_BIN_EXE_bdh"));
        c.args(&a);
        if let Some(k) = fault {
            c.env("BDH_FAULT_AT", k.to_string());
        }
        c.output().unwrap()
    };
    let straight = tmp.path().join("straight");
    assert!(run(&straight, false, None).status.success());
    let want = losses(&straight);
    assert_eq!(want.len(), 4);
    let mut points = 0;
    for k in 1.. {
        let dir = tmp.path().join(format!("k{k}"));
        let killed = run(&dir, false, Some(k));
        if killed.status.success() {
            break; // fewer than k points: every one has been tried
        }
        assert!(killed.status.code().is_none(), "k = {k}: not a kill: {}", text(&killed));
        points = k;
        // Whatever instant it died at, the run directory resumes (or, before the
        // first checkpoint, starts again) and ends exactly as the uninterrupted run.
        let resume = dir.join("last").exists();
        let again = run(&dir, resume, None);
        assert!(again.status.success(), "k = {k}, resume = {resume}: {}", text(&again));
        assert_eq!(losses(&dir), want, "k = {k}");
        let last = bdh::io::checkpoint::load(&dir.join("last"), None);
        assert!(last.is_ok(), "k = {k}: {last:?}");
    }
    println!("killed at each of {points} write/rename points; every run resumed exactly");
    assert!(points >= 20, "only {points} fault points");
}

#[test]
fn eval_carry_reads_a_file_as_one_stream_by_position() {
    let model = golden("ref-small-trained");
    let o = bdh(&["eval", "--model", &model, "--data", &example("text.txt"), "--carry", "--json", "-"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let buckets = v["stream"]["buckets"].as_array().unwrap();
    let tokens: u64 = buckets.iter().map(|b| b["tokens"].as_u64().unwrap()).sum();
    assert_eq!(tokens, v["stream"]["tokens"].as_u64().unwrap());
    assert_eq!(tokens, 1169, "every byte of the 1170-byte text but the first");
    assert!(v["windows"]["loss"].as_f64().is_some());
    for (args, expected) in [
        (vec!["eval", "--model", &model, "--carry"], "give --data FILE"),
        (vec!["eval", "--model", &golden("gpt-tiny"), "--data", &example("text.txt"), "--carry"], "needs a BDH model"),
    ] {
        let o = bdh(&args);
        assert!(!o.status.success() && text(&o).contains(expected), "{}", text(&o));
    }
}

#[test]
fn a_decaying_model_trains_generates_and_reads_a_stream() {
    let tmp = temp("decay");
    let run = tmp.path().join("run").display().to_string();
    let mut args = vec!["train", "--preset", "tiny", "--out", &run, "--quiet", "--set", "model.decay=[0.9, 0.99]"];
    args.extend([
        "--set",
        "training.max_steps=2",
        "--set",
        "training.batch_size=2",
        "--set",
        "training.eval_batches=1",
    ]);
    let o = bdh(&args);
    assert!(o.status.success(), "{}", text(&o));
    let config = std::fs::read_to_string(Path::new(&run).join("last/config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["decay"], serde_json::json!([0.9, 0.99]), "{config}");
    let o = bdh(&["generate", "--model", &run, "--prompt", "ada ", "--max-tokens", "5", "--seed", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["eval", "--model", &run, "--data", &example("text.txt"), "--carry", "--json", "-"]);
    assert!(o.status.success(), "{}", text(&o));
    for (decay, expected) in
        [("fast", "alibi"), ("[0.9]", "n_head = 2"), ("[0.9, 2.0]", "(0, 1]"), ("0.9", "a list of γ per head, not 0.9")]
    {
        let set = format!("model.decay={decay}");
        let out = tmp.path().join("bad").display().to_string();
        let o = bdh(&["train", "--preset", "tiny", "--out", &out, "--quiet", "--set", &set]);
        let msg = text(&o);
        assert_eq!(o.status.code(), Some(2), "{decay}: {msg}");
        assert!(msg.contains(expected) && !msg.contains("panicked"), "{decay}: {msg}");
    }
    // A run's model (its decay included) does not change on resume.
    let o = bdh(&["train", "--resume", &run, "--quiet", "--set", "model.decay=none"]);
    assert!(o.status.code() == Some(2) && text(&o).contains("model is fixed"), "{}", text(&o));
}

/// Under mpirun a build without MPI would run K separate trainings into one directory.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_to_be_one_of_several_processes() {
    let tmp = temp("no-mpi");
    let out = tmp.path().join("run").display().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_bdh"))
        .args(["train", "--preset", "tiny", "--quiet", "--out", &out])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let msg = text(&o);
    assert_eq!(o.status.code(), Some(2), "{msg}");
    assert!(msg.contains("--features mpi") && !tmp.path().join("run").exists(), "{msg}");
}

#[test]
fn two_trainings_on_one_directory_the_second_refused_and_a_killed_ones_lock_taken_over() {
    let tmp = temp("lock");
    let dir = tmp.path().join("run");
    let d = dir.display().to_string();
    let small = ["--set", "training.batch_size=2", "--set", "training.block_size=32", "--quiet"];
    let mut first = Command::new(env!("CARGO_BIN_EXE_bdh"))
        .args(["train", "--preset", "tiny", "--out", &d, "--set", "training.max_steps=1000000"])
        .args(["--set", "training.eval_interval=1000000"])
        .args(small)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !(dir.join(".bdh-lock").exists() && dir.join("config.toml").exists()) {
        assert!(started.elapsed().as_secs() < 60, "the first training never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let second = bdh(&[&["train", "--preset", "tiny", "--out", &d][..], &small].concat());
    let said = text(&second);
    assert_eq!(second.status.code(), Some(2), "{said}");
    assert!(said.contains(&format!("in use by process {}", first.id())), "{said}");
    let resumed = bdh(&["train", "--resume", &d]);
    assert!(text(&resumed).contains(&format!("in use by process {}", first.id())), "{}", text(&resumed));
    // Killed before its first checkpoint: its lock is stale, and the run starts again.
    first.kill().unwrap();
    first.wait().unwrap();
    let end =
        ["--set", "training.max_steps=2", "--set", "training.eval_interval=2", "--set", "training.eval_batches=1"];
    let again = bdh(&[&["train", "--resume", &d, "--quiet"][..], &end].concat());
    let said = text(&again);
    assert_eq!(again.status.code(), Some(0), "{said}");
    assert!(said.contains(&format!("held by process {}, which no longer runs: taken over", first.id())), "{said}");
    assert!(said.contains("has no checkpoint yet (it stopped before its first): starting it again"), "{said}");
    assert!(dir.join("last/model.safetensors").exists() && !dir.join(".bdh-lock").exists());
}
