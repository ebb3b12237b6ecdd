//! `bdh compare`: BDH against the GPT baseline at matched parameter counts, on the
//! same batches: each family's learning rate swept at each size, then the chosen
//! rate trained with several seeds; a table (also at equal compute) and a page.

mod table;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use bdh::data::Corpus;
use bdh::io::run_dir::{lock_dir, RunDir};
use bdh::train::compare::{choose, continues, pick, rates, run_config, unigram_loss, Size};
use bdh::train::run::{train_on, Event};
use bdh::train::Single;
use bdh::{ModelConfig, RunConfig};

use crate::args::ThreadsArgs;
use crate::progress::Job;
use crate::provenance::Provenance;
use crate::stop::Stop;
use table::{Comparison, Finished, Row};

/// Trains BDH and GPT at each size on the same batches and compares them.
#[derive(clap::Args)]
pub struct Args {
    /// Train on this file (90% train / 10% validation) instead of the built-in corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Sizes to run, comma-separated: xs (0.13 M parameters), s (0.49 M), m (1.6 M).
    #[arg(long, value_delimiter = ',', default_value = "xs,s,m")]
    sizes: Vec<String>,
    /// Training tokens of each run that counts (each step reads 8 × 256).
    #[arg(long, default_value_t = 700_000)]
    tokens: usize,
    /// Training tokens of each run of the learning-rate sweep (default: --tokens).
    #[arg(long)]
    sweep_tokens: Option<usize>,
    /// Peak learning rates BDH tries at each size (default 1e-3,2e-3,4e-3,8e-3,1.6e-2).
    #[arg(long, value_delimiter = ',')]
    bdh_rates: Vec<f64>,
    /// Peak learning rates the GPT tries at each size (default 1e-3,2e-3,4e-3,1e-2,2e-2).
    #[arg(long, value_delimiter = ',')]
    gpt_rates: Vec<f64>,
    /// Seeds of the runs at the chosen rate (the sweep uses the first, and its run at
    /// the chosen rate is that seed's when --sweep-tokens is --tokens).
    #[arg(long, value_delimiter = ',', default_value = "1337,1,2")]
    seeds: Vec<u64>,
    /// Directory of the runs, the table and the report (default: runs/compare-<date>-<time>).
    /// Runs already there are continued if they were started with the same settings
    /// (finished ones are kept as they are); other settings are refused.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    threads: ThreadsArgs,
    /// Where every run trains: the CPU, or a GPU (BDH and the GPT alike).
    #[command(flatten)]
    device: crate::device::DeviceArgs,
}

/// Most rates a sweep tries, and most seeds: a bound before anything is planned.
const MOST: usize = 16;

