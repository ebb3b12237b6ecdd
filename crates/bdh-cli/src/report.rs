//! `bdh report`: a training run's curves and samples, from its `metrics.jsonl`,
//! as a summary and a self-contained page.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bdh::data::DataConfig;
use bdh::io::run_dir::{EvalRecord, Metrics, RunDir, StepRecord};
use bdh::microscope::weights::WeightChange;

use crate::page::{mean, thin, Chart, Page, Series, Style};
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
    // A config this version cannot read is shown as it is.
    match run.config(&[]) {
        Ok(c) => {
            provenance.add("trained on", trained_on(&c.data, run.tokenizer().as_deref()));
            provenance.add("run config", shown_config(&config, c.data.path.is_some()));
        }
        Err(_) => provenance.add("run config", config),
    }
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

/// What a run trained on: the built-in language, or a file, read as bytes or with
/// a tokenizer (`kept`: the run's own copy of it).
fn trained_on(data: &DataConfig, kept: Option<&Path>) -> String {
    let Some(path) = &data.path else {
        return "the built-in language (its settings are the run config's [data])".into();
    };
    let validation = data
        .val_path
        .as_ref()
        .map_or("its last 10% held out for validation".into(), |v| format!("validated on {}", v.display()));
    let read = match (&data.tokenizer, kept) {
        (Some(t), Some(k)) => {
            format!("read with the BPE tokenizer {} (the run keeps a copy: {})", t.display(), k.display())
        }
        (Some(t), None) => format!("read with the BPE tokenizer {}", t.display()),
        (None, Some(k)) => format!("read with the BPE tokenizer the run keeps ({})", k.display()),
        (None, None) => "read as bytes".into(),
    };
    format!("{} ({validation}; {read})", path.display())
}

/// The run's config as the page shows it: for a run on a file, without the
/// built-in language's settings, which it did not read.
fn shown_config(text: &str, on_file: bool) -> String {
    if !on_file {
        return text.to_string();
    }
    let mut section = String::new();
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_string();
                return true;
            }
            let key = line.split('=').next().unwrap_or_default().trim();
            section != "[data]" || !DataConfig::BUILT_IN_KEYS.contains(&key)
        })
        .collect();
    kept.join("\n") + "\n"
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
    let line = |name: &str, points| Series { name: name.into(), points, style: Style::Line, color: None };
    let dots = |name: &str, points| Series { name: name.into(), points, style: Style::Dots, color: None };
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
        let eliminating = evals(|e| e.eliminate_baseline.map(|c| c * 100.0));
        p.text(
            "Two strategies bind no value to its key and still score: copying a stated value of the right kind at \
             random, and copying one that no earlier answer gave (the last question of each kind is then always \
             right). Recall shows as accuracy above both.",
        );
        p.chart(&chart(
            "Answer accuracy",
            "% of answers exact",
            false,
            vec![
                dots("validation", acc),
                dots("copying a stated value at random", copying),
                dots("copying one not given yet", eliminating),
            ],
        ));
    }
    weight_charts(p, r, &chart);
    p.chart(&chart("Learning rate", "lr", false, vec![line("lr", per_step(|s| s.lr))]));
    p.chart(&chart("Throughput", "tokens/s", false, vec![line("tokens/s", per_step(|s| s.tokens_per_second))]));
}

/// A chart from its title, its y label, whether y is on a log scale, and its series.
type ChartOf = dyn Fn(&str, &str, bool, Vec<Series>) -> Chart;

