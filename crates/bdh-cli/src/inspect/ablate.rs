//! `bdh inspect ablate` and `bdh inspect overlap`: remove neurons, heads or rows of
//! the synapse state and see what the model can no longer do; rank neurons by
//! selectivity for a concept and remove them cumulatively against a random control;
//! compare two concepts' neuron sets.

use std::path::PathBuf;

use anyhow::Context;
use bdh::data::{Kind, SyntheticConfig, SyntheticLanguage};
use bdh::microscope::ablate::{
    ablation_curve, overlap, random_control, score, score_stepped, selectivity, CurvePoint, NeuronId, Overlap, Probe,
    Score, Selective,
};
use bdh::model::bdh::{Bdh, Edit, Edits, Site};

use super::{model_line, read_file, tokens, Output};
use crate::page::{Chart, Page, Series};

/// Most texts read from a concept or background file.
const MAX_TEXTS: usize = 100_000;
/// Built-in statements per concept set.
const BUILT_IN_TEXTS: usize = 200;

/// Where a concept's texts come from and what they mean for the built-in answers.
#[derive(clap::Args)]
pub struct ConceptArgs {
    /// Concept texts: `place` or `color` (statements of the built-in language about
    /// where someone lives or which color they like), or a file with one text per line.
    #[arg(long)]
    concept: Option<String>,
    /// Background texts to contrast the concept with: `place`, `color` or a file
    /// (ablate's default: the other built-in kind, or `color` for a file concept;
    /// overlap needs one given when a concept is built in).
    #[arg(long)]
    background: Option<String>,
    /// The site whose activity is ranked (and, for ablate, removed): x, y or xy.
    #[arg(long, default_value = "x", value_parser = parse_site)]
    site: Site,
}

pub fn parse_site(s: &str) -> Result<Site, String> {
    match s {
        "x" => Ok(Site::X),
        "y" => Ok(Site::Y),
        "xy" => Ok(Site::Xy),
        _ => Err(format!("expected x, y or xy, got {s:?}")),
    }
}

/// Texts of a concept set and, for the built-in ones, their kind.
fn concept_set(spec: &str, seed: u64, out: &mut Output, key: &str) -> anyhow::Result<(Vec<Vec<u32>>, Option<Kind>)> {
    let kind = match spec {
        "place" => Some(Kind::Place),
        "color" => Some(Kind::Color),
        _ => None,
    };
    if let Some(kind) = kind {
        let texts = SyntheticLanguage::statements(kind, BUILT_IN_TEXTS, seed);
        out.provenance.text(key, &format!("built-in {spec} statements"), texts.join("\n").as_bytes());
        return Ok((texts.iter().map(|t| tokens(t.as_bytes())).collect(), Some(kind)));
    }
    let path = std::path::Path::new(spec);
    let bytes =
        read_file(path).with_context(|| format!("a concept set is `place`, `color` or a file; {spec} is neither"))?;
    out.provenance.file(key, path, &bytes);
    let text = String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let texts: Vec<Vec<u32>> = text.lines().filter(|l| !l.trim().is_empty()).map(|l| tokens(l.as_bytes())).collect();
    anyhow::ensure!(!texts.is_empty(), "{} has no texts (one per line expected)", path.display());
    anyhow::ensure!(texts.len() <= MAX_TEXTS, "{} has {} texts; at most {MAX_TEXTS}", path.display(), texts.len());
    Ok((texts, None))
}

impl ConceptArgs {
    /// The concept's and background's texts, the concept's kind, and the neurons
    /// ranked by selectivity.
    fn rank(&self, model: &Bdh, out: &mut Output) -> anyhow::Result<Option<(Option<Kind>, Vec<Selective>)>> {
        let Some(spec) = &self.concept else { return Ok(None) };
        let (concept, kind) = concept_set(spec, 1, out, "concept")?;
        let background_spec = self.background.clone().unwrap_or_else(|| match kind {
            Some(k) => kind_name(k.other()).into(),
            None => "color".into(),
        });
        let (background, _) = concept_set(&background_spec, 2, out, "background")?;
        Ok(Some((kind, selectivity(model, &concept, &background, self.site)?)))
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Place => "place",
        Kind::Color => "color",
    }
}

