//! `bdh inspect synapses`.

use std::path::PathBuf;

use anyhow::Context;
use bdh::microscope::stats::mann_whitney;
use bdh::microscope::synapses::{check_site, concept_search, synapses, ConceptReport, Separation, FDR};
use bdh::microscope::Scope;

use super::{model_line, read_file, tokens, Output, TextArgs};
use crate::page::{last, thin, Chart, Page, Series, Style, Thinned};
use crate::progress::Job;

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

pub fn run(args: Args, model: &Scope, out: &mut Output) -> anyhow::Result<()> {
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
        let job = Job::new("inspect synapses", 0);
        let (top, trace) = (args.top, &args.trace);
        let r = synapses(model, &tokens(&text), args.layer, args.head, top, trace, window, &|done, total| {
            job.update(done, total)
        });
        job.finish();
        let r = r?;
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
fn search(args: &Args, model: &Scope, concept: &[Vec<u32>], contrast: &[Vec<u32>]) -> anyhow::Result<ConceptReport> {
    let job = Job::new("inspect synapses (concept search)", 0);
    let r = concept_search(model, concept, contrast, args.layer, args.head, args.top, &|done, total| {
        job.update(done, total)
    });
    job.finish();
    let r = r?;
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
    for line in verdict(&r) {
        say!("{line}");
    }
    Ok(r)
}

/// What a concept search's q-values say, a sentence for the synapses and one for
/// the neurons.
fn verdict(c: &ConceptReport) -> [String; 2] {
    // The smallest p a rank test gives these sample sizes: every concept sentence
    // above every contrast sentence. No q is below it.
    let (a, b): (Vec<f64>, Vec<f64>) =
        ((0..c.concept).map(|i| (c.contrast + i) as f64).collect(), (0..c.contrast).map(|i| i as f64).collect());
    let p_min = mann_whitney(&a, &b).p;
    let percent = FDR * 100.0;
    let one = |what: &str, tested: usize, selective: usize, listed: &[Separation]| -> String {
        if selective > 0 {
            let are = if selective == 1 { "is" } else { "are" };
            return format!(
                "{selective} of the {tested} {what}s tested {are} more active in the concept's sentences than in the \
                 contrast's at q < {FDR} (Benjamini–Hochberg): they tell the two apart, and at most about \
                 {percent:.0}% of such a list is expected to be false discoveries."
            );
        }
        let why = match listed.first() {
            _ if p_min >= FDR => format!(
                "with {} concept and {} contrast sentences no test can get there (the smallest p a rank test gives \
                 them is {p_min:.3}); give more sentences",
                c.concept, c.contrast
            ),
            Some(best) => format!(
                "the smallest q is {:.3}. At a false-discovery rate of {percent:.0}%, there is no evidence that any \
                 {what} here tells the concept's sentences from the contrast's",
                best.q
            ),
            None => format!("no {what} is even more active on average in the concept's sentences"),
        };
        format!("None of the {tested} {what}s tested is more active in the concept's sentences at q < {FDR}: {why}.")
    };
    [
        one("synapse", c.candidates, c.synapses_selective, &c.synapses),
        one("neuron", c.neurons_tested, c.neurons_selective, &c.neurons),
    ]
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
                .map(|(name, t)| Series { name, points: t.points, style: Style::Line, color: None })
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
        for line in verdict(c) {
            p.text(&line);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::figures::assert_charts_readable;
    use bdh::microscope::stats::MannWhitney;
    use bdh::microscope::synapses::{Synapse, SynapseReport};

    fn separation(from: usize, p: f64, q: f64) -> Separation {
        let test = MannWhitney { u: 200.0, p, r: 0.8 };
        Separation { from, to: Some(3), concept_mean: 2.0, contrast_mean: 1.0, test, q }
    }

    fn search(sentences: usize, selective: usize, listed: Vec<Separation>) -> ConceptReport {
        ConceptReport {
            concept: sentences,
            contrast: sentences,
            candidates: 20_000,
            neurons_tested: 1024,
            synapses_selective: selective,
            neurons_selective: 0,
            synapses: listed,
            neurons: Vec::new(),
        }
    }

    /// The verdict says how many synapses pass q < 0.05, or that none does and why:
    /// the evidence falls short, or the sentences are too few for any test to pass.
    #[test]
    fn a_concept_search_says_what_its_q_values_mean() {
        let [some, _] = verdict(&search(16, 3, vec![separation(750, 1e-7, 0.01)]));
        assert!(some.starts_with("3 of the 20000 synapses tested are more active"), "{some}");
        let [none, neurons] = verdict(&search(16, 0, vec![separation(750, 2.2e-5, 0.0567)]));
        assert!(none.starts_with("None of the 20000 synapses") && none.contains("the smallest q is 0.057"), "{none}");
        assert!(none.contains("no evidence"), "{none}");
        assert!(neurons.contains("no neuron is even more active"), "{neurons}");
        let [few, _] = verdict(&search(2, 0, vec![separation(750, 0.12, 1.0)]));
        assert!(few.contains("with 2 concept and 2 contrast sentences no test can get there"), "{few}");
    }

    /// The page's trace chart shows every traced synapse, its legend below them,
    /// and the page gives the verdict.
    #[test]
    fn the_synapses_page_draws_every_trace_and_gives_the_verdict() {
        let syn = |from, to, value| Synapse { from, to, value };
        let traces = (0..5)
            .map(|k| (syn(k, 9, 10.0 + k as f32), (0..300).map(|t| (t * (k + 1)) as f32 / 30.0).collect()))
            .collect();
        let s = SynapseReport {
            layer: 2,
            head: 1,
            tokens: 300,
            window: 0..300,
            nonzero: 1000,
            strongest: vec![syn(4, 9, 14.0)],
            traces,
        };
        let r = Report { synapses: Some(s), concept: Some(search(16, 0, vec![separation(750, 2.2e-5, 0.0567)])) };
        let html = page(Page::new(Vec::new()), &r, &[b'a'; 300]).html("t");
        let charts = assert_charts_readable(&html, 1);
        assert_eq!(charts[0].legend.len(), 5);
        assert!(html.contains("None of the 20000 synapses tested"), "{html}");
    }
}
