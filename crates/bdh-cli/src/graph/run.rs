//! `bdh graph run`: a text scored by a graph, deterministic or spiking, with chosen
//! tokens traced round by round.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bdh::model::graph::{self, Brain, Graph};
use bdh::{forward, Activations, Mode, Model};

use crate::page::{Chart, Series, Style};
use crate::provenance::Provenance;

/// Score a text with a graph.
#[derive(clap::Args)]
pub struct Args {
    /// A graph file made by `bdh graph build`.
    #[arg(long)]
    graph: PathBuf,
    /// The text, read as bytes (the graph's token nodes are the 256 byte values).
    #[arg(long)]
    text: PathBuf,
    /// Read at most this many bytes of the text.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(2..=1 << 20))]
    max_tokens: u64,
    /// Also run the tensor form of this model (the one the graph was built from,
    /// checked by its weights' fingerprint) on the same bytes and report the largest
    /// difference of the logits, relative to each position's largest; for exact
    /// graphs, exit 1 if it is past 1e-5.
    #[arg(long, value_name = "MODEL")]
    against: Option<PathBuf>,
    /// Also run K spiking realisations (products of node values as stochastic ANDs
    /// of spikes) and report how far the mean of the first 1, 2, 4, … K runs is
    /// from the deterministic logits.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=4096))]
    spikes: Option<u64>,
    /// The spikes' seed (run r draws from seed + r).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// With --spikes: draw the largest relative difference against K into this SVG file.
    #[arg(long, value_name = "FILE", requires = "spikes")]
    plot: Option<PathBuf>,
    /// Trace these positions of the text (comma-separated, 0-based): every round's
    /// active nodes and strongest synapses.
    #[arg(long, value_name = "POS", value_delimiter = ',', num_args = 1..=64)]
    trace: Vec<usize>,
    /// With --trace: a page showing the first traced token's trip through the
    /// rounds and layers.
    #[arg(long, value_name = "FILE", requires = "trace")]
    html: Option<PathBuf>,
    /// Write every number (the loss, the comparison, the spiking runs, the traced
    /// rounds) as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let g = super::load(&args.graph)?;
    let (tokens, total) = super::read_bytes(&args.text, args.max_tokens, g.info.vocab_size)?;
    if let Some(&p) = args.trace.iter().find(|&&p| p >= tokens.len()) {
        anyhow::bail!("--trace {p}: the text read has {} bytes (positions 0 to {})", tokens.len(), tokens.len() - 1);
    }
    // The model to compare with, checked before the long run.
    let model = args.against.as_deref().map(|path| model_of(&g, path)).transpose()?;
    let v = g.info.vocab_size;
    let (logits, traces) = deterministic(&g, &tokens, &args.trace)?;
    let loss = graph::mean_loss(&logits, &tokens, v);
    let of =
        if (tokens.len() as u64) < total { format!(" (the first {} of {total})", tokens.len()) } else { String::new() };
    println!(
        "graph form: {} bytes{of}, loss {loss:.6} nats, {:.4} bits per byte",
        tokens.len(),
        loss / std::f64::consts::LN_2
    );
    let mut json = serde_json::json!({ "tokens": tokens.len(), "loss_nats": loss, "bits_per_byte": loss / std::f64::consts::LN_2 });
    let mut status = ExitCode::SUCCESS;
    if let (Some(model), Some(path)) = (&model, &args.against) {
        let (tensor_loss, diff) = against(model, &tokens, &logits, v)?;
        println!(
            "tensor form ({}): loss {tensor_loss:.6} nats; logits max rel diff {diff:.2e} over {} positions",
            path.display(),
            tokens.len()
        );
        if !g.info.is_exact() {
            println!("(this graph is pruned: its logits are not meant to equal the tensor form's)");
        } else if diff > EQUAL {
            println!("the graph and the tensor form differ past {EQUAL:e}");
            status = ExitCode::FAILURE;
        }
        json["tensor_form"] = serde_json::json!({ "model": path.display().to_string(), "loss_nats": tensor_loss, "logits_max_rel_diff": diff });
    }
    if let Some(k) = args.spikes {
        json["spikes"] = spikes(&g, &tokens, &logits, k as usize, &args)?;
    }
    super::trip::print(&tokens, &traces);
    let mut provenance = Provenance::of_this_run();
    provenance.add("graph", args.graph.display().to_string());
    provenance.add("text", args.text.display().to_string());
    if let (Some(path), Some((pos, rounds))) = (&args.html, traces.first()) {
        let page = super::trip::page(&provenance, &g, &tokens, *pos, rounds);
        super::write(path, page.as_bytes())?;
    }
    if let Some(path) = &args.json {
        json["provenance"] = serde_json::to_value(&provenance)?;
        json["info"] = serde_json::to_value(&g.info)?;
        json["traced"] = serde_json::Value::Array(super::trip::json(&tokens, &traces));
        let text = serde_json::to_string_pretty(&json).expect("JSON");
        super::write(path, text.as_bytes())?;
    }
    Ok(status)
}

/// How far an exact graph's logits may be from the tensor form's (relative).
const EQUAL: f64 = 1e-5;

/// The rounds of each traced position.
type Traces = Vec<(usize, Vec<graph::Round>)>;

