//! `bdh inspect induction`: which heads copy from the previous occurrence of a
//! token, on one model or over the models a run kept.

use std::path::PathBuf;

use anyhow::Context;
use bdh::io::run_dir::RunDir;
use bdh::microscope::induction::{induction, InductionReport};
use bdh::model::bdh::Bdh;
use bdh::Model;

use super::{model_line, Output};
use crate::page::{Chart, Page, Series};

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

pub fn run(args: Args, model: Option<&Bdh>, out: &mut Output) -> anyhow::Result<()> {
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
                let Model::Bdh(m) = m else { anyhow::bail!("{} is not a BDH model", dir.display()) };
                let r = induction(&m, args.length, args.sequences, args.seed)?;
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
                dots: true,
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
                dots: true,
                color: Some(7),
            },
            Series {
                name: "second copy".into(),
                points: all.iter().map(|o| (o.step.unwrap_or(0) as f64, o.report.second_loss)).collect(),
                dots: true,
                color: Some(0),
            },
        ],
    });
    p
}
