//! `bdh inspect synapses`.

use std::path::PathBuf;

use anyhow::Context;
use bdh::microscope::synapses::{check_site, concept_search, synapses, ConceptReport, Separation};
use bdh::model::bdh::Bdh;

use super::{model_line, read_file, tokens, Output, TextArgs};
use crate::page::{last, thin, Chart, Page, Series, Thinned};

/// The synapse state σ of one layer and head over a text, and a concept search.
#[derive(clap::Args)]
pub struct Args {
    /// Layer l ≥ 1 (σ pairs layer l−1's x⊙y with layer l's x).
    #[arg(long)]
    layer: usize,
    /// Head.
    #[arg(long)]
    head: usize,
    #[command(flatten)]
    text: TextArgs,
    /// Strongest synapses to list.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Trace this synapse over the text, as FROM:TO (repeatable; default the five strongest).
    #[arg(long, value_parser = parse_pair)]
    trace: Vec<(usize, usize)>,
    /// Sum σ over token positions FROM..TO only (the model still reads the text
    /// before FROM); default the whole text.
    #[arg(long, value_name = "FROM:TO", value_parser = parse_pair)]
    window: Option<(usize, usize)>,
    /// Concept sentences, one per line.
    #[arg(long, requires = "contrast")]
    concept: Option<PathBuf>,
    /// Contrast sentences, one per line.
    #[arg(long, requires = "concept")]
    contrast: Option<PathBuf>,
}

fn parse_pair(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once(':').ok_or("expected FROM:TO")?;
    Ok((a.trim().parse().map_err(|e| format!("{e}"))?, b.trim().parse().map_err(|e| format!("{e}"))?))
}

fn sentences(path: &std::path::Path, out: &mut Output, key: &str) -> anyhow::Result<Vec<Vec<u32>>> {
    let bytes = read_file(path)?;
    out.provenance.file(key, path, &bytes);
    let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).map(|l| tokens(l.as_bytes())).collect())
}

#[derive(serde::Serialize)]
struct Report {
    synapses: Option<bdh::microscope::synapses::SynapseReport>,
    concept: Option<ConceptReport>,
}

pub fn run(args: Args, model: &Bdh, out: &mut Output) -> anyhow::Result<()> {
    check_site(model, args.layer, args.head)?;
    say!(
        "{}; σ(i, j) = Σ_τ (x⊙y)_{}(τ, i) · x_{}(τ, j), head {}",
        model_line(model),
        args.layer.saturating_sub(1),
        args.layer,
        args.head
    );
    let mut report = Report { synapses: None, concept: None };
    let mut text = Vec::new();
    if args.text.given() {
        text = args.text.read(out, "text")?;
        let window = args.window.map(|(a, b)| a..b);
        let r = synapses(model, &tokens(&text), args.layer, args.head, args.top, &args.trace, window)?;
        say!(
            "{} tokens, σ over positions {}..{}; {} of {} synapses non-zero; strongest:",
            r.tokens,
            r.window.start,
            r.window.end,
            r.nonzero,
            model.config.n_neurons().pow(2)
        );
        for s in r.strongest.iter().take(10) {
            say!("  {:>5} → {:<5} σ = {:.4}", s.from, s.to, s.value);
        }
        report.synapses = Some(r);
    }
    if let (Some(c), Some(k)) = (&args.concept, &args.contrast) {
        let (concept, contrast) = (sentences(c, out, "concept")?, sentences(k, out, "contrast")?);
        report.concept = Some(search(&args, model, &concept, &contrast)?);
    }
    anyhow::ensure!(
        report.synapses.is_some() || report.concept.is_some(),
        "give --text/--prompt, or --concept and --contrast"
    );
    out.write(&report, || page(out.page(), &report, &text), "bdh inspect synapses")
}

