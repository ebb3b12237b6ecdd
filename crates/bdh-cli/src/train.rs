//! `bdh train`: train a preset on the built-in corpus or a file, with progress,
//! evaluation, samples and checkpoints; resumable.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use bdh::data::{Tokenizer, TOKENIZER_FILE};
use bdh::eval::EvalMetrics;
use bdh::io::checkpoint;
use bdh::train::run::{train_parallel, Event};
use bdh::train::{learning_rate, Collective};
use bdh::RunConfig;
use indicatif::{ProgressBar, ProgressStyle};

/// Trains a model. With no arguments: the `recall` preset on the built-in corpus.
#[derive(clap::Args)]
pub struct Args {
    /// Preset name (recall, tiny, small, paper, gpt-tiny, gpt-small) or a run-config TOML file.
    #[arg(long, default_value = "recall", conflicts_with = "resume")]
    preset: String,
    /// Override a config key, e.g. `--set training.lr=3e-4` (repeatable). With
    /// --resume it changes the resumed run's config, and each change is printed.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Train on this file's bytes (90% train / 10% validation) instead of the built-in corpus.
    #[arg(long, conflicts_with = "resume")]
    data: Option<PathBuf>,
    /// Validate on this file instead of the last 10% of --data.
    #[arg(long, requires = "data")]
    val_data: Option<PathBuf>,
    /// Read --data with this BPE tokenizer (a Hugging Face tokenizer.json, e.g. from
    /// `bdh tokenizer train`) instead of as bytes; the model's vocab_size follows it
    /// and the run keeps a copy as its tokenizer.json.
    #[arg(long, value_name = "FILE", requires = "data", conflicts_with = "resume")]
    tokenizer: Option<PathBuf>,
    /// Run directory (default: runs/<preset>-<date>-<time>, and runs/latest links to it).
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Start from this model's weights (a run directory, checkpoint, safetensors or
    /// .pt) instead of fresh ones; the run takes the model's config (the preset's
    /// [training] and [data] stay), e.g. to train a copy further on other data.
    #[arg(long, value_name = "MODEL", conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Continue the run in this directory exactly where its last checkpoint left off.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar: one line per evaluation (also the default when stderr is
    /// not a terminal, e.g. `bdh train > log 2>&1`).
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let processes = crate::processes::Processes::join()?;
    let result = run_on(args, processes.collective());
    processes.finish(result)
}

