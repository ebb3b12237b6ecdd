//! What a comparison found: a row per family and size (its sweep, its seeds), the
//! table in Markdown and the page.

use bdh::train::compare::{loss_at, BLOCK};
use bdh::ModelConfig;
use serde::Serialize;

use crate::page::{Chart, Mark, Page, Series, Style};

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

/// The marker of a size on the page: the sizes of one family share its colour.
fn size_mark(size: &str) -> Mark {
    match size {
        "xs" => Mark::Disc,
        "s" => Mark::Triangle,
        "m" => Mark::Cross,
        _ => Mark::Ring,
    }
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

    /// Whether the chosen rate is the smallest or largest tried (of several): the
    /// best may lie outside the sweep.
    fn at_the_edge(&self) -> bool {
        let tried = self.sweep.iter().map(|s| s.0);
        let (lo, hi) = tried.clone().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), r| (lo.min(r), hi.max(r)));
        tried.count() > 1 && (self.lr == lo || self.lr == hi)
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
        let edge = if r.at_the_edge() { " ‡" } else { "" };
        let accuracy = spread(r.seeds.iter().filter_map(|s| s.answer_accuracy)).0;
        vec![
            r.size.clone(),
            r.family.clone(),
            r.model.clone(),
            format!("{:.3} M", r.parameters as f64 / 1e6),
            format!("{:.2} M", r.train_flops_per_token / 1e6),
            format!("{:e}{range}{edge}", r.lr),
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
        if self.rows.iter().any(Row::at_the_edge) {
            notes.push(
                "‡: the chosen rate is the smallest or largest tried: the best may lie outside the sweep (give more rates with --bdh-rates or --gpt-rates).".into(),
            );
        }
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
                    style: Style::Marked(size_mark(&r.size)),
                    color: color(&r.family),
                })
                .collect()
        };
        p.heading("Validation loss during training");
        p.text(
            "Each pair of a size trained on the same batches in the same order, at its own swept rate; the mean over \
             the seeds. Colour: blue BDH, red GPT; marker: the size (disc xs, triangle s, cross m), at each evaluation.",
        );
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
                    style: Style::Marked(size_mark(&r.size)),
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
                    style: Style::Marked(Mark::Disc),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::figures::assert_charts_readable;

    fn row(size: &str, family: &str, parameters: usize, curve: Vec<(f64, f64)>) -> Row {
        let finished = Finished {
            seed: 1337,
            tokens: curve.last().map_or(0, |p| p.0 as usize),
            train_seconds: 10.0,
            tokens_per_second: 70_000.0,
            val_loss: curve.last().map_or(0.0, |p| p.1),
            bits_per_byte: 1.0,
            answer_accuracy: None,
            curve,
        };
        Row {
            size: size.into(),
            family: family.into(),
            model: format!("{family} {size}"),
            parameters,
            train_flops_per_token: parameters as f64 * if family == "BDH" { 12.0 } else { 6.0 },
            lr: 2e-3,
            sweep: vec![(1e-3, finished.val_loss + 0.1), (2e-3, finished.val_loss), (4e-3, finished.val_loss + 0.2)],
            seeds: vec![finished],
        }
    }

    fn comparison(rows: Vec<Row>) -> Comparison {
        Comparison { rows, unigram: 2.9, data: "the built-in corpus".into() }
    }

    /// Six runs, three sizes of each family whose curves run close together: each
    /// is its own series (the family's colour, the size's marker), named by family
    /// and size in a legend below every plotted point, on every chart.
    #[test]
    fn each_run_of_a_comparison_is_its_own_visible_series() {
        let mut rows = Vec::new();
        for (k, (size, params)) in [("xs", 131_000), ("s", 492_000), ("m", 1_638_000)].into_iter().enumerate() {
            for (family, base) in [("BDH", 0.3), ("GPT", 0.35)] {
                let curve = (1..=8).map(|i| (i as f64 * 87_000.0, base + 0.01 * k as f64 + 2.0 / i as f64)).collect();
                rows.push(row(size, family, params, curve));
            }
        }
        let html = comparison(rows).page(Page::new(Vec::new())).html("t");
        let charts = assert_charts_readable(&html, 4);
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
        assert_eq!(charts[2].legend.len(), 6, "a sweep per family and size: {:?}", charts[2]);
    }

    /// One size of each, with a single evaluation each: every chart still shows
    /// every run (a lone point gets its marker).
    #[test]
    fn a_comparison_of_one_evaluation_per_run_shows_every_run() {
        let rows = vec![row("xs", "BDH", 131_000, vec![(8192.0, 1.2)]), row("xs", "GPT", 131_000, vec![(8192.0, 1.5)])];
        let charts = assert_charts_readable(&comparison(rows).page(Page::new(Vec::new())).html("t"), 4);
        assert!(charts.iter().all(|c| c.legend.len() == 2), "{charts:?}");
    }

    /// At equal compute the cheaper family is read at its end and the other part way,
    /// between its evaluations; a run above 90% of the unigram plateau is marked.
    #[test]
    fn the_table_reads_both_families_at_the_cheaper_ones_compute() {
        let bdh = row("xs", "BDH", 100, vec![(100.0, 3.0), (200.0, 2.0), (400.0, 1.0)]);
        let gpt = row("xs", "GPT", 100, vec![(100.0, 2.8), (200.0, 2.7), (400.0, 2.65)]);
        let c = comparison(vec![bdh, gpt]);
        // The GPT's whole run, 400 tokens × 600 FLOPs, is 200 of BDH's tokens (1200
        // FLOPs each): BDH's second evaluation.
        assert_eq!(c.cells(&c.rows[0])[7], "2.0000");
        assert_eq!(c.cells(&c.rows[1])[7], "2.6500");
        let table = c.markdown();
        assert!(table.contains("2.6500 ± 0.0000 (1) †"), "above 0.9 × 2.9 = 2.61: {table}");
        assert!(table.contains("1.0000 ± 0.0000 (1) |"), "{table}");
        assert!(table.contains("2e-3 of 1e-3–4e-3 |"), "an inner rate: {table}");
        let mut edge = c.rows[0].clone();
        edge.lr = 4e-3;
        let c = comparison(vec![edge]);
        assert!(
            c.markdown().contains("4e-3 of 1e-3–4e-3 ‡") && c.markdown().contains("‡: the chosen rate"),
            "{}",
            c.markdown()
        );
    }
}
