//! The built-in generator's tasks and the synapse mechanisms from the command line:
//! a run on a task with delays, a learned decay, a learned trace and an astrocyte's gate
//! trains, reports its timescales and its answers against chance, resumes, and is
//! read by `eval`, `generate` and the microscope; what cannot run it says why.

use std::path::Path;

mod common;
use common::{bdh, temp, text};

const MECHANISMS: [&str; 10] = [
    "--set",
    "model.delays=learned:4",
    "--set",
    "model.decay=learned",
    "--set",
    "model.trace=learned",
    "--set",
    "model.astrocyte={alpha=0.9}",
    "--set",
    "data.task=lag:3",
];

fn short(run: &str) -> Vec<&str> {
    let mut args = vec!["train", "--preset", "tiny", "--out", run, "--set", "training.max_steps=4"];
    args.extend([
        "--set",
        "training.eval_interval=2",
        "--set",
        "training.batch_size=2",
        "--set",
        "training.eval_batches=1",
    ]);
    args
}

#[test]
fn a_run_with_every_synapse_mechanism_trains_on_a_task_and_is_read_back() {
    let tmp = temp("mechanisms");
    let run = tmp.path().join("run").display().to_string();
    let mut args = short(&run);
    args.extend(MECHANISMS);
    let o = bdh(&args);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // evaluation lines: the answers against chance, the learned timescales
    assert!(out.contains("(chance 6.2%)") && out.contains("learned timescales 1/(1−γ)"), "{out}");
    assert!(out.contains("learned delays 0.5"), "δ starts at ½ and moves little in 4 steps: {out}");
    let metrics = std::fs::read_to_string(Path::new(&run).join("metrics.jsonl")).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(metrics.lines().rfind(|l| l.contains("val_loss")).unwrap()).unwrap();
    assert_eq!(last["answer_chance"], 0.0625);
    assert_eq!(last["retention"].as_array().unwrap().len(), 2, "a γ per head of the tiny preset");
    assert_eq!(last["delays"].as_array().unwrap().len(), 2, "a δ per head");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&run).join("last/config.json")).unwrap()).unwrap();
    assert_eq!(
        (&config["decay"], &config["trace"], &config["astrocyte"]["alpha"]),
        (&"learned".into(), &"learned".into(), &0.9.into())
    );
    assert_eq!(config["delays"], "learned:4");
    // resumed to more steps, read by eval (on its task, then on another), generate and inspect
    let o = bdh(&["train", "--resume", &run, "--quiet", "--set", "training.max_steps=6"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["eval", "--model", &run, "--batches", "2", "--block", "64"]);
    assert!(o.status.success() && text(&o).contains("task lag:3") && text(&o).contains("chance 6.2%"), "{}", text(&o));
    let o = bdh(&["eval", "--model", &run, "--batches", "1", "--block", "64", "--task", "dms:2"]);
    assert!(o.status.success() && text(&o).contains("chance 50.0%"), "{}", text(&o));
    let o = bdh(&["generate", "--model", &run, "--prompt", "abcd", "--max-tokens", "6", "--seed", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let sample = tmp.path().join("sample.txt");
    std::fs::write(&sample, "aAbBcCdDaAbB").unwrap();
    let o = bdh(&["inspect", "sparsity", "--model", &run, "--text", &sample.display().to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    // what cannot run these models says why
    let merged = tmp.path().join("merged").display().to_string();
    let o = bdh(&["merge", &run, &run, "--out", &merged]);
    assert!(!o.status.success() && text(&o).contains("a merged head has one gate"), "{}", text(&o));
    let o = bdh(&["graph", "build", "--model", &run, "--out", &tmp.path().join("g.safetensors").display().to_string()]);
    assert!(!o.status.success() && text(&o).contains("graph form"), "{}", text(&o));
}

#[test]
fn a_run_with_a_retention_per_neuron_reports_each_heads_spread_and_is_read_back() {
    let tmp = temp("mechanisms-neuron");
    let run = tmp.path().join("run").display().to_string();
    let mut args = short(&run);
    let per_neuron = ["model.decay=learned", "model.decay_per=neuron", "model.trace=0.5", "data.task=dms:2"];
    args.extend(per_neuron.iter().flat_map(|s| ["--set", s]));
    let o = bdh(&args);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // each head's median timescale and the range of its middle 80% of neurons
    assert!(out.contains("learned timescales 1/(1−γ) median ") && out.contains("(10–90%: "), "{out}");
    let metrics = std::fs::read_to_string(Path::new(&run).join("metrics.jsonl")).unwrap();
    let last: serde_json::Value =
        serde_json::from_str(metrics.lines().rfind(|l| l.contains("val_loss")).unwrap()).unwrap();
    // each head's median γ, and its neurons' 10%, 50%, 90% quantiles: a line of bounded length
    assert_eq!(last["retention"].as_array().unwrap().len(), 2);
    let spread = last["retention_spread"].as_array().unwrap();
    assert_eq!(spread.len(), 2);
    assert_eq!(spread[0][1], last["retention"][0], "the median is the head's");
    let o = bdh(&["train", "--resume", &run, "--quiet", "--set", "training.max_steps=6"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["eval", "--model", &run, "--batches", "1", "--block", "64"]);
    assert!(o.status.success() && text(&o).contains("chance 50.0%"), "{}", text(&o));
    // a carried state through the chunks of one stream
    let stream = tmp.path().join("stream.txt");
    std::fs::write(&stream, "0y1n1y0n".repeat(40)).unwrap();
    let o = bdh(&["eval", "--model", &run, "--data", &stream.display().to_string(), "--block", "64", "--carry"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["generate", "--model", &run, "--prompt", "0101", "--max-tokens", "6", "--seed", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = bdh(&["inspect", "induction", "--model", &run]);
    assert!(!o.status.success() && text(&o).contains("retention per neuron"), "{}", text(&o));
}

#[test]
fn bad_mechanisms_and_tasks_are_refused_by_name() {
    let tmp = temp("mechanisms-bad");
    let out = tmp.path().join("run").display().to_string();
    for (set, expected) in [
        ("model.trace=1.5", "trace λ = 1.5 must be in [0, 1)"),
        ("model.trace=slow", "expected \"none\", \"learned\" or a λ in [0, 1)"),
        ("model.astrocyte={alpha=1.0}", "astrocyte.alpha = 1 must be in (0, 1)"),
        ("model.decay=sometimes", "\"learned\""),
        ("data.task=lag:0", "must be in 1..="),
        ("data.task=echo:2", "expected \"language\", \"lag:K\""),
        ("data.task=lag:200", "needs blocks of 402 bytes or more"),
        ("model.delays=[159, 1]", "model.delays reads from 160 tokens back, not less than training.block_size = 160"),
        ("model.delays=learned:160", "model.delays reads from 160 tokens back"),
        ("model.delays=learned", "\"learned:M\""),
        ("model.delays=[3]", "delays lists 1 δ for n_head = 2"),
        ("model.decay_per=neuron", "decay_per = \"neuron\" needs decay = \"learned\""),
        ("model.decay_per=synapse", "`head` or `neuron`"),
    ] {
        let mut args = short(&out);
        args.extend(["--set", set]);
        let o = bdh(&args);
        let msg = text(&o);
        assert!(!o.status.success() && msg.contains(expected) && !msg.contains("panicked"), "{set}: {msg}");
    }
}
