//! `bdh inspect top`: what a single neuron fires for.

use bdh::microscope::top::{top, Context, TopReport};
use bdh::microscope::Scope;
use bdh::model::bdh::Site;

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

pub fn run(args: Args, model: &Scope, out: &mut Output) -> anyhow::Result<()> {
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
        let shown: Vec<&Context> = r.contexts.iter().filter(|c| c.facet == i).take(4).collect();
        for (c, line) in shown.iter().zip(concordance(&shown)) {
            say!("  {:>8.4}  {line}", c.activation);
        }
    }
    out.write(&r, || page(out.page(), &r), "bdh inspect top")
}

/// A context's text on one line: line breaks, tabs and other control characters
/// as one visible character each, so that fixed-width columns stay in line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' => '⏎',
            '\t' => '⇥',
            c if c.is_control() => '·',
            c => c,
        })
        .collect()
}

/// The contexts as a concordance: each `before[token]after` with `before` padded
/// on the left to the longest, so that the tokens stand in one column in a
/// fixed-width font.
fn concordance(contexts: &[&Context]) -> Vec<String> {
    let width = contexts.iter().map(|c| one_line(&c.before).chars().count()).max().unwrap_or(0);
    contexts
        .iter()
        .map(|c| format!("{:>width$}[{}]{}", one_line(&c.before), one_line(&c.token), one_line(&c.after)))
        .collect()
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
        let mine: Vec<&Context> = r.contexts.iter().filter(|c| c.facet == i).collect();
        let rows: Vec<Vec<String>> = mine
            .iter()
            .zip(concordance(&mine))
            .map(|(c, line)| vec![c.position.to_string(), format!("{:.4}", c.activation), line])
            .collect();
        p.table_with_text(&["position", "activation", "context"], &rows, Some(2));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(position: usize, before: &str, token: &str, after: &str) -> Context {
        let (before, token, after) = (before.into(), token.into(), after.into());
        Context { position, activation: 1.0, before, token, after, facet: 0 }
    }

    /// The contexts read as a concordance: fixed-width and left-aligned, the tokens
    /// in one column even where a context starts near the text's beginning.
    #[test]
    fn the_top_page_lines_the_contexts_up_at_their_token() {
        let r = TopReport {
            layer: 1,
            head: 0,
            neuron: 146,
            site: Site::Xy,
            tokens: 100,
            fired: 9,
            contexts: vec![context(40, "ada oslo, bo red;\ncy", " ", "lime"), context(3, "wes", " ", "pink")],
            facets: vec![bdh::microscope::top::Facet { size: 2, mean_activation: 1.0, tokens: vec![(" ".into(), 2)] }],
        };
        let html = page(Page::new(Vec::new()), &r).html("t");
        let cells: Vec<&str> =
            html.split("<td class=\"text\">").skip(1).map(|c| c.split("</td>").next().unwrap()).collect();
        assert_eq!(cells, ["ada oslo, bo red;⏎cy[ ]lime", "                 wes[ ]pink"]);
        assert!(html.contains("td.text{font-family:monospace;text-align:left;white-space:pre}"));
    }
}
