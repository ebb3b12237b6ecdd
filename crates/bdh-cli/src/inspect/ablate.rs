//! `bdh inspect ablate`: remove neurons, heads or rows of the synapse state and see
//! what the model can no longer do; rank neurons by selectivity for a concept and
//! remove them cumulatively against a random control.

use std::path::PathBuf;

use bdh::data::{Kind, SyntheticConfig, PEOPLE};
use bdh::microscope::ablate::{
    ablation_curve, random_control, score, score_stepped, CurvePoint, NeuronId, Probe, Score, Selective,
};
use bdh::microscope::Scope;
use bdh::model::bdh::{Activations, Edit, Edits, Site};

use super::concept::{doubling_to, kind_name, ConceptArgs};
use super::{model_line, read_file, tokens, Output};
use crate::page::{Chart, Page, Series, Style};
use crate::progress::Job;

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
fn check_ids(model: &Scope, ids: &[NeuronId], heads: &[(usize, usize)]) -> anyhow::Result<()> {
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

pub fn run(args: Args, model: &Scope, out: &mut Output) -> anyhow::Result<()> {
    let edits = args.edits(model)?;
    let synthetic = SyntheticConfig { facts: args.facts, ..SyntheticConfig::default() };
    let probe = Probe::built_in(&synthetic, args.rows, args.window);
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
    let mut scorer = Scorer { model, stepped: !args.synapses.is_empty(), acts: None };
    if model.on_device() && scorer.stepped {
        eprintln!("note: removing synapse rows (ρ) takes the recurrent step, which runs on the CPU");
    }
    let baseline = scorer.unedited(&probe)?;
    let windows = crate::count(args.rows, "built-in window", "built-in windows");
    say!("{}; {windows} of {} tokens", model_line(model), args.window);
    show("unablated", &baseline);
    let mut report = Report {
        removed: Vec::new(),
        baseline,
        ablated: None,
        control: None,
        text_loss: None,
        generation: None,
        concept_kind: None,
        most_selective: Vec::new(),
        curve: Vec::new(),
    };
    if args.direct() {
        remove(&args, &edits, &probe, &mut scorer, &mut report, out)?;
    }
    if let Some((kind, ranked)) = ranking {
        cumulative(&args, model, &probe, kind, ranked, &mut report)?;
    }
    out.write(&report, || page(out.page(), &report), "bdh inspect ablate")
}

impl Args {
    /// Whether neurons, heads or rows of ρ are named to be removed.
    fn direct(&self) -> bool {
        !self.neurons.is_empty() || !self.heads.is_empty() || !self.synapses.is_empty()
    }

    /// The edits that remove what is named, once it and the other arguments are
    /// checked against the model and their bounds.
    fn edits(&self, model: &Scope) -> anyhow::Result<Edits> {
        check_ids(model, &self.neurons, &self.heads)?;
        check_ids(model, &self.synapses, &[])?;
        anyhow::ensure!(
            self.direct() || self.concept.concept.is_some(),
            "say what to remove: --neurons, --heads, --synapses, or --concept (with --background) for the most selective"
        );
        let mut edits = Edits::new();
        self.neurons.iter().for_each(|id| edits.push(id.zero(self.concept.site)));
        for &(l, h) in &self.heads {
            edits.push(Edit { neuron: None, ..NeuronId { layer: l, head: h, neuron: 0 }.zero(Site::X) });
        }
        for id in &self.synapses {
            edits.push(id.zero(Site::Rho));
        }
        anyhow::ensure!(
            (1..=PEOPLE).contains(&self.facts),
            "--facts must be in 1..={PEOPLE} (the built-in language has {PEOPLE} names)"
        );
        anyhow::ensure!((1..=1024).contains(&self.rows), "--rows must be in 1..=1024");
        anyhow::ensure!((8..=4096).contains(&self.window), "--window must be in 8..=4096");
        anyhow::ensure!(self.tokens <= 65_536, "--tokens must be at most 65536");
        Ok(edits)
    }

    /// As many random neurons (and rows of ρ) of the same heads as are named.
    fn control(&self, model: &Scope) -> Edits {
        let n = model.config.n_neurons();
        let mut control = Edits::new();
        random_control(&self.neurons, n, self.seed).iter().for_each(|id| control.push(id.zero(self.concept.site)));
        random_control(&self.synapses, n, self.seed.wrapping_add(1))
            .iter()
            .for_each(|id| control.push(id.zero(Site::Rho)));
        control
    }
}

/// Scores a probe with edits.
struct Scorer<'a, 'm> {
    model: &'a Scope<'m>,
    /// Score by the recurrent step, as edits of ρ need (only it holds ρ).
    stepped: bool,
    /// The parallel forward's buffers, kept from probe to probe.
    acts: Option<Activations>,
}

impl Scorer<'_, '_> {
    /// `probe`'s score with `edits`.
    fn edited(&mut self, probe: &Probe, edits: &Edits) -> anyhow::Result<Score> {
        Ok(if self.stepped {
            score_stepped(self.model, probe, edits)?
        } else {
            score(self.model, probe, edits, &mut self.acts)?
        })
    }

    /// `probe`'s score without edits.
    fn unedited(&mut self, probe: &Probe) -> anyhow::Result<Score> {
        Ok(score(self.model, probe, &Edits::new(), &mut self.acts)?)
    }
}

/// A score's line of the summary.
fn show(name: &str, s: &Score) {
    say!("  {name:<24} loss {:.4}   answers right: {}", s.loss, answers(s));
}

/// The model without what `args` names, on the built-in probe beside a random
/// control, on `--text`, and continuing `--prompt`.
fn remove(
    args: &Args,
    edits: &Edits,
    probe: &Probe,
    scorer: &mut Scorer,
    report: &mut Report,
    out: &mut Output,
) -> anyhow::Result<()> {
    report.removed = describe(args);
    let ablated = scorer.edited(probe, edits)?;
    show(&format!("without {}", report.removed.join(", ")), &ablated);
    report.ablated = Some(ablated);
    if !args.neurons.is_empty() || !args.synapses.is_empty() {
        let c = scorer.edited(probe, &args.control(scorer.model))?;
        show("random control", &c);
        report.control = Some(c);
    }
    if let Some(path) = &args.text {
        let bytes = read_file(path)?;
        out.provenance.file("text", path, &bytes);
        let text_probe = Probe::text(&bytes, 64, args.window)?;
        let (a, b) = (scorer.unedited(&text_probe)?.loss, scorer.edited(&text_probe, edits)?.loss);
        say!("  loss on {}: {a:.4} → {b:.4}", path.display());
        report.text_loss = Some((a, b));
    }
    if let Some(prompt) = &args.prompt {
        out.provenance.text("prompt", "--prompt", prompt.as_bytes());
        let p = tokens(prompt.as_bytes());
        let model = scorer.model;
        if model.on_device() {
            eprintln!("note: the continuations with and without the edits are generated on the CPU");
        }
        let (a, b) = (greedy(model, &p, args.tokens, Edits::new())?, greedy(model, &p, args.tokens, edits.clone())?);
        say!("  {prompt}│{a}\n  without: {prompt}│{b}");
        report.generation = Some((a, b));
    }
    Ok(())
}

/// The concept's most selective neurons removed k at a time (1, 2, 4, … up to
/// `--top`), each beside as many random ones.
fn cumulative(
    args: &Args,
    model: &Scope,
    probe: &Probe,
    kind: Option<Kind>,
    ranked: Vec<Selective>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let site = args.concept.site;
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
    let ks = doubling_to(top);
    let job = Job::new("inspect ablate", 0);
    report.curve = ablation_curve(model, probe, &ids, &ks, site, args.seed, &|done, total| job.update(done, total))?;
    job.finish();
    print_curve(&report.curve, kind);
    report.most_selective = ranked.into_iter().take(top.max(20)).collect();
    Ok(())
}

/// The answers of both kinds and the loss at each point of the cumulative curve.
fn print_curve(curve: &[CurvePoint], kind: Option<Kind>) {
    let (mine, other) = kind.map_or((Kind::Place, Kind::Color), |k| (k, k.other()));
    if let Some(p) = curve.first() {
        for k in &p.selected.kinds {
            say!(
                "{} answers: strategies that bind nothing score {:.1}% (copying a stated value at random) and \
                 {:.1}% (copying one no earlier answer gave)",
                kind_name(k.kind),
                100.0 * k.copy_baseline,
                100.0 * k.eliminate_baseline
            );
        }
    }
    let header = |k: Kind| format!("{} answers", kind_name(k));
    say!("{:>5}  {:>16} {:>16} {:>15}", "k", header(mine), header(other), "loss");
    say!("{:>5}  {:>16} {:>16} {:>15}", "", "top / random", "top / random", "top / random");
    for p in curve {
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
}

/// The greedy continuation of `prompt` (`tokens` bytes) with `edits` applied to
/// the prompt and every generated token.
fn greedy(model: &Scope, prompt: &[u32], tokens: usize, edits: Edits) -> anyhow::Result<String> {
    use bdh::infer::{generate, Generation, Prepared, Sampler, SamplingConfig};
    let prepared = Prepared::new(bdh::Model::Bdh(bdh::model::bdh::Bdh::clone(model)))?;
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
            style: Style::Dots,
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