/// One run to train: where, with what, and what it is for.
struct Planned {
    dir: PathBuf,
    run: RunConfig,
    what: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.threads.size_pool()?;
    let sizes = pick(&args.sizes)?;
    for (flag, n) in [("--bdh-rates", args.bdh_rates.len()), ("--gpt-rates", args.gpt_rates.len())] {
        anyhow::ensure!(n <= MOST, "{flag}: {n} rates; give at most {MOST}");
    }
    anyhow::ensure!((1..=MOST).contains(&args.seeds.len()), "--seeds: give 1 to {MOST} seeds");
    if let Some(bad) = args.bdh_rates.iter().chain(&args.gpt_rates).find(|r| !(r.is_finite() && **r > 0.0)) {
        anyhow::bail!("a learning rate of {bad}: give positive numbers");
    }
    let seeds: Vec<f64> = args.seeds.iter().map(|&s| s as f64).collect();
    for (flag, values) in [("--seeds", &seeds), ("--bdh-rates", &args.bdh_rates), ("--gpt-rates", &args.gpt_rates)] {
        let mut seen = values.clone();
        seen.sort_by(f64::total_cmp);
        seen.dedup();
        anyhow::ensure!(seen.len() == values.len(), "{flag}: each value once");
    }
    let mut data = RunConfig::resolve("small", &[])?.data;
    data.path = args.data.clone();
    let out = match &args.out {
        Some(d) => d.clone(),
        None => PathBuf::from(format!("runs/compare-{}", jiff::ZonedDateTime::now().strftime("%Y%m%d-%H%M%S"))),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    crate::args::check_writable(&out.join("table.md"), "--out")?;
    // One comparison per folder at a time (each run in it is locked again by its training).
    let lock = lock_dir(&out)?;
    if let Some(pid) = lock.took_over() {
        println!("{} was locked by process {pid}, which no longer runs: taken over", out.display());
    }
    let sweep_tokens = args.sweep_tokens.unwrap_or(args.tokens);
    let families: Vec<(&Size, ModelConfig, Vec<f64>)> = sizes
        .iter()
        .flat_map(|s| [(s, ModelConfig::Bdh(s.bdh.clone())), (s, ModelConfig::Gpt(s.gpt.clone()))])
        .map(|(s, m)| {
            let given = if matches!(m, ModelConfig::Bdh(_)) { &args.bdh_rates } else { &args.gpt_rates };
            let tried = if given.is_empty() { rates(&m) } else { given.clone() };
            (s, m, tried)
        })
        .collect();
    let sweep_seed = args.seeds[0];
    let full = run_config(families[0].1.clone(), args.tokens, &data, 1e-3, sweep_seed)?;
    let corpus = data.corpus(full.training.block_size).context("preparing the data")?;
    let sweep_steps = run_config(families[0].1.clone(), sweep_tokens, &data, 1e-3, sweep_seed)?.training.max_steps;
    // The sweep's run at the chosen rate is the first seed's run when their budgets agree.
    let shared = usize::from(sweep_tokens == args.tokens);
    let runs = families.iter().map(|f| f.2.len() + args.seeds.len() - shared).sum::<usize>();
    println!(
        "{} families × sizes; each rate of a sweep {} tokens ({sweep_steps} steps), each seed {} tokens ({} steps), \
         on {}; into {}",
        families.len(),
        sweep_steps * 8 * 256,
        full.training.max_steps * 8 * 256,
        full.training.max_steps,
        args.data.as_ref().map_or("the built-in corpus".into(), |p| p.display().to_string()),
        out.display()
    );
    let total =
        families.iter().map(|f| f.2.len() * sweep_steps + (args.seeds.len() - shared) * full.training.max_steps).sum();
    let signals = Stop::on_signals()?;
    let mut trainer = Trainer::new(&corpus, signals.flag(), total, runs, &args.device);
    let mut rows = Vec::new();
    for (size, model, tried) in &families {
        let family = table::family(model);
        let home = out.join(format!("{}-{}", size.name, family.to_lowercase()));
        let mut sweep = Vec::new();
        for &lr in tried {
            let run = run_config(model.clone(), sweep_tokens, &data, lr, sweep_seed)?;
            let what = format!("{} {family} lr {lr:e}", size.name);
            let Some(f) = trainer.train(Planned { dir: home.join(format!("lr-{lr:e}")), run, what })? else {
                return interrupted(&signals);
            };
            sweep.push((lr, f));
        }
        let losses: Vec<(f64, f64)> = sweep.iter().map(|(lr, f)| (*lr, f.val_loss)).collect();
        let lr = choose(&losses).context("no rate to choose from")?;
        let mut seeds = Vec::new();
        for &seed in &args.seeds {
            if seed == sweep_seed && shared == 1 {
                seeds.extend(sweep.iter().find(|s| s.0 == lr).map(|s| s.1.clone()));
                continue;
            }
            let run = run_config(model.clone(), args.tokens, &data, lr, seed)?;
            let what = format!("{} {family} lr {lr:e} seed {seed}", size.name);
            let dir = home.join(format!("seed-{seed}"));
            let Some(f) = trainer.train(Planned { dir, run, what })? else { return interrupted(&signals) };
            seeds.push(f);
        }
        rows.push(Row::new(size.name, model, lr, losses, seeds));
    }
    trainer.job.finish();
    let eval_batches = full.training.eval_batches;
    let comparison = Comparison {
        rows,
        unigram: unigram_loss(&corpus, eval_batches, full.training.batch_size, full.training.block_size),
        data: args.data.as_ref().map_or("the built-in corpus".into(), |p| p.display().to_string()),
    };
    let markdown = comparison.markdown();
    println!("\n{markdown}");
    crate::write_output(&out.join("table.md"), &markdown)?;
    crate::write_output(&out.join("table.json"), &serde_json::to_string_pretty(&comparison)?)?;
    let mut provenance = Provenance::of_this_run();
    provenance.add("runs", out.display().to_string());
    let page = comparison.page(crate::page::Page::new(provenance.rows()));
    crate::write_output(&out.join("report.html"), &page.html("bdh compare"))?;
    Ok(ExitCode::SUCCESS)
}

fn interrupted(signals: &Stop) -> anyhow::Result<ExitCode> {
    println!("interrupted; run the same command again to continue");
    signals.exit_code(&bdh::train::Single)
}

/// Trains the planned runs one after the other, with one count over all their steps.
struct Trainer<'a> {
    corpus: &'a Corpus,
    stop: &'a AtomicBool,
    device: &'a crate::device::DeviceArgs,
    job: Job,
    /// Steps of the runs before this one.
    done: u64,
    /// Runs started, and of how many.
    started: usize,
    runs: usize,
}

