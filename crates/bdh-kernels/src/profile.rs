//! Per-kernel times, for `bdh bench train --profile`: off unless [`start`] was
//! called, when a kernel's whole cost is one relaxed load.
//!
//! Time is counted in thread-seconds, so the kernels of one step add up to the
//! pool's threads times its wall time: a kernel called outside the pool counts its
//! wall time once per pool thread (the threads it holds, busy or idle: a serial
//! kernel there leaves the pool waiting), a kernel running on a pool thread (one
//! row's chain of a backward) counts its own time. Only the outermost kernel of a
//! thread counts (a batched product's items are its own time), and a kernel called
//! outside the pool holds the count of everything its tasks call. A kernel on a pool
//! thread that runs another task while it waits for its own (work stealing) counts
//! that task's kernels too; the model calls none that way.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
/// Kernels open outside the pool now (their tasks' kernels are theirs).
static HOLDING: AtomicUsize = AtomicUsize::new(0);
static TABLE: Mutex<Vec<KernelTime>> = Mutex::new(Vec::new());

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// One kernel at one shape, summed over its calls.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The kernel (a matrix product names its transposed operands).
    pub name: &'static str,
    /// Its sizes as it names them (a product's m, k, n), zeros where it names none.
    pub shape: [usize; 3],
    /// Calls.
    pub calls: u64,
    /// Thread-seconds.
    pub seconds: f64,
    /// Floating-point operations, where the kernel counts them (0 otherwise).
    pub flops: f64,
}

/// Clears the table and starts counting.
pub fn start() {
    TABLE.lock().unwrap_or_else(|e| e.into_inner()).clear();
    ON.store(true, Ordering::Relaxed);
}

/// Stops counting and hands back the table, slowest first.
pub fn stop() -> Vec<KernelTime> {
    ON.store(false, Ordering::Relaxed);
    let mut table = std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()));
    table.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    table
}

/// A kernel's call being timed; records on drop.
pub(crate) struct Span {
    open: Option<(Instant, KernelTime, bool)>,
}

/// Times the call of `name` at `shape` doing `flops` operations.
pub(crate) fn span(name: &'static str, shape: [usize; 3], flops: f64) -> Span {
    if !ON.load(Ordering::Relaxed) {
        return Span { open: None };
    }
    let outer = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get() == 1
    });
    let in_pool = rayon::current_thread_index().is_some();
    let entry = |calls, seconds| KernelTime { name, shape, calls, seconds, flops };
    // (a kernel that a kernel outside the pool set going is that kernel's time)
    if !outer || (in_pool && HOLDING.load(Ordering::Relaxed) > 0) {
        return Span { open: Some((Instant::now(), entry(0, 0.0), false)) };
    }
    let holds = !in_pool;
    let weight = if holds { rayon::current_num_threads() as f64 } else { 1.0 };
    if holds {
        HOLDING.fetch_add(1, Ordering::Relaxed);
    }
    Span { open: Some((Instant::now(), entry(1, weight), holds)) }
}

impl Drop for Span {
    fn drop(&mut self) {
        let Some((t0, mut entry, holds)) = self.open.take() else { return };
        DEPTH.with(|d| d.set(d.get() - 1));
        if holds {
            HOLDING.fetch_sub(1, Ordering::Relaxed);
        }
        if entry.calls == 0 {
            return;
        }
        entry.seconds *= t0.elapsed().as_secs_f64();
        let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        match table.iter_mut().find(|k| (k.name, k.shape) == (entry.name, entry.shape)) {
            Some(k) => {
                k.calls += 1;
                k.seconds += entry.seconds;
                k.flops += entry.flops;
            }
            None => table.push(entry),
        }
    }
}
