//! `bdh inspect`: the microscope's analyses as commands: a readable summary on
//! stdout, every number as JSON (`--json`), and plots in a self-contained HTML
//! page (`--html`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bdh::microscope::Scope;
use bdh::model::bdh::{Bdh, Site};
use bdh::Model;

use crate::args::{JsonArgs, ThreadsArgs};
use crate::page::Page;
use crate::provenance::Provenance;

/// Where a command's summary goes: standard output ([`TO_STDOUT`]), standard error
/// because `--json -` gives standard output to the JSON alone ([`TO_STDERR`]), or
/// nowhere, when the JSON is handed back in process ([`json`]).
static SUMMARY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(TO_STDOUT);
const TO_STDOUT: u8 = 0;
const TO_STDERR: u8 = 1;
const SILENT: u8 = 2;

/// Prints a line of a command's summary where [`SUMMARY`] says.
macro_rules! say {
    ($($arg:tt)*) => {
        match $crate::inspect::SUMMARY.load(std::sync::atomic::Ordering::Relaxed) {
            $crate::inspect::TO_STDOUT => println!($($arg)*),
            $crate::inspect::TO_STDERR => eprintln!($($arg)*),
            _ => {}
        }
    };
}

mod ablate;
mod complexity;
mod concept;
mod connectome;
mod geometry;
mod graph;
mod induction;
mod overlap;
mod patch;
mod path;
mod seeds;
mod sparsity;
mod synapses;
mod top;
mod training;

/// Looks inside a model: sparsity, the neuron graph, the synapse state, and
/// interventions (ablate, patch, induction, top, path, overlap).
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
    #[command(flatten)]
    json: JsonArgs,
    /// Write a self-contained HTML report with plots to this file.
    #[arg(long, global = true)]
    html: Option<PathBuf>,
    #[command(flatten)]
    threads: ThreadsArgs,
    #[command(flatten)]
    device: crate::device::DeviceArgs,
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
    /// Remove neurons, heads or synapse rows and score the model's answers; rank
    /// neurons by selectivity for a concept and remove them cumulatively against a
    /// random control.
    Ablate(ablate::Args),
    /// How many of two concepts' most selective neurons are shared, against random sets.
    Overlap(overlap::Args),
    /// Patch activations and synapses from clean texts into texts that differ in
    /// one stated fact: which layers, heads, neurons and synapses restore the answer.
    Patch(patch::Args),
    /// Induction and previous-token heads on repeated random text, for one model or
    /// over the models a run kept.
    Induction(induction::Args),
    /// The top-activating contexts of one neuron over a text, clustered into facets.
    Top(top::Args),
    /// The greedy layer-by-layer path of neurons whose removal lowers a target logit most.
    Path(path::Args),
    /// The Lempel–Ziv complexity of each neuron's firing over a text, against
    /// shuffles of the same firing rate.
    Complexity(complexity::Args),
    /// Rich or lazy learning over the models a run kept: each layer matrix's change
    /// from the start, effective rank and alignment with its start, and sparsity.
    Training(training::Args),
    /// Neurons across models that differ only in seed: matched by their activations,
    /// how stable the important ones are, and whether neurons are the activity's axes.
    Seeds(seeds::Args),
    /// Which groups of neurons work together when: co-activation affinities in
    /// windows of a text, factorised into communities and their time courses.
    Connectome(connectome::Args),
    /// Concept codes as sets of neurons: their overlap, how many superpose before
    /// they collide (against random codes), and a t-SNE map of their activations.
    Geometry(geometry::Args),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.json.check()?;
    let to = if args.json.to_stdout() { TO_STDERR } else { TO_STDOUT };
    SUMMARY.store(to, std::sync::atomic::Ordering::Relaxed);
    run_with(args, None, None)?;
    Ok(ExitCode::SUCCESS)
}

/// `bdh inspect` as a command of its own, for [`json`] and [`help`].
#[derive(clap::Parser)]
#[command(name = "bdh inspect", no_binary_name = true)]
struct Command {
    #[command(flatten)]
    args: Args,
}

/// The help of `bdh inspect COMMAND`, as its `--help` prints it; `None` for a
/// command there is not.
pub fn help(command: &str) -> Option<String> {
    let mut all = <Command as clap::CommandFactory>::command();
    all.find_subcommand_mut(command).map(|c| c.render_long_help().to_string())
}

