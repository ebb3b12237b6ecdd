//! Shared by the device tests: how a check that cannot run here says so.
#[path = "../../../../tests/support/skip.rs"]
mod skip;
pub use skip::skipped;
