//! A check that cannot run here says so where it will be seen: on standard error
//! past the test harness's capture, and as a line of the file named by
//! `BDH_SKIPPED_LOG` (set by `scripts/test`, which lists them all at its end).

use std::io::Write;

/// Says that `what` was skipped and why (`why` names what to install).
pub fn skipped(what: &str, why: &str) {
    let line = format!("SKIPPED {what}: {why}\n");
    // Written to the stream itself, not through `eprintln!`, which a passing test's
    // capture would swallow.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os("BDH_SKIPPED_LOG").filter(|p| !p.is_empty()) {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path);
        // One write of one short line: lines from tests running at once do not mix.
        if let Err(e) = file.and_then(|mut f| f.write_all(line.as_bytes())) {
            panic!("cannot record a skipped check in BDH_SKIPPED_LOG={}: {e}", path.to_string_lossy());
        }
    }
}
