//! `bdh`: train, run, verify and benchmark BDH language models.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
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
    /// Compare a model against golden tensors of the reference bdh.py.
    Verify(verify::Args),
    /// Measure training and inference speed.
    Bench(bench::Args),
}

/// Exit status of a run that went wrong before it could give an answer.
const BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verify(args) => verify::run(args),
        Command::Bench(args) => bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(BAD_INPUT)
        }
    }
}
