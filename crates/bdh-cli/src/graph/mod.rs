//! `bdh graph`: a BDH-Normfree model as the paper's graph of neurons and synapses —
//! build its exact graphs, run them by the four-round scheduler (deterministic or
//! spiking, traced round by round), prune them, measure their shape.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bdh::model::graph;
use bdh::Model;

use crate::model_args::ModelArgs;

mod prune;
mod run;
mod trip;

/// Build a model's graph form, run it, prune it, measure it.
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
    /// Score a text with a graph: logits by the four-round scheduler, the loss;
    /// spiking runs, a trace of chosen tokens' rounds.
    Run(run::Args),
    /// Loss against the number of edges kept: the graphs of a model pruned to each
    /// node's K strongest in-edges, for several K.
    Prune(prune::Args),
    /// The graphs' sizes, degree distributions and excitatory/inhibitory balance.
    Stats(StatsArgs),
}

#[derive(clap::Args)]
struct BuildArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The graph file to write (safetensors, its description in the metadata).
    #[arg(long)]
    out: PathBuf,
    /// Keep each node's K strongest in-edges of each sign in every weighted graph
    /// (not Gs: see --synapses); default: all, the exact graphs.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    keep: Option<u64>,
    /// Which synapses are plastic: between every pair of nodes (the exact form), or
    /// only along the kept wires' edges (Gs ⊆ Gx, as the paper suggests; with --keep,
    /// σ then shrinks with the wires).
    #[arg(long, value_enum, default_value = "all")]
    synapses: Synapses,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Synapses {
    /// Every (source, neuron) pair.
    All,
    /// Only the edges of the wires Gx.
    Wires,
}

#[derive(clap::Args)]
struct StatsArgs {
    /// A graph file made by `bdh graph build`.
    #[arg(long)]
    graph: PathBuf,
    /// Also write the numbers as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Build(a) => build(a),
        Command::Run(a) => run::run(a),
        Command::Prune(a) => prune::run(a),
        Command::Stats(a) => stats(a),
    }
}

/// The BDH model a user named, or an error saying a GPT has no graph form.
fn bdh_model(args: &ModelArgs) -> anyhow::Result<bdh::model::bdh::Bdh> {
    match args.load()? {
        Model::Bdh(m) => Ok(m),
        Model::Gpt(_) => anyhow::bail!("{} is a GPT: only BDH models have a graph form", args.model.display()),
    }
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let model = bdh_model(&args.model)?;
    let keep = args.keep.map(|k| usize::try_from(k).unwrap_or(usize::MAX));
    let g = graph::build(&model, keep, args.synapses == Synapses::Wires)
        .with_context(|| format!("model {}", args.model.model.display()))?;
    graph::save(&g, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    let i = &g.info;
    let damping =
        if i.retention.is_empty() { String::new() } else { format!(", σ damped by γ = {:?} per head", i.retention) };
    println!(
        "graph of BDH-Normfree L{} H{} N{}: n = {} neurons, {} token and {} output nodes{damping}",
        i.n_layer,
        i.n_head,
        i.n_neurons,
        i.neurons(),
        i.vocab_size,
        i.vocab_size
    );
    for (name, part) in g.parts() {
        println!("  {name:<10} {:>12} edges", part.edges());
    }
    println!("wrote {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

fn load(path: &Path) -> anyhow::Result<graph::Graph> {
    graph::load(path).with_context(|| format!("loading graph {}", path.display()))
}

fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let g = load(&args.graph)?;
    let (degrees, balance) = graph::stats(&g);
    println!(
        "{:<10} {:>10} {:>8}   in-degree: median  mean   max    out-degree: median  mean   p99    max",
        "graph", "edges", "density"
    );
    for d in &degrees {
        let (i, o) = (&d.in_degree, &d.out_degree);
        println!(
            "{:<10} {:>10} {:>8.4}   {:>17.0} {:>5.1} {:>5.0}    {:>18.0} {:>5.1} {:>6.0} {:>6.0}",
            d.name, d.edges, d.density, i.median, i.mean, i.max, o.median, o.mean, o.p99, o.max
        );
    }
    println!("\nexcitation and inhibition (per target: excitatory in-weight / all in-weight)");
    println!("{:<10} {:>12} {:>12}   share: min  median   max", "graph", "excitatory", "inhibitory");
    for b in &balance {
        let s = &b.excitatory_share;
        println!(
            "{:<10} {:>12.4} {:>12.4}   {:>10.3} {:>7.3} {:>5.3}",
            b.name, b.excitatory, b.inhibitory, s.min, s.median, s.max
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "graph": args.graph.display().to_string(), "info": g.info, "degrees": degrees, "balance": balance });
        let text = serde_json::to_string_pretty(&json).expect("JSON");
        write(path, text.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The first `max` bytes of the file at `path` as tokens, and the file's length; an
/// error unless the vocabulary is bytes and there are two bytes or more.
fn read_bytes(path: &Path, max: u64, vocab: usize) -> anyhow::Result<(Vec<u32>, u64)> {
    use std::io::Read;
    anyhow::ensure!(vocab == 256, "a vocabulary of {vocab} tokens: `bdh graph` reads text as bytes (256)");
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    file.take(max).read_to_end(&mut bytes).with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(bytes.len() >= 2, "{}: {} byte(s), scoring needs 2 or more", path.display(), bytes.len());
    Ok((bytes.into_iter().map(u32::from).collect(), total))
}

/// Writes `bytes` to `path` atomically and says so.
fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    bdh::io::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