/// Room for the logits of `tokens` positions, or an error saying they do not fit.
fn logits_buffer(tokens: usize, v: usize) -> anyhow::Result<Vec<f32>> {
    let mut buf = Vec::new();
    let need = tokens.checked_mul(v).ok_or_else(|| anyhow::anyhow!("{tokens} positions of {v} logits overflow"))?;
    buf.try_reserve_exact(need).map_err(|_| bdh::Error::TooLarge {
        what: "the logits of every position".into(),
        need: Some(4 * need as u64),
        have: None,
    })?;
    Ok(buf)
}

/// The deterministic run: logits (T, V) and the rounds of the traced positions.
fn deterministic(g: &Graph, tokens: &[u32], trace: &[usize]) -> anyhow::Result<(Vec<f32>, Traces)> {
    let mut brain = Brain::new(g)?;
    let mut logits = logits_buffer(tokens.len(), g.info.vocab_size)?;
    let mut traces = Vec::new();
    for (t, &tok) in tokens.iter().enumerate() {
        if trace.contains(&t) {
            traces.push((t, brain.step_traced(tok)?));
        } else {
            brain.step(tok)?;
        }
        logits.extend(brain.logits().iter().map(|&l| l as f32));
    }
    Ok((logits, traces))
}

/// The largest difference of `a` from `b`, each position's relative to its largest |b|.
fn max_rel(a: &[f32], b: &[f32], v: usize) -> f64 {
    let mut worst = 0.0f64;
    for (a, b) in a.chunks_exact(v).zip(b.chunks_exact(v)) {
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE) as f64;
        worst = worst.max(a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64)) / scale);
    }
    worst
}

/// The model at `path`, if it is the one `g` was built from (its sizes and damping).
fn model_of(g: &Graph, path: &Path) -> anyhow::Result<Model> {
    let (_, model) = crate::model_args::load(path, None)?;
    let i = &g.info;
    let fits = match &model {
        Model::Bdh(m) => {
            m.params.fingerprint() == i.weights && (m.config.n_layer, m.retention()) == (i.n_layer, i.retention.clone())
        }
        Model::Gpt(_) => false,
    };
    anyhow::ensure!(
        fits,
        "--against {}: a {} (weights {}), not the model this graph was built from (L{} H{} N{}, weights {})",
        path.display(),
        model.config().describe(),
        model.params().fingerprint(),
        i.n_layer,
        i.n_head,
        i.n_neurons,
        i.weights
    );
    Ok(model)
}

/// The tensor form's loss on `tokens` and the largest difference of the graph's logits from its.
fn against(model: &Model, tokens: &[u32], logits: &[f32], v: usize) -> anyhow::Result<(f64, f64)> {
    let mut acts = Activations::new(model, 1, tokens.len())?;
    forward(model, tokens, &mut acts, Mode::Eval)?;
    Ok((graph::mean_loss(acts.logits(), tokens, v), max_rel(logits, acts.logits(), v)))
}

/// K spiking runs: the error of the mean of the first 1, 2, 4, … of them.
fn spikes(g: &Graph, tokens: &[u32], exact: &[f32], k: usize, args: &Args) -> anyhow::Result<serde_json::Value> {
    let v = g.info.vocab_size;
    let mut sum = Vec::new();
    sum.try_reserve_exact(exact.len()).map_err(|_| bdh::Error::TooLarge {
        what: "the sums of the spiking runs' logits".into(),
        need: Some(8 * exact.len() as u64),
        have: None,
    })?;
    sum.resize(exact.len(), 0.0f64);
    let mut rows = Vec::new();
    println!("spiking runs: the mean of the first K against the deterministic logits");
    println!("{:>6} {:>14} {:>14} {:>12}", "K", "max rel diff", "mean abs diff", "loss of mean");
    for r in 1..=k {
        let (logits, _) = graph::score_spiking(g, tokens, args.seed.wrapping_add(r as u64))?;
        sum.iter_mut().zip(&logits).for_each(|(s, &l)| *s += l as f64);
        if r.is_power_of_two() || r == k {
            let mean: Vec<f32> = sum.iter().map(|&s| (s / r as f64) as f32).collect();
            let worst = max_rel(&mean, exact, v);
            let mean_abs = mean.iter().zip(exact).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / exact.len() as f64;
            let loss = graph::mean_loss(&mean, tokens, v);
            println!("{r:>6} {worst:>14.3e} {mean_abs:>14.3e} {loss:>12.6}");
            rows.push(serde_json::json!({ "runs": r, "max_rel_diff": worst, "mean_abs_diff": mean_abs, "loss_of_mean": loss }));
        }
    }
    if let Some(path) = &args.plot {
        let point = |key: &str| {
            rows.iter().map(|r| (r["runs"].as_f64().unwrap_or(0.0), r[key].as_f64().unwrap_or(0.0))).collect()
        };
        let line =
            |name: &str, key: &str| Series { name: name.into(), points: point(key), style: Style::Line, color: None };
        let chart = Chart {
            title: "Spiking runs: the mean of K against the deterministic logits".into(),
            x_label: "K (runs averaged)".into(),
            y_label: "largest difference, relative to each position's largest logit (log scale)".into(),
            log_x: true,
            log_y: true,
            series: vec![line("mean of K spiking runs", "max_rel_diff")],
        };
        let svg = chart.svg().map_err(|e| anyhow::anyhow!("drawing the chart: {e}"))?;
        super::write(path, svg.as_bytes())?;
    }
    Ok(serde_json::json!({ "seed": args.seed, "rows": rows }))
}
