//! `bdh inspect top`: what a single neuron fires for.

use bdh::microscope::top::{top, TopReport};
use bdh::model::bdh::{Bdh, Site};

use super::{model_line, Output, TextArgs};
use crate::page::Page;

/// The top-activating contexts of one neuron over a text, clustered into facets.
#[derive(clap::Args)]
pub struct Args {
    /// Layer.
    #[arg(long)]
    layer: usize,
    /// Head.
    #[arg(long)]
    head: usize,
    /// Neuron within the head.
    #[arg(long)]
    neuron: usize,
    /// x, y or xy.
    #[arg(long, default_value = "x", value_parser = super::parse_site)]
    site: Site,
    #[command(flatten)]
    text: TextArgs,
    /// Contexts kept.
    #[arg(long, default_value_t = 40)]
    k: usize,
    /// Facets (clusters) at most.
    #[arg(long, default_value_t = 3)]
    facets: usize,
    /// Bytes shown each side.
    #[arg(long, default_value_t = 24)]
    radius: usize,
}

pub fn run(args: Args, model: &Bdh, out: &mut Output) -> anyhow::Result<()> {
    let bytes = args.text.read(out, "text")?;
    anyhow::ensure!(args.radius <= 4096, "--radius must be at most 4096");
    let r = top(model, &bytes, args.layer, args.head, args.neuron, args.site, args.k, args.facets, args.radius)?;
    say!(
        "{}; neuron {}:{}:{} ({}) fired at {} of {} tokens",
        model_line(model),
        r.layer,
        r.head,
        r.neuron,
        format!("{:?}", r.site).to_lowercase(),
        r.fired,
        r.tokens
    );
    for (i, f) in r.facets.iter().enumerate() {
        let toks: Vec<String> = f.tokens.iter().map(|(t, c)| format!("{t:?}×{c}")).collect();
        say!("facet {i}: {} contexts, mean {:.4}; tokens {}", f.size, f.mean_activation, toks.join(" "));
        for c in r.contexts.iter().filter(|c| c.facet == i).take(4) {
            say!("  {:>8.4}  {}[{}]{}", c.activation, one_line(&c.before), one_line(&c.token), one_line(&c.after));
        }
    }
    out.write(&r, || page(out.page(), &r), "bdh inspect top")
}

fn one_line(s: &str) -> String {
    s.replace('\n', "⏎")
}

fn page(mut p: Page, r: &TopReport) -> Page {
    p.heading(&format!("Neuron {}:{}:{} ({})", r.layer, r.head, r.neuron, format!("{:?}", r.site).to_lowercase()));
    p.text(&format!(
        "It fired at {} of {} tokens. Its {} strongest contexts, clustered into facets by k-means (cosine) on the whole head's activation there.",
        r.fired,
        r.tokens,
        r.contexts.len()
    ));
    for (i, f) in r.facets.iter().enumerate() {
        let toks: Vec<String> = f.tokens.iter().map(|(t, c)| format!("{t:?}×{c}")).collect();
        p.heading(&format!(
            "Facet {i}: {} contexts, mean activation {:.4}, tokens {}",
            f.size,
            f.mean_activation,
            toks.join(" ")
        ));
        let rows: Vec<Vec<String>> = r
            .contexts
            .iter()
            .filter(|c| c.facet == i)
            .map(|c| {
                vec![
                    c.position.to_string(),
                    format!("{:.4}", c.activation),
                    format!("{}[{}]{}", one_line(&c.before), one_line(&c.token), one_line(&c.after)),
                ]
            })
            .collect();
        p.table(&["position", "activation", "context"], &rows);
    }
    p
}
