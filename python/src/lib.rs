//! `bdh._bdh`: the engine's entry points for the `bdh` Python package. The package
//! (`bdh/__init__.py`) is the API users see; this module does the work, on the same
//! library the `bdh` command runs, with the GIL released while it computes.

use pyo3::exceptions::{PyFileNotFoundError, PyMemoryError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

mod model;
mod session;
mod train;

/// A Python exception for an engine error, of the kind of its cause: a size refused
/// before allocating is a `MemoryError`, a missing file a `FileNotFoundError`, other
/// file failures an `OSError`, a training run that diverged or a program fault a
/// `RuntimeError`, and anything the caller gave that is wrong a `ValueError`. The
/// message is the one the command prints.
pub(crate) fn py_err(e: anyhow::Error) -> PyErr {
    use engine::Error;
    let msg = format!("{e:#}");
    let not_found = |c: &std::io::Error| c.kind() == std::io::ErrorKind::NotFound;
    match bdh_cli::error_kind(&e) {
        Some(Error::TooLarge { .. }) => PyMemoryError::new_err(msg),
        Some(Error::Io { cause, path, .. }) => match cause.raw_os_error() {
            // (errno, message, file): Python picks the subclass, e.g. IsADirectoryError
            Some(errno) => PyOSError::new_err((errno, msg, path.display().to_string())),
            None if not_found(cause) => PyFileNotFoundError::new_err(msg),
            None => PyOSError::new_err(msg),
        },
        Some(Error::Diverged { .. } | Error::NonFinite { .. } | Error::Mismatch(_) | Error::Device(_)) => {
            PyRuntimeError::new_err(msg)
        }
        Some(_) => PyValueError::new_err(msg),
        None => match e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()) {
            Some(c) if not_found(c) => PyFileNotFoundError::new_err(msg),
            Some(_) => PyOSError::new_err(msg),
            None => PyValueError::new_err(msg),
        },
    }
}

/// [`py_err`] of a library error.
pub(crate) fn lib_err(e: engine::Error) -> PyErr {
    py_err(e.into())
}

/// Sizes the pool of threads the engine computes on, as `--threads` does (once per
/// process, before the first computation; by default one per core).
#[pyfunction]
fn set_threads(n: usize) -> PyResult<()> {
    bdh_cli::args::ThreadsArgs::of(n).size_pool().map_err(|e| {
        if e.is::<rayon::ThreadPoolBuildError>() {
            PyRuntimeError::new_err(format!("the engine's threads are already running ({e}): call set_threads first"))
        } else {
            py_err(e)
        }
    })
}

/// `bdh inspect ARGV…` for the commands that read runs (training, seeds, induction
/// with --run): its JSON as a string.
#[pyfunction]
fn inspect_runs(py: Python<'_>, argv: Vec<String>) -> PyResult<String> {
    py.detach(|| bdh_cli::inspect::json(&argv, None)).map(|v| v.to_string()).map_err(py_err)
}

/// `bdh ARGV…` run in this process (for `bdh graph`): false for a check that ran and
/// failed.
#[pyfunction]
fn run_command(py: Python<'_>, argv: Vec<String>) -> PyResult<bool> {
    py.detach(|| bdh_cli::run_args(&argv)).map_err(py_err)
}

/// The help of `bdh inspect COMMAND` (every option), as its `--help` prints it.
#[pyfunction]
fn inspect_help(command: &str) -> PyResult<String> {
    bdh_cli::inspect::help(command).ok_or_else(|| PyValueError::new_err(format!("no inspect command {command:?}")))
}

#[pymodule]
fn _bdh(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::Engine>()?;
    m.add_class::<session::Session>()?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(inspect_runs, m)?)?;
    m.add_function(wrap_pyfunction!(inspect_help, m)?)?;
    m.add_function(wrap_pyfunction!(run_command, m)?)?;
    m.add_function(wrap_pyfunction!(model::edits_touch_rho, m)?)?;
    m.add_function(wrap_pyfunction!(train::train, m)?)?;
    Ok(())
}
