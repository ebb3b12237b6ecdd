//! `bdh inspect path`: which neurons, layer by layer, a logit depends on.

use anyhow::Context;
use bdh::microscope::ablate::{influence_path, InfluencePath};
use bdh::microscope::Scope;

use super::{model_line, tokens, Output};
use crate::page::{Bars, Page};

/// The greedy layer-by-layer path of neurons whose removal lowers a target logit most.
#[derive(clap::Args)]
pub struct Args {
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// The target: the byte (first byte of this text) whose logit after the prompt
    /// is followed.
    #[arg(long)]
    target: String,
    /// Candidates tried per layer (the most active x at the last position).
    #[arg(long, default_value_t = 32)]
    candidates: usize,
}

pub fn run(args: Args, model: &Scope, out: &mut Output) -> anyhow::Result<()> {
    anyhow::ensure!(!args.prompt.is_empty(), "the prompt is empty");
    let target = *args.target.as_bytes().first().context("the target is empty")?;
    anyhow::ensure!((1..=4096).contains(&args.candidates), "--candidates must be in 1..=4096");
    out.provenance.text("prompt", "--prompt", args.prompt.as_bytes());
    let r = influence_path(model, &tokens(args.prompt.as_bytes()), target as u32, args.candidates)?;
    say!("{}; logit of {:?} after the prompt: {:.3}", model_line(model), target as char, r.logit);
    for s in &r.steps {
        say!(
            "  layer {} head {} neuron {:<5} → logit {:.3} ({:+.3})",
            s.id.layer,
            s.id.head,
            s.id.neuron,
            s.logit,
            s.shift
        );
    }
    out.write(&r, || page(out.page(), &r), "bdh inspect path")
}

fn page(mut p: Page, r: &InfluencePath) -> Page {
    let target = r.target as u8 as char;
    p.heading("Influence path");
    p.text(&format!(
        "Layer by layer, the neuron (of the {} most active at the last position) whose removal, with the neurons chosen before it, lowers the logit of {target:?} most. Unablated logit {:.3}.",
        r.candidates, r.logit
    ));
    p.bars(&Bars {
        title: format!("Change of the logit of {target:?} as the path's neurons are removed (from {:.3})", r.logit),
        x_label: "removed, with the ones before it (layer:head:neuron)".into(),
        y_label: "logit change".into(),
        places: r.steps.iter().map(|s| format!("{}:{}:{}", s.id.layer, s.id.head, s.id.neuron)).collect(),
        series: vec![(
            format!("logit of {target:?} after the prompt, minus unablated"),
            r.steps.iter().map(|s| s.shift).collect(),
        )],
        lines: Vec::new(),
    });
    let rows: Vec<Vec<String>> = r
        .steps
        .iter()
        .map(|s| {
            vec![
                s.id.layer.to_string(),
                s.id.head.to_string(),
                s.id.neuron.to_string(),
                format!("{:.3}", s.logit),
                format!("{:+.3}", s.shift),
            ]
        })
        .collect();
    p.table(&["layer", "head", "neuron", "logit with the path removed", "shift"], &rows);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::figures::assert_charts_readable;
    use bdh::microscope::ablate::{NeuronId, PathStep};

    /// The page draws the logit's change at each step of the path as a bar, and
    /// lists the steps.
    #[test]
    fn the_path_page_draws_the_logit_change_at_each_step() {
        let step =
            |layer, neuron, logit: f64| PathStep { id: NeuronId { layer, head: 0, neuron }, logit, shift: logit - 4.0 };
        let r = InfluencePath {
            target: u32::from(b'o'),
            logit: 4.0,
            candidates: 8,
            steps: vec![step(0, 12, 3.1), step(1, 146, -0.5)],
        };
        let html = page(Page::new(Vec::new()), &r).html("t");
        let charts = assert_charts_readable(&html, 1);
        assert_eq!(charts[0].marks.iter().filter(|m| m.kind == "rect").count(), 2, "{:?}", charts[0]);
        assert!(html.contains("<td>146</td>") && html.contains("0:0:12") && html.contains("1:0:146"));
    }
}