/// Remove neurons, heads or synapses, or the neurons most selective for a concept.
#[derive(clap::Args)]
pub struct Args {
    /// Neurons to zero, as LAYER:HEAD:NEURON, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_id)]
    neurons: Vec<NeuronId>,
    /// Whole heads to zero, as LAYER:HEAD, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_head)]
    heads: Vec<(usize, usize)>,
    /// Rows of the synapse state ρ to zero (every synapse of a neuron), as
    /// LAYER:HEAD:NEURON, comma-separated; scored by the recurrent step.
    #[arg(long, value_delimiter = ',', value_parser = parse_id)]
    synapses: Vec<NeuronId>,
    #[command(flatten)]
    concept: ConceptArgs,
    /// With --concept: remove up to this many of the most selective neurons, in
    /// doubling steps (1, 2, 4, …), each beside as many random ones from the same heads.
    #[arg(long, default_value_t = 64)]
    top: usize,
    /// Built-in validation windows the answers are scored on.
    #[arg(long, default_value_t = 32)]
    rows: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Also measure the loss on this text.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Also continue this prompt greedily, with and without the removal.
    #[arg(long)]
    prompt: Option<String>,
    /// Bytes to generate after --prompt.
    #[arg(long, default_value_t = 40)]
    tokens: usize,
    /// Seed of the random control.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The built-in language's most facts per window document.
    #[arg(long, default_value_t = 4)]
    facts: usize,
}

fn parse_id(s: &str) -> Result<NeuronId, String> {
    let p: Vec<&str> = s.split(':').collect();
    let num = |x: &str| x.trim().parse::<usize>().map_err(|e| format!("{x:?}: {e}"));
    match p[..] {
        [l, h, n] => Ok(NeuronId { layer: num(l)?, head: num(h)?, neuron: num(n)? }),
        _ => Err(format!("expected LAYER:HEAD:NEURON, got {s:?}")),
    }
}

fn parse_head(s: &str) -> Result<(usize, usize), String> {
    let id = parse_id(&format!("{s}:0"))?;
    Ok((id.layer, id.head))
}

