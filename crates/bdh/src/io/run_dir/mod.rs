//! Run directories: where a training run keeps its config, its metrics and its
//! checkpoints. This module alone knows their layout:
//!
//! ```text
//! run/config.toml             the resolved run config
//! run/metrics.jsonl           one JSON object per logged step, evaluation and sample
//! run/last/                   model.safetensors, config.json, optimizer.safetensors, trainer.json
//!                             (and tokenizer.json, as every checkpoint of a BPE run)
//! run/last/carry.safetensors  the carried synapse state, with `training.carry_state`
//! run/best/                   model.safetensors, config.json of the best validation loss
//! run/steps/step-NNNNNN/      the model at step N, with `training.keep_every`
//! run/tokenizer.json          the BPE tokenizer the run reads its text with, if not bytes
//! run/.bdh-lock               while a process writes the run: its PID (see [`DirLock`])
//! ```

mod lock;
mod metrics;

use std::fs;
use std::path::{Path, PathBuf};

pub use lock::DirLock;
pub(crate) use metrics::MetricsLog;
pub use metrics::{EvalRecord, Metrics, SampleRecord, StepRecord, SKIPPED_LINES_KEPT};

use super::checkpoint::WEIGHTS_FILE;
use crate::data::TOKENIZER_FILE;
use crate::error::{Error, Result};
use crate::train::RunConfig;

/// The run config, whose presence makes a directory a run directory.
const CONFIG: &str = "config.toml";
/// The metrics log.
const METRICS: &str = "metrics.jsonl";
/// The folder of the models kept at chosen steps.
const STEPS: &str = "steps";
/// How a kept step's folder is named before its number.
const STEP_PREFIX: &str = "step-";
/// The lock file of a directory a process writes.
const LOCK: &str = ".bdh-lock";

/// Locks directory `dir` (a run, or a comparison's folder of runs) for this process
/// until the lock is dropped; an error naming the process that holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    DirLock::take(&dir.join(LOCK))
}

/// Locks `path` — a file or directory one process makes or replaces, which may not
/// exist yet — by a lock file beside it, `.<name>.bdh-lock`.
pub fn lock_beside(path: &Path) -> Result<DirLock> {
    let name = path.file_name().ok_or_else(|| Error::format(path, "not a file or directory name"))?;
    DirLock::take(&path.with_file_name(format!(".{}{LOCK}", name.to_string_lossy())))
}

/// A checkpoint a run keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checkpoint {
    /// The model of the best validation loss so far.
    Best,
    /// The latest state, optimizer and trainer included, that a resumed run continues.
    Last,
    /// The model at this step (`training.keep_every`).
    Step(usize),
}

