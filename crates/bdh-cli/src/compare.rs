//! `bdh compare`: BDH against the GPT baseline at matched parameter counts, on the
//! same batches, with a table and a page of curves.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use bdh::data::Corpus;
use bdh::io::run_dir::{lock_dir, RunDir};
use bdh::train::compare::{continues, pick, run_config};
use bdh::train::run::{train, Event};
use bdh::{ModelConfig, RunConfig};
use serde::Serialize;

use crate::args::ThreadsArgs;
use crate::page::{Chart, Mark, Page, Series, Style};
use crate::progress::Job;
use crate::provenance::Provenance;
use crate::stop::Stop;

/// Trains BDH and GPT at each size on the same batches and compares them.
#[derive(clap::Args)]
pub struct Args {
    /// Train on this file (90% train / 10% validation) instead of the built-in corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Sizes to run, comma-separated: xs (0.13 M parameters), s (0.49 M), m (1.6 M).
    #[arg(long, value_delimiter = ',', default_value = "xs,s,m")]
    sizes: Vec<String>,
    /// Training tokens per run (each step reads 8 × 256).
    #[arg(long, default_value_t = 700_000)]
    tokens: usize,
    /// Directory of the runs, the table and the report (default: runs/compare-<date>-<time>).
    /// Runs already there are continued if they were started with the same settings
    /// (finished ones are kept as they are); other settings are refused.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    threads: ThreadsArgs,
}

/// One finished run, as the table shows it.
#[derive(Clone, Debug, Serialize)]
struct Row {
    size: String,
    family: String,
    model: String,
    parameters: usize,
    tokens: usize,
    train_seconds: f64,
    tokens_per_second: f64,
    val_loss: f64,
    bits_per_byte: f64,
    answer_accuracy: Option<f64>,
    /// (tokens, validation loss) at each evaluation.
    curve: Vec<(f64, f64)>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.threads.size_pool()?;
    let sizes = pick(&args.sizes)?;
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
    let mut runs = Vec::new();
    for size in &sizes {
        for model in [ModelConfig::Bdh(size.bdh.clone()), ModelConfig::Gpt(size.gpt.clone())] {
            runs.push((size.name, run_config(model, args.tokens, &data)?));
        }
    }
    let corpus = data.corpus(runs[0].1.training.block_size).context("preparing the data")?;
    let steps = runs[0].1.training.max_steps;
    println!(
        "{} runs of {} tokens ({steps} steps of 8 × 256) on {}; into {}",
        runs.len(),
        steps * 8 * 256,
        args.data.as_ref().map_or("the built-in corpus".into(), |p| p.display().to_string()),
        out.display()
    );
    let signals = Stop::on_signals()?;
    let Some(rows) = train_all(&runs, &corpus, &out, signals.flag())? else {
        println!("interrupted; run the same command again to continue");
        return signals.exit_code(&bdh::train::Single);
    };
    let table = markdown(&rows);
    println!("\n{table}");
    crate::write_output(&out.join("table.md"), &table)?;
    crate::write_output(&out.join("table.json"), &serde_json::to_string_pretty(&rows)?)?;
    let mut provenance = Provenance::of_this_run();
    provenance.add("runs", out.display().to_string());
    crate::write_output(&out.join("report.html"), &page(Page::new(provenance.rows()), &rows).html("bdh compare"))?;
    Ok(ExitCode::SUCCESS)
}

