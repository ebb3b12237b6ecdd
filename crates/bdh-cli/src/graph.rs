//! `bdh graph`: a BDH-Normfree model as the paper's graph of neurons and synapses —
//! build its exact graphs, run them by the four-round scheduler.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bdh::model::graph::{self, Graph};
use bdh::{forward, Activations, Mode, Model};

use crate::model_args::ModelArgs;

/// Build a model's graph form or run one.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// The exact graphs of a BDH-Normfree model (norm = "none", residual = "n",
    /// position = "none"; any decay), into one safetensors file.
    Build(BuildArgs),
    /// Score a text with a graph: logits by the four-round scheduler, the loss.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct BuildArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The graph file to write (safetensors, its description in the metadata).
    #[arg(long)]
    out: PathBuf,
    /// Keep each node's K strongest in-edges of each sign in every graph (default:
    /// all, the exact graphs).
    #[arg(long, value_name = "K")]
    keep: Option<usize>,
    /// Which synapses are plastic: between every pair of nodes, or only along the
    /// wires' edges (Gs ⊆ Gx).
    #[arg(long, value_enum, default_value = "all")]
    synapses: Synapses,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Synapses {
    All,
    Wires,
}

#[derive(clap::Args)]
struct RunArgs {
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
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Build(a) => build(a),
        Command::Run(a) => run_graph(a),
    }
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let Model::Bdh(model) = args.model.load()? else {
        anyhow::bail!("{} is a GPT: only BDH models have a graph form", args.model.model.display());
    };
    let g = graph::build(&model, args.keep, args.synapses == Synapses::Wires)
        .with_context(|| format!("model {}", args.model.model.display()))?;
    graph::save(&g, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    let i = &g.info;
    println!(
        "graph of BDH-Normfree L{} H{} N{}: n = {} neurons, {} token and {} output nodes{}",
        i.n_layer,
        i.n_head,
        i.n_neurons,
        i.neurons(),
        i.vocab_size,
        i.vocab_size,
        if i.retention.is_empty() { String::new() } else { format!(", σ damped by γ = {:?} per head", i.retention) }
    );
    for (name, part) in g.parts() {
        println!("  {name:<10} {:>12} edges", part.edges());
    }
    println!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn run_graph(args: RunArgs) -> anyhow::Result<ExitCode> {
    let g = graph::load(&args.graph).with_context(|| format!("loading graph {}", args.graph.display()))?;
    let text = bdh::io::read_bounded(&args.text, 1 << 30)?;
    anyhow::ensure!(
        g.info.vocab_size == 256,
        "this graph has {} token nodes; `graph run` reads bytes (256)",
        g.info.vocab_size
    );
    let tokens: Vec<u32> = text.iter().take(args.max_tokens as usize).map(|&b| b as u32).collect();
    anyhow::ensure!(tokens.len() >= 2, "{}: {} byte(s), scoring needs 2 or more", args.text.display(), tokens.len());
    let (logits, loss) = graph::score(&g, &tokens)?;
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
    Ok(ExitCode::SUCCESS)
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
    let tensor = acts.logits();
    let mut worst = 0.0f64;
    for (a, b) in logits.chunks_exact(v).zip(tensor.chunks_exact(v)) {
        let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(f32::MIN_POSITIVE) as f64;
        let diff = a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
        worst = worst.max(diff / scale);
    }
    let targets = &tokens[1..];
    let t = targets.len();
    let loss = bdh::model::loss::cross_entropy(&tensor[..t * v], targets, v) as f64;
    println!(
        "tensor form ({}): loss {loss:.6} nats; logits max rel diff {worst:.2e} over {} positions",
        path.display(),
        tokens.len()
    );
    Ok(())
}