/// The synapses and neurons that tell the concept's sentences from the contrast's.
fn search(args: &Args, model: &Bdh, concept: &[Vec<u32>], contrast: &[Vec<u32>]) -> anyhow::Result<ConceptReport> {
    let r = concept_search(model, concept, contrast, args.layer, args.head, args.top)?;
    say!(
        "concept search: {} concept vs {} contrast sentences; {} synapses and {} neurons tested \
         (q: Benjamini–Hochberg over each set)",
        r.concept,
        r.contrast,
        r.candidates,
        r.neurons_tested
    );
    let show = |s: &Separation| {
        let name = s.to.map_or(format!("neuron {}", s.from), |to| format!("synapse {} → {}", s.from, to));
        say!(
            "  {name:<22} U = {:>6.1}  p = {:.2e}  q = {:.2e}  r = {:+.2}  mean {:.4} vs {:.4}",
            s.test.u,
            s.test.p,
            s.q,
            s.test.r,
            s.concept_mean,
            s.contrast_mean
        );
    };
    r.synapses.iter().take(5).for_each(show);
    r.neurons.iter().take(5).for_each(show);
    Ok(r)
}

fn page(mut p: Page, r: &Report, text: &[u8]) -> Page {
    if let Some(s) = &r.synapses {
        p.heading(&format!("Synapse state of layer {}, head {}", s.layer, s.head));
        p.text("σ(i, j) sums, over the tokens so far, the product of presynaptic neuron i's x⊙y in the layer below and postsynaptic neuron j's x in this layer; RoPE's rotation is left out, so σ ≥ 0.");
        let series: Vec<(String, Thinned)> = s
            .traces
            .iter()
            .map(|(syn, v)| {
                let values: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                let mut t = thin(&values, 1500, last);
                t.points.iter_mut().for_each(|p| p.0 += s.window.start as f64);
                (format!("{} → {}", syn.from, syn.to), t)
            })
            .collect();
        let width = series.first().map_or(1, |(_, t)| t.width);
        let every = if width > 1 { format!(", every {width}th position") } else { String::new() };
        p.chart(&Chart {
            title: format!("σ_t of traced synapses over positions {}..{}{every}", s.window.start, s.window.end),
            x_label: "token position".into(),
            y_label: "σ_t(i, j)".into(),
            log_x: false,
            log_y: false,
            series: series
                .into_iter()
                .map(|(name, t)| Series { name, points: t.points, dots: false, color: None })
                .collect(),
        });
        p.positions(text, 64, 8192);
        let rows: Vec<Vec<String>> =
            s.strongest.iter().map(|x| vec![x.from.to_string(), x.to.to_string(), format!("{:.4}", x.value)]).collect();
        p.table(&["from", "to", "σ"], &rows);
    }
    if let Some(c) = &r.concept {
        p.heading("Concept search");
        p.text(&format!(
            "{} concept against {} contrast sentences; Mann–Whitney U, two-sided p (normal approximation), rank-biserial r. \
             q is the Benjamini–Hochberg false-discovery-rate adjustment of p over all {} synapses (the largest concept means) \
             and all {} neurons tested; read q, not p, when picking out synapses.",
            c.concept, c.contrast, c.candidates, c.neurons_tested
        ));
        let rows = |v: &[Separation]| -> Vec<Vec<String>> {
            v.iter()
                .map(|s| {
                    vec![
                        s.from.to_string(),
                        s.to.map_or("-".into(), |t| t.to_string()),
                        format!("{:.1}", s.test.u),
                        format!("{:.2e}", s.test.p),
                        format!("{:.2e}", s.q),
                        format!("{:+.2}", s.test.r),
                        format!("{:.4}", s.concept_mean),
                        format!("{:.4}", s.contrast_mean),
                    ]
                })
                .collect()
        };
        let header = ["from", "to", "U", "p", "q (BH)", "r", "concept mean", "contrast mean"];
        p.table(&header, &rows(&c.synapses));
        p.table(&header, &rows(&c.neurons));
    }
    p
}