/// Trains (or continues) each run in its folder of `out`, one after the other:
/// their rows, or none if `stop` (Ctrl-C, SIGTERM) stopped them.
fn train_all(
    runs: &[(&str, RunConfig)],
    corpus: &Corpus,
    out: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<Option<Vec<Row>>> {
    let total: usize = runs.iter().map(|(_, r)| r.training.max_steps).sum();
    // One count over every run's steps; steps that earlier processes trained (a
    // continued comparison) are skipped over, so the time left counts only these.
    let job = Job::new("compare", total as u64);
    let lines = !std::io::stderr().is_terminal();
    let mut rows = Vec::new();
    let mut done = 0u64;
    for (k, (size, run)) in runs.iter().enumerate() {
        let family = family(&run.model);
        let dir = out.join(format!("{size}-{}", family.to_lowercase()));
        let resume = continues(run, &dir)?;
        let what = format!("{size} {family} ({:.2} M)", run.model.param_count() as f64 / 1e6);
        let count = format!("run {} of {}: {what}", k + 1, runs.len());
        job.set_message(count.clone());
        let outcome = train(run, corpus, &dir, resume, stop, |e| match e {
            Event::Start { step, .. } => job.skip_to(done + step as u64),
            Event::Step { step, loss, .. } => {
                job.set_message(format!("{count}, loss {loss:.3}"));
                job.set(done + step as u64);
            }
            Event::Eval(m) if lines => println!("{what} step {}: val loss {:.4}", m.step, m.val_loss),
            _ => {}
        })
        .with_context(|| format!("training {what}"))?;
        done += run.training.max_steps as u64;
        if outcome.interrupted {
            job.finish();
            return Ok(None);
        }
        let row = read_row(size, run, &dir)?;
        job.println(format!(
            "{what}: val loss {:.4} ({:.3} bits/byte) after {} tokens, {:.0} tokens/s",
            row.val_loss, row.bits_per_byte, row.tokens, row.tokens_per_second
        ));
        rows.push(row);
    }
    job.finish();
    Ok(Some(rows))
}

fn family(m: &ModelConfig) -> &'static str {
    match m {
        ModelConfig::Bdh(_) => "BDH",
        ModelConfig::Gpt(_) => "GPT",
    }
}

/// A finished run's row, from its `metrics.jsonl` (so a continued run counts all of it).
fn read_row(size: &str, run: &RunConfig, dir: &Path) -> anyhow::Result<Row> {
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
    let per_step = (run.training.batch_size * run.training.block_size * run.training.grad_accum) as f64;
    let seconds: f64 = r.steps.iter().map(|s| per_step / s.tokens_per_second).filter(|t| t.is_finite()).sum();
    let last =
        r.evals.last().with_context(|| format!("{}: no evaluation recorded", run_dir.metrics_path().display()))?;
    let tokens = run.training.max_steps * per_step as usize;
    Ok(Row {
        size: size.to_string(),
        family: family(&run.model).to_string(),
        model: run.model.describe(),
        parameters: run.model.param_count(),
        tokens,
        train_seconds: seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
        val_loss: last.val_loss,
        bits_per_byte: last.bits_per_byte,
        answer_accuracy: last.answer_accuracy,
        curve: r.evals.iter().map(|e| (e.step * per_step, e.val_loss)).collect(),
    })
}

const HEADER: [&str; 10] = [
    "size",
    "family",
    "model",
    "parameters",
    "tokens",
    "train time",
    "tokens/s",
    "val loss",
    "bits/byte",
    "answer accuracy",
];

/// A row's cells, as both the Markdown table and the page show them.
fn cells(r: &Row) -> Vec<String> {
    vec![
        r.size.clone(),
        r.family.clone(),
        r.model.clone(),
        format!("{:.3} M", r.parameters as f64 / 1e6),
        r.tokens.to_string(),
        format!("{:.0} s", r.train_seconds),
        format!("{:.0}", r.tokens_per_second),
        format!("{:.4}", r.val_loss),
        format!("{:.3}", r.bits_per_byte),
        r.answer_accuracy.map_or("-".into(), |a| format!("{:.1}%", a * 100.0)),
    ]
}

fn markdown(rows: &[Row]) -> String {
    let mut t = format!("| {} |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n", HEADER.join(" | "));
    for r in rows {
        t.push_str(&format!("| {} |\n", cells(r).join(" | ")));
    }
    t
}

/// The marker of a size on the page: the sizes of one family share its colour.
fn size_mark(size: &str) -> Mark {
    match size {
        "xs" => Mark::Disc,
        "s" => Mark::Triangle,
        "m" => Mark::Cross,
        _ => Mark::Ring,
    }
}