/// Checks every named neuron and head against the model.
fn check_ids(model: &Bdh, ids: &[NeuronId], heads: &[(usize, usize)]) -> anyhow::Result<()> {
    let c = &model.config;
    for id in ids {
        anyhow::ensure!(
            id.layer < c.n_layer && id.head < c.n_head && id.neuron < c.n_neurons(),
            "no neuron {}:{}:{} — the model has layers 0..={}, heads 0..={}, neurons 0..={}",
            id.layer,
            id.head,
            id.neuron,
            c.n_layer - 1,
            c.n_head - 1,
            c.n_neurons() - 1
        );
    }
    for &(l, h) in heads {
        anyhow::ensure!(
            l < c.n_layer && h < c.n_head,
            "no head {l}:{h} — the model has layers 0..={} and heads 0..={}",
            c.n_layer - 1,
            c.n_head - 1
        );
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct Report {
    removed: Vec<String>,
    baseline: Score,
    ablated: Option<Score>,
    /// The same count of random neurons (and rows of ρ) of the same heads removed
    /// instead (whole heads are kept as they are).
    control: Option<Score>,
    text_loss: Option<(f64, f64)>,
    generation: Option<(String, String)>,
    concept_kind: Option<Kind>,
    most_selective: Vec<Selective>,
    curve: Vec<CurvePoint>,
}

pub fn run(args: Args, model: &Bdh, out: &mut Output) -> anyhow::Result<()> {
    check_ids(model, &args.neurons, &args.heads)?;
    check_ids(model, &args.synapses, &[])?;
    let direct = !args.neurons.is_empty() || !args.heads.is_empty() || !args.synapses.is_empty();
    anyhow::ensure!(
        direct || args.concept.concept.is_some(),
        "say what to remove: --neurons, --heads, --synapses, or --concept (with --background) for the most selective"
    );
    let site = args.concept.site;
    let mut edits = Edits::new();
    args.neurons.iter().for_each(|id| edits.push(id.zero(site)));
    for &(l, h) in &args.heads {
        edits.push(Edit { neuron: None, ..NeuronId { layer: l, head: h, neuron: 0 }.zero(Site::X) });
    }
    for id in &args.synapses {
        edits.push(id.zero(Site::Rho));
    }
    anyhow::ensure!((1..=24).contains(&args.facts), "--facts must be in 1..=24 (the built-in language has 24 names)");
    anyhow::ensure!((1..=1024).contains(&args.rows), "--rows must be in 1..=1024");
    anyhow::ensure!((8..=4096).contains(&args.window), "--window must be in 8..=4096");
    anyhow::ensure!(args.tokens <= 65_536, "--tokens must be at most 65536");
    let synthetic = SyntheticConfig { facts: args.facts, ..SyntheticConfig::default() };
    let probe = Probe::built_in(&synthetic, args.rows, args.window);
    let mut acts = None;
    let stepped = !args.synapses.is_empty();
    // The concept sets are read (and checked) before anything is scored.
    let ranking = args.concept.rank(model, out)?;
    if let Some((_, ranked)) = &ranking {
        anyhow::ensure!(
            (1..=ranked.len()).contains(&args.top),
            "--top must be in 1..={} (the model's neurons); got {}",
            ranked.len(),
            args.top
        );
    }
    let baseline = score(model, &probe, &Edits::new(), &mut acts)?;
    say!("{}; {} built-in windows of {} tokens", model_line(model), args.rows, args.window);
    let show = |name: &str, s: &Score| {
        say!("  {name:<24} loss {:.4}   answers right: {}", s.loss, answers(s));
    };
    show("unablated", &baseline);
    let mut report = Report {
        removed: Vec::new(),
        baseline: baseline.clone(),
        ablated: None,
        control: None,
        text_loss: None,
        generation: None,
        concept_kind: None,
        most_selective: Vec::new(),
        curve: Vec::new(),
    };
    if direct {
        report.removed = describe(&args);
        let ablated =
            if stepped { score_stepped(model, &probe, &edits)? } else { score(model, &probe, &edits, &mut acts)? };
        show(&format!("without {}", report.removed.join(", ")), &ablated);
        report.ablated = Some(ablated);
        if !args.neurons.is_empty() || !args.synapses.is_empty() {
            let n = model.config.n_neurons();
            let mut control = Edits::new();
            random_control(&args.neurons, n, args.seed).iter().for_each(|id| control.push(id.zero(site)));
            random_control(&args.synapses, n, args.seed.wrapping_add(1))
                .iter()
                .for_each(|id| control.push(id.zero(Site::Rho)));
            let c = if stepped {
                score_stepped(model, &probe, &control)?
            } else {
                score(model, &probe, &control, &mut acts)?
            };
            show("random control", &c);
            report.control = Some(c);
        }
        if let Some(path) = &args.text {
            let bytes = read_file(path)?;
            out.provenance.file("text", path, &bytes);
            let text_probe = Probe::text(&bytes, 64, args.window)?;
            let (a, b) = (
                score(model, &text_probe, &Edits::new(), &mut None)?.loss,
                if stepped {
                    score_stepped(model, &text_probe, &edits)?.loss
                } else {
                    score(model, &text_probe, &edits, &mut None)?.loss
                },
            );
            say!("  loss on {}: {a:.4} → {b:.4}", path.display());
            report.text_loss = Some((a, b));
        }
        if let Some(prompt) = &args.prompt {
            out.provenance.text("prompt", "--prompt", prompt.as_bytes());
            let p = tokens(prompt.as_bytes());
            let (a, b) =
                (greedy(model, &p, args.tokens, Edits::new())?, greedy(model, &p, args.tokens, edits.clone())?);
            say!("  {prompt}│{a}\n  without: {prompt}│{b}");
            report.generation = Some((a, b));
        }
    }
    if let Some((kind, ranked)) = ranking {
        report.concept_kind = kind;
        say!("most selective neurons ({:?}):", site);
        for s in ranked.iter().take(8) {
            say!(
                "  {}:{}:{:<5} d = {:+.2}  mean {:.4} vs {:.4}",
                s.id.layer,
                s.id.head,
                s.id.neuron,
                s.selectivity,
                s.concept,
                s.background
            );
        }
        let ids: Vec<NeuronId> = ranked.iter().map(|s| s.id).collect();
        let top = args.top;
        let ks: Vec<usize> =
            std::iter::successors(Some(1usize), |k| Some(k * 2)).take_while(|&k| k < top).chain([top]).collect();
        report.curve = ablation_curve(model, &probe, &ids, &ks, site, args.seed)?;
        let (mine, other) = kind.map_or((Kind::Place, Kind::Color), |k| (k, k.other()));
        let header = |k: Kind| format!("{} answers", kind_name(k));
        say!("{:>5}  {:>16} {:>16} {:>15}", "k", header(mine), header(other), "loss");
        say!("{:>5}  {:>16} {:>16} {:>15}", "", "top / random", "top / random", "top / random");
        for p in &report.curve {
            say!(
                "{:>5}  {:>7.1}% / {:>5.1}% {:>7.1}% / {:>5.1}% {:>7.4} / {:.4}",
                p.k,
                100.0 * p.selected.accuracy(mine),
                100.0 * p.random.accuracy(mine),
                100.0 * p.selected.accuracy(other),
                100.0 * p.random.accuracy(other),
                p.selected.loss,
                p.random.loss
            );
        }
        report.most_selective = ranked.into_iter().take(top.max(20)).collect();
    }
    out.write(&report, || page(out.page(), &report), "bdh inspect ablate")
}

/// The greedy continuation of `prompt` (`tokens` bytes) with `edits` applied to
/// the prompt and every generated token.
fn greedy(model: &Bdh, prompt: &[u32], tokens: usize, edits: Edits) -> anyhow::Result<String> {
    use bdh::infer::{generate, Generation, Prepared, Sampler, SamplingConfig};
    let prepared = Prepared::new(bdh::Model::Bdh(model.clone()))?;
    let (mut state, mut scratch) = (prepared.state()?, prepared.scratch());
    let mut sampler = Sampler::new(SamplingConfig { temperature: 0.0, ..SamplingConfig::default() })?;
    let g = Generation { max_tokens: tokens, edits, ..Generation::default() };
    let out = generate(&prepared, &mut state, &mut scratch, prompt, &g, &mut sampler, |_| {
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(String::from_utf8_lossy(&out.text).into_owned())
}

/// "place 12/40, color 9/38".
fn answers(s: &Score) -> String {
    s.kinds.iter().map(|k| format!("{} {}/{}", kind_name(k.kind), k.correct, k.answers)).collect::<Vec<_>>().join(", ")
}

/// What is removed, one entry per kind and head: "x of neurons 1:0:{4,17}",
/// "head 0:1", "ρ rows 1:0:{…}" (more than 6 ids are counted, not listed).
fn describe(args: &Args) -> Vec<String> {
    let site = format!("{:?}", args.concept.site).to_lowercase();
    let group = |what: &str, ids: &[NeuronId]| -> Vec<String> {
        let mut heads: Vec<(usize, usize)> = ids.iter().map(|i| (i.layer, i.head)).collect();
        heads.sort_unstable();
        heads.dedup();
        heads
            .into_iter()
            .map(|(l, h)| {
                let mine: Vec<String> =
                    ids.iter().filter(|i| (i.layer, i.head) == (l, h)).map(|i| i.neuron.to_string()).collect();
                if mine.len() > 6 {
                    format!("{} {what} of head {l}:{h}", mine.len())
                } else {
                    format!("{what} {l}:{h}:{{{}}}", mine.join(","))
                }
            })
            .collect()
    };
    let mut out = group(&format!("{site} of neurons"), &args.neurons);
    out.extend(args.heads.iter().map(|(l, h)| format!("head {l}:{h}")));
    out.extend(group("ρ rows", &args.synapses));
    out
}

fn page(mut p: Page, r: &Report) -> Page {
    p.heading("Ablation");
    let mut rows = vec![vec!["unablated".to_string(), format!("{:.4}", r.baseline.loss), answers(&r.baseline)]];
    if let Some(a) = &r.ablated {
        rows.push(vec![format!("without {}", r.removed.join(", ")), format!("{:.4}", a.loss), answers(a)]);
    }
    if let Some(c) = &r.control {
        rows.push(vec!["without as many random ones of the same heads".into(), format!("{:.4}", c.loss), answers(c)]);
    }
    p.table(&["model", "loss (built-in)", "answers right"], &rows);
    if let Some((a, b)) = &r.generation {
        p.text(&format!("Greedy continuation: {a:?}; without: {b:?}"));
    }
    if !r.curve.is_empty() {
        let (mine, other) = r.concept_kind.map_or((Kind::Place, Kind::Color), |k| (k, k.other()));
        p.heading("Cumulative ablation of the most selective neurons");
        p.text("The k most selective neurons (Cohen's d of their mean activity on concept against background texts) are zeroed at every position; the control zeroes k random neurons of the same heads.");
        let line = |name: String, f: &dyn Fn(&CurvePoint) -> f64, color: usize| Series {
            name,
            points: r.curve.iter().map(|c| (c.k as f64, f(c))).collect(),
            dots: true,
            color: Some(color),
        };
        p.chart(&Chart {
            title: "Answer accuracy as neurons are removed".into(),
            x_label: "neurons removed".into(),
            y_label: "answers right".into(),
            log_x: true,
            log_y: false,
            series: vec![
                line(format!("{} answers, selective removed", kind_name(mine)), &|c| c.selected.accuracy(mine), 0),
                line(format!("{} answers, random removed", kind_name(mine)), &|c| c.random.accuracy(mine), 7),
                line(format!("{} answers, selective removed", kind_name(other)), &|c| c.selected.accuracy(other), 1),
                line(format!("{} answers, random removed", kind_name(other)), &|c| c.random.accuracy(other), 5),
            ],
        });
        p.chart(&Chart {
            title: "Loss on the built-in text as neurons are removed".into(),
            x_label: "neurons removed".into(),
            y_label: "loss (nats/byte)".into(),
            log_x: true,
            log_y: false,
            series: vec![
                line("selective removed".into(), &|c| c.selected.loss, 0),
                line("random removed".into(), &|c| c.random.loss, 7),
            ],
        });
        let rows: Vec<Vec<String>> = r
            .most_selective
            .iter()
            .take(20)
            .map(|s| {
                vec![
                    format!("{}:{}:{}", s.id.layer, s.id.head, s.id.neuron),
                    format!("{:+.2}", s.selectivity),
                    format!("{:.4}", s.concept),
                    format!("{:.4}", s.background),
                ]
            })
            .collect();
        p.table(&["neuron (layer:head:index)", "selectivity d", "concept mean", "background mean"], &rows);
    }
    p
}

/// Two concepts' most selective neurons: how many they share, against random sets.
#[derive(clap::Args)]
pub struct OverlapArgs {
    #[command(flatten)]
    concept: ConceptArgs,
    /// The second concept: `place`, `color` or a file (against the same background).
    #[arg(long)]
    other: String,
    /// Neurons in each set.
    #[arg(long, default_value_t = 64)]
    top: usize,
    /// Random pairs of sets for the baseline.
    #[arg(long, default_value_t = 2000)]
    draws: usize,
}

pub fn run_overlap(args: OverlapArgs, model: &Bdh, out: &mut Output) -> anyhow::Result<()> {
    anyhow::ensure!(args.concept.concept.is_some(), "overlap needs --concept and --other");
    anyhow::ensure!((1..=100_000).contains(&args.draws), "--draws must be in 1..=100000");
    // Both concepts are ranked against the same background. A built-in concept's
    // default background is the other kind, which would differ between the two, so
    // then one must be given; two file concepts default to `color`.
    let background = match (&args.concept.background, args.concept.concept.as_deref(), args.other.as_str()) {
        (Some(b), _, _) => b.clone(),
        (None, Some("place" | "color"), _) | (None, _, "place" | "color") => anyhow::bail!(
            "overlap compares both concepts against one background: give --background (a file with one text per line)"
        ),
        (None, _, _) => "color".into(),
    };
    let first = ConceptArgs { background: Some(background.clone()), ..args.concept };
    let (_, a) = first.rank(model, out)?.expect("checked above");
    let second = ConceptArgs { concept: Some(args.other.clone()), ..first };
    let (_, b) = second.rank(model, out)?.expect("a concept");
    let (ia, ib): (Vec<NeuronId>, Vec<NeuronId>) = (a.iter().map(|s| s.id).collect(), b.iter().map(|s| s.id).collect());
    let r: Overlap = overlap(&ia, &ib, args.top, ia.len(), args.draws, 0)?;
    say!("{}", model_line(model));
    say!(
        "top {} of {} neurons: {} shared, Jaccard {:.3}; random sets: mean {:.3}, 95th percentile {:.3}; p = {:.4}",
        r.k,
        r.total,
        r.shared,
        r.jaccard,
        r.random_mean,
        r.random_p95,
        r.p_value
    );
    #[derive(serde::Serialize)]
    struct Both<'a> {
        overlap: &'a Overlap,
        concept: Vec<NeuronId>,
        other: Vec<NeuronId>,
    }
    let both = Both { overlap: &r, concept: ia[..r.k].to_vec(), other: ib[..r.k].to_vec() };
    out.write(&both, || overlap_page(out.page(), &r), "bdh inspect overlap")
}

fn overlap_page(mut p: Page, r: &Overlap) -> Page {
    p.heading("Overlap of two concepts' most selective neurons");
    p.table(
        &["neurons per set", "of", "shared", "Jaccard", "random mean", "random 95th pct.", "p"],
        &[vec![
            r.k.to_string(),
            r.total.to_string(),
            r.shared.to_string(),
            format!("{:.3}", r.jaccard),
            format!("{:.3}", r.random_mean),
            format!("{:.3}", r.random_p95),
            format!("{:.4}", r.p_value),
        ]],
    );
    p
}
