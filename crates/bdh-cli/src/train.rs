//! `bdh train`: train a preset on the built-in corpus or a file, with progress,
//! evaluation, samples and checkpoints; resumable.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use bdh::eval::EvalMetrics;
use bdh::io::checkpoint;
use bdh::train::run::{train_on, Event, RunOutcome};
use bdh::train::setup::{self, NewRun, Setup};
use bdh::train::{learning_rate, Collective};
use bdh::RunConfig;
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::ThreadsArgs;
use crate::stop::Stop;

/// Trains a model. With no arguments: the `recall` preset on the built-in corpus.
#[derive(clap::Args)]
pub struct Args {
    /// Preset name (recall, tiny, small, paper, gpt-tiny, gpt-small, gpt-nanogpt, bdh-nanogpt) or a run-config TOML file.
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
    /// With --init-from a run's model: keep what it learnt while training on the new
    /// data (`hlop`, or `hlop:k` for k components: each weight's gradient projected off
    /// the principal subspace of its inputs on the earlier run's data).
    #[arg(long, value_name = "METHOD", requires = "init_from")]
    continual: Option<String>,
    /// Continue the run in this directory exactly where its last checkpoint left off.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    #[command(flatten)]
    threads: ThreadsArgs,
    #[command(flatten)]
    device: crate::device::DeviceArgs,
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
    args.threads.size_pool()?;
    let Setup { run, tokenizer, resumed } = match &args.resume {
        Some(dir) => setup::resume(dir, &args.set)?,
        None => new_run(&args).setup()?,
    };
    let corpus = run.data.corpus_with(run.training.block_size, tokenizer).context("preparing the data")?;
    // A new run's directory is made (and runs/latest moved) once its data has opened.
    // Where the steps run, known before a new run's directory is made.
    let device = args.device.trainer(&run.model, !run.training.continual.is_none())?;
    let dir = run_dir(&args, resumed.as_ref().map(|(r, _)| r.path()), collective)?;
    let signals = Stop::on_signals()?;
    let stop = signals.flag();
    // A bar only on a terminal; a file or a pipe gets whole lines.
    let lines = args.quiet || collective.rank() != 0 || !std::io::stderr().is_terminal();
    let before = resumed.as_ref().map(|(_, before)| before);
    let bar = Progress::bar(lines, run.training.max_steps);
    // The device to name in the hint a stopped run prints, if not the CPU.
    let flag = args.device.flag();
    let mut progress =
        Progress { run: &run, dir: &dir, before, collective, stop, lines, bar, first: None, device: flag };
    let outcome =
        train_on(&run, &corpus, &dir, resumed.is_some(), stop, collective, device.as_deref(), |e| progress.on(e));
    progress.finish(outcome?, &signals)
}

/// The new run `args` ask for.
fn new_run(args: &Args) -> NewRun {
    NewRun {
        preset: args.preset.clone(),
        overrides: args
            .set
            .iter()
            .cloned()
            .chain(args.continual.iter().map(|m| format!("training.continual={m}")))
            .collect(),
        data: args.data.clone(),
        val_data: args.val_data.clone(),
        tokenizer: args.tokenizer.clone(),
        init_from: args.init_from.clone(),
    }
}

/// The run's directory: the resumed one, `--out`, or a fresh one that process 0
/// makes and tells the others.
fn run_dir(args: &Args, resumed: Option<&Path>, collective: &dyn Collective) -> anyhow::Result<PathBuf> {
    let dir = match (resumed, args.out.as_deref()) {
        (Some(d), _) | (None, Some(d)) => d.to_path_buf(),
        (None, None) if collective.rank() == 0 => fresh_run_dir(&args.preset)?,
        (None, None) => PathBuf::new(), // process 0's, below
    };
    let mut name = dir.to_string_lossy().into_owned().into_bytes();
    collective.broadcast_bytes(&mut name, 0)?;
    Ok(PathBuf::from(String::from_utf8_lossy(&name).into_owned()))
}

/// What a run shows as it goes: whole lines on standard output, and a progress
/// bar on standard error when that is a terminal. Only process 0 shows anything.
struct Progress<'a> {
    run: &'a RunConfig,
    dir: &'a Path,
    /// A resumed run's config before the overrides.
    before: Option<&'a RunConfig>,
    collective: &'a dyn Collective,
    stop: &'a AtomicBool,
    /// Whole lines instead of a bar.
    lines: bool,
    bar: ProgressBar,
    /// The step the run started at.
    first: Option<usize>,
    /// ` --device …` for a run on a device (empty on the CPU).
    device: &'static str,
}

