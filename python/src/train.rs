//! `bdh.train`: the trainer of `bdh train`, with a Python callback at every
//! evaluation and Ctrl-C handled as the command handles it (the run stops after the
//! step it is in, saves, and the `KeyboardInterrupt` is raised after).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use engine::train::run::Event;
use engine::train::setup::{self, NewRun, Setup};
use pyo3::prelude::*;

use crate::py_err;

/// Trains a new run (`preset` with `overrides` into `out`) or resumes `resume`;
/// `callback(metrics)` after each evaluation, with the evaluation's numbers as JSON,
/// may return False to stop the run there (it saves). Returns the outcome as JSON.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (preset, overrides, out, data=None, val_data=None, tokenizer=None, init_from=None, resume=None, callback=None))]
pub fn train(
    py: Python<'_>,
    preset: String,
    overrides: Vec<String>,
    out: Option<PathBuf>,
    data: Option<PathBuf>,
    val_data: Option<PathBuf>,
    tokenizer: Option<PathBuf>,
    init_from: Option<PathBuf>,
    resume: Option<PathBuf>,
    callback: Option<Py<PyAny>>,
) -> PyResult<String> {
    let stop = AtomicBool::new(false);
    // What Python raised in the callback or as a signal: raised once the run has saved.
    let mut raised: Option<PyErr> = None;
    let outcome = py.detach(|| -> anyhow::Result<_> {
        let (Setup { run, tokenizer, resumed }, dir) = match (&resume, &out) {
            (Some(dir), None) => (setup::resume(dir, &overrides)?, dir.clone()),
            (None, Some(dir)) => {
                let new = NewRun { preset, overrides, data, val_data, tokenizer, init_from };
                (new.setup()?, dir.clone())
            }
            _ => anyhow::bail!("give out= (a new run's directory) or resume= (a run to continue), one of them"),
        };
        let corpus = run.data.corpus_with(run.training.block_size, tokenizer).context("preparing the data")?;
        let mut on = |e: Event| {
            let metrics = match e {
                Event::Step { .. } => None,
                Event::Eval(m) => Some(serde_json::to_string(m).unwrap_or_default()),
                _ => return,
            };
            if raised.is_some() {
                return;
            }
            Python::attach(|py| {
                let result = py.check_signals().and_then(|()| match (&metrics, &callback) {
                    (Some(m), Some(f)) => {
                        let json = py.import("json")?.call_method1("loads", (m,))?;
                        let go_on = f.call1(py, (json,))?;
                        // None (no return) goes on; False stops.
                        if !go_on.is_none(py) && !go_on.is_truthy(py)? {
                            stop.store(true, Ordering::SeqCst);
                        }
                        Ok(())
                    }
                    _ => Ok(()),
                });
                if let Err(e) = result {
                    raised = Some(e);
                    stop.store(true, Ordering::SeqCst);
                }
            });
        };
        let outcome = engine::train::run::train(&run, &corpus, &dir, resumed.is_some(), &stop, &mut on)?;
        Ok((outcome, dir))
    });
    if let Some(e) = raised {
        return Err(e);
    }
    let (o, dir) = outcome.map_err(py_err)?;
    let json = serde_json::json!({
        "dir": dir.display().to_string(),
        "step": o.step,
        "interrupted": o.interrupted,
        "last_eval": o.last_eval,
        "losses": o.losses,
        "seconds": o.seconds,
    });
    Ok(json.to_string())
}
