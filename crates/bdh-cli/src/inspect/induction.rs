//! `bdh inspect induction`: which heads copy from the previous occurrence of a
//! token, on one model or over the models a run kept.

use std::path::PathBuf;

use anyhow::Context;
use bdh::io::run_dir::RunDir;
use bdh::microscope::induction::{induction, InductionReport};
use bdh::microscope::Scope;

use crate::device::DeviceArgs;
use bdh::Model;

use super::{model_line, Output};
use crate::page::{Bars, Chart, Page, Series, Style};

/// Induction and previous-token scores per head on repeated random text.
#[derive(clap::Args)]
pub struct Args {
    /// Tokens per copy of the random sequence (distinct letters up to 26).
    #[arg(long, default_value_t = 24)]
    length: usize,
    /// Random sequences.
    #[arg(long, default_value_t = 16)]
    sequences: usize,
    /// Seed of the sequences.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Instead of --model: every model a run kept (`training.keep_every`), in step order.
    #[arg(long)]
    pub run: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Over {
    step: Option<usize>,
    report: InductionReport,
}

fn print(r: &InductionReport) {
    say!(
        "loss on the first copy {:.3}, on the second {:.3} nats/token (an even spread gives a share of {:.3} per position)",
        r.first_loss, r.second_loss, r.uniform_share
    );
    say!("{:<6} {:<5} {:>10} {:>15} {:>22}", "layer", "head", "induction", "previous token", "loss rise if removed");
    for h in &r.heads {
        say!("{:<6} {:<5} {:>10.3} {:>15.3} {:>22.3}", h.layer, h.head, h.induction, h.previous, h.ablation);
    }
}

pub fn run(args: Args, model: Option<&Scope>, device: &DeviceArgs, out: &mut Output) -> anyhow::Result<()> {
    let mut all = Vec::new();
    match (&args.run, model) {
        (Some(run), _) => {
            let none_kept = || format!("{} kept no models; train with --set training.keep_every=N", run.display());
            let kept = RunDir::open(run).and_then(|r| r.kept_steps()).with_context(none_kept)?;
            anyhow::ensure!(!kept.is_empty(), none_kept());
            for (step, dir) in kept {
                let m = bdh::io::checkpoint::load(&dir, None).with_context(|| format!("loading {}", dir.display()))?;
                let read = format!("{} (weights FNV-1a {})", dir.display(), m.params().fingerprint());
                out.provenance.add(&format!("model at step {step}"), read);
                anyhow::ensure!(matches!(m, Model::Bdh(_)), "{} is not a BDH model", dir.display());
                let mut on = device.open(&m)?;
                let Model::Bdh(m) = m else { unreachable!("checked: a BDH model") };
                let scope = match &mut on {
                    Some(on) => Scope::on(&m, on.traced()),
                    None => Scope::cpu(&m),
                };
                let r = induction(&scope, args.length, args.sequences, args.seed)?;
                let best = r.heads.iter().max_by(|a, b| a.induction.total_cmp(&b.induction)).expect("a head");
                say!(
                    "step {step:>6}: second-copy loss {:.3} (first {:.3}); strongest induction: layer {} head {} ({:.3})",
                    r.second_loss, r.first_loss, best.layer, best.head, best.induction
                );
                all.push(Over { step: Some(step), report: r });
            }
        }
        (None, Some(m)) => {
            let r = induction(m, args.length, args.sequences, args.seed)?;
            let sequences = crate::count(r.sequences, "random sequence", "random sequences");
            say!("{}; {sequences} of {} tokens, each repeated once", model_line(m), r.length);
            print(&r);
            all.push(Over { step: None, report: r });
        }
        (None, None) => anyhow::bail!("give --model or --run"),
    }
    #[derive(serde::Serialize)]
    struct Models<'a> {
        models: &'a [Over],
    }
    out.write(&Models { models: &all }, || page(out.page(), &all), "bdh inspect induction")
}

