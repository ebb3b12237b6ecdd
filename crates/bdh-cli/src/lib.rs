//! `bdh`: train, run, verify and benchmark BDH language models. The commands live
//! here, the binary is [`main`]; [`inspect::json`] runs a `bdh inspect` command on a
//! model already loaded and hands its JSON back (the Python package's microscope).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod args;
mod bench;
mod compare;
mod data;
mod device;
mod eval;
mod generate;
mod graph;
pub mod inspect;
mod merge;
pub mod model_args;
mod page;
mod processes;
mod progress;
mod provenance;
mod report;
mod serve;
mod stop;
mod tokenizer;
mod train;
mod verify;

/// BDH ("The Dragon Hatchling") language models: verify against the reference,
/// benchmark, and run.
#[derive(Parser)]
#[command(name = "bdh", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (default: the recall preset on the built-in corpus).
    Train(train::Args),
    /// Generate text from a prompt.
    Generate(generate::Args),
    /// Serve a model over HTTP (OpenAI API) with sessions that keep their state.
    Serve(serve::Args),
    /// Loss, perplexity and bits per byte of a model on a file or the built-in corpus.
    Eval(eval::Args),
    /// Look inside a model: sparsity, the neuron graph, the synapse state, interventions.
    Inspect(inspect::Args),
    /// A training run's loss curves, accuracy, learning rate, speed and samples.
    Report(report::Args),
    /// Compare a model against golden tensors of its reference (bdh.py, or nanoGPT's model.py).
    Verify(verify::Args),
    /// Measure training and inference speed.
    Bench(bench::Args),
    /// Train BDH and the GPT baseline at matched sizes on the same batches and compare them.
    Compare(compare::Args),
    /// BDH as a graph of neurons and synapses: build a model's exact graphs, run them.
    Graph(graph::Args),
    /// Merge two BDH models into one by concatenating their neurons.
    Merge(merge::Args),
    /// Make a BPE tokenizer from a text (`bdh tokenizer train`).
    Tokenizer(tokenizer::Args),
    /// Download tiny Shakespeare, the text of the published numbers (`bdh data fetch`).
    Data(data::Args),
}

/// The `bdh` command: parses the arguments, runs the subcommand, prints an error
/// and returns its exit status.
pub fn main() -> ExitCode {
    quiet_broken_pipe();
    // Before any thread starts: no Vulkan driver noise on standard error.
    #[cfg(feature = "gpu")]
    bdh_gpu::quiet_vulkan();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_status(&e))
        }
    }
}

/// A standard output closed early (`bdh … | head`) ends the program quietly with
/// status 141 (128 + SIGPIPE), as a shell tool does, instead of a panic in `println!`.
fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied());
        if message.is_some_and(|m| m.starts_with("failed printing to stdout") && m.contains("Broken pipe")) {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// The exit status of an error, by its kind: 2 for what the user gave (input, a
/// config, a file, a run directory), 3 for a size refused before allocation, 4 for
/// training that diverged, 70 for parts of the program that do not fit together (a
/// bug). 0 is success and 1 a check that ran and failed (`verify`).
pub(crate) fn exit_status(e: &anyhow::Error) -> u8 {
    match error_kind(e) {
        Some(bdh::Error::TooLarge { .. }) => 3,
        Some(bdh::Error::Diverged { .. } | bdh::Error::NonFinite { .. }) => 4,
        Some(bdh::Error::Mismatch(_)) => 70,
        _ => 2,
    }
}

/// Runs `bdh ARGV…` in this process (the Python package's `bdh.graph`): what it
/// prints goes to this process's standard output and error, an error is returned
/// rather than printed; `Ok(false)` is a check that ran and failed (exit status 1).
pub fn run_args(argv: &[String]) -> anyhow::Result<bool> {
    let cli = Cli::try_parse_from(std::iter::once("bdh").chain(argv.iter().map(String::as_str)))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(run(cli)? == ExitCode::SUCCESS)
}

/// The library error behind `e`, through any context around it: what kind of
/// failure it is.
pub fn error_kind(e: &anyhow::Error) -> Option<&bdh::Error> {
    e.chain().find_map(|c| c.downcast_ref::<bdh::Error>()).map(|mut k| {
        while let bdh::Error::Context { cause, .. } = k {
            k = cause;
        }
        k
    })
}

/// Runs the subcommand asked for.
fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train(args) => train::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Report(args) => report::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Graph(args) => graph::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Tokenizer(args) => tokenizer::run(args),
        Command::Data(args) => data::run(args),
    }
}

/// `n` of something, in the singular for one: `1 thread`, `4 threads`.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Writes `text` to `path` atomically, or to standard output if `path` is `-`,
/// and says where it went.
fn write_output(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    if path.as_os_str() == "-" {
        println!("{text}");
        return Ok(());
    }
    bdh::io::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
