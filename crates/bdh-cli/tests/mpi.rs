//! Data-parallel training under `mpirun` (the binary built with the `mpi` feature:
//! `cargo test -p bdh-cli --features mpi --test mpi`): K processes of B/K rows
//! follow one process of B rows, a killed process ends the job and the run resumes
//! exactly, an error on one process ends the job with its message.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bdh, temp, text};

/// How long a job may take to end once one of its processes died.
const END_WITHIN: Duration = Duration::from_secs(30);

/// `mpirun` if this binary was built with MPI and Open MPI's launcher is on the
/// PATH; otherwise None, saying the test skipped, unless `BDH_REQUIRE_MPI` is set
/// (to anything but `0`), as CI does: then either lack fails the test.
fn mpirun() -> Option<&'static str> {
    let required = std::env::var("BDH_REQUIRE_MPI").is_ok_and(|v| !v.is_empty() && v != "0");
    let lack = if !cfg!(feature = "mpi") {
        "bdh was built without the `mpi` feature (cargo test -p bdh-cli --features mpi --test mpi)"
    } else if Command::new("mpirun").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Some("mpirun");
    } else {
        "no mpirun on the PATH (apt-get install openmpi-bin libopenmpi-dev)"
    };
    assert!(!required, "BDH_REQUIRE_MPI is set but {lack}");
    common::skipped("a data-parallel run under mpirun", &format!("{lack}; BDH_REQUIRE_MPI=1 makes this a failure"));
    None
}

/// `mpirun -np k bdh ARGS`, each process on one thread, not yet waited for.
fn launch(mpirun: &str, k: usize, args: &[&str]) -> Child {
    Command::new(mpirun)
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &k.to_string(), env!("CARGO_BIN_EXE_bdh")])
        .args(args)
        .args(["--threads", "1", "--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts")
}

