//! `bdh train`: train a preset on the built-in corpus or a file, with progress,
//! evaluation, samples and checkpoints; resumable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bdh::train::run::{train, Event};
use bdh::RunConfig;
use indicatif::{ProgressBar, ProgressStyle};

/// Trains a model. With no arguments: the `small` preset on the built-in corpus.
#[derive(clap::Args)]
pub struct Args {
    /// Preset name (tiny, small, paper) or a run-config TOML file.
    #[arg(long, default_value = "small")]
    preset: String,
    /// Override a config key, e.g. `--set training.lr=3e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Train on this file's bytes (90% train / 10% validation) instead of the built-in corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validate on this file instead of the last 10% of --data.
    #[arg(long, requires = "data")]
    val_data: Option<PathBuf>,
    /// Run directory (default: runs/<preset>-<unix time>).
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this directory exactly where its last checkpoint left off.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar (one line per evaluation instead).
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::set_threads(args.threads)?;
    let (run, dir) = match &args.resume {
        Some(dir) => {
            let path = dir.join("config.toml");
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            (RunConfig::from_toml(&text, &path, &args.set)?, dir.clone())
        }
        None => {
            let mut run = RunConfig::resolve(&args.preset, &args.set)?;
            if let Some(d) = &args.data {
                run.data.path = Some(d.clone());
                run.data.val_path = args.val_data.clone();
            }
            let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let name =
                PathBuf::from(&args.preset).file_stem().map_or("run".into(), |s| s.to_string_lossy().into_owned());
            (run, args.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/{name}-{stamp}"))))
        }
    };
    let corpus = run.data.corpus(run.training.block_size).context("preparing the data")?;
    println!("{}", run.to_toml());
    println!("run directory: {}", dir.display());
    let m = &run.model;
    println!(
        "model: {}, {:.2} M parameters; {} threads",
        m.describe(),
        m.param_count() as f64 / 1e6,
        rayon::current_num_threads()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C and SIGTERM handler")?;

    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(run.training.max_steps as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]")
            .expect("valid template"),
    );
    let say = |line: String| if args.quiet { println!("{line}") } else { bar.println(line) };
    let outcome = train(&run, &corpus, &dir, args.resume.is_some(), &stop, |e| match e {
        Event::Start { step, .. } => bar.set_position(step as u64),
        Event::Step { step, loss, lr, tokens_per_second, .. } => {
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {tokens_per_second:.0} tok/s"));
        }
        Event::Eval(m) => {
            let acc = m
                .answer_accuracy
                .map_or(String::new(), |a| format!(", answer accuracy {:.1}% of {}", a * 100.0, m.answers));
            say(format!("step {}: val loss {:.4}, {:.3} bits/byte{acc}", m.step, m.val_loss, m.bits_per_byte));
        }
        Event::Sample { step, prompt, text } => say(format!("sample at step {step}:\n{prompt}\u{2502}{text}\n")),
        Event::Saved(_) => {}
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    if outcome.interrupted {
        println!(
            "interrupted at step {}; saved to {}/last (continue with --resume {})",
            outcome.step,
            dir.display(),
            dir.display()
        );
    } else {
        println!(
            "done: {} steps in {:.1} s; checkpoints in {}/last and {}/best",
            outcome.step,
            outcome.seconds,
            dir.display(),
            dir.display()
        );
    }
    if let Some(m) = &outcome.last_eval {
        let acc = m.answer_accuracy.map_or(String::new(), |a| format!(", answer accuracy {:.1}%", a * 100.0));
        println!("final: val loss {:.4}, {:.3} bits/byte{acc}", m.val_loss, m.bits_per_byte);
    }
    Ok(ExitCode::SUCCESS)
}
