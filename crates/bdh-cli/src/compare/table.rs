//! What a comparison found: a row per family and size (its sweep, its seeds), the
//! table in Markdown and the page.

use bdh::train::compare::{loss_at, BLOCK};
use bdh::ModelConfig;
use serde::Serialize;

use crate::page::{Chart, Page, Series};

/// A run is still near the unigram plateau when its loss is above this share of it.
const PLATEAU: f64 = 0.9;

/// One finished run.
#[derive(Clone, Debug, Serialize)]
pub struct Finished {
    pub seed: u64,
    pub tokens: usize,
    pub train_seconds: f64,
    pub tokens_per_second: f64,
    pub val_loss: f64,
    pub bits_per_byte: f64,
    pub answer_accuracy: Option<f64>,
    /// (tokens, validation loss) at each evaluation.
    pub curve: Vec<(f64, f64)>,
}

/// One family at one size: its sweep and its runs at the chosen rate.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub size: String,
    pub family: String,
    pub model: String,
    pub parameters: usize,
    /// Model FLOPs of a training step per token (three forward passes' worth).
    pub train_flops_per_token: f64,
    /// The chosen peak learning rate.
    pub lr: f64,
    /// (rate, final validation loss) of each run of the sweep.
    pub sweep: Vec<(f64, f64)>,
    /// The runs at `lr`, one per seed.
    pub seeds: Vec<Finished>,
}

/// The rows and what they are read against.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub rows: Vec<Row>,
    /// The validation loss of the training data's token frequencies alone.
    pub unigram: f64,
    /// What was trained on.
    pub data: String,
}

pub fn family(m: &ModelConfig) -> &'static str {
    match m {
        ModelConfig::Bdh(_) => "BDH",
        ModelConfig::Gpt(_) => "GPT",
    }
}

/// Mean and half the range.
fn spread(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = values.clone().count().max(1) as f64;
    let mean = values.clone().sum::<f64>() / n;
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (mean, if hi >= lo { (hi - lo) / 2.0 } else { 0.0 })
}

impl Row {
    pub fn new(size: &str, model: &ModelConfig, lr: f64, sweep: Vec<(f64, f64)>, seeds: Vec<Finished>) -> Row {
        Row {
            size: size.into(),
            family: family(model).into(),
            model: model.describe(),
            parameters: model.param_count(),
            train_flops_per_token: 3.0 * model.forward_flops_per_token(BLOCK),
            lr,
            sweep,
            seeds,
        }
    }

    /// Validation loss over the seeds: mean and half range.
    pub fn val_loss(&self) -> (f64, f64) {
        spread(self.seeds.iter().map(|s| s.val_loss))
    }

    /// Training FLOPs of one whole run.
    fn run_flops(&self) -> f64 {
        self.seeds.first().map_or(0.0, |s| s.tokens as f64 * self.train_flops_per_token)
    }

    /// Mean validation loss over the seeds after `flops` training FLOPs, if every
    /// run's evaluations reach that far.
    fn loss_at_flops(&self, flops: f64) -> Option<f64> {
        let at: Option<Vec<f64>> = self
            .seeds
            .iter()
            .map(|s| {
                let curve: Vec<(f64, f64)> =
                    s.curve.iter().map(|&(t, l)| (t * self.train_flops_per_token, l)).collect();
                loss_at(&curve, flops)
            })
            .collect();
        at.map(|v| spread(v.into_iter()).0)
    }

    /// The validation loss over the seeds, evaluation by evaluation (mean).
    fn mean_curve(&self) -> Vec<(f64, f64)> {
        let Some(first) = self.seeds.first() else { return Vec::new() };
        (0..first.curve.len())
            .filter_map(|i| {
                let at: Option<Vec<f64>> = self.seeds.iter().map(|s| s.curve.get(i).map(|p| p.1)).collect();
                at.map(|v| (first.curve[i].0, spread(v.into_iter()).0))
            })
            .collect()
    }
}

const HEADER: [&str; 11] = [
    "size",
    "family",
    "model",
    "parameters",
    "training FLOPs/token",
    "lr (swept)",
    "val loss (seeds: mean ± half range)",
    "at equal compute",
    "bits/byte",
    "answer accuracy",
    "tokens/s",
];

impl Comparison {
    /// The compute every row of `size` is read at: the smaller of its runs' budgets.
    fn budget(&self, size: &str) -> f64 {
        self.rows.iter().filter(|r| r.size == size).map(Row::run_flops).fold(f64::INFINITY, f64::min)
    }

