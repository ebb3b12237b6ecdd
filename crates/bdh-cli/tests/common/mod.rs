//! Helpers shared by the binary's end-to-end tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

pub mod figures;
#[path = "../../../../tests/support/skip.rs"]
mod skip;
pub use skip::skipped;

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

/// Headless Chromium (Debian's `chromium`; `.ci/run` installs it): `$BDH_CHROMIUM`
/// if set (it must then run), else `chromium` or `chromium-browser` on the PATH.
/// None when there is none — saying that rendering `what` is skipped — unless
/// `BDH_REQUIRE_CHROMIUM` is set (to anything but `0`), as CI does: then a missing
/// browser fails the test.
pub fn chromium(what: &str) -> Option<String> {
    let runs = |c: &str| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success());
    if let Some(c) = std::env::var("BDH_CHROMIUM").ok().filter(|c| !c.is_empty()) {
        assert!(runs(&c), "BDH_CHROMIUM={c} does not run (`{c} --version` failed)");
        return Some(c);
    }
    if let Some(c) = ["chromium", "chromium-browser"].into_iter().find(|c| runs(c)) {
        return Some(c.to_string());
    }
    let required = std::env::var("BDH_REQUIRE_CHROMIUM").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "BDH_REQUIRE_CHROMIUM is set but no Chromium was found to render {what}: \
         apt-get install chromium, or set BDH_CHROMIUM to a Chromium binary"
    );
    skipped(
        &format!("the render check of {what}"),
        "no Chromium found (apt-get install chromium, or set BDH_CHROMIUM; BDH_REQUIRE_CHROMIUM=1 makes this a failure)",
    );
    None
}

/// Renders `page` in headless Chromium: (the DOM after load, screenshot bytes).
/// Everything Chromium writes (profile, its temp files, `~/.pki` and the like)
/// goes under `dir`.
pub fn render(chromium: &str, page: &Path, dir: &Path) -> (String, usize) {
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ];
    let home = dir.join("chromium-home");
    let tmp = home.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let browser = || {
        let mut c = Command::new(chromium);
        c.args(flags)
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"));
        c
    };
    let url = format!("file://{}", page.display());
    let dom = browser().args(["--dump-dom", &url]).output().unwrap();
    let shot = dir.join(format!("{}.png", page.file_stem().unwrap().to_string_lossy()));
    let o = browser()
        .arg("--window-size=1000,1400")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(o.status.success(), "chromium: {}", text(&o));
    (String::from_utf8_lossy(&dom.stdout).into_owned(), std::fs::metadata(&shot).unwrap().len() as usize)
}