fn page(mut p: Page, all: &[Over]) -> Page {
    p.heading("Induction heads");
    p.text("Random lowercase sequences (distinct letters within a copy of up to 26), each repeated once. A head's share at an offset is the magnitude of its attention score R(x_t)·R(x_s) there over the sum over every earlier position, averaged over the second copy. Induction: the position after the previous occurrence of the current token; previous token: the position before. Loss rise: second-copy loss with the head's neurons zeroed, minus without.");
    if let [only] = all {
        let r = &only.report;
        let places: Vec<String> = r.heads.iter().map(|h| format!("{}:{}", h.layer, h.head)).collect();
        let per_head = |f: fn(&bdh::microscope::induction::HeadInduction) -> f64| r.heads.iter().map(f).collect();
        p.bars(&Bars {
            title: "Share of each head's score magnitude at the two offsets".into(),
            x_label: "layer:head".into(),
            y_label: "share over the second copy".into(),
            places: places.clone(),
            series: vec![
                ("induction".into(), per_head(|h| h.induction)),
                ("previous token".into(), per_head(|h| h.previous)),
            ],
            lines: vec![("an even spread".into(), r.uniform_share)],
        });
        p.bars(&Bars {
            title: "Rise of the second copy's loss when the head is removed".into(),
            x_label: "layer:head".into(),
            y_label: "nats per token".into(),
            places,
            series: vec![("loss rise if removed".into(), per_head(|h| h.ablation))],
            lines: Vec::new(),
        });
        let rows: Vec<Vec<String>> = r
            .heads
            .iter()
            .map(|h| {
                vec![
                    h.layer.to_string(),
                    h.head.to_string(),
                    format!("{:.3}", h.induction),
                    format!("{:.3}", h.previous),
                    format!("{:.3}", h.ablation),
                ]
            })
            .collect();
        p.table(&["layer", "head", "induction", "previous token", "loss rise if removed"], &rows);
        return p;
    }
    let heads = all.first().map_or(0, |o| o.report.heads.len());
    let series = (0..heads)
        .map(|i| {
            let h = &all[0].report.heads[i];
            Series {
                name: format!("layer {} head {}", h.layer, h.head),
                points: all.iter().map(|o| (o.step.unwrap_or(0) as f64, o.report.heads[i].induction)).collect(),
                style: Style::Dots,
                color: None,
            }
        })
        .collect();
    p.chart(&Chart {
        title: "Induction share per head over training".into(),
        x_label: "step".into(),
        y_label: "induction share".into(),
        log_x: false,
        log_y: false,
        series,
    });
    p.chart(&Chart {
        title: "Loss on the second copy over training".into(),
        x_label: "step".into(),
        y_label: "nats per token".into(),
        log_x: false,
        log_y: false,
        series: vec![
            Series {
                name: "first copy".into(),
                points: all.iter().map(|o| (o.step.unwrap_or(0) as f64, o.report.first_loss)).collect(),
                style: Style::Dots,
                color: Some(7),
            },
            Series {
                name: "second copy".into(),
                points: all.iter().map(|o| (o.step.unwrap_or(0) as f64, o.report.second_loss)).collect(),
                style: Style::Dots,
                color: Some(0),
            },
        ],
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::figures::assert_charts_readable;
    use bdh::microscope::induction::HeadInduction;

    fn report(scale: f64) -> InductionReport {
        let heads = (0..8)
            .map(|i| HeadInduction {
                layer: i / 4,
                head: i % 4,
                induction: scale * 0.01 * i as f64,
                previous: 0.3 - 0.03 * i as f64,
                ablation: 0.05 * (i % 3) as f64,
            })
            .collect();
        InductionReport {
            length: 24,
            sequences: 16,
            first_loss: 3.2,
            second_loss: 3.0 - scale,
            uniform_share: 0.03,
            heads,
        }
    }

    /// One model: the scores of every head as bars beside an even spread's share,
    /// and the loss rise as bars; over a run's models: a series per head.
    #[test]
    fn the_induction_pages_draw_every_head() {
        let one = [Over { step: None, report: report(1.0) }];
        let html = page(Page::new(Vec::new()), &one).html("t");
        let charts = assert_charts_readable(&html, 2);
        let names: Vec<&str> = charts[0].legend.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["induction", "previous token", "an even spread"]);
        assert!(html.contains("<td>0.070</td>"), "the table is kept");
        let run: Vec<Over> = (1..=3).map(|k| Over { step: Some(100 * k), report: report(k as f64 / 3.0) }).collect();
        let charts = assert_charts_readable(&page(Page::new(Vec::new()), &run).html("t"), 2);
        assert_eq!(charts[0].legend.len(), 8);
    }
}
