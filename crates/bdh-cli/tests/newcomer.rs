//! What a new user meets first: run directories, output to a file, reports,
//! resuming, evaluation defaults, messages and generation options.

use std::path::Path;
use std::process::Command;

mod common;
use common::figures::assert_charts_readable;
use common::{bdh, example, golden, temp, text};

/// `bdh` run in directory `dir`, its output captured (so not a terminal).
fn bdh_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bdh")).current_dir(dir).args(args).output().expect("bdh runs")
}

const SHORT: [&str; 8] = [
    "--set",
    "training.max_steps=4",
    "--set",
    "training.eval_interval=2",
    "--set",
    "training.eval_batches=1",
    "--set",
    "training.sample_tokens=20",
];

#[test]
fn a_run_in_a_pipe_prints_lines_names_its_directory_by_date_and_writes_a_report() {
    let tmp = temp("pipe");
    let mut args = vec!["train", "--preset", "tiny"];
    args.extend(SHORT);
    let o = bdh_in(tmp.path(), &args);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    // No --quiet: stdout is a pipe, so evaluations and samples come as lines.
    for want in ["step 2/4: train loss", "val loss", "sample at step 4", "final: step 4/4", "report: "] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let latest = std::fs::read_link(tmp.path().join("runs/latest")).expect("runs/latest is a link");
    let name = latest.display().to_string();
    // tiny-YYYYMMDD-HHMMSS
    let stamp = name.strip_prefix("tiny-").unwrap_or_else(|| panic!("{name}"));
    assert!(stamp.len() == 15 && stamp.as_bytes()[8] == b'-', "{name}");
    assert!(stamp.chars().filter(|c| c.is_ascii_digit()).count() == 14, "{name}");
    let report = std::fs::read_to_string(tmp.path().join("runs/latest/report.html")).unwrap();
    for want in ["Loss (nats per byte)", "Learning rate", "Throughput", "Samples", "<svg", "[training]"] {
        assert!(report.contains(want), "report lacks {want:?}");
    }
    assert_charts_readable(&report, 4);
    // A second run gets its own directory, and runs/latest follows it.
    let o = bdh_in(tmp.path(), &args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let second = std::fs::read_link(tmp.path().join("runs/latest")).unwrap();
    assert_ne!(second, latest);
    assert!(tmp.path().join("runs").join(&latest).join("last/model.safetensors").exists());

    // `bdh report` redraws the page; records it cannot read are counted, not fatal.
    let run = tmp.path().join("runs/latest");
    let mut metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    metrics.push_str("{not json\n");
    std::fs::write(run.join("metrics.jsonl"), metrics).unwrap();
    let page = tmp.path().join("r.html");
    let o = bdh(&["report", run.to_str().unwrap(), "--html", page.to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("best val loss") && out.contains("1 lines of metrics.jsonl skipped"), "{out}");
    assert!(std::fs::read_to_string(&page).unwrap().contains("bdh report"));
    let o = bdh(&["report", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("is not a run directory"), "{}", text(&o));
}

#[test]
fn resuming_says_what_it_does() {
    let tmp = temp("resume");
    let run = tmp.path().join("run").display().to_string();
    let mut args = vec!["train", "--preset", "tiny", "--out", &run];
    args.extend(SHORT);
    assert_eq!(bdh(&args).status.code(), Some(0));

    let o = bdh(&["train", "--resume", &run, "--preset", "small"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("cannot be used with"), "{}", text(&o));

    let o = bdh(&["train", "--resume", &run]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("already finished: 4 of 4 steps") && !out.contains("done:"), "{out}");

    // The tiny preset warms up over 10 steps: a shorter warmup moves the schedule.
    let o = bdh(&["train", "--resume", &run, "--set", "training.max_steps=6", "--set", "training.warmup_steps=2"]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("changed on resume: training.max_steps: 4 → 6"), "{out}");
    assert!(out.contains("learning-rate schedule is recomputed") && out.contains("at step 4"), "{out}");
    assert!(out.contains("done: 2 steps"), "{out}");

    let o = bdh(&["train", "--resume", tmp.path().join("nope").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("is not a run directory to resume"), "{}", text(&o));
}

#[test]
fn eval_scores_a_run_on_its_own_data_by_default() {
    let tmp = temp("eval-data");
    let data = tmp.path().join("data.txt");
    let sentence = "the ferryman rowed the woman over the river before the bells rang. ";
    std::fs::write(&data, sentence.repeat(100)).unwrap();
    let run = tmp.path().join("run").display().to_string();
    let mut args = vec!["train", "--preset", "tiny", "--out", &run, "--data", data.to_str().unwrap()];
    args.extend(SHORT);
    assert_eq!(bdh(&args).status.code(), Some(0));
    let len = sentence.len() * 100;
    let split = len - len / 10;
    let o = bdh(&["eval", "--model", &run]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains(&format!("the run's validation split, bytes {split}..{len}")), "{out}");
    assert!(out.contains("bits/byte") && !out.contains("built-in corpus"), "{out}");
    // --json - writes the numbers, and only them, to stdout.
    let o = bdh(&["eval", "--model", &run, "--json", "-"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["tokens"], (len - split - 1) as u64);
    // A model that is not a run: the built-in corpus, and a note saying why.
    let o = bdh(&["eval", "--model", &golden("ref-tiny"), "--batches", "1", "--batch", "1", "--block", "64"]);
    let out = text(&o);
    assert!(out.contains("not a run directory") && out.contains("built-in corpus"), "{out}");
}

#[test]
fn messages_name_the_problem_once() {
    let tmp = temp("messages");
    // A run whose data cannot be opened makes no directory and leaves runs/latest alone.
    let o = bdh_in(tmp.path(), &["train", "--preset", "tiny", "--data", "no-such-file.txt"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("no-such-file.txt") && !tmp.path().join("runs").exists(), "{}", text(&o));
    let missing = tmp.path().join("missing");
    let o = bdh(&["generate", "--model", missing.to_str().unwrap(), "--prompt", "a"]);
    let out = text(&o);
    assert!(out.contains("no such file or directory") && !out.contains("entity not found"), "{out}");
    let o = bdh(&["eval", "--model", &example("text.txt")]);
    assert!(text(&o).contains("not a model"), "{}", text(&o));
    let model = golden("ref-small-trained");
    let o = bdh(&["inspect", "synapses", "--model", &model, "--layer", "4", "--head", "0", "--prompt", "hi"]);
    assert!(text(&o).contains("layer in 1..=3"), "{}", text(&o));
    let o = bdh(&["inspect", "synapses", "--model", &model, "--layer", "1", "--head", "4", "--prompt", "hi"]);
    assert!(text(&o).contains("head in 0..=3"), "{}", text(&o));
}

#[test]
fn generate_writes_several_samples_and_warns_past_the_trained_context() {
    let tmp = temp("generate");
    let run = tmp.path().join("run").display().to_string();
    // The tiny preset trains on 160-token windows.
    let mut args = vec!["train", "--preset", "tiny", "--out", &run];
    args.extend(SHORT);
    assert_eq!(bdh(&args).status.code(), Some(0));
    let prompt = "ada lives in oslo. ".repeat(7); // 133 bytes
    let o = bdh(&["generate", "--model", &run, "--prompt", &prompt, "--max-tokens", "40", "--num-samples", "3"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    for k in 1..=3 {
        // Each sample echoes the prompt before its continuation.
        assert!(stdout.contains(&format!("--- sample {k} of 3\n{prompt}")), "{stdout}");
    }
    assert_eq!(stderr.matches("past 160 tokens").count(), 1, "one note for the whole call: {stderr}");
    let o = bdh(&["generate", "--model", &run, "--prompt", "ada", "--max-tokens", "20"]);
    assert!(!text(&o).contains("past 160 tokens"), "{}", text(&o));
    let o = bdh(&["generate", "--model", &run, "--prompt", "a", "--num-samples", "2", "--save-state", "s"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn inspect_synapses_reads_a_long_text_in_bounded_memory() {
    // 24 KB: the whole-text forward this replaced aborted at 20 KB (a 25.6 GB allocation).
    let tmp = temp("long");
    let text_file = tmp.path().join("long.txt");
    let chapter = std::fs::read_to_string(example("text.txt")).unwrap();
    std::fs::write(&text_file, chapter.repeat(21)).unwrap();
    let json = tmp.path().join("s.json");
    let model = golden("ref-small-trained");
    let args = ["inspect", "synapses", "--model", &model, "--layer", "1", "--head", "0", "--trace", "3:5"];
    let mut args = args.to_vec();
    args.extend(["--text", text_file.to_str().unwrap(), "--json", json.to_str().unwrap(), "--window", "1000:24000"]);
    let o = bdh(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["synapses"]["window"]["start"], 1000);
    assert_eq!(v["synapses"]["traces"][0][1].as_array().unwrap().len(), 23_000);
}

/// Ctrl-C (SIGINT) saves, labels the last evaluation with its step, and exits 130.
#[test]
fn an_interrupted_run_labels_its_last_evaluation_with_its_step_and_exits_130() {
    use std::io::{BufRead, BufReader};
    let tmp = temp("sigterm");
    let run = tmp.path().join("run").display().to_string();
    let args = ["train", "--preset", "tiny", "--out", &run, "--set", "training.max_steps=100000"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_bdh"))
        .args(args)
        .args(["--set", "training.eval_interval=3", "--set", "training.eval_batches=1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait for the first evaluation, then ask the run to stop.
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let first_eval = line.starts_with("step 3/");
        seen.push(line);
        if first_eval {
            break;
        }
    }
    // The shell's own `kill`: present wherever /bin/sh is, unlike a kill binary.
    let killed = Command::new("sh").args(["-c", &format!("kill -INT {}", child.id())]).status();
    assert!(killed.is_ok_and(|s| s.success()), "kill -INT");
    seen.extend(lines.map(|l| l.unwrap()));
    assert_eq!(child.wait().unwrap().code(), Some(130), "128 + SIGINT");
    let out = seen.join("\n");
    let stopped: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("interrupted at step ")?.split(';').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    let evaluated = stopped / 3 * 3;
    let line = out.lines().skip_while(|l| !l.starts_with("interrupted")).nth(1).unwrap_or_default();
    if evaluated == stopped {
        assert!(line.starts_with(&format!("final: step {stopped}/")), "{out}");
    } else {
        assert!(line.starts_with(&format!("last evaluation: step {evaluated}/")), "{out}");
    }
}

#[test]
fn a_run_whose_reader_goes_away_saves_and_ends_cleanly() {
    use std::io::{BufRead, BufReader};
    let tmp = temp("train-pipe");
    let run = tmp.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bdh"))
        .args(["train", "--preset", "tiny", "--out", run.to_str().unwrap(), "--set", "training.max_steps=100000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "[model]");
    drop(lines); // as `| head -1` does
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
    assert!(run.join("last/model.safetensors").exists(), "the run saved before ending");
}

/// The commands of a fenced `sh` block of the README section headed `heading`, one per
/// entry, continuation lines joined (comments kept: the shell drops them).
fn readme_commands(heading: &str) -> Vec<String> {
    readme_block(heading, 0)
}

/// The commands of the `k`-th fenced `sh` block (from 0) of the README section `heading`.
fn readme_block(heading: &str, k: usize) -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let section = readme.split("\n## ").find(|s| s.starts_with(heading)).expect("the README has the section");
    let block = section.split("```sh\n").nth(k + 1).expect("a sh block").split("```").next().unwrap();
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// The first `sh` block of the README's section `heading`, run as one script with the
/// built `bdh` on the PATH in `dir`: what it printed, once it has succeeded.
fn run_readme_section(heading: &str, dir: &Path) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_bdh")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let script = readme_commands(heading).join("\n");
    let o = Command::new("sh").arg("-ec").arg(&script).current_dir(dir).env("PATH", &path).output().unwrap();
    let out = text(&o);
    println!("{script}\n{out}");
    assert!(o.status.success(), "{out}");
    out
}

/// The README's quick start, run as written (but the install, which this build
/// stands for) in a directory holding the repository's examples and models: every
/// command succeeds and prints something, and the files it says it writes are there.
#[test]
fn the_readme_quick_start_runs_as_written() {
    let tmp = temp("quick-start");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for dir in ["examples", "tests", "configs"] {
        std::os::unix::fs::symlink(root.join(dir).canonicalize().unwrap(), tmp.path().join(dir)).unwrap();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_bdh")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let commands = readme_commands("Quick start");
    assert!(commands.len() >= 4, "{commands:?}");
    for command in commands.iter().filter(|c| !c.starts_with("cargo install")) {
        assert!(command.starts_with("bdh "), "a quick-start command that is not bdh's: {command}");
        let o = Command::new("sh").arg("-c").arg(command).current_dir(tmp.path()).env("PATH", &path).output().unwrap();
        let out = text(&o);
        println!("$ {command}\n{out}");
        assert!(o.status.success(), "{command}: {out}");
        assert!(!o.stdout.is_empty(), "{command} printed nothing");
    }
    for written in ["sparsity.html", "runs/first/report.html", "runs/first/best/model.safetensors"] {
        assert!(tmp.path().join(written).exists(), "{written} not written");
    }
}

/// Counts of one are in the singular: `1 thread`, `1 independent window`.
#[test]
fn a_count_of_one_is_in_the_singular() {
    let tmp = temp("one");
    let run = tmp.path().join("run").display().to_string();
    let mut args = vec!["train", "--preset", "tiny", "--out", &run, "--threads", "1", "--set", "training.max_steps=1"];
    args.extend(&SHORT[2..]);
    let o = bdh(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("; 1 thread\n"), "{}", text(&o));
    let data = tmp.path().join("short.txt");
    std::fs::write(&data, "ada lives in oslo. ".repeat(2)).unwrap();
    let model = golden("ref-tiny");
    let o = bdh(&["eval", "--model", &model, "--data", data.to_str().unwrap(), "--block", "64", "--threads", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("predicted in 1 independent window of 64"), "{}", text(&o));
}

#[test]
fn verify_against_another_models_golden_names_the_model_it_was_made_for() {
    let o = bdh(&["verify", "--model", &golden("ref-tiny"), "--golden", &golden("gpt-tiny/expected.safetensors")]);
    let out = text(&o);
    // Its gradients name tensors this model has none of: bad input, said with the model it fits.
    assert_eq!(o.status.code(), Some(2), "{out}");
    let gpt = golden("gpt-tiny");
    assert!(out.contains(&format!("was made for the model in {gpt}, GPT L")) && out.contains("this is BDH"), "{out}");
}

/// The README's graph section, its first block run as one script (it sets `M` once)
/// in a directory holding the repository's examples and models: it succeeds and
/// writes every file it names.
#[test]
fn the_readme_graph_section_runs_as_written() {
    let tmp = temp("readme-graph");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for dir in ["examples", "tests"] {
        std::os::unix::fs::symlink(root.join(dir).canonicalize().unwrap(), tmp.path().join(dir)).unwrap();
    }
    let out = run_readme_section("The brain", tmp.path());
    assert!(out.contains("logits max rel diff") && out.contains("spiking runs") && out.contains("excitatory"), "{out}");
    for written in ["brain.safetensors", "trip.json", "trip.html", "spikes.svg", "prune.svg"] {
        assert!(tmp.path().join(written).exists(), "{written} not written");
    }
}

/// The README's section on synapse mechanisms, run as written: the tiny model learns
/// its lag task far above chance, and says so.
#[test]
fn the_readme_mechanisms_section_runs_as_written() {
    let tmp = temp("readme-mechanisms");
    let out = run_readme_section("Synapse mechanisms", tmp.path());
    let accuracy: f64 = out
        .split("answer accuracy ")
        .last()
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .expect("an answer accuracy");
    assert!(accuracy > 90.0 && out.contains("chance 6.2%"), "{out}");
    assert!(out.contains("learned timescales 1/(1−γ)"), "{out}");
}

/// The README's neuron mechanisms section, run as written: the homeostatic run ends
/// on its way to its target, its neurons firing far less than bdh.py's (about 29%).
#[test]
fn the_readme_neurons_section_runs_as_written() {
    let tmp = temp("readme-neurons");
    let out = run_readme_section("Neuron mechanisms", tmp.path());
    let firing: f64 = out
        .split(", firing ")
        .last()
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.parse().ok())
        .expect("the firing rate reached");
    assert!(firing < 20.0 && out.contains("(target 5.0%)"), "{out}");
    // the sparsity table's first layer: x's share of firing neurons
    let x: f64 = out
        .lines()
        .find(|l| l.starts_with("0 "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.trim_end_matches('%').parse().ok())
        .expect("a sparsity row");
    assert!(x < 20.0, "x fires on {x}% of pairs: {out}");
}

/// The README's population commands, run as written after the section's `R=`: every
/// page is written, and the seeds' runs are matched.
#[test]
fn the_readme_population_commands_run_as_written() {
    let tmp = temp("readme-population");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for dir in ["examples", "tests"] {
        std::os::unix::fs::symlink(root.join(dir).canonicalize().unwrap(), tmp.path().join(dir)).unwrap();
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_bdh")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let first = readme_block("Look inside", 0);
    let define = first.iter().find(|c| c.starts_with("M=")).expect("the section sets R");
    let script = [define.clone(), readme_block("Look inside", 1).join("\n")].join("\n");
    let o = Command::new("sh").arg("-ec").arg(&script).current_dir(tmp.path()).env("PATH", &path).output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{script}\n{out}");
    assert!(out.contains("least complex:") && out.contains("superpose") && out.contains("heads matched"), "{out}");
    for page in ["complexity.html", "geometry.html", "seeds.html"] {
        assert!(tmp.path().join(page).exists(), "{page} not written");
    }
}