/// A training run's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// The run in `path`; an error naming it unless it holds a run config.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_for(path, "")
    }

    /// [`RunDir::open`] for a run to continue: the error says so.
    pub fn open_to_resume(path: &Path) -> Result<Self> {
        Self::open_for(path, " to resume")
    }

    fn open_for(path: &Path, purpose: &str) -> Result<Self> {
        if path.join(CONFIG).is_file() {
            return Ok(RunDir { path: path.to_path_buf() });
        }
        Err(Error::Refused(format!("{} is not a run directory{purpose} (no readable {CONFIG})", path.display())))
    }

    /// The directory of a new run at `path`, made if need be; refused if it already
    /// holds a run.
    pub fn create(path: &Path) -> Result<Self> {
        let run = RunDir { path: path.to_path_buf() };
        if run.checkpoint_dir(Checkpoint::Last).exists() {
            return Err(Error::Input(format!(
                "{} already holds a run; resume it or choose another directory",
                path.display()
            )));
        }
        fs::create_dir_all(path).map_err(|e| Error::io("creating directory", path, e))?;
        Ok(run)
    }

    /// The directory of a run that another process writes, as this one names it in
    /// messages: neither checked nor made.
    pub(crate) fn named(path: &Path) -> Self {
        RunDir { path: path.to_path_buf() }
    }

    /// The run a model a user named comes from, if any: the run directory itself, or
    /// the run one of whose checkpoints it is (a checkpoint directory, or a weights
    /// file in one).
    pub fn of_model(model: &Path) -> Option<Self> {
        if let Ok(run) = RunDir::open(model) {
            return Some(run);
        }
        let checkpoint = if model.is_dir() { model } else { model.parent()? };
        RunDir::open(checkpoint.parent()?).ok()
    }

    /// Locks the run for this process until the lock is dropped ([`lock_dir`]).
    pub fn lock(&self) -> Result<DirLock> {
        lock_dir(&self.path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run's config file as text.
    pub fn config_text(&self) -> Result<String> {
        let path = self.path.join(CONFIG);
        crate::io::read_text_bounded(&path, crate::io::MAX_CONFIG_BYTES)
    }

    /// The run's config with `overrides` applied (see [`RunConfig::from_toml`]).
    pub fn config(&self, overrides: &[String]) -> Result<RunConfig> {
        RunConfig::from_toml(&self.config_text()?, &self.path.join(CONFIG), overrides)
    }

    /// Saves `run` as the run's config.
    pub(crate) fn write_config(&self, run: &RunConfig) -> Result<()> {
        super::write_atomic(&self.path.join(CONFIG), run.to_toml().as_bytes())
    }

    /// Where the run keeps checkpoint `which`, whether it has been written or not.
    pub fn checkpoint_dir(&self, which: Checkpoint) -> PathBuf {
        match which {
            Checkpoint::Best => self.path.join("best"),
            Checkpoint::Last => self.path.join("last"),
            Checkpoint::Step(step) => self.path.join(STEPS).join(format!("{STEP_PREFIX}{step:06}")),
        }
    }

    /// Whether checkpoint `which` holds a model.
    pub fn has(&self, which: Checkpoint) -> bool {
        self.checkpoint_dir(which).join(WEIGHTS_FILE).exists()
    }

    /// The checkpoint to run the run's model from: its best, else its last; an
    /// error if it has written neither yet.
    pub fn model(&self) -> Result<PathBuf> {
        [Checkpoint::Best, Checkpoint::Last]
            .into_iter()
            .find(|&c| self.has(c))
            .map(|c| self.checkpoint_dir(c))
            .ok_or_else(|| {
                Error::Refused(format!(
                    "{} is a run directory with no checkpoint yet (neither best/ nor last/ holds a model)",
                    self.path.display()
                ))
            })
    }

    /// The models the run kept (`training.keep_every`), by step; none if it kept none.
    pub fn kept_steps(&self) -> Result<Vec<(usize, PathBuf)>> {
        let dir = self.path.join(STEPS);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("reading", &dir, e)),
        };
        let mut kept = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| Error::io("reading", &dir, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(step) = name.strip_prefix(STEP_PREFIX).and_then(|s| s.parse::<usize>().ok()) {
                kept.push((step, path));
            }
        }
        kept.sort();
        Ok(kept)
    }

    /// The run's own copy of the tokenizer it reads its text with, if not bytes.
    pub fn tokenizer(&self) -> Option<PathBuf> {
        Some(self.path.join(TOKENIZER_FILE)).filter(|p| p.is_file())
    }

    /// The metrics log.
    pub fn metrics_path(&self) -> PathBuf {
        self.path.join(METRICS)
    }

    /// What the metrics log holds (lines and records read are bounded).
    pub fn metrics(&self) -> Result<Metrics> {
        Metrics::read(&self.metrics_path())
    }

    /// The metrics log opened for appending, without the records of steps after
    /// `keep_until` (a resumed run logs them again).
    pub(crate) fn metrics_log(&self, keep_until: usize) -> Result<MetricsLog> {
        MetricsLog::open(&self.metrics_path(), keep_until)
    }
}
