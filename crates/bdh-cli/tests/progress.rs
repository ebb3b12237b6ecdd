//! Long work shows its progress and refuses an output it could not write before
//! it starts.

mod common;

use std::time::{Duration, Instant};

use std::process::{Command, Output};

use common::{bdh, example, temp, text};

/// `bdh` with a progress line at every update, however fast the machine.
fn bdh_every_update(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bdh")).args(args).env("BDH_PROGRESS_SECONDS", "0").output().expect("bdh runs")
}

/// Every command with an output file, given one inside a regular file (which no
/// one, not even root, can write in), fails at once with exit status 2, naming it,
/// before any work: the long ones would otherwise run for minutes first.
#[test]
fn an_output_that_cannot_be_written_is_refused_before_the_work() {
    let tmp = temp("unwritable");
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let bad = file.join("out.html");
    let bad = bad.to_str().unwrap();
    let run = tmp.path().join("run");
    let run = run.to_str().unwrap();
    let paper = ["--init", "paper"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        ([&["inspect", "graph"][..], &paper, &["--html", bad]].concat(), "--html"),
        ([&["inspect", "graph"][..], &paper, &["--json", bad]].concat(), "--json"),
        (
            [&["inspect", "synapses"][..], &paper, &["--layer", "0", "--head", "0", "--prompt", "abc", "--html", bad]]
                .concat(),
            "--html",
        ),
        ([&["inspect", "ablate"][..], &paper, &["--html", bad]].concat(), "--html"),
        ([&["inspect", "patch"][..], &paper, &["--html", bad]].concat(), "--html"),
        (vec!["compare", "--sizes", "xs", "--out", bad], bad),
        (vec!["report", run, "--html", bad], "--html"),
        (vec!["eval", "--model", run, "--json", bad], "--json"),
    ];
    for (args, flag) in cases {
        let start = Instant::now();
        let o = bdh(&args);
        let took = start.elapsed();
        let all = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {all}");
        assert!(all.contains(flag) && all.contains("a-file"), "{args:?} names the path: {all}");
        assert!(took < Duration::from_secs(2), "{args:?} took {took:?} to refuse");
    }
    assert!(std::fs::read_dir(tmp.path()).unwrap().count() == 1, "nothing was made beside the file");
}

/// An existing output file is not touched by the check, and a writable one passes.
#[test]
fn the_check_leaves_an_existing_output_as_it_is() {
    let tmp = temp("existing-output");
    let json = tmp.path().join("graph.json");
    std::fs::write(&json, "before").unwrap();
    let o = bdh(&["inspect", "graph", "--model", "/nonexistent/model", "--json", json.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("/nonexistent/model"), "the model is what fails: {}", text(&o));
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "before");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "no probe left behind");
}

/// `inspect graph` into a pipe writes progress lines, with the time left, to
/// standard error while it works (a line at every update here: the default of one
/// every 3 s prints none on a machine fast enough).
#[test]
fn a_long_inspection_in_a_pipe_prints_progress_lines() {
    let o = bdh_every_update(&["inspect", "graph", "--init", "small", "--seeds", "6", "--quantiles", "0.9,0.99"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("inspect graph: ")).collect();
    assert!(!lines.is_empty(), "progress lines on standard error: {err}");
    assert!(lines.iter().all(|l| l.contains('%') && l.contains("elapsed")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("left")), "the time left: {lines:?}");
}

/// `inspect synapses` into a pipe writes progress lines over both its passes over
/// the text (five chunks each) and over its concept search's (the concept's 16
/// sentences, then all 32).
#[test]
fn inspect_synapses_in_a_pipe_prints_progress_lines() {
    let (text_file, money, nature) = (example("text.txt"), example("money.txt"), example("nature.txt"));
    let o = bdh_every_update(&[
        "inspect",
        "synapses",
        "--init",
        "small",
        "--layer",
        "1",
        "--head",
        "0",
        "--text",
        &text_file,
        "--concept",
        &money,
        "--contrast",
        &nature,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", text(&o));
    for (what, total) in [("inspect synapses: ", "/10 "), ("inspect synapses (concept search): ", "/48 ")] {
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with(what)).collect();
        assert!(lines.len() > 2, "progress lines {what:?} on standard error: {err}");
        assert!(lines.iter().all(|l| l.contains(total) && l.contains('%') && l.contains("elapsed")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("left")), "the time left: {lines:?}");
    }
}

/// `compare` into a pipe writes progress lines over all its runs, naming the run.
#[test]
fn compare_in_a_pipe_prints_progress_over_all_runs() {
    let tmp = temp("compare-progress");
    let out = tmp.path().join("c");
    let o = bdh_every_update(&[
        "compare",
        "--sizes",
        "xs",
        "--tokens",
        "32768",
        "--bdh-rates",
        "2e-3",
        "--gpt-rates",
        "4e-3",
        "--seeds",
        "1337",
        "--out",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("compare: ")).collect();
    assert!(!lines.is_empty(), "progress lines on standard error: {err}");
    // One rate and one seed per family: the sweep's run is the seed's, so 2 runs of 16 steps.
    assert!(lines.iter().all(|l| l.contains("/32 ") && l.contains("run ") && l.contains(" of 2")), "{lines:?}");
}