/// Trains as one of the processes of `collective`; process 0 alone prints and
/// writes the run directory.
fn run_on(args: Args, collective: &dyn Collective) -> anyhow::Result<ExitCode> {
    crate::set_threads(args.threads)?;
    let speaker = collective.rank() == 0;
    let (mut run, dir, before) = match &args.resume {
        Some(dir) => {
            if let Some(s) = args.set.iter().find(|s| s.trim_start().starts_with("model.")) {
                anyhow::bail!(
                    "a run's model is fixed: --resume cannot change it (`--set {s}`); start a new run, or one \
                     --init-from this one"
                );
            }
            let path = dir.join("config.toml");
            let text = std::fs::read_to_string(&path).with_context(|| {
                format!("{} is not a run directory to resume (no readable config.toml)", dir.display())
            })?;
            let mut before = RunConfig::from_toml(&text, &path, &[])?;
            let mut run = RunConfig::from_toml(&text, &path, &args.set)?;
            // The run's own copy of its tokenizer, whatever became of the original.
            let own = dir.join(TOKENIZER_FILE);
            if own.is_file() {
                before.data.tokenizer = Some(own.clone());
                run.data.tokenizer = Some(own);
            }
            (run, dir.clone(), Some(before))
        }
        None => {
            let mut run = RunConfig::resolve(&args.preset, &args.set)?;
            if let Some(d) = &args.data {
                run.data.path = Some(d.clone());
                run.data.val_path = args.val_data.clone();
            }
            // A model to start from brings its tokenizer, unless another is given.
            run.data.tokenizer =
                args.tokenizer.clone().or_else(|| args.init_from.as_deref().and_then(checkpoint::tokenizer_path));
            if let Some(m) = &args.init_from {
                if let Some(s) = args.set.iter().find(|s| s.trim_start().starts_with("model.")) {
                    anyhow::bail!("--init-from takes the model's config from the model; `--set {s}` cannot change it");
                }
                let path = checkpoint::model_path(m)?;
                run.model = checkpoint::load_config(&path, None)
                    .with_context(|| format!("reading the config of the model to start from, {}", path.display()))?;
                run.training.init_from = Some(m.clone());
                run.validate()?;
            }
            (run, PathBuf::new(), None)
        }
    };
    let tokenizer = run.data.load_tokenizer().context("loading the tokenizer")?;
    if args.resume.is_none() && args.init_from.is_none() && tokenizer != Tokenizer::Bytes {
        if let Some(s) = args.set.iter().find(|s| s.trim_start().starts_with("model.vocab_size")) {
            anyhow::bail!(
                "the vocabulary size follows the tokenizer ({}); `--set {s}` cannot change it",
                tokenizer.vocab_size()
            );
        }
        run.model.set_vocab_size(tokenizer.vocab_size());
        run.validate()?;
    }
    let corpus = run.data.corpus_with(run.training.block_size, tokenizer).context("preparing the data")?;
    // A new run's directory is made (and runs/latest moved) once its data has opened.
    let dir = match (&args.resume, &args.out) {
        (Some(_), _) => dir,
        (None, Some(d)) => d.clone(),
        (None, None) if speaker => fresh_run_dir(&args.preset)?,
        (None, None) => PathBuf::new(), // process 0's, below
    };
    let mut name = dir.to_string_lossy().into_owned().into_bytes();
    collective.broadcast_bytes(&mut name, 0)?;
    let dir = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C and SIGTERM handler")?;
    // Lines to stdout; if its reader goes away (`bdh train | head`), the run stops
    // and saves as after Ctrl-C instead of failing.
    let print = |line: &str| {
        use std::io::Write;
        if speaker && writeln!(std::io::stdout(), "{line}").is_err() {
            stop.store(true, Ordering::SeqCst);
        }
    };
    // A bar only on a terminal; a file or a pipe gets whole lines.
    let lines = args.quiet || !speaker || !std::io::stderr().is_terminal();
    let max = run.training.max_steps;
    let bar = if lines { ProgressBar::hidden() } else { ProgressBar::new(max as u64) };
    // Everything but the bar fits in about 60 columns; the bar takes what is left.
    bar.set_style(
        ProgressStyle::with_template("{wide_bar} {pos}/{len} {msg} {elapsed}<{eta}").expect("valid template"),
    );
    let say = |line: String| if lines { print(&line) } else { bar.println(line) };
    let mut first = None;
    let outcome = train_parallel(&run, &corpus, &dir, args.resume.is_some(), &stop, collective, |e| match e {
        Event::Start { step, .. } => {
            // Printed once the run has started: a refused one prints only its error.
            print(&run.to_toml());
            print(&format!("run directory: {}", dir.display()));
            let m = &run.model;
            print(&format!(
                "model: {}, {:.2} M parameters; {} threads",
                m.describe(),
                m.param_count() as f64 / 1e6,
                rayon::current_num_threads()
            ));
            if collective.size() > 1 {
                let (t, k) = (&run.training, collective.size());
                print(&format!(
                    "data-parallel on {k} processes: global batch {k} × {} sequences × {} micro-batches = {} \
                     sequences of {} tokens per step",
                    t.batch_size,
                    t.grad_accum,
                    k * t.batch_size * t.grad_accum,
                    t.block_size
                ));
            }
            if run.training.carry_state {
                let how = if run.training.detach_state { ", no gradient through its read" } else { "" };
                print(&format!(
                    "carrying the synapse state from batch to batch: {} streams, one per batch row{how}",
                    run.training.batch_size
                ));
            }
            if let Some(before) = &before {
                for change in run.changes(before) {
                    print(&format!("changed on resume: {change}"));
                }
            }
            first = Some(step);
            bar.set_position(step as u64);
            if let (Some(before), true) = (&before, step < max) {
                let (was, now) = (learning_rate(&before.training, step), learning_rate(&run.training, step));
                if was != now {
                    say(format!(
                        "the learning-rate schedule is recomputed for the new settings: at step {step} the \
                         learning rate is {now:.3e} (it was {was:.3e} under the old schedule)"
                    ));
                }
            }
            if lines {
                say(format!("training from step {step} to {max}"));
            }
        }
        Event::Step { step, loss, lr, tokens_per_second, .. } => {
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.3} lr {lr:.1e} {tokens_per_second:.0} tok/s"));
        }
        Event::Eval(m) => say(eval_line(m, max)),
        Event::Sample { step, prompt, text } => say(format!("sample at step {step}:\n{prompt}\u{2502}{text}\n")),
        Event::Saved(_) => {}
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    let ran = outcome.step - first.unwrap_or(outcome.step);
    if outcome.interrupted {
        print(&format!(
            "interrupted at step {}; saved to {}/last (continue with --resume {})",
            outcome.step,
            dir.display(),
            dir.display()
        ));
    } else if ran == 0 {
        print(&format!(
            "{} is already finished: {} of {max} steps. To train longer, raise the step count: \
             --resume {} --set training.max_steps=N (the learning-rate schedule is then recomputed for N steps)",
            dir.display(),
            outcome.step,
            dir.display()
        ));
        return Ok(ExitCode::SUCCESS);
    } else {
        let steps = if ran == 1 { "step" } else { "steps" };
        print(&format!(
            "done: {ran} {steps} in {:.1} s; checkpoints in {}/last and {}/best",
            outcome.seconds,
            dir.display(),
            dir.display()
        ));
    }
    if let Some(m) = &outcome.last_eval {
        let label = if m.step == outcome.step { "final" } else { "last evaluation" };
        print(&format!("{label}: {}", eval_line(m, max)));
    }
    if !speaker {
        return Ok(ExitCode::SUCCESS);
    }
    match crate::report::write(&dir, None, false) {
        Ok(page) => print(&format!(
            "report: {} (curves and samples; `bdh report {}` redraws it)",
            page.display(),
            dir.display()
        )),
        Err(e) => eprintln!("warning: no report page: {e:#}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// An evaluation as one line: step, train and validation loss, bits per byte, accuracy.
fn eval_line(m: &EvalMetrics, max: usize) -> String {
    let train = m.train_loss.map_or(String::new(), |l| format!("train loss {l:.4}, "));
    let copy = m.copy_baseline().map_or(String::new(), |c| format!(" (copying {:.0}%)", c * 100.0));
    let acc = m
        .answer_accuracy
        .map_or(String::new(), |a| format!(", answer accuracy {:.1}% of {}{copy}", a * 100.0, m.answers));
    format!("step {}/{max}: {train}val loss {:.4}, {:.3} bits/byte{acc}", m.step, m.val_loss, m.bits_per_byte)
}

/// `runs/<preset>-<local date>-<time>` (with `-2`, `-3`, … if taken), and
/// `runs/latest` switched to it.
fn fresh_run_dir(preset: &str) -> anyhow::Result<PathBuf> {
    let name = Path::new(preset).file_stem().map_or("run".into(), |s| s.to_string_lossy().into_owned());
    let stamp = jiff::ZonedDateTime::now().strftime("%Y%m%d-%H%M%S").to_string();
    let runs = Path::new("runs");
    std::fs::create_dir_all(runs).context("creating runs/")?;
    let base = format!("{name}-{stamp}");
    let mut dir_name = base.clone();
    for k in 2.. {
        match std::fs::create_dir(runs.join(&dir_name)) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => dir_name = format!("{base}-{k}"),
            Err(e) => return Err(e).with_context(|| format!("creating runs/{dir_name}")),
        }
    }
    checkpoint::relink(&runs.join("latest"), Path::new(&dir_name)).context("pointing runs/latest at the new run")?;
    Ok(runs.join(dir_name))
}
