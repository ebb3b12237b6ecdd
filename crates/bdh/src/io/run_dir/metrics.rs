//! A run's metrics log: one JSON object a line for each logged step, evaluation and
//! sample, appended as the run goes and read back in bounded memory.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::io::write_atomic_with;

/// Longest line read (a sample of a few hundred bytes is the longest record a run
/// writes); longer lines are skipped, not held.
const MAX_LINE: u64 = 1 << 20;
/// Records read at most (a step record is held in 32 bytes: 5 M take 160 MB).
const MAX_RECORDS: usize = 5_000_000;
/// Bytes of a log read at most, whatever its lines: a device or a file with no
/// newline (`/dev/zero`) ends here, not never (5 M records of 400 bytes fit).
const MAX_LOG_BYTES: u64 = 2 << 30;

/// One optimizer step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRecord {
    /// Steps completed.
    pub step: f64,
    /// Mean training loss of the step.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Training throughput of the step (NaN if not logged).
    pub tokens_per_second: f64,
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalRecord {
    /// Steps completed.
    pub step: f64,
    /// Validation loss.
    pub val_loss: f64,
    /// Validation bits per byte.
    pub bits_per_byte: f64,
    /// Fraction of the built-in corpus's answers right, if measured.
    pub answer_accuracy: Option<f64>,
    /// Mean training loss of the steps before it, if logged.
    pub train_loss: Option<f64>,
    /// What copying a stated value of the right kind at random would score, if
    /// answers were scored.
    pub copy_baseline: Option<f64>,
    /// What copying at random a stated value no earlier answer gave would score,
    /// if answers were scored (and the run's log records it).
    pub eliminate_baseline: Option<f64>,
    /// How far each layer matrix moved from the start, if the run keeps models.
    pub weights: Vec<crate::microscope::weights::WeightChange>,
}

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleRecord {
    /// Steps completed.
    pub step: u64,
    /// The prompt.
    pub prompt: String,
    /// What the model wrote after it.
    pub text: String,
}

/// What a run's metrics log holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Every step, in order.
    pub steps: Vec<StepRecord>,
    /// Every evaluation, in order.
    pub evals: Vec<EvalRecord>,
    /// Every sample, in order.
    pub samples: Vec<SampleRecord>,
    /// Lines that are not a record (unreadable, overlong or of no known kind).
    pub skipped: usize,
    /// The numbers (from 1) of the first [`SKIPPED_LINES_KEPT`] of them.
    pub skipped_lines: Vec<usize>,
}

/// Skipped lines whose numbers [`Metrics`] keeps, to name them in a warning.
pub const SKIPPED_LINES_KEPT: usize = 20;

impl Metrics {
    /// Reads the log at `path` line by line (bounded lines and records).
    pub(super) fn read(path: &Path) -> Result<Self> {
        let file = fs::File::open(path).map_err(|e| Error::io("reading", path, e))?;
        let mut reader = BufReader::new(file.take(MAX_LOG_BYTES));
        let mut next = |line: &mut Vec<u8>| {
            line.clear();
            (&mut reader).take(MAX_LINE).read_until(b'\n', line).map_err(|e| Error::io("reading", path, e))
        };
        let mut m = Metrics::default();
        let mut line = Vec::new();
        for number in 1..=MAX_RECORDS {
            let n = next(&mut line)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
                // An overlong line: skip the rest of it without holding it.
                m.skip(number);
                while next(&mut line)? > 0 && line.last() != Some(&b'\n') {}
                continue;
            }
            match serde_json::from_slice::<serde_json::Value>(&line) {
                Ok(v) if m.add(&v) => {}
                _ => m.skip(number),
            }
        }
        Ok(m)
    }

    /// Counts line `number` as skipped.
    fn skip(&mut self, number: usize) {
        self.skipped += 1;
        if self.skipped_lines.len() < SKIPPED_LINES_KEPT {
            self.skipped_lines.push(number);
        }
    }

    /// Adds record `v`; false if it is of no known kind.
    fn add(&mut self, v: &serde_json::Value) -> bool {
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let Some(step) = num("step") else { return false };
        if let Some(val_loss) = num("val_loss") {
            self.evals.push(EvalRecord {
                step,
                val_loss,
                bits_per_byte: num("bits_per_byte").unwrap_or(val_loss / std::f64::consts::LN_2),
                answer_accuracy: num("answer_accuracy"),
                train_loss: num("train_loss"),
                copy_baseline: baseline(v, "copy_baseline"),
                eliminate_baseline: baseline(v, "eliminate_baseline"),
                // (unreadable entries are left out, as unreadable lines are)
                weights: v.get("weights").and_then(|w| serde_json::from_value(w.clone()).ok()).unwrap_or_default(),
            });
        } else if let (Some(loss), Some(lr)) = (num("loss"), num("lr")) {
            let tokens_per_second = num("tokens_per_second").unwrap_or(f64::NAN);
            self.steps.push(StepRecord { step, loss, lr, tokens_per_second });
        } else if let Some(sample) = v.get("sample").and_then(|s| s.as_str()) {
            let prompt = v.get("sample_prompt").and_then(|s| s.as_str()).unwrap_or_default();
            self.samples.push(SampleRecord { step: step as u64, prompt: prompt.to_string(), text: sample.to_string() });
        } else {
            return false;
        }
        true
    }
}

/// A baseline (`key`, e.g. `copy_baseline`) of an evaluation record: its answer
/// groups' baselines weighted by their answers (as `EvalMetrics::copy_baseline`).
fn baseline(v: &serde_json::Value, key: &str) -> Option<f64> {
    let groups = v.get("answer_groups")?.as_array()?;
    let (mut answers, mut sum) = (0.0, 0.0);
    for g in groups {
        let n = g.get("answers")?.as_f64()?;
        answers += n;
        sum += g.get(key)?.as_f64()? * n;
    }
    (answers > 0.0).then(|| sum / answers)
}

/// Appends JSON lines to a run's metrics log; writes nothing on a process that does
/// not write the run.
pub(crate) struct MetricsLog(Option<fs::File>);

impl MetricsLog {
    /// A log that keeps nothing, for a process that does not write the run.
    pub(crate) fn nowhere() -> Self {
        MetricsLog(None)
    }

    /// The log at `path`, without the records of steps after `keep_until`. Only
    /// those records go: a line that is not a record (say, one a kill cut short) is
    /// kept, whole lines, for a reader to report, never silently dropped.
    pub(super) fn open(path: &Path, keep_until: usize) -> Result<Self> {
        let old = match fs::File::open(path) {
            Ok(f) => Some(BufReader::new(f.take(MAX_LOG_BYTES))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("reading", path, e)),
        };
        write_atomic_with(path, |out| {
            let Some(mut old) = old else { return Ok(()) };
            let mut line = Vec::new();
            while (&mut old).take(MAX_LINE).read_until(b'\n', &mut line)? > 0 {
                let later = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s > keep_until as u64);
                if !later {
                    out.write_all(&line)?;
                    if line.last() != Some(&b'\n') {
                        out.write_all(b"\n")?; // what is appended starts a line of its own
                    }
                }
                line.clear();
            }
            Ok(())
        })?;
        let file = fs::OpenOptions::new().append(true).open(path).map_err(|e| Error::io("opening", path, e))?;
        Ok(MetricsLog(Some(file)))
    }

    /// Appends `record` as one line.
    pub(crate) fn write(&mut self, record: &serde_json::Value) -> Result<()> {
        match &mut self.0 {
            Some(file) => writeln!(file, "{record}").map_err(|e| Error::io("writing", super::METRICS, e)),
            None => Ok(()),
        }
    }
}
