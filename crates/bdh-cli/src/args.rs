//! Argument groups that several subcommands flatten into theirs: the worker
//! threads, and every number as JSON.

use std::path::{Path, PathBuf};

/// Most worker threads `--threads` may ask for, per core: more only adds stacks
/// and per-thread buffers that can exhaust memory, never speed.
const THREADS_PER_CORE: usize = 64;

/// `--threads`, for the subcommands that compute.
#[derive(clap::Args)]
pub struct ThreadsArgs {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

impl ThreadsArgs {
    /// Sizes the global thread pool (default: one thread per core).
    pub fn size_pool(&self) -> anyhow::Result<()> {
        if let Some(n) = self.threads {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            let most = THREADS_PER_CORE * cores;
            anyhow::ensure!(
                (1..=most).contains(&n),
                "--threads {n}: give 1 to {most} ({THREADS_PER_CORE} for each of the {cores} cores)"
            );
            rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
        }
        Ok(())
    }
}

/// `--json`, for the subcommands whose numbers a script may read.
#[derive(clap::Args)]
pub struct JsonArgs {
    /// Write every number as JSON to this file (`-`: standard output).
    #[arg(long, global = true, value_name = "FILE")]
    json: Option<PathBuf>,
}

impl JsonArgs {
    /// Whether JSON is asked for.
    pub fn given(&self) -> bool {
        self.json.is_some()
    }

    /// Whether the JSON goes to standard output, which then holds nothing else.
    pub fn to_stdout(&self) -> bool {
        self.json.as_deref() == Some(Path::new("-"))
    }

    /// Writes `value` as JSON where asked, if asked.
    pub fn write(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        match &self.json {
            Some(path) => crate::write_output(path, &serde_json::to_string_pretty(value)?),
            None => Ok(()),
        }
    }
}