fn page(mut p: Page, rows: &[Row]) -> Page {
    let color = |f: &str| Some(usize::from(f == "GPT"));
    p.heading("Validation loss during training");
    p.text(
        "Each pair of a size trained on the same batches in the same order. Colour: blue BDH, red GPT; marker: \
         the size (disc xs, triangle s, cross m), at each evaluation.",
    );
    p.chart(&Chart {
        title: "Validation loss against training tokens".into(),
        x_label: "tokens".into(),
        y_label: "val loss (nats/byte)".into(),
        log_x: false,
        log_y: false,
        series: rows
            .iter()
            .map(|r| Series {
                name: format!("{} {} ({:.2} M)", r.family, r.size, r.parameters as f64 / 1e6),
                points: r.curve.clone(),
                style: Style::Marked(size_mark(&r.size)),
                color: color(&r.family),
            })
            .collect(),
    });
    p.heading("Final validation loss against size");
    p.chart(&Chart {
        title: "Final validation loss against trained parameters".into(),
        x_label: "parameters".into(),
        y_label: "val loss (nats/byte)".into(),
        log_x: true,
        log_y: false,
        series: ["BDH", "GPT"]
            .iter()
            .map(|f| Series {
                name: f.to_string(),
                points: rows.iter().filter(|r| r.family == *f).map(|r| (r.parameters as f64, r.val_loss)).collect(),
                style: Style::Marked(Mark::Disc),
                color: color(f),
            })
            .collect(),
    });
    p.heading("Table");
    p.table(&HEADER, &rows.iter().map(cells).collect::<Vec<_>>());
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::figures::assert_charts_readable;

    fn row(size: &str, family: &str, parameters: usize, curve: Vec<(f64, f64)>) -> Row {
        Row {
            size: size.into(),
            family: family.into(),
            model: format!("{family} {size}"),
            parameters,
            tokens: 700_000,
            train_seconds: 10.0,
            tokens_per_second: 70_000.0,
            val_loss: curve.last().map_or(0.0, |p| p.1),
            bits_per_byte: 1.0,
            answer_accuracy: None,
            curve,
        }
    }

    /// Six runs, three sizes of each family whose curves run close together: each
    /// is its own series (the family's colour, the size's marker), named by family
    /// and size in a legend below every plotted point.
    #[test]
    fn each_run_of_a_comparison_is_its_own_visible_series() {
        let mut rows = Vec::new();
        for (k, (size, params)) in [("xs", 131_000), ("s", 492_000), ("m", 1_638_000)].into_iter().enumerate() {
            for (family, base) in [("BDH", 0.3), ("GPT", 0.35)] {
                let curve = (1..=8).map(|i| (i as f64 * 87_000.0, base + 0.01 * k as f64 + 2.0 / i as f64)).collect();
                rows.push(row(size, family, params, curve));
            }
        }
        let html = page(Page::new(Vec::new()), &rows).html("t");
        let charts = assert_charts_readable(&html, 2);
        let names: Vec<&str> = charts[0].legend.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "BDH xs (0.13 M)",
                "GPT xs (0.13 M)",
                "BDH s (0.49 M)",
                "GPT s (0.49 M)",
                "BDH m (1.64 M)",
                "GPT m (1.64 M)"
            ]
        );
        let looks: Vec<_> = charts[0].legend.iter().map(|e| &e.look).collect();
        assert_eq!(looks[0][0].1, looks[2][0].1, "one colour per family");
        assert_ne!(looks[0], looks[2], "sizes differ by marker");
    }

    /// One size of each, with a single evaluation each: both charts still show
    /// every run (a lone point gets its marker).
    #[test]
    fn a_comparison_of_one_evaluation_per_run_shows_every_run() {
        let rows = vec![row("xs", "BDH", 131_000, vec![(8192.0, 1.2)]), row("xs", "GPT", 131_000, vec![(8192.0, 1.5)])];
        let charts = assert_charts_readable(&page(Page::new(Vec::new()), &rows).html("t"), 2);
        assert!(charts.iter().all(|c| c.legend.len() == 2), "{charts:?}");
    }
}
