//! `bdh inspect seeds`: how stable the neurons are over models that differ only in
//! their training seed.

use std::path::PathBuf;

use anyhow::Context;
use bdh::microscope::seeds::{seeds, SeedsReport, MAX_MODELS, MAX_TOKENS};
use bdh::microscope::Scope;
use bdh::Model;

use super::{tokens, Output, TextArgs};
use crate::page::{Bars, Page};

/// Match each neuron of the first model to one of every other by their activations
/// on one text; report how stable the important neurons are, and whether neurons are
/// the activity's axes.
#[derive(clap::Args)]
pub struct Args {
    /// The models (runs or checkpoints), the first the reference: 2 to 16, comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub models: Vec<PathBuf>,
    #[command(flatten)]
    text: TextArgs,
    /// Tokens read, from the text's start (one stream, the state carried).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(2..=MAX_TOKENS as u64))]
    tokens: u64,
    /// The most important neurons per layer that stability is measured on.
    #[arg(long, default_value_t = 64)]
    important: usize,
}

pub fn run(args: Args, out: &mut Output) -> anyhow::Result<()> {
    anyhow::ensure!(
        (2..=MAX_MODELS).contains(&args.models.len()),
        "give 2 to {MAX_MODELS} models with --models A,B,…; got {}",
        args.models.len()
    );
    let mut bytes = args.text.read(out, "text")?;
    bytes.truncate(args.tokens as usize);
    let mut models = Vec::new();
    for (k, path) in args.models.iter().enumerate() {
        let (path, m) = crate::model_args::load(path, None).with_context(|| format!("model {k}"))?;
        out.provenance
            .add(&format!("model {k}"), format!("{} (weights FNV-1a {})", path.display(), m.params().fingerprint()));
        let Model::Bdh(m) = m else { anyhow::bail!("model {k}, {}, is not a BDH model", path.display()) };
        models.push(m);
    }
    let scopes: Vec<Scope> = models.iter().map(Scope::cpu).collect();
    let r = seeds(&scopes, &tokens(&bytes), args.important, 0)?;
    print(&r);
    out.write(&r, || page(out.page(), &r), "bdh inspect seeds")
}

/// "layer:head" of each head, in order.
fn places(r: &SeedsReport) -> Vec<String> {
    (0..r.layers * r.heads).map(|u| format!("{}:{}", u / r.heads, u % r.heads)).collect()
}

/// Which head of a model each of model 0's heads matched, as "0:0→0:1 …".
fn heads(r: &SeedsReport, matched: &[usize]) -> String {
    let names = places(r);
    let to = |u: usize, m: usize| format!("{}:{}", u / r.heads, m);
    names.iter().enumerate().map(|(u, name)| format!("{name}→{}", to(u, matched[u]))).collect::<Vec<_>>().join(" ")
}

fn print(r: &SeedsReport) {
    say!("{} models, {} tokens; stability on the {} most important neurons per layer", r.models, r.tokens, r.important);
    for m in &r.matchings {
        let corr: Vec<String> = m.correlation.iter().map(|c| format!("{c:.3}")).collect();
        say!(
            "model {}: heads matched {}; matched correlation per head {}; important neurons: correlation {:.3}, \
             {:.0}% also important",
            m.model,
            heads(r, &m.heads),
            corr.join(" "),
            m.important_correlation,
            100.0 * m.important_overlap
        );
    }
    let q = r.importance_spread;
    say!(
        "importance's spread over the models (coefficient of variation): {:.2} / {:.2} {:.2} {:.2} / {:.2}",
        q[0],
        q[1],
        q[2],
        q[3],
        q[4]
    );
    for b in &r.bases {
        let a: Vec<String> = b.alignment.iter().map(|x| format!("{x:.3}")).collect();
        say!(
            "model {}: basis alignment per head {} (random directions: {:.3})",
            b.model,
            a.join(" "),
            r.random_alignment
        );
    }
}

fn page(mut p: Page, r: &SeedsReport) -> Page {
    p.heading("Neurons across seeds");
    p.text(&format!(
        "{} models read the same {} tokens. Each neuron of model 0 is matched to one neuron of every other model: \
         heads by their best correlations, then neurons within the matched heads by an optimal assignment on the \
         correlation of their activations x. Matched correlation: its mean over the neurons of model 0 whose \
         activations vary over the text. \
         Important neurons: the {} of each layer with the largest mean contribution to the residual stream, \
         mean (x ⊙ y) · ‖decoder row‖.",
        r.models, r.tokens, r.important
    ));
    let places = places(r);
    p.bars(&Bars {
        title: "Mean matched correlation per head of model 0".into(),
        x_label: "layer:head".into(),
        y_label: "correlation".into(),
        places: places.clone(),
        series: r.matchings.iter().map(|m| (format!("model {}", m.model), m.correlation.clone())).collect(),
        lines: vec![],
    });
    p.bars(&Bars {
        title: "Basis alignment: the top principal components' largest squared loading on one neuron".into(),
        x_label: "layer:head".into(),
        y_label: "mean largest squared loading".into(),
        places,
        series: r.bases.iter().map(|b| (format!("model {}", b.model), b.alignment.clone())).collect(),
        lines: vec![("random directions".into(), r.random_alignment)],
    });
    let rows: Vec<Vec<String>> = r
        .matchings
        .iter()
        .map(|m| {
            vec![
                m.model.to_string(),
                heads(r, &m.heads),
                format!("{:.3}", m.important_correlation),
                format!("{:.0}%", 100.0 * m.important_overlap),
            ]
        })
        .collect();
    p.table(
        &["model", "heads matched to model 0's", "important: matched correlation", "important: also important"],
        &rows,
    );
    let q = r.importance_spread;
    p.text(&format!(
        "The spread of each important neuron's importance over the models (coefficient of variation through the \
         matches): min {:.2}, quartiles {:.2} {:.2} {:.2}, max {:.2}.",
        q[0], q[1], q[2], q[3], q[4]
    ));
    p
}
