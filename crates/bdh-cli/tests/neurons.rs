//! The neurons' mechanisms from the command line: a run with a homeostatic threshold
//! reports its firing against the target, resumes, and is read by `eval`, `generate`,
//! `bench generate` and the microscope; a learned threshold and an E/I norm train; what
//! cannot run them says why, and bad values are refused by name.

use std::path::Path;

mod common;
use common::{bdh, temp, text};

fn short(run: &str, steps: &str) -> Vec<String> {
    let sets = [steps, "training.eval_interval=10", "training.batch_size=2", "training.eval_batches=1"];
    let mut args: Vec<String> = ["train", "--preset", "tiny", "--out", run].map(String::from).to_vec();
    args.extend(sets.iter().flat_map(|s| ["--set".to_string(), s.to_string()]));
    args
}

fn run_with(args: &[String]) -> std::process::Output {
    bdh(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_homeostatic_threshold_reports_its_firing_and_is_read_back() {
    let tmp = temp("neurons");
    let run = tmp.path().join("run").display().to_string();
    let mut args = short(&run, "training.max_steps=20");
    args.extend(["--set".into(), "model.threshold={target=0.05, step=0.5, rate=0.2}".into()]);
    let o = run_with(&args);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("% (target 5.0%)") && out.contains(", firing "), "{out}");
    let metrics = std::fs::read_to_string(Path::new(&run).join("metrics.jsonl")).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(metrics.lines().rfind(|l| l.contains("val_loss")).unwrap()).unwrap();
    let firing = last["firing"][0].as_f64().unwrap();
    assert!(firing < 0.2, "the rate falls from bdh.py's toward 5% in 20 steps: {firing}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&run).join("last/config.json")).unwrap()).unwrap();
    assert_eq!(config["threshold"]["target"], 0.05);
    let o = bdh(&["train", "--resume", &run, "--quiet", "--set", "training.max_steps=24"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["eval", "--model", &run, "--batches", "1", "--block", "64"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["generate", "--model", &run, "--prompt", "the ", "--max-tokens", "8", "--seed", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["bench", "generate", "--model", &run, "--tokens", "16", "--long-context", "300", "--iters", "1"]);
    assert!(o.status.success() && text(&o).contains("sparse"), "{}", text(&o));
    let sample = tmp.path().join("sample.txt");
    std::fs::write(&sample, "the cat sat on the mat. ".repeat(8)).unwrap();
    let o = bdh(&["inspect", "sparsity", "--model", &run, "--text", &sample.display().to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    // what cannot run it says why
    let o = bdh(&["graph", "build", "--model", &run, "--out", &tmp.path().join("g.safetensors").display().to_string()]);
    assert!(!o.status.success() && text(&o).contains("graph form"), "{}", text(&o));
    // a merge keeps each neuron's threshold and running rate
    let merged = tmp.path().join("merged").display().to_string();
    let o = bdh(&["merge", &run, &run, "--out", &merged]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["eval", "--model", &merged, "--batches", "1", "--block", "64"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_learned_threshold_trains_and_bad_thresholds_are_refused_by_name() {
    let tmp = temp("neurons-bad");
    for rule in ["model.threshold=learned", "model.threshold={target=0.1, gain=true}"] {
        let mut args = short(&tmp.path().join(rule.len().to_string()).display().to_string(), "training.max_steps=4");
        args.extend(["--set".into(), rule.into()]);
        let o = run_with(&args);
        assert!(o.status.success(), "{rule}: {}", text(&o));
    }
    for (set, expected) in [
        ("model.threshold={target=0.0}", "threshold.target = 0 must be a firing rate in (0, 1)"),
        ("model.threshold={target=0.1, rate=2.0}", "threshold.rate = 2 must be in (0, 1]"),
        ("model.threshold={target=0.1, step=0.0}", "threshold.step = 0 must be > 0"),
        ("model.threshold=sometimes", "\"none\", \"learned\" or a rule"),
        ("model.threshold={target=0.1, gain=3}", "a rule { target, rate, step, gain }"),
        ("model.threshold=0.5", "`model.threshold` takes a string, not 0.5"),
    ] {
        let mut args = short(&tmp.path().join("bad").display().to_string(), "training.max_steps=2");
        args.extend(["--set".into(), set.into()]);
        let o = run_with(&args);
        let msg = text(&o);
        assert!(!o.status.success() && msg.contains(expected) && !msg.contains("panicked"), "{set}: {msg}");
    }
}

#[test]
fn an_ei_norm_trains_is_read_back_and_is_refused_where_it_cannot_run() {
    let tmp = temp("neurons-ei");
    let run = tmp.path().join("run").display().to_string();
    let mut args = short(&run, "training.max_steps=6");
    args.extend(["--set".into(), "model.norm=ei".into()]);
    let o = run_with(&args);
    assert!(o.status.success(), "{}", text(&o));
    let config = std::fs::read_to_string(Path::new(&run).join("last/config.json")).unwrap();
    assert!(config.contains("\"norm\": \"ei\""), "{config}");
    let o = bdh(&["generate", "--model", &run, "--prompt", "the ", "--max-tokens", "8", "--seed", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["merge", &run, &run, "--out", &tmp.path().join("merged").display().to_string()]);
    assert!(!o.status.success() && text(&o).contains("norm = \"ei\""), "{}", text(&o));
    let mut args = short(&tmp.path().join("bad").display().to_string(), "training.max_steps=2");
    args.extend(["--set".into(), "model.norm=batch".into()]);
    let o = run_with(&args);
    assert!(!o.status.success() && text(&o).contains("`layer`, `none`, `ei`"), "{}", text(&o));
}

#[test]
fn a_continual_run_starts_from_an_earlier_run_and_keeps_its_subspaces() {
    let tmp = temp("neurons-continual");
    let (a, b) = (tmp.path().join("a").display().to_string(), tmp.path().join("b").display().to_string());
    assert!(run_with(&short(&a, "training.max_steps=4")).status.success());
    let play = tmp.path().join("text.txt");
    std::fs::write(&play, "To be, or not to be, that is the question. ".repeat(200)).unwrap();
    let mut args = short(&b, "training.max_steps=4");
    let text_arg = play.display().to_string();
    args.extend(["--init-from", &a, "--data", &text_arg, "--continual", "hlop:8"].map(String::from));
    let o = run_with(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(Path::new(&b).join("subspaces.safetensors").exists());
    let o = bdh(&["eval", "--model", &b, "--task", "language", "--batches", "1", "--block", "64"]);
    assert!(o.status.success(), "{}", text(&o));
    // --continual needs an earlier model
    let mut args = short(&tmp.path().join("c").display().to_string(), "training.max_steps=2");
    args.extend(["--continual", "hlop"].map(String::from));
    let o = run_with(&args);
    assert!(!o.status.success() && text(&o).contains("--init-from"), "{}", text(&o));
}

#[test]
fn a_modular_sparse_run_rewires_and_is_read_by_the_microscope() {
    let tmp = temp("neurons-modular");
    let run = tmp.path().join("run").display().to_string();
    let mut args = short(&run, "training.max_steps=8");
    for set in ["model.connectivity={modules=2, density=0.5}", "training.rewire={every=4, fraction=0.1}"] {
        args.extend(["--set".to_string(), set.to_string()]);
    }
    let o = run_with(&args);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["inspect", "graph", "--model", &run]);
    assert!(o.status.success() && text(&o).contains("Q model"), "{}", text(&o));
    let o = bdh(&["generate", "--model", &run, "--prompt", "the ", "--max-tokens", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["merge", &run, &run, "--out", &tmp.path().join("m").display().to_string()]);
    assert!(!o.status.success() && text(&o).contains("sparse connectivity"), "{}", text(&o));
    let mut bad = short(&tmp.path().join("bad").display().to_string(), "training.max_steps=2");
    bad.extend(["--set".to_string(), "training.rewire={every=4, fraction=0.1}".to_string()]);
    let o = run_with(&bad);
    assert!(!o.status.success() && text(&o).contains("set model.connectivity too"), "{}", text(&o));
}
