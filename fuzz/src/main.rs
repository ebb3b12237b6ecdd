//! `bdh-fuzz`: a mutation fuzzer for the parsers of files a bdh user may be handed
//! (`.pt`, safetensors, `config.json`, run TOML, saved states, `tokenizer.json`) and for
//! the server's requests (`http`: bodies and headers into its router, in process), on
//! stable Rust and in one process: `cargo fuzz` needs nightly.
//!
//! ```text
//! cargo run --release -p bdh-fuzz -- TARGET SECONDS [SEED_DIR]
//! ```
//!
//! It mutates the seeds (the repository's own files unless SEED_DIR is given), feeds
//! each input to the target inside `catch_unwind` for SECONDS seconds (a progress
//! line every 10 s: executions, accepted, distinct errors, panics, time left), keeps inputs that
//! give an error not seen before as new seeds, and reports executions, distinct
//! errors, the slowest input and every panic (saved to a file; the exit status is
//! then 1). An input still running after 10 s is saved as a hang (exit status 3).
//!
//! An allocation that fails aborts the process and cannot be caught. Run it under
//! a memory limit so that an unbounded allocation fails instead of swapping, and
//! with overflow checks in the parsers so that integer overflow panics as in a
//! debug build (a shell with the limit, so that cargo itself is not under it):
//!
//! ```text
//! cargo --config 'profile.release.package.bdh.overflow-checks=true' build --release -p bdh-fuzz
//! (ulimit -v 4000000; target/release/bdh-fuzz pt 180)   # 4 000 000 KiB: ~4 GB
//! ```
//!
//! The input under test is always in `current-input` of the output directory
//! (`$BDH_FUZZ_OUT`, by default `<temp>/bdh-fuzz/<target>`), so after an abort that
//! file is the reproducer. `BDH_FUZZ_SEED` replays a run's mutations.

mod http;
mod mutate;
mod targets;

use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use mutate::Rng;
use targets::Target;

/// Largest input made; the seeds are under 200 KB.
const MAX_INPUT: usize = 1 << 20;
/// Inputs kept for mutation, seeds included.
const MAX_CORPUS: usize = 2000;
/// An input that runs this long is a hang.
const HANG: Duration = Duration::from_secs(10);
/// Characters of an error message kept.
const MAX_MESSAGE: usize = 240;

/// Distinct errors listed in the report.
const LISTED: usize = 40;
/// How often a progress line is printed.
const PROGRESS: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bdh-fuzz: {e}");
            ExitCode::from(2)
        }
    }
}