/// `bdh inspect ARGV…` on `model` (described by `source`, e.g. the path it was
/// loaded from; `None`: the model `--model` or `--init` names, or none for the
/// commands that read runs), its JSON handed back instead of written, the summary
/// unsaid; `--html` is written as the command writes it.
pub fn json(argv: &[String], model: Option<(&Model, &str)>) -> anyhow::Result<serde_json::Value> {
    let Command { args } = <Command as clap::Parser>::try_parse_from(argv).map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(!args.json.given(), "the JSON is what is returned: leave --json out");
    SUMMARY.store(SILENT, std::sync::atomic::Ordering::Relaxed);
    let captured = std::cell::RefCell::new(None);
    run_with(args, model, Some(&captured))?;
    captured.into_inner().ok_or_else(|| anyhow::anyhow!("the command made no JSON"))
}

/// The body of [`run`] and [`json`]: the model given, else the one the arguments
/// name; the JSON into `captured` if given, else where `--json` says.
fn run_with(
    args: Args,
    given: Option<(&Model, &str)>,
    captured: Option<&std::cell::RefCell<Option<serde_json::Value>>>,
) -> anyhow::Result<()> {
    args.threads.size_pool()?;
    if let Some(html) = &args.html {
        crate::args::check_writable(html, "--html")?;
    }
    let output = |provenance| Output { json: args.json.clone(), html: args.html.clone(), provenance, captured };
    let reads_runs = matches!(&args.what, What::Training(_) | What::Seeds(_))
        || matches!(&args.what, What::Induction(a) if a.run.is_some());
    anyhow::ensure!(
        !(reads_runs && given.is_some()),
        "this command reads the models of runs (--run or --models), not a model given to it"
    );
    if let What::Training(a) = args.what {
        anyhow::ensure!(args.model.is_none() && args.init.is_none(), "inspect training reads --run, not --model");
        let mut out = output(Provenance::of_this_run());
        training::run(a, &args.device, &mut out)?;
        return Ok(());
    }
    if let What::Seeds(a) = args.what {
        anyhow::ensure!(args.model.is_none() && args.init.is_none(), "inspect seeds reads --models A,B,…, not --model");
        if args.device.device != crate::device::Choice::Cpu {
            eprintln!("note: inspect seeds runs its models on the CPU");
        }
        let mut out = output(Provenance::of_this_run());
        seeds::run(a, &mut out)?;
        return Ok(());
    }
    if let What::Induction(a) = &args.what {
        if let Some(run) = &a.run {
            anyhow::ensure!(
                args.model.is_none() && args.init.is_none(),
                "give --run (every model a run kept) or --model, not both"
            );
            let mut provenance = Provenance::of_this_run();
            // The models it reads are added as they are read.
            provenance.add("run", run.display().to_string());
            let mut out = output(provenance);
            let What::Induction(a) = args.what else { unreachable!("matched above") };
            induction::run(a, None, &args.device, &mut out)?;
            return Ok(());
        }
    }
    let loaded;
    let (model, source) = match (given, &args.model, &args.init) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            anyhow::bail!("the model is given: leave --model and --init out")
        }
        (Some((model, source)), ..) => (model, source.to_string()),
        (None, Some(m), _) => {
            let (path, model) = crate::model_args::load(m, args.config.as_deref())?;
            loaded = model;
            (&loaded, path.display().to_string())
        }
        (None, None, Some(preset)) => {
            loaded = Model::new(&bdh::RunConfig::resolve(preset, &[])?.model, args.seed_init)?;
            (&loaded, format!("freshly initialised preset {preset}, seed {}", args.seed_init))
        }
        (None, None, None) => anyhow::bail!("give --model (a trained model) or --init PRESET (random weights)"),
    };
    let mut provenance = Provenance::of_this_run();
    provenance.model(&source, model);
    let mut out = output(provenance);
    // The microscope reads BDH's neurons and synapses.
    let Model::Bdh(model) = model else {
        anyhow::bail!(
            "`bdh inspect` looks at BDH's neurons and synapses; {source} is a {} — there is nothing of the kind to inspect",
            model.config().describe()
        )
    };
    // The forwards run on the device asked for; the graph reads the weights alone.
    let mut device = match &args.what {
        What::Graph(_) => {
            if args.device.device != crate::device::Choice::Cpu {
                eprintln!("note: the graph is made from the weights alone, on the CPU");
            }
            None
        }
        _ => args.device.open(&Model::Bdh(model.clone()))?,
    };
    let scope = match &mut device {
        Some(device) => Scope::on(model, device.traced()),
        None => Scope::cpu(model),
    };
    out.provenance.add("device", scope.device());
    let model = &scope;
    match args.what {
        What::Sparsity(a) => sparsity::run(a, model, &mut out)?,
        What::Graph(a) => graph::run(a, model, &mut out)?,
        What::Synapses(a) => synapses::run(a, model, &mut out)?,
        What::Ablate(a) => ablate::run(a, model, &mut out)?,
        What::Overlap(a) => overlap::run(a, model, &mut out)?,
        What::Patch(a) => patch::run(a, model, &mut out)?,
        What::Induction(a) => induction::run(a, Some(model), &args.device, &mut out)?,
        What::Top(a) => top::run(a, model, &mut out)?,
        What::Path(a) => path::run(a, model, &mut out)?,
        What::Complexity(a) => complexity::run(a, model, &mut out)?,
        What::Connectome(a) => connectome::run(a, model, &mut out)?,
        What::Geometry(a) => geometry::run(a, model, &mut out)?,
        What::Training(_) | What::Seeds(_) => unreachable!("run above, before a model is loaded"),
    }
    Ok(())
}