/// Waits for `child` at most `limit`, killing it if it takes longer.
fn wait(mut child: Child, limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("the job did not end within {limit:?}: {}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (child.wait_with_output().unwrap(), t0.elapsed())
}

/// The training arguments of the tests' runs: the tiny preset, `b` rows per process.
fn tiny(out: &Path, steps: usize, b: usize) -> Vec<String> {
    let mut args = vec!["train".to_string(), "--preset".into(), "tiny".into(), "--out".into()];
    args.push(out.display().to_string());
    for set in [format!("training.max_steps={steps}"), format!("training.batch_size={b}")] {
        args.extend(["--set".to_string(), set]);
    }
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Every step's record of a run's `metrics.jsonl`, in order.
fn steps(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .collect()
}

fn losses(run: &Path) -> Vec<f64> {
    steps(run).iter().map(|v| v["loss"].as_f64().unwrap()).collect()
}

#[test]
fn two_processes_of_half_the_batch_train_as_one_process_of_the_whole_batch() {
    let Some(mpirun) = mpirun() else { return };
    let dir = temp("mpi-match");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let o = bdh(&[strs(&tiny(&one, 50, 4)), vec!["--threads", "1", "--quiet"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let (o, _) = wait(launch(mpirun, 2, &strs(&tiny(&two, 50, 2))), Duration::from_secs(300));
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(out.matches("run directory:").count(), 1, "process 0 alone prints: {out}");
    assert!(out.contains("global batch 2 × 2 sequences × 1 micro-batches = 4 sequences"), "{out}");
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!((a.len(), b.len()), (50, 50));
    // The same rows in the same order: the steps differ only by the order of the
    // sums (halves, then averaged) of the loss and the gradient, which grows slowly
    // over the steps.
    let rel: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / x.abs()).collect();
    let worst = |r: &[f64]| r.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "loss, 1 × 4 against 2 × 2 rows: max rel diff {:.2e} in steps 1-10, {:.2e} in all 50",
        worst(&rel[..10]),
        worst(&rel)
    );
    assert!(rel[0] < 1e-6, "step 1 is the same forward, its loss summed in halves: {rel:?}");
    assert!(worst(&rel[..10]) < 1e-4 && worst(&rel) < 5e-3, "{rel:?}");
    let last = steps(&two).pop().unwrap();
    assert!(last["all_reduce_seconds"].as_f64().unwrap() >= 0.0 && last["step_seconds"].as_f64().unwrap() > 0.0);
}

/// The processes `mpirun` (process `parent`) started, by rank.
fn ranks(parent: u32) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // pid (comm) state ppid …: the parent is the second field after the name.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let rank = env
            .split(|&b| b == 0)
            .find_map(|v| std::str::from_utf8(v).ok()?.strip_prefix("OMPI_COMM_WORLD_RANK=")?.parse().ok());
        if let Some(rank) = rank {
            out.push((rank, pid));
        }
    }
    out
}

#[test]
fn a_killed_process_ends_the_job_and_the_run_resumes_as_if_uninterrupted() {
    let Some(mpirun) = mpirun() else { return };
    let dir = temp("mpi-kill");
    let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
    let every = ["--set", "training.eval_interval=10"];
    let (o, _) =
        wait(launch(mpirun, 2, &[strs(&tiny(&whole, 400, 2)), every.to_vec()].concat()), Duration::from_secs(300));
    assert!(o.status.success(), "{}", text(&o));

    let child = launch(mpirun, 2, &[strs(&tiny(&cut, 400, 2)), every.to_vec()].concat());
    let t0 = Instant::now();
    while steps(&cut).len() < 25 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the run did not reach step 25");
        std::thread::sleep(Duration::from_millis(20));
    }
    let found = ranks(child.id());
    let &(_, pid) = found.iter().find(|(r, _)| *r == 1).unwrap_or_else(|| panic!("no process 1 among {found:?}"));
    let killed = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let (o, took) = wait(child, END_WITHIN);
    assert!(!o.status.success(), "a job that lost a process must fail: {}", text(&o));
    let at = losses(&cut).len();
    eprintln!("process 1 killed at about step {at}: the job ended {took:.1?} later");
    assert!(at < 400, "the run had finished before the kill");

    let (o, _) = wait(launch(mpirun, 2, &["train", "--resume", cut.to_str().unwrap()]), Duration::from_secs(300));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming "), "{}", text(&o));
    assert_eq!(losses(&cut), losses(&whole), "the resumed run's losses equal the uninterrupted run's");
}

#[test]
fn an_error_on_one_process_ends_the_job_with_its_message() {
    let Some(mpirun) = mpirun() else { return };
    let dir = temp("mpi-error");
    let run = dir.path().join("run");
    let (o, _) = wait(launch(mpirun, 2, &strs(&tiny(&run, 5, 2))), Duration::from_secs(120));
    assert!(o.status.success(), "{}", text(&o));
    // Only process 0 looks at the run directory: it refuses, the other waits for it.
    let (o, took) = wait(launch(mpirun, 2, &strs(&tiny(&run, 5, 2))), END_WITHIN);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("error (process 0 of 2)") && out.contains("already holds a run"), "{out}");
    eprintln!("the job ended {took:.1?} after it started");
}

/// SIGTERM to `mpirun` reaches every process: they stop at the same step, process 0
/// saves `last/` and says so, and the job does not report success (each process
/// exits 143), so a following `&&` command does not run.
#[test]
fn sigterm_to_the_job_saves_and_the_job_does_not_report_success() {
    let Some(mpirun) = mpirun() else { return };
    let dir = temp("mpi-term");
    let run = dir.path().join("run");
    let child =
        launch(mpirun, 2, &[strs(&tiny(&run, 100_000, 2)), vec!["--set", "training.eval_interval=10"]].concat());
    let t0 = Instant::now();
    while steps(&run).len() < 15 {
        assert!(t0.elapsed() < Duration::from_secs(120), "the run did not reach step 15");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let (o, took) = wait(child, END_WITHIN);
    let out = text(&o);
    eprintln!("the job ended {took:.1?} after SIGTERM: {:?}", o.status);
    assert!(!o.status.success(), "an interrupted job must not report success: {out}");
    assert!(out.contains("interrupted at step") && run.join("last").exists(), "{out}");
}
