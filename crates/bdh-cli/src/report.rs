//! `bdh report`: a training run's curves and samples, from its `metrics.jsonl`,
//! as a summary and a self-contained page.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bdh::io::run_dir::{EvalRecord, Metrics, RunDir, StepRecord};

use crate::page::{mean, thin, Chart, Page, Series};
use crate::provenance::Provenance;

/// Summarises a run and draws its curves.
#[derive(clap::Args)]
pub struct Args {
    /// The run directory (holds config.toml and metrics.jsonl).
    #[arg(value_name = "RUN_DIR")]
    run: PathBuf,
    /// Write the page here (default: RUN_DIR/report.html).
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(html) = &args.html {
        crate::args::check_writable(html, "--html")?;
    }
    let page = write(&args.run, args.html.as_deref(), true)?;
    eprintln!("wrote {}", page.display());
    Ok(ExitCode::SUCCESS)
}

/// Reads the run in `dir`, prints its summary if `print`, and writes its page to
/// `html` (default `dir/report.html`); returns where the page went.
pub fn write(dir: &Path, html: Option<&Path>, print: bool) -> anyhow::Result<PathBuf> {
    let run = RunDir::open(dir)?;
    let config = run.config_text()?;
    let r = run.metrics()?;
    anyhow::ensure!(!r.steps.is_empty(), "{}: no training steps recorded yet", dir.display());
    // A run read with a BPE has a loss per token; bits per byte are per byte either way.
    let unit = if run.tokenizer().is_some() { "token" } else { "byte" };
    let summary = summary(&r, unit);
    if print {
        for (k, v) in &summary {
            println!("{k:<22} {v}");
        }
    }
    let mut provenance = Provenance::of_this_run();
    provenance.add("run", dir.display().to_string());
    provenance.add("run config", config);
    let mut p = Page::new(provenance.rows());
    p.heading("Summary");
    let rows: Vec<Vec<String>> = summary.into_iter().map(|(k, v)| vec![k.to_string(), v]).collect();
    p.table(&["", ""], &rows);
    charts(&mut p, &r, unit);
    if !r.samples.is_empty() {
        p.heading("Samples");
        p.text("Each sample continues the corpus's sample prompt (before the bar) at temperature 0.8, top-k 40.");
        for s in &r.samples {
            p.sample(&format!("step {}", s.step), &s.prompt, &s.text);
        }
    }
    let out = html.map_or_else(|| dir.join("report.html"), Path::to_path_buf);
    bdh::io::write_atomic(&out, p.html(&format!("bdh report: {}", dir.display())).as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

fn summary(r: &Metrics, unit: &str) -> Vec<(&'static str, String)> {
    let last = r.steps.last().expect("checked non-empty");
    let mut s = vec![("steps", format!("{}", last.step))];
    let first_losses: Vec<f64> = r.steps.iter().take(10).map(|x| x.loss).collect();
    let last_losses: Vec<f64> = r.steps.iter().rev().take(10).map(|x| x.loss).collect();
    s.push((
        "train loss",
        format!("{:.4} (first 10 steps) → {:.4} (last 10)", mean(&first_losses), mean(&last_losses)),
    ));
    if let Some(e) = r.evals.last() {
        s.push((
            "val loss",
            format!("{:.4} nats/{unit} at step {}, {:.3} bits/byte", e.val_loss, e.step, e.bits_per_byte),
        ));
    }
    if let Some(best) = r.evals.iter().min_by(|a, b| a.val_loss.total_cmp(&b.val_loss)) {
        s.push(("best val loss", format!("{:.4} at step {}", best.val_loss, best.step)));
    }
    if let Some((e, a)) = r.evals.iter().rev().find_map(|e| Some((e, e.answer_accuracy?))) {
        s.push(("answer accuracy", format!("{:.1}% at step {}", a * 100.0, e.step)));
    }
    let rates: Vec<f64> = r.steps.iter().map(|x| x.tokens_per_second).filter(|v| v.is_finite()).collect();
    if !rates.is_empty() {
        let mut sorted = rates.clone();
        sorted.sort_by(f64::total_cmp);
        s.push(("tokens/s", format!("{:.0} median over {} steps", sorted[sorted.len() / 2], rates.len())));
    }
    if r.skipped > 0 {
        s.push(("unreadable records", format!("{} lines of metrics.jsonl skipped", r.skipped)));
    }
    s
}

fn charts(p: &mut Page, r: &Metrics, unit: &str) {
    let per_step = |f: fn(&StepRecord) -> f64| {
        let t = thin(&r.steps.iter().map(f).collect::<Vec<_>>(), 1500, mean);
        // Points at the bucket's last step, not its index.
        t.points.into_iter().map(|(i, v)| (r.steps[i as usize].step, v)).collect::<Vec<_>>()
    };
    let evals =
        |f: fn(&EvalRecord) -> Option<f64>| r.evals.iter().filter_map(|e| Some((e.step, f(e)?))).collect::<Vec<_>>();
    let line = |name: &str, points| Series { name: name.into(), points, dots: false, color: None };
    let dots = |name: &str, points| Series { name: name.into(), points, dots: true, color: None };
    let chart = |title: &str, y: &str, log_y, series| Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: y.into(),
        log_x: false,
        log_y,
        series,
    };
    p.heading("Curves");
    // A log axis: the early steps' losses are ten times the late ones'.
    p.chart(&chart(
        &format!("Loss (nats per {unit})"),
        "loss (log scale)",
        true,
        vec![
            line("train (each step)", per_step(|s| s.loss)),
            dots("validation", evals(|e| Some(e.val_loss))),
            dots("train (mean of the last 20 steps)", evals(|e| e.train_loss)),
        ],
    ));
    // The same from a tenth of the way on, where the curves differ by hundredths.
    let last = r.steps.last().map_or(0.0, |s| s.step);
    let from = (last / 10.0).ceil();
    if r.steps.len() >= 50 {
        let late = |points: Vec<(f64, f64)>| points.into_iter().filter(|p| p.0 >= from).collect::<Vec<_>>();
        p.chart(&chart(
            &format!("Loss from step {from} on (nats per {unit})"),
            "loss",
            false,
            vec![
                line("train (each step)", late(per_step(|s| s.loss))),
                dots("validation", late(evals(|e| Some(e.val_loss)))),
                dots("train (mean of the last 20 steps)", late(evals(|e| e.train_loss))),
            ],
        ));
    }
    p.chart(&chart(
        "Validation bits per byte",
        "bits/byte",
        false,
        vec![dots("validation", evals(|e| Some(e.bits_per_byte)))],
    ));
    let acc = evals(|e| e.answer_accuracy.map(|a| a * 100.0));
    if !acc.is_empty() {
        let copying = evals(|e| e.copy_baseline.map(|c| c * 100.0));
        p.chart(&chart(
            "Answer accuracy",
            "% of answers exact",
            false,
            vec![dots("validation", acc), dots("copying a stated value at random", copying)],
        ));
    }
    p.chart(&chart("Learning rate", "lr", false, vec![line("lr", per_step(|s| s.lr))]));
    p.chart(&chart("Throughput", "tokens/s", false, vec![line("tokens/s", per_step(|s| s.tokens_per_second))]));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A training run's usual loss curve (5.6 at the start, 0.54 → 0.36 over the
    /// evaluations after it): the evaluations' spread must be visible, not squeezed
    /// into a few pixels at the bottom of an axis that starts at the first step's loss.
    #[test]
    fn the_late_losses_of_a_run_spread_over_the_loss_chart() {
        let steps = (1..=2500)
            .map(|i| {
                let loss = 0.36 + 5.2 * (-(i as f64) / 60.0).exp() + 0.18 * (-(i as f64) / 900.0).exp();
                StepRecord { step: i as f64, loss, lr: 1e-3, tokens_per_second: 1000.0 }
            })
            .collect();
        let evals = (1..=10)
            .map(|k| EvalRecord {
                step: 250.0 * k as f64,
                val_loss: 0.36 + 0.18 * (-(250.0 * k as f64) / 900.0).exp(),
                bits_per_byte: 1.0,
                answer_accuracy: None,
                train_loss: None,
                copy_baseline: None,
                eliminate_baseline: None,
            })
            .collect();
        let metrics = Metrics { steps, evals, ..Metrics::default() };
        let mut page = Page::new(Vec::new());
        charts(&mut page, &metrics, "byte");
        let html = page.html("t");
        let loss_chart = html.split("<figure>").nth(2).unwrap();
        assert!(loss_chart.contains("Loss from step 250 on"));
        let ys: Vec<f64> = crate::page::tests::circles(loss_chart).iter().map(|p| p.1).filter(|&y| y < 340.0).collect();
        assert_eq!(ys.len(), 10, "{ys:?}");
        let spread = ys.iter().fold(f64::MIN, |a, &b| a.max(b)) - ys.iter().fold(f64::MAX, |a, &b| a.min(b));
        assert!(spread > 30.0, "the evaluations span {spread:.1} px of the loss chart");
    }
}