/// Fuzzes; `Ok(false)` if anything panicked.
fn run() -> Result<bool, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = format!(
        "usage: bdh-fuzz TARGET SECONDS [SEED_DIR]\n  TARGET: {}\n  SECONDS: how long to fuzz, in seconds\n  \
         SEED_DIR: files to start from (default: the repository's own)",
        targets::NAMES.join(", ")
    );
    if matches!(args.as_slice(), [h] if h == "-h" || h == "--help") {
        println!("{usage}");
        return Ok(true);
    }
    let (name, seconds, seed_dir) = match args.as_slice() {
        [t, s] => (t, s, None),
        [t, s, d] => (t, s, Some(PathBuf::from(d))),
        _ => return Err(usage),
    };
    let seconds: u64 = seconds.parse().map_err(|_| format!("SECONDS `{seconds}` is not a whole number\n{usage}"))?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::var_os("BDH_FUZZ_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("bdh-fuzz").join(name));
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let target = Target::new(name, &root, &out)?;
    let seeds = match &seed_dir {
        Some(dir) => read_dir_files(dir)?,
        None => target.seeds(&root, &out)?,
    };
    if seeds.is_empty() {
        return Err("no seeds".into());
    }
    let rng_seed = match std::env::var("BDH_FUZZ_SEED") {
        Ok(s) => s.parse().map_err(|_| format!("BDH_FUZZ_SEED `{s}` is not a number"))?,
        Err(_) => SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64),
    };
    let current = out.join("current-input");
    println!("target {name}: {} seeds, {seconds} s, BDH_FUZZ_SEED={rng_seed}", seeds.len());
    println!("input under test: {}", current.display());
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(&current, seed).map_err(|e| format!("writing {}: {e}", current.display()))?;
        match target.run(seed, &current) {
            Ok(()) => println!("seed {i}: accepted"),
            Err(e) => println!("seed {i}: {e}"),
        }
    }

    // A panic is reported here with its input, not printed by the default hook.
    let last_panic: Arc<Mutex<Option<String>>> = Arc::default();
    let hook_slot = Arc::clone(&last_panic);
    panic::set_hook(Box::new(move |info| *hook_slot.lock().unwrap() = Some(info.to_string())));
    let running_since = watchdog(&current, &out);

    let mut rng = Rng::new(rng_seed);
    let n_seeds = seeds.len();
    let mut corpus = seeds;
    let mut errors: HashMap<String, (usize, String)> = HashMap::new();
    let mut panics: Vec<(String, PathBuf)> = Vec::new();
    let (mut execs, mut accepted) = (0u64, 0u64);
    let mut slowest = (Duration::ZERO, PathBuf::new());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut next_progress = Instant::now() + PROGRESS;
    while Instant::now() < deadline {
        if Instant::now() >= next_progress {
            next_progress += PROGRESS;
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            println!(
                "{execs} executions, {accepted} accepted, {} distinct errors, {} panics; {left} s left",
                errors.len(),
                panics.len()
            );
        }
        let base = &corpus[rng.below(corpus.len())];
        let input = target.mutate(&mut rng, base, &corpus, MAX_INPUT);
        std::fs::write(&current, &input).map_err(|e| format!("writing {}: {e}", current.display()))?;
        let started = Instant::now();
        *running_since.lock().unwrap() = Some(started);
        let result = panic::catch_unwind(AssertUnwindSafe(|| target.run(&input, &current)));
        *running_since.lock().unwrap() = None;
        let took = started.elapsed();
        execs += 1;
        if took > slowest.0 {
            slowest = (took, out.join("slowest-input"));
            std::fs::write(&slowest.1, &input).map_err(|e| format!("writing {}: {e}", slowest.1.display()))?;
        }
        match result {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(e)) => {
                // Errors echo the input: keep a bounded prefix, so the table of distinct
                // errors stays small over a long run (else it grows past any memory limit).
                let message: String = e.to_string().chars().take(MAX_MESSAGE).collect();
                let key: String = normalise(&message, &current);
                let entry = errors.entry(key).or_insert((0, message));
                entry.0 += 1;
                if entry.0 == 1 {
                    keep(&mut corpus, n_seeds, input, &mut rng);
                }
            }
            Err(_) => {
                let message = last_panic.lock().unwrap().take().unwrap_or_else(|| "(no message)".into());
                let location = message.lines().next().unwrap_or_default().to_string();
                if panics.iter().all(|(m, _)| m.lines().next() != Some(location.as_str())) {
                    let file = out.join(format!("panic-{}", panics.len() + 1));
                    std::fs::write(&file, &input).map_err(|e| format!("writing {}: {e}", file.display()))?;
                    println!("PANIC ({}): {message}", file.display());
                    panics.push((message, file));
                }
            }
        }
    }
    report(name, seconds, execs, accepted, &errors, &panics, &slowest);
    let mut all: Vec<&String> = errors.values().map(|(_, example)| example).collect();
    all.sort();
    let listing = out.join("errors.txt");
    std::fs::write(&listing, all.iter().map(|e| format!("{e}\n")).collect::<String>())
        .map_err(|e| format!("writing {}: {e}", listing.display()))?;
    println!("every distinct error, one example each: {}", listing.display());
    Ok(panics.is_empty())
}

/// Starts a thread that, when one input has run longer than [`HANG`], saves it and
/// ends the process; the returned slot holds when the current input started.
fn watchdog(current: &Path, out: &Path) -> Arc<Mutex<Option<Instant>>> {
    let since: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (slot, current, hang) = (Arc::clone(&since), current.to_path_buf(), out.join("hang-input"));
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(250));
        if slot.lock().unwrap().is_some_and(|t| t.elapsed() > HANG) {
            let _ = std::fs::copy(&current, &hang);
            eprintln!("HANG: an input has run over {HANG:?}; saved to {}", hang.display());
            std::process::exit(3);
        }
    });
    since
}

/// Adds `input` to the corpus, replacing a kept input (never a seed) once it is full.
fn keep(corpus: &mut Vec<Vec<u8>>, n_seeds: usize, input: Vec<u8>, rng: &mut Rng) {
    if corpus.len() < MAX_CORPUS {
        corpus.push(input);
    } else if corpus.len() > n_seeds {
        let at = n_seeds + rng.below(corpus.len() - n_seeds);
        corpus[at] = input;
    }
}