impl Progress<'_> {
    /// A bar of `steps` steps, hidden if the run shows whole `lines` instead.
    fn bar(lines: bool, steps: usize) -> ProgressBar {
        let bar = if lines { ProgressBar::hidden() } else { ProgressBar::new(steps as u64) };
        // Everything but the bar fits in about 60 columns; the bar takes what is left.
        bar.set_style(
            ProgressStyle::with_template("{wide_bar} {pos}/{len} {msg} {elapsed}<{eta}").expect("valid template"),
        );
        bar
    }

    /// A line to standard output; if its reader has gone away (`bdh train | head`),
    /// the run stops and saves as after Ctrl-C instead of failing.
    fn print(&self, line: &str) {
        use std::io::Write;
        if self.collective.rank() == 0 && writeln!(std::io::stdout(), "{line}").is_err() {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    /// A line that goes around the bar, if there is one.
    fn say(&self, line: String) {
        if self.lines {
            self.print(&line)
        } else {
            self.bar.println(line)
        }
    }

    fn on(&mut self, e: Event) {
        let max = self.run.training.max_steps;
        match e {
            Event::Start { step, restarted, took_over_lock, device, .. } => {
                if let Some(pid) = took_over_lock {
                    self.say(format!("the run's lock was held by process {pid}, which no longer runs: taken over"));
                }
                if restarted {
                    self.say(format!(
                        "{} has no checkpoint yet (it stopped before its first): starting it again from its saved \
                         config",
                        self.dir.display()
                    ));
                }
                self.start(step, device)
            }
            Event::Step { step, loss, lr, tokens_per_second, .. } => {
                self.bar.set_position(step as u64);
                self.bar.set_message(format!("loss {loss:.3} lr {lr:.1e} {tokens_per_second:.0} tok/s"));
            }
            Event::Eval(m) => self.say(eval_line(m, max)),
            Event::Sample { step, prompt, text } => {
                self.say(format!("sample at step {step}:\n{prompt}\u{2502}{text}\n"))
            }
            Event::Saved(_) => {}
            Event::DeviceLost { step, error } => self.say(format!(
                "the device failed after step {step} ({error}): going on from the last checkpoint on a device opened \
                 again"
            )),
        }
    }

    /// The run has started at `step`: what it trains, and, resumed, what changed.
    /// Printed only now, so that a refused run prints only its error.
    fn start(&mut self, step: usize, device: Option<String>) {
        self.print(&self.run.to_toml());
        self.print(&format!("run directory: {}", self.dir.display()));
        self.describe(device);
        if let Some(before) = self.before {
            for change in self.run.changes(before) {
                self.print(&format!("changed on resume: {change}"));
            }
        }
        self.first = Some(step);
        crate::progress::start_clock_at(&self.bar, step as u64);
        let max = self.run.training.max_steps;
        if let (Some(before), true) = (self.before, step < max) {
            let (was, now) = (learning_rate(&before.training, step), learning_rate(&self.run.training, step));
            if was != now {
                self.say(format!(
                    "the learning-rate schedule is recomputed for the new settings: at step {step} the \
                     learning rate is {now:.3e} (it was {was:.3e} under the old schedule)"
                ));
            }
        }
        if self.before.is_some() {
            self.print(&format!("resuming {} at step {step} of {max}", self.dir.display()));
        } else if self.lines {
            self.say(format!("training from step {step} to {max}"));
        }
    }

    /// The model, the processes and how the synapse state is carried.
    fn describe(&self, device: Option<String>) {
        let (m, t) = (&self.run.model, &self.run.training);
        let on = device
            .map_or_else(|| crate::count(rayon::current_num_threads(), "thread", "threads"), |d| format!("on the {d}"));
        self.print(&format!("model: {}, {:.2} M parameters; {on}", m.describe(), m.param_count() as f64 / 1e6));
        let k = self.collective.size();
        if k > 1 {
            self.print(&format!(
                "data-parallel on {k} processes: global batch {k} × {} sequences × {} micro-batches = {} \
                 sequences of {} tokens per step",
                t.batch_size,
                t.grad_accum,
                k * t.batch_size * t.grad_accum,
                t.block_size
            ));
        }
        if t.carry_state {
            let how = if t.detach_state { ", no gradient through its read" } else { "" };
            self.print(&format!(
                "carrying the synapse state from batch to batch: {} streams, one per batch row{how}",
                t.batch_size
            ));
        }
    }

    /// How the run ended, its last evaluation, and its report page; the exit
    /// status says whether a signal stopped it.
    fn finish(self, outcome: RunOutcome, signals: &Stop) -> anyhow::Result<ExitCode> {
        self.bar.finish_and_clear();
        let (dir, max) = (self.dir.display(), self.run.training.max_steps);
        let ran = outcome.step - self.first.unwrap_or(outcome.step);
        let code = if outcome.interrupted { signals.exit_code(self.collective)? } else { ExitCode::SUCCESS };
        if outcome.interrupted {
            self.print(&format!(
                "interrupted at step {}; saved to {dir}/last (continue with --resume {dir}{})",
                outcome.step, self.device
            ));
        } else if ran == 0 {
            self.print(&format!(
                "{dir} is already finished: {} of {max} steps. To train longer, raise the step count: \
                 --resume {dir} --set training.max_steps=N (the learning-rate schedule is then recomputed for N steps)",
                outcome.step
            ));
            return Ok(ExitCode::SUCCESS);
        } else {
            let steps = if ran == 1 { "step" } else { "steps" };
            self.print(&format!(
                "done: {ran} {steps} in {:.1} s; checkpoints in {dir}/last and {dir}/best",
                outcome.seconds
            ));
        }
        if let Some(m) = &outcome.last_eval {
            let label = if m.step == outcome.step { "final" } else { "last evaluation" };
            self.print(&format!("{label}: {}", eval_line(m, max)));
        }
        if self.collective.rank() != 0 {
            return Ok(code);
        }
        match crate::report::write(self.dir, None, false) {
            Ok(page) => {
                self.print(&format!("report: {} (curves and samples; `bdh report {dir}` redraws it)", page.display()))
            }
            Err(e) => eprintln!("warning: no report page: {e:#}"),
        }
        Ok(code)
    }
}

/// An evaluation as one line: step, train and validation loss, bits per byte, accuracy.
fn eval_line(m: &EvalMetrics, max: usize) -> String {
    let train = m.train_loss.map_or(String::new(), |l| format!("train loss {l:.4}, "));
    let copy = match (m.copy_baseline(), m.eliminate_baseline(), m.answer_chance) {
        (Some(c), Some(e), _) => format!(" (copying {:.0}%, not given yet {:.0}%)", c * 100.0, e * 100.0),
        (_, _, Some(c)) => format!(" (chance {:.1}%)", c * 100.0),
        _ => String::new(),
    };
    let acc = m
        .answer_accuracy
        .map_or(String::new(), |a| format!(", answer accuracy {:.1}% of {}{copy}", a * 100.0, m.answers));
    let timescales = match m.retention.as_slice() {
        [] => String::new(),
        r => format!(", learned timescales 1/(1−γ) {}", timescales(r, &m.retention_spread)),
    };
    let delays = match m.delays.as_slice() {
        [] => String::new(),
        d => format!(", learned delays {}", d.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")),
    };
    let firing = match m.firing {
        Some((rate, target)) => format!(", firing {:.1}% (target {:.1}%)", rate * 100.0, target * 100.0),
        None => String::new(),
    };
    format!(
        "step {}/{max}: {train}val loss {:.4}, {:.3} bits/byte{acc}{timescales}{delays}{firing}",
        m.step, m.val_loss, m.bits_per_byte
    )
}

/// Each head's timescale 1/(1 − γ_h) in tokens, `∞` for γ = 1; with a retention per
/// neuron (`spread`: each head's 10%, 50%, 90% quantiles of γ), each head's median and
/// the range of its middle 80% of neurons.
pub(crate) fn timescales(retention: &[f32], spread: &[[f32; 3]]) -> String {
    let one = |g: f32| if g >= 1.0 { "∞".to_string() } else { format!("{:.1}", 1.0 / (1.0 - g as f64)) };
    match spread {
        [] => retention.iter().map(|&g| one(g)).collect::<Vec<_>>().join(", "),
        _ => spread
            .iter()
            .map(|[lo, mid, hi]| format!("median {} (10–90%: {}–{})", one(*mid), one(*lo), one(*hi)))
            .collect::<Vec<_>>()
            .join("; "),
    }
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
