//! Helpers shared by the binary's end-to-end tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::process::{Command, Output};

use tempfile::TempDir;

/// Runs `bdh` with `args` and waits for it.
pub fn bdh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bdh")).args(args).output().expect("bdh runs")
}

/// A file or directory of `tests/golden`.
pub fn golden(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden").join(path).display().to_string()
}

/// A file of `examples/`.
pub fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples").join(name).display().to_string()
}

/// Standard output then standard error.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A fresh directory `bdh-cli-test-{name}-XXXXXX` in the system temp dir, deleted
/// with everything in it when the guard drops (also when the test fails): keep
/// it alive for the whole test and use `.path()`.
pub fn temp(name: &str) -> TempDir {
    tempfile::Builder::new().prefix(&format!("bdh-cli-test-{name}-")).tempdir().expect("creating a temporary directory")
}