/// An error message with the input's path, everything quoted, any quoted lines of
/// the input (as TOML errors show them) and every number taken out: a word holding
/// a digit (sizes, offsets, `0x1f`) becomes `#`, and so does a run of them with
/// their signs and separators (`-1.5e-3`, `[2, 16]`, `3..=7`), so that errors
/// differing only in numbers count as one.
fn normalise(message: &str, input: &Path) -> String {
    let message = message.replace(&*input.to_string_lossy(), "<input>");
    let snippet = |line: &str| {
        let t = line.trim_start().trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
        t.starts_with('|') || t.starts_with('^')
    };
    let (mut key, mut word) = (String::new(), String::new());
    let mut quote: Option<char> = None;
    let end_word = |key: &mut String, word: &mut String| {
        key.push_str(if word.chars().any(|c| c.is_ascii_digit()) { "#" } else { word });
        word.clear();
    };
    for c in message.lines().filter(|l| !snippet(l)).collect::<Vec<_>>().join("\n").chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => continue,
            None if c.is_alphanumeric() || c == '_' => {
                word.push(c);
                continue;
            }
            None if c == '`' || c == '"' => quote = Some(c),
            None => {}
        }
        end_word(&mut key, &mut word);
        key.push(c);
    }
    end_word(&mut key, &mut word);
    numbers_as_one(&key).chars().take(160).collect()
}

/// `key` with each run of `#`s joined by signs and separators as one `#`.
fn numbers_as_one(key: &str) -> String {
    let joins = |c: char| ".,:;/+-×x= _".contains(c);
    let chars: Vec<char> = key.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        // A sign before a number is part of it.
        if "+-".contains(chars[i]) && chars.get(i + 1) == Some(&'#') {
            i += 1;
            continue;
        }
        out.push(chars[i]);
        if chars[i] == '#' {
            // Past separators to another `#`: all one number.
            loop {
                let mut j = i + 1;
                while j < chars.len() && joins(chars[j]) {
                    j += 1;
                }
                if j > i + 1 && chars.get(j) == Some(&'#') {
                    i = j;
                } else {
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

fn read_dir_files(dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("listing {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))).collect()
}

fn report(
    name: &str,
    seconds: u64,
    execs: u64,
    accepted: u64,
    errors: &HashMap<String, (usize, String)>,
    panics: &[(String, PathBuf)],
    slowest: &(Duration, PathBuf),
) {
    println!("\n== {name}: {execs} executions in {seconds} s ({} /s)", execs / seconds.max(1));
    println!("accepted: {accepted}; distinct errors: {}; panics: {}", errors.len(), panics.len());
    println!("slowest input: {:.1?} ({})", slowest.0, slowest.1.display());
    let mut by_count: Vec<_> = errors.values().collect();
    by_count.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    for (count, example) in by_count.iter().take(LISTED) {
        let short: String = example.replace('\n', " ⏎ ").chars().take(200).collect();
        println!("{count:>9}  {short}");
    }
    if by_count.len() > LISTED {
        println!("          … and {} more", by_count.len() - LISTED);
    }
    for (message, file) in panics {
        println!("PANIC, input {}:\n{message}", file.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_differing_in_numbers_and_names_are_one() {
        let input = Path::new("/tmp/in");
        let a = normalise("/tmp/in: opcode 0x9a at byte 31 in `w1`\n  |\n3 | x = 1\n  | ^", input);
        let b = normalise("/tmp/in: opcode 0xff at byte 7 in `other`", input);
        assert_eq!(a, "<input>: opcode # at byte # in ``");
        assert_eq!(a, b);
    }

    #[test]
    fn errors_differing_only_in_how_their_numbers_are_written_are_one() {
        let input = Path::new("/tmp/in");
        let one = |m: &str| normalise(m, input);
        assert_eq!(one("lr -1.5e-3 is not positive"), one("lr 2 is not positive"));
        assert_eq!(one("lr -1.5e-3 is not positive"), "lr # is not positive");
        assert_eq!(one("shape [2, 16] not [2, 16, 256]"), "shape [#] not [#]");
        assert_eq!(one("layer in 1..=3, not 7"), one("layer in 1..=12, not 0"));
        assert_eq!(one("at 3:14"), one("at 120:7"));
        assert_ne!(one("a - b"), one("a # b"), "words are kept");
    }
}
