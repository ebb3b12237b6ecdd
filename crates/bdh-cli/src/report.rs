//! `bdh report`: a training run's curves and samples, from its `metrics.jsonl`,
//! as a summary and a self-contained page.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

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

/// Longest line of `metrics.jsonl` read (a sample of a few hundred bytes is the longest
/// record a run writes); longer lines are skipped, not held.
const MAX_LINE: u64 = 1 << 20;
/// Records read at most (a step record is held in 32 bytes: 5 M take 160 MB).
const MAX_RECORDS: usize = 5_000_000;

/// One optimizer step.
pub struct Step {
    pub step: f64,
    pub loss: f64,
    pub lr: f64,
    pub tokens_per_second: f64,
}

/// One evaluation.
pub struct Eval {
    pub step: f64,
    pub val_loss: f64,
    pub bits_per_byte: f64,
    pub answer_accuracy: Option<f64>,
    pub train_loss: Option<f64>,
}

/// What a run's `metrics.jsonl` holds.
#[derive(Default)]
pub struct Record {
    pub steps: Vec<Step>,
    pub evals: Vec<Eval>,
    pub samples: Vec<(u64, String, String)>,
    pub skipped: usize,
}

impl Record {
    /// Reads `metrics.jsonl` line by line (bounded lines and records).
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut reader = BufReader::new(file);
        let mut r = Record::default();
        let mut line = Vec::new();
        for _ in 0..MAX_RECORDS {
            line.clear();
            let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
                // An overlong line: skip the rest of it without holding it.
                r.skipped += 1;
                loop {
                    line.clear();
                    let m = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
                    if m == 0 || line.last() == Some(&b'\n') {
                        break;
                    }
                }
                continue;
            }
            match serde_json::from_slice::<serde_json::Value>(&line) {
                Ok(v) => r.add(&v),
                Err(_) => r.skipped += 1,
            }
        }
        Ok(r)
    }

    fn add(&mut self, v: &serde_json::Value) {
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let Some(step) = num("step") else {
            self.skipped += 1;
            return;
        };
        if let Some(val_loss) = num("val_loss") {
            self.evals.push(Eval {
                step,
                val_loss,
                bits_per_byte: num("bits_per_byte").unwrap_or(val_loss / std::f64::consts::LN_2),
                answer_accuracy: num("answer_accuracy"),
                train_loss: num("train_loss"),
            });
        } else if let (Some(loss), Some(lr)) = (num("loss"), num("lr")) {
            let tokens_per_second = num("tokens_per_second").unwrap_or(f64::NAN);
            self.steps.push(Step { step, loss, lr, tokens_per_second });
        } else if let Some(sample) = v.get("sample").and_then(|s| s.as_str()) {
            let prompt = v.get("sample_prompt").and_then(|s| s.as_str()).unwrap_or_default();
            self.samples.push((step as u64, prompt.to_string(), sample.to_string()));
        } else {
            self.skipped += 1;
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let page = write(&args.run, args.html.as_deref(), true)?;
    eprintln!("wrote {}", page.display());
    Ok(ExitCode::SUCCESS)
}

/// Reads the run in `dir`, prints its summary if `print`, and writes its page to
/// `html` (default `dir/report.html`); returns where the page went.
pub fn write(dir: &Path, html: Option<&Path>, print: bool) -> anyhow::Result<PathBuf> {
    let config_path = dir.join("config.toml");
    let config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{} is not a run directory (no readable config.toml)", dir.display()))?;
    let r = Record::read(&dir.join("metrics.jsonl"))?;
    anyhow::ensure!(!r.steps.is_empty(), "{}: no training steps recorded yet", dir.display());
    // A run read with a BPE has a loss per token; bits per byte are per byte either way.
    let unit = if dir.join(bdh::data::TOKENIZER_FILE).is_file() { "token" } else { "byte" };
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
        let rows: Vec<Vec<String>> =
            r.samples.iter().map(|(s, prompt, text)| vec![s.to_string(), format!("{prompt}│{text}")]).collect();
        p.table(&["step", "prompt│sample"], &rows);
    }
    let out = html.map_or_else(|| dir.join("report.html"), Path::to_path_buf);
    bdh::io::write_atomic(&out, p.html(&format!("bdh report: {}", dir.display())).as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

fn summary(r: &Record, unit: &str) -> Vec<(&'static str, String)> {
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

fn charts(p: &mut Page, r: &Record, unit: &str) {
    let per_step = |f: fn(&Step) -> f64| {
        let t = thin(&r.steps.iter().map(f).collect::<Vec<_>>(), 1500, mean);
        // Points at the bucket's last step, not its index.
        t.points.into_iter().map(|(i, v)| (r.steps[i as usize].step, v)).collect::<Vec<_>>()
    };
    let evals = |f: fn(&Eval) -> Option<f64>| r.evals.iter().filter_map(|e| Some((e.step, f(e)?))).collect::<Vec<_>>();
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
    p.chart(&chart(
        &format!("Loss (nats per {unit})"),
        "loss",
        false,
        vec![
            line("train (each step)", per_step(|s| s.loss)),
            dots("train (mean of the last 20 steps)", evals(|e| e.train_loss)),
            dots("validation", evals(|e| Some(e.val_loss))),
        ],
    ));
    p.chart(&chart(
        "Validation bits per byte",
        "bits/byte",
        false,
        vec![dots("validation", evals(|e| Some(e.bits_per_byte)))],
    ));
    let acc = evals(|e| e.answer_accuracy.map(|a| a * 100.0));
    if !acc.is_empty() {
        p.chart(&chart("Answer accuracy", "% of answers exact", false, vec![dots("validation", acc)]));
    }
    p.chart(&chart("Learning rate", "lr", false, vec![line("lr", per_step(|s| s.lr))]));
    p.chart(&chart("Throughput", "tokens/s", false, vec![line("tokens/s", per_step(|s| s.tokens_per_second))]));
}
