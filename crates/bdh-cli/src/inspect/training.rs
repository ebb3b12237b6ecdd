//! `bdh inspect training`: rich or lazy learning over the models a run kept — how far
//! each layer matrix moved from its start, in how many directions, whether its top
//! directions are still the start's, and how sparse the neurons were at each step.

use std::path::PathBuf;

use anyhow::Context;
use bdh::io::run_dir::RunDir;
use bdh::microscope::sparsity::sparsity;
use bdh::microscope::weights::{weight_change, WeightChange, ALIGNED};
use bdh::microscope::Scope;
use bdh::Model;

use super::{tokens, Output, TextArgs};
use crate::device::DeviceArgs;
use crate::page::{Chart, Page, Series, Style};

/// Every model a run kept, against the one it kept at step 0.
#[derive(clap::Args)]
pub struct Args {
    /// The run (trained with `training.keep_every`, which keeps step 0 too).
    #[arg(long)]
    pub run: PathBuf,
    /// The text the neurons' sparsity is measured on.
    #[command(flatten)]
    text: TextArgs,
}

/// One kept model.
#[derive(serde::Serialize)]
struct Step {
    step: usize,
    /// `encoder`, `encoder_v`, `decoder` against step 0.
    weights: Vec<WeightChange>,
    /// Fraction of x > 0, and of x ⊙ y > 0, over the text (all layers and heads).
    x: f64,
    xy: f64,
}

pub fn run(args: Args, device: &DeviceArgs, out: &mut Output) -> anyhow::Result<()> {
    let bytes = args.text.read(out, "text")?;
    let run = &args.run;
    let none_kept = || format!("{} kept no models; train with --set training.keep_every=N", run.display());
    let kept = RunDir::open(run).and_then(|r| r.kept_steps()).with_context(none_kept)?;
    anyhow::ensure!(!kept.is_empty(), none_kept());
    anyhow::ensure!(
        kept[0].0 == 0,
        "{} kept no model at step 0, the start its weights are measured from (runs keep it with \
         training.keep_every since it was added; train it again to measure)",
        run.display()
    );
    out.provenance.add("run", run.display().to_string());
    let mut start = None;
    let mut steps = Vec::new();
    say!(
        "{:>7}  {:>24}  {:>24}  {:>24}  {:>6} {:>6}",
        "step",
        "change: enc enc_v dec",
        "rank",
        "alignment",
        "x",
        "x⊙y"
    );
    for (step, dir) in kept {
        let m = bdh::io::checkpoint::load(&dir, None).with_context(|| format!("loading {}", dir.display()))?;
        out.provenance.add(
            &format!("model at step {step}"),
            format!("{} (weights FNV-1a {})", dir.display(), m.params().fingerprint()),
        );
        let mut on = device.open(&m)?;
        let Model::Bdh(m) = m else { anyhow::bail!("{} is not a BDH model", dir.display()) };
        let weights = weight_change(start.as_ref().unwrap_or(&m), &m)?;
        let scope = match &mut on {
            Some(on) => Scope::on(&m, on.traced()),
            None => Scope::cpu(&m),
        };
        let sp = sparsity(&scope, &tokens(&bytes), 256)?;
        let layers = sp.layers.len() as f64;
        let (x, xy) = (
            sp.layers.iter().map(|l| l.all.x).sum::<f64>() / layers,
            sp.layers.iter().map(|l| l.all.xy).sum::<f64>() / layers,
        );
        let three = |f: fn(&WeightChange) -> f64| {
            weights.iter().map(|w| format!("{:>7.3}", f(w))).collect::<Vec<_>>().join(" ")
        };
        say!(
            "{step:>7}  {}  {}  {}  {:>5.1}% {:>5.1}%",
            three(|w| w.relative_change),
            three(|w| w.effective_rank),
            three(|w| w.alignment),
            100.0 * x,
            100.0 * xy
        );
        if start.is_none() {
            start = Some(m);
        }
        steps.push(Step { step, weights, x, xy });
    }
    #[derive(serde::Serialize)]
    struct Report<'a> {
        aligned_directions: usize,
        steps: &'a [Step],
    }
    out.write(
        &Report { aligned_directions: ALIGNED, steps: &steps },
        || page(out.page(), &steps),
        "bdh inspect training",
    )
}

fn page(mut p: Page, steps: &[Step]) -> Page {
    p.heading("Rich or lazy learning");
    p.text(&format!(
        "Each model the run kept against the one at step 0. Relative change: ‖W − W₀‖ / ‖W₀‖ of the whole tensor. \
         Effective rank: exp of the entropy of each head's normalised singular values, the mean over heads (rich \
         learning concentrates weights on few directions). Alignment: ‖U₀ᵀ U‖²_F / {ALIGNED} of each head's top \
         {ALIGNED} singular directions in the residual stream against the start's (1: the same directions; about \
         {ALIGNED} / D for unrelated ones). Sparsity: the fraction of x and of x ⊙ y above 0 on the text."
    ));
    let names = ["encoder", "encoder_v", "decoder"];
    let per_matrix = |f: fn(&WeightChange) -> f64| -> Vec<Series> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| Series {
                name: (*name).into(),
                points: steps.iter().map(|s| (s.step as f64, f(&s.weights[i]))).collect(),
                style: Style::Line,
                color: None,
            })
            .collect()
    };
    let chart = |title: &str, y: &str, series| Chart {
        title: title.into(),
        x_label: "step".into(),
        y_label: y.into(),
        log_x: false,
        log_y: false,
        series,
    };
    p.chart(&chart("Change from the start", "‖W − W₀‖ / ‖W₀‖", per_matrix(|w| w.relative_change)));
    p.chart(&chart("Effective rank", "effective rank (mean over heads)", per_matrix(|w| w.effective_rank)));
    p.chart(&chart(
        "Alignment of the top singular directions with the start's",
        "alignment",
        per_matrix(|w| w.alignment),
    ));
    let sparsity = |name: &str, f: fn(&Step) -> f64| Series {
        name: name.into(),
        points: steps.iter().map(|s| (s.step as f64, f(s))).collect(),
        style: Style::Line,
        color: None,
    };
    p.chart(&chart("Neurons firing", "fraction above 0", vec![sparsity("x", |s| s.x), sparsity("x ⊙ y", |s| s.xy)]));
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            let mut row = vec![s.step.to_string()];
            row.extend(
                s.weights
                    .iter()
                    .map(|w| format!("{:.3} / {:.1} / {:.3}", w.relative_change, w.effective_rank, w.alignment)),
            );
            row.extend([format!("{:.1}%", 100.0 * s.x), format!("{:.1}%", 100.0 * s.xy)]);
            row
        })
        .collect();
    p.table(&["step", "encoder: change / rank / alignment", "encoder_v", "decoder", "x", "x ⊙ y"], &rows);
    p
}
