//! `bdh graph run`: a text scored by a graph, deterministic or spiking, with chosen
//! tokens traced round by round.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bdh::model::graph::{self, Brain, Graph};
use bdh::{forward, Activations, Mode};

use crate::page::{Chart, Series, Style};

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
    /// Also run the tensor form of this model on the same bytes and report the
    /// largest difference of the logits (relative to each position's largest).
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
    /// With --spikes: draw the error against K into this SVG file.
    #[arg(long, value_name = "FILE", requires = "spikes")]
    plot: Option<PathBuf>,
    /// Trace these positions of the text (comma-separated, 0-based): every round's
    /// active nodes and strongest synapses.
    #[arg(long, value_name = "POS", value_delimiter = ',', num_args = 1..=64)]
    trace: Vec<usize>,
    /// With --trace: write the traced rounds here as JSON.
    #[arg(long, value_name = "FILE", requires = "trace")]
    json: Option<PathBuf>,
    /// With --trace: a page showing the first traced token's trip through the
    /// rounds and layers.
    #[arg(long, value_name = "FILE", requires = "trace")]
    html: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let g = super::load(&args.graph)?;
    let v = g.info.vocab_size;
    anyhow::ensure!(v == 256, "this graph has {v} token nodes; `graph run` reads text as bytes (256)");
    let text = bdh::io::read_bounded(&args.text, 1 << 30)?;
    let tokens: Vec<u32> = text.iter().take(args.max_tokens as usize).map(|&b| b as u32).collect();
    anyhow::ensure!(tokens.len() >= 2, "{}: {} byte(s), scoring needs 2 or more", args.text.display(), tokens.len());
    if let Some(&p) = args.trace.iter().find(|&&p| p >= tokens.len()) {
        anyhow::bail!("--trace {p}: the text read has {} bytes (positions 0 to {})", tokens.len(), tokens.len() - 1);
    }
    let (logits, traces) = deterministic(&g, &tokens, &args.trace)?;
    let loss = graph::mean_loss(&logits, &tokens, v);
    let of = if tokens.len() < text.len() {
        format!(" (the first {} of {})", tokens.len(), text.len())
    } else {
        String::new()
    };
    println!(
        "graph form: {} bytes{of}, loss {loss:.6} nats, {:.4} bits per byte",
        tokens.len(),
        loss / std::f64::consts::LN_2
    );
    if let Some(path) = &args.against {
        against(&g, path, &tokens, &logits)?;
    }
    if let Some(k) = args.spikes {
        spikes(&g, &tokens, &logits, k as usize, &args)?;
    }
    if !traces.is_empty() {
        super::trip::write(&args, &g, &tokens, &traces, (args.json.as_deref(), args.html.as_deref()))?;
    }
    Ok(ExitCode::SUCCESS)
}

impl Args {
    /// The graph file and the text file, for a page's or a JSON file's provenance.
    pub fn sources(&self) -> (&std::path::Path, &std::path::Path) {
        (&self.graph, &self.text)
    }
}

/// The rounds of each traced position.
type Traces = Vec<(usize, Vec<graph::Round>)>;

/// The deterministic run: logits (T, V) and the rounds of the traced positions.
fn deterministic(g: &Graph, tokens: &[u32], trace: &[usize]) -> anyhow::Result<(Vec<f32>, Traces)> {
    let mut brain = Brain::new(g)?;
    let mut logits = Vec::with_capacity(tokens.len() * g.info.vocab_size);
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

/// The tensor form of the model at `path` on the same tokens, against the graph's logits.
fn against(g: &Graph, path: &std::path::Path, tokens: &[u32], logits: &[f32]) -> anyhow::Result<()> {
    let (_, model) = crate::model_args::load(path, None)?;
    let v = g.info.vocab_size;
    anyhow::ensure!(
        model.config().vocab_size() == v,
        "{}: a vocabulary of {}, the graph's is {v}",
        path.display(),
        model.config().vocab_size()
    );
    let mut acts = Activations::new(&model, 1, tokens.len())?;
    forward(&model, tokens, &mut acts, Mode::Eval)?;
    let loss = graph::mean_loss(acts.logits(), tokens, v);
    println!(
        "tensor form ({}): loss {loss:.6} nats; logits max rel diff {:.2e} over {} positions",
        path.display(),
        max_rel(logits, acts.logits(), v),
        tokens.len()
    );
    Ok(())
}

/// K spiking runs: the error of the mean of the first 1, 2, 4, … of them.
fn spikes(g: &Graph, tokens: &[u32], exact: &[f32], k: usize, args: &Args) -> anyhow::Result<()> {
    let v = g.info.vocab_size;
    let mut sum = vec![0.0f64; exact.len()];
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
            rows.push((r as f64, worst, mean_abs));
        }
    }
    if let Some(path) = &args.plot {
        let line = |name: &str, points| Series { name: name.into(), points, style: Style::Line, color: None };
        let chart = Chart {
            title: "Spiking runs: the mean of K against the deterministic logits".into(),
            x_label: "K (runs averaged)".into(),
            y_label: "difference (log scale)".into(),
            log_x: true,
            log_y: true,
            series: vec![
                line("max rel diff", rows.iter().map(|r| (r.0, r.1)).collect()),
                line("mean abs diff", rows.iter().map(|r| (r.0, r.2)).collect()),
            ],
        };
        let svg = chart.svg().map_err(|e| anyhow::anyhow!("drawing the chart: {e}"))?;
        bdh::io::write_atomic(path, svg.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