/// How far each layer matrix moved from the start and its effective rank, at each
/// evaluation of a run that keeps models (nothing for one that does not).
fn weight_charts(p: &mut Page, r: &Metrics, chart: &ChartOf) {
    let Some(first) = r.evals.iter().find(|e| !e.weights.is_empty()) else { return };
    let names: Vec<String> = first.weights.iter().map(|w| w.name.clone()).collect();
    let series = |f: fn(&WeightChange) -> f64| {
        names
            .iter()
            .map(|name| Series {
                name: name.clone(),
                points: r
                    .evals
                    .iter()
                    .filter_map(|e| Some((e.step, f(e.weights.iter().find(|w| &w.name == name)?))))
                    .collect(),
                style: Style::Line,
                color: None,
            })
            .collect::<Vec<_>>()
    };
    p.text(
        "Rich or lazy learning: how far each layer matrix moved from its start (‖W − W₀‖ / ‖W₀‖), and the \
         effective rank of its heads' matrices (the exponential of the entropy of their normalised singular \
         values; the mean over heads), and the alignment of each head's top singular directions in the residual \
         stream with the start's (1: the same directions).",
    );
    p.chart(&chart("Relative change from the start", "‖W − W₀‖ / ‖W₀‖", false, series(|w| w.relative_change)));
    p.chart(&chart("Effective rank", "effective rank (mean over heads)", false, series(|w| w.effective_rank)));
    p.chart(&chart(
        "Alignment with the top directions at the start",
        "alignment (mean over heads)",
        false,
        series(|w| w.alignment),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::figures::assert_charts_readable;

    /// A run directory of `config` with a few steps and evaluations recorded.
    fn run_dir(config: &bdh::RunConfig) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), config.to_toml()).unwrap();
        let mut log = String::new();
        for step in 1..=60 {
            let loss = 0.4 + 5.0 / step as f64;
            log.push_str(&format!(
                "{{\"step\":{step},\"loss\":{loss},\"lr\":0.001,\"tokens_per_second\":1000.0,\"grad_norm\":1.0}}\n"
            ));
            if step % 20 == 0 {
                log.push_str(&format!(
                    "{{\"step\":{step},\"val_loss\":{loss},\"bits_per_byte\":1.0,\"train_loss\":{loss},\
                     \"answer_accuracy\":0.2,\"answer_groups\":[{{\"answers\":10,\"copy_baseline\":0.1}}]}}\n"
                ));
            }
        }
        std::fs::write(dir.path().join("metrics.jsonl"), log).unwrap();
        dir
    }

    /// A run on a file says what it trained on, and its config leaves out the
    /// built-in language's settings it did not read; a run on the built-in
    /// language keeps them. Every chart of the page reads.
    #[test]
    fn a_report_says_what_the_run_trained_on() {
        let mut config = bdh::RunConfig::resolve("tiny", &[]).unwrap();
        let built_in = run_dir(&config);
        config.data.path = Some("data/tinyshakespeare.txt".into());
        let on_file = run_dir(&config);
        let page = |dir: &Path| {
            let html = write(dir, None, false).unwrap();
            std::fs::read_to_string(html).unwrap()
        };
        let (built_in, on_file) = (page(built_in.path()), page(on_file.path()));
        assert!(built_in.contains("the built-in language") && built_in.contains("facts = 2"), "{built_in}");
        assert!(on_file.contains("data/tinyshakespeare.txt (its last 10% held out for validation; read as bytes)"));
        for key in DataConfig::BUILT_IN_KEYS {
            assert!(!on_file.contains(&format!("{key} = ")), "{key} shown for a run on a file");
        }
        assert!(on_file.contains("[training]") && on_file.contains("path = "), "{on_file}");
        let charts = assert_charts_readable(&on_file, 6);
        assert!(charts.iter().any(|c| c.title == "Answer accuracy" && c.legend.len() == 2), "{charts:?}");
    }

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
                weights: Vec::new(),
            })
            .collect();
        let metrics = Metrics { steps, evals, ..Metrics::default() };
        let mut page = Page::new(Vec::new());
        charts(&mut page, &metrics, "byte");
        let html = page.html("t");
        let loss_chart = html.split("<figure>").nth(2).unwrap();
        assert!(loss_chart.contains("Loss from step 250 on"));
        let drawn = crate::page::figures::read(loss_chart).unwrap();
        let ys: Vec<f64> = drawn.marks.iter().filter(|m| m.kind == "circle").map(|m| m.bbox.1 + 4.0).collect();
        assert_eq!(ys.len(), 10, "{ys:?}");
        let spread = ys.iter().fold(f64::MIN, |a, &b| a.max(b)) - ys.iter().fold(f64::MAX, |a, &b| a.min(b));
        assert!(spread > 30.0, "the evaluations span {spread:.1} px of the loss chart");
    }

    /// The accuracy chart shows both strategies that bind nothing beside the
    /// validation accuracy, each its own visible series.
    #[test]
    fn the_accuracy_chart_shows_both_strategies_that_bind_nothing() {
        let evals = (1..=6)
            .map(|k| EvalRecord {
                step: 100.0 * k as f64,
                val_loss: 1.0,
                bits_per_byte: 1.0,
                answer_accuracy: Some(0.1 * k as f64),
                train_loss: None,
                copy_baseline: Some(0.67),
                eliminate_baseline: Some(0.80),
                weights: Vec::new(),
            })
            .collect();
        let steps =
            (1..=600).map(|i| StepRecord { step: i as f64, loss: 1.0, lr: 1e-3, tokens_per_second: 1e3 }).collect();
        let metrics = Metrics { steps, evals, ..Metrics::default() };
        let mut page = Page::new(Vec::new());
        charts(&mut page, &metrics, "byte");
        let charts = assert_charts_readable(&page.html("t"), 1);
        let accuracy = charts.iter().find(|c| c.legend.len() == 3).expect("the accuracy chart with three series");
        let names: Vec<&str> = accuracy.legend.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["validation", "copying a stated value at random", "copying one not given yet"]);
    }

    /// A run that keeps models gets a chart of each matrix's change from the start, one
    /// of its effective rank and one of its alignment, a series per matrix; one that
    /// does not, none.
    #[test]
    fn the_weights_charts_follow_each_layer_matrix() {
        let change = |name: &str, k: f64| WeightChange {
            name: name.into(),
            relative_change: 0.1 * k,
            effective_rank: 4.0 + k,
            start_rank: 4.0,
            alignment: 1.0 - 0.1 * k,
        };
        let evals: Vec<EvalRecord> = (1..=4)
            .map(|k| EvalRecord {
                step: 100.0 * k as f64,
                val_loss: 1.0,
                bits_per_byte: 1.0,
                answer_accuracy: None,
                train_loss: None,
                copy_baseline: None,
                eliminate_baseline: None,
                weights: ["encoder", "encoder_v", "decoder"].iter().map(|n| change(n, k as f64)).collect(),
            })
            .collect();
        let steps =
            (1..=400).map(|i| StepRecord { step: i as f64, loss: 1.0, lr: 1e-3, tokens_per_second: 1e3 }).collect();
        let metrics = Metrics { steps, evals: evals.clone(), ..Metrics::default() };
        let mut page = Page::new(Vec::new());
        charts(&mut page, &metrics, "byte");
        let html = page.html("t");
        assert!(html.contains("Relative change from the start") && html.contains("Effective rank"));
        assert!(html.contains("Alignment with the top directions at the start"));
        let drawn = assert_charts_readable(&html, 1);
        let with_three = drawn.iter().filter(|c| {
            c.legend.iter().map(|e| e.name.as_str()).collect::<Vec<_>>() == ["encoder", "encoder_v", "decoder"]
        });
        assert_eq!(with_three.count(), 3);
        let plain =
            Metrics { evals: evals.into_iter().map(|e| EvalRecord { weights: vec![], ..e }).collect(), ..metrics };
        let mut page = Page::new(Vec::new());
        charts(&mut page, &plain, "byte");
        assert!(!page.html("t").contains("Effective rank"));
    }
}
