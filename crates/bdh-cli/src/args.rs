//! Argument groups that several subcommands flatten into theirs: the worker
//! threads, every number as JSON and the synapse state's type; and the check of an
//! output file.

use std::path::{Path, PathBuf};

use bdh::infer::Prepared;
use bdh::model::bdh::StateDtype;

use crate::device::DeviceArgs;

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
    /// `--threads n`, as a library caller gives it.
    pub fn of(n: usize) -> Self {
        ThreadsArgs { threads: Some(n) }
    }

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
#[derive(clap::Args, Clone)]
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

    /// Refuses, before any work, a JSON file that could not be written.
    pub fn check(&self) -> anyhow::Result<()> {
        self.json.as_deref().map_or(Ok(()), |p| check_writable(p, "--json"))
    }

    /// Writes `value` as JSON where asked, if asked.
    pub fn write(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        match &self.json {
            Some(path) => crate::write_output(path, &serde_json::to_string_pretty(value)?),
            None => Ok(()),
        }
    }
}

/// Refuses, before any work, an output file `path` (given as `flag`) that could
/// not be written: its directory must exist and take a new file, tried with a
/// probe made and removed there; a file already at `path` is left as it is. `-`
/// (standard output) always passes.
pub fn check_writable(path: &Path, flag: &str) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        return Ok(());
    }
    let refuse = |why: String| anyhow::anyhow!("{flag} {}: {why}; nothing was done", path.display());
    if path.is_dir() {
        return Err(refuse("is a directory, not a file".into()));
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match std::fs::metadata(dir) {
        Err(e) => return Err(refuse(format!("its directory {} cannot be opened: {e}", dir.display()))),
        Ok(m) if !m.is_dir() => return Err(refuse(format!("{} is not a directory", dir.display()))),
        Ok(_) => {}
    }
    let probe = dir.join(format!(".bdh-write-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| refuse(format!("cannot write in {}: {e}", dir.display())))?;
    // The probe was made here, and removing it changes nothing else.
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `--state-dtype`, for the subcommands that decode with a synapse state.
#[derive(clap::Args, Clone, Debug)]
pub struct StateDtypeArgs {
    /// How the synapse state ρ is stored: f32 (exact), bf16 or f16. 16 bits halve a
    /// stream's memory and a decoding step's traffic; values are read and summed in
    /// f32 and rounded as they are written (BDH models, on the CPU).
    #[arg(long, value_name = "DTYPE", default_value = "f32", value_parser = parse_state_dtype)]
    pub state_dtype: StateDtype,
}

fn parse_state_dtype(s: &str) -> Result<StateDtype, String> {
    s.parse().map_err(|e: bdh::Error| e.to_string())
}

impl StateDtypeArgs {
    /// `prepared` making states of this type; anything but f32 keeps the work on the
    /// CPU (`device` must not name the GPU) and needs a BDH model.
    pub(crate) fn apply(&self, prepared: Prepared, device: &DeviceArgs) -> anyhow::Result<Prepared> {
        if self.state_dtype != StateDtype::F32 {
            device.cpu_only(&format!("--state-dtype {}", self.state_dtype))?;
        }
        Ok(prepared.with_state_dtype(self.state_dtype)?)
    }

    /// Whether ρ stays f32 (so a device may take the work).
    pub fn is_f32(&self) -> bool {
        self.state_dtype == StateDtype::F32
    }
}
