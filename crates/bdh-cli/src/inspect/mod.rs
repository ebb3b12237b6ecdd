//! `bdh inspect`: the microscope's analyses as commands: a readable summary on
//! stdout, every number as JSON (`--json`), and plots in a self-contained HTML
//! page (`--html`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bdh::io::checkpoint::{load, model_path};
use bdh::model::bdh::Bdh;
use bdh::Model;

mod graph;
mod report;
mod sparsity;
mod synapses;

/// Looks inside a model: sparsity, the neuron graph, the synapse state.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
    /// A run directory (its best checkpoint), a checkpoint directory, a
    /// model.safetensors or a PyTorch .pt file.
    #[arg(long, global = true)]
    model: Option<PathBuf>,
    /// The bdh.py config (JSON), if not beside the weights.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Instead of --model: freshly initialised weights of this preset (or run-config
    /// TOML), seeded by --seed-init, e.g. to see the graph of an untrained model.
    #[arg(long, global = true, conflicts_with = "model")]
    init: Option<String>,
    /// Seed of --init.
    #[arg(long, global = true, default_value_t = 0)]
    seed_init: u64,
    /// Write every number as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report with plots to this file.
    #[arg(long, global = true)]
    html: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(clap::Subcommand)]
enum What {
    /// Fraction of firing neurons per layer, head, token and RoPE frequency.
    Sparsity(sparsity::Args),
    /// The neuron interaction graph G = decoder·encoder per head: degrees,
    /// power-law fits and modularity against random baselines.
    Graph(graph::Args),
    /// The synapse state σ of one layer and head over a text, its strongest
    /// synapses, and a concept search.
    Synapses(synapses::Args),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::set_threads(args.threads)?;
    let model = match (&args.model, &args.init) {
        (Some(m), _) => {
            let path = model_path(m);
            load(&path, args.config.as_deref()).with_context(|| format!("loading model {}", path.display()))?
        }
        (None, Some(preset)) => Model::new(&bdh::RunConfig::resolve(preset, &[])?.model, args.seed_init)?,
        (None, None) => anyhow::bail!("give --model (a trained model) or --init PRESET (random weights)"),
    };
    let out = Output { json: args.json, html: args.html };
    // The microscope reads BDH's neurons and synapses.
    let Model::Bdh(model) = &model;
    match args.what {
        What::Sparsity(a) => sparsity::run(a, model, &out)?,
        What::Graph(a) => graph::run(a, model, &out)?,
        What::Synapses(a) => synapses::run(a, model, &out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Where the JSON and HTML go.
pub struct Output {
    json: Option<PathBuf>,
    html: Option<PathBuf>,
}

impl Output {
    /// Writes the JSON and HTML that were asked for.
    fn write(
        &self,
        data: &impl serde::Serialize,
        page: impl FnOnce() -> report::Page,
        title: &str,
    ) -> anyhow::Result<()> {
        if let Some(p) = &self.json {
            write_file(p, serde_json::to_string_pretty(data)?.as_bytes())?;
            println!("wrote {}", p.display());
        }
        if let Some(p) = &self.html {
            write_file(p, page().html(title).as_bytes())?;
            println!("wrote {}", p.display());
        }
        Ok(())
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    bdh::io::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Text from `--prompt` or `--text FILE`, as tokens and bytes.
fn read_text(prompt: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    let bytes = match (prompt, file) {
        (Some(p), _) => p.clone().into_bytes(),
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => anyhow::bail!("give --text FILE or --prompt TEXT"),
    };
    anyhow::ensure!(!bytes.is_empty(), "the text is empty");
    Ok(bytes)
}

fn tokens(bytes: &[u8]) -> Vec<u32> {
    bytes.iter().map(|&b| b as u32).collect()
}

fn model_line(model: &Bdh) -> String {
    let c = &model.config;
    format!("model L{} D{} H{} N{}", c.n_layer, c.n_embd, c.n_head, c.n_neurons())
}