    fn cells(&self, r: &Row) -> Vec<String> {
        let (loss, half) = r.val_loss();
        let plateau = if loss > PLATEAU * self.unigram { " †" } else { "" };
        let swept: Vec<f64> = r.sweep.iter().map(|s| s.0).collect();
        let range = match (swept.first(), swept.last()) {
            (Some(a), Some(b)) if swept.len() > 1 => format!(" of {a:e}–{b:e}"),
            _ => String::new(),
        };
        let accuracy = spread(r.seeds.iter().filter_map(|s| s.answer_accuracy)).0;
        vec![
            r.size.clone(),
            r.family.clone(),
            r.model.clone(),
            format!("{:.3} M", r.parameters as f64 / 1e6),
            format!("{:.2} M", r.train_flops_per_token / 1e6),
            format!("{:e}{range}", r.lr),
            format!("{loss:.4} ± {half:.4} ({}){plateau}", r.seeds.len()),
            r.loss_at_flops(self.budget(&r.size)).map_or("—".into(), |l| format!("{l:.4}")),
            format!("{:.3}", spread(r.seeds.iter().map(|s| s.bits_per_byte)).0),
            if r.seeds.iter().any(|s| s.answer_accuracy.is_some()) {
                format!("{:.1}%", 100.0 * accuracy)
            } else {
                "-".into()
            },
            format!("{:.0}", spread(r.seeds.iter().map(|s| s.tokens_per_second)).0),
        ]
    }

    /// The notes under the table: how to read it.
    fn notes(&self) -> Vec<String> {
        let mut notes = vec![
            format!("Trained on {}, each family's learning rate chosen by the lowest validation loss of a sweep at each size (table.json holds every rate's loss).", self.data),
            "At equal compute: each family's validation loss once it has spent the training FLOPs of the cheaper family's whole run at that size (read between its evaluations).".into(),
            format!("The loss of the training data's byte frequencies alone (the plateau a language model leaves first): {:.4} nats/token.", self.unigram),
        ];
        if self.rows.iter().any(|r| r.val_loss().0 > PLATEAU * self.unigram) {
            notes.push(format!(
                "†: its loss at the end is still above {:.0}% of that plateau: the budget is too short for this run to say much.",
                100.0 * PLATEAU
            ));
        }
        notes
    }

    pub fn markdown(&self) -> String {
        let mut t = format!("| {} |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n", HEADER.join(" | "));
        for r in &self.rows {
            t.push_str(&format!("| {} |\n", self.cells(r).join(" | ")));
        }
        for n in self.notes() {
            t.push_str(&format!("\n{n}\n"));
        }
        t
    }

    pub fn page(&self, mut p: Page) -> Page {
        let color = |f: &str| Some(usize::from(f == "GPT"));
        let by_run = |x_of: &dyn Fn(&Row, f64) -> f64| -> Vec<Series> {
            self.rows
                .iter()
                .map(|r| Series {
                    name: format!("{} {} ({:.2} M)", r.family, r.size, r.parameters as f64 / 1e6),
                    points: r.mean_curve().into_iter().map(|(t, l)| (x_of(r, t), l)).collect(),
                    dots: false,
                    color: color(&r.family),
                })
                .collect()
        };
        p.heading("Validation loss during training");
        p.text("Each pair of a size trained on the same batches in the same order, at its own swept rate; the mean over the seeds. Blue BDH, red GPT.");
        p.chart(&Chart {
            title: "Validation loss against training tokens".into(),
            x_label: "tokens".into(),
            y_label: "val loss (nats/token)".into(),
            log_x: false,
            log_y: false,
            series: by_run(&|_, t| t),
        });
        p.chart(&Chart {
            title: "Validation loss against training compute".into(),
            x_label: "training FLOPs".into(),
            y_label: "val loss (nats/token)".into(),
            log_x: true,
            log_y: false,
            series: by_run(&|r, t| t * r.train_flops_per_token),
        });
        p.heading("The learning-rate sweeps");
        p.chart(&Chart {
            title: "Final validation loss against the peak learning rate".into(),
            x_label: "peak learning rate".into(),
            y_label: "val loss (nats/token)".into(),
            log_x: true,
            log_y: false,
            series: self
                .rows
                .iter()
                .map(|r| Series {
                    name: format!("{} {}", r.family, r.size),
                    points: r.sweep.iter().copied().filter(|s| s.1.is_finite()).collect(),
                    dots: false,
                    color: color(&r.family),
                })
                .collect(),
        });
        p.heading("Final validation loss against size");
        p.chart(&Chart {
            title: "Final validation loss against trained parameters".into(),
            x_label: "parameters".into(),
            y_label: "val loss (nats/token)".into(),
            log_x: true,
            log_y: false,
            series: ["BDH", "GPT"]
                .iter()
                .map(|f| Series {
                    name: f.to_string(),
                    points: self
                        .rows
                        .iter()
                        .filter(|r| r.family == *f)
                        .map(|r| (r.parameters as f64, r.val_loss().0))
                        .collect(),
                    dots: false,
                    color: color(f),
                })
                .collect(),
        });
        p.heading("Table");
        p.table(&HEADER, &self.rows.iter().map(|r| self.cells(r)).collect::<Vec<_>>());
        for n in self.notes() {
            p.text(&n);
        }
        p
    }
}
