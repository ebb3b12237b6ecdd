//! Bounds on what a model, a batch or a state may allocate: sizes that come from a
//! file, a flag or a request are checked against the memory this machine has before
//! anything is allocated, so an absurd size is an error naming the bytes, not an
//! abort or the kernel's out-of-memory killer.

use crate::error::{Error, Result};

/// Refuses `bytes` for `what` if they exceed the memory available now (Linux's
/// `MemAvailable` plus free swap); elsewhere only sizes past the address space.
pub fn ensure_fits(bytes: usize, what: &str) -> Result<()> {
    let available = available_bytes();
    if bytes > isize::MAX as usize || available.is_some_and(|a| bytes as u64 > a) {
        let need = (bytes != usize::MAX).then_some(bytes as u64);
        return Err(Error::TooLarge { what: what.into(), need, have: available });
    }
    Ok(())
}

/// The bytes of `count` f32 values, if that is a number.
pub fn f32_bytes(count: Option<usize>) -> usize {
    count.and_then(|c| c.checked_mul(4)).unwrap_or(usize::MAX)
}

fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
}