/// Where the JSON and HTML go, and what to record of how they were made.
pub struct Output<'c> {
    json: JsonArgs,
    html: Option<PathBuf>,
    provenance: Provenance,
    /// Where the JSON goes instead of `json`, when it is handed back in process.
    captured: Option<&'c std::cell::RefCell<Option<serde_json::Value>>>,
}

impl Output<'_> {
    /// A page headed by this run's provenance.
    fn page(&self) -> Page {
        Page::new(self.provenance.rows())
    }

    /// Writes the JSON (with a `provenance` entry) and the HTML that were asked for.
    fn write(&self, data: &impl serde::Serialize, page: impl FnOnce() -> Page, title: &str) -> anyhow::Result<()> {
        if self.json.given() || self.captured.is_some() {
            let mut value = serde_json::to_value(data)?;
            if let Some(map) = value.as_object_mut() {
                let facts = self.provenance.rows().into_iter().map(|(k, v)| (k, serde_json::Value::String(v)));
                map.insert("provenance".into(), facts.collect::<serde_json::Map<_, _>>().into());
            }
            match self.captured {
                Some(c) => *c.borrow_mut() = Some(value),
                None => self.json.write(&value)?,
            }
        }
        if let Some(p) = &self.html {
            crate::write_output(p, &page().html(title))?;
        }
        Ok(())
    }
}

/// `--text` or `--prompt`: the text a command runs the model on.
#[derive(clap::Args)]
pub struct TextArgs {
    /// The text to run (a file).
    #[arg(long, conflicts_with = "prompt")]
    text: Option<PathBuf>,
    /// The text to run (inline).
    #[arg(long)]
    prompt: Option<String>,
}

impl TextArgs {
    /// Whether a text is given.
    fn given(&self) -> bool {
        self.text.is_some() || self.prompt.is_some()
    }

    /// The text, recorded in the provenance as `key`.
    fn read(&self, out: &mut Output, key: &str) -> anyhow::Result<Vec<u8>> {
        let bytes = match (&self.prompt, &self.text) {
            (Some(p), _) => {
                out.provenance.text(key, "--prompt", p.as_bytes());
                p.clone().into_bytes()
            }
            (None, Some(f)) => {
                let bytes = read_file(f)?;
                out.provenance.file(key, f, &bytes);
                bytes
            }
            (None, None) => anyhow::bail!("give --text FILE or --prompt TEXT"),
        };
        anyhow::ensure!(!bytes.is_empty(), "the text is empty");
        Ok(bytes)
    }
}

/// A whole file, checked against the memory available first.
fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    let most = bdh::infer::MAX_PROMPT_BYTES;
    bdh::memory::ensure_fits(
        usize::try_from(len.min(most)).unwrap_or(usize::MAX),
        &format!("the text {}", path.display()),
    )?;
    Ok(bdh::io::read_bounded(path, most)?)
}

/// A site of a neuron named on the command line: x, y or xy.
fn parse_site(s: &str) -> Result<Site, String> {
    match s {
        "x" => Ok(Site::X),
        "y" => Ok(Site::Y),
        "xy" => Ok(Site::Xy),
        _ => Err(format!("expected x, y or xy, got {s:?}")),
    }
}

fn tokens(bytes: &[u8]) -> Vec<u32> {
    bytes.iter().map(|&b| b as u32).collect()
}

fn model_line(model: &Bdh) -> String {
    let c = &model.config;
    format!("model L{} D{} H{} N{}", c.n_layer, c.n_embd, c.n_head, c.n_neurons())
}