impl<'a> Trainer<'a> {
    fn new(
        corpus: &'a Corpus,
        stop: &'a AtomicBool,
        total: usize,
        runs: usize,
        device: &'a crate::device::DeviceArgs,
    ) -> Self {
        Trainer { corpus, stop, device, job: Job::new("compare", total as u64), done: 0, started: 0, runs }
    }

    /// Trains (or continues) `p`: its result, or none if a signal stopped it. Steps
    /// that earlier processes trained are skipped over in the count, so the time
    /// left counts only this process's.
    fn train(&mut self, p: Planned) -> anyhow::Result<Option<Finished>> {
        self.started += 1;
        let resume = continues(&p.run, &p.dir)?;
        let what = format!("{} ({:.2} M)", p.what, p.run.model.param_count() as f64 / 1e6);
        let count = format!("run {} of {}: {what}", self.started, self.runs);
        self.job.set_message(count.clone());
        let lines = !std::io::stderr().is_terminal();
        let (job, done) = (&self.job, self.done);
        let device = self.device.trainer(&p.run.model, false)?;
        let outcome =
            train_on(&p.run, self.corpus, &p.dir, resume, self.stop, &Single, device.as_deref(), |e| match e {
                Event::Start { step, .. } => job.skip_to(done + step as u64),
                Event::Step { step, loss, .. } => {
                    job.set_message(format!("{count}, loss {loss:.3}"));
                    job.set(done + step as u64);
                }
                Event::Eval(m) if lines => println!("{what} step {}: val loss {:.4}", m.step, m.val_loss),
                _ => {}
            })
            .with_context(|| format!("training {what}"))?;
        self.done += p.run.training.max_steps as u64;
        if outcome.interrupted {
            self.job.finish();
            return Ok(None);
        }
        let f = read_run(&p.run, &p.dir)?;
        self.job.println(format!(
            "{what}: val loss {:.4} ({:.3} bits/byte) after {} tokens, {:.0} tokens/s",
            f.val_loss, f.bits_per_byte, f.tokens, f.tokens_per_second
        ));
        Ok(Some(f))
    }
}

/// A finished run's numbers, from its `metrics.jsonl` (so a continued run counts all of it).
fn read_run(run: &RunConfig, dir: &Path) -> anyhow::Result<Finished> {
    let run_dir = RunDir::open(dir)?;
    let r = run_dir.metrics()?;
    if r.skipped > 0 {
        let lines: Vec<String> = r.skipped_lines.iter().map(usize::to_string).collect();
        let more = if r.skipped > lines.len() { ", …" } else { "" };
        eprintln!(
            "warning: {}: {} lines are not records (truncated or corrupt) and were skipped (line numbers {}{more}); the \
             table is built from the rest",
            run_dir.metrics_path().display(),
            r.skipped,
            lines.join(", ")
        );
    }
    let t = &run.training;
    let per_step = (t.batch_size * t.block_size * t.grad_accum) as f64;
    let seconds: f64 = r.steps.iter().map(|s| per_step / s.tokens_per_second).filter(|t| t.is_finite()).sum();
    let last =
        r.evals.last().with_context(|| format!("{}: no evaluation recorded", run_dir.metrics_path().display()))?;
    let tokens = t.max_steps * per_step as usize;
    Ok(Finished {
        seed: t.seed,
        tokens,
        train_seconds: seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        val_loss: last.val_loss,
        bits_per_byte: last.bits_per_byte,
        answer_accuracy: last.answer_accuracy,
        curve: r.evals.iter().map(|e| (e.step * per_step, e.val_loss)).collect(),
    })
}
