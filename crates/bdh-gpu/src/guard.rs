//! Panics inside the device runtime, turned into errors. cubecl runs each device on
//! threads of its own (named `DSU-…`, `DSD-…`); a panic there (a driver that fails
//! mid-way, a kernel its compiler rejects, an allocation refused) either reaches the
//! calling thread as a panic of its own or leaves its results wrong without one.
//! A panic hook records the device threads' panics, and those of a guarded call,
//! instead of printing them; [`guard`] turns either kind into an error naming the
//! device and the runtime's own message.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, Once};

use bdh::{Error, Result};

/// The first panic of a device thread since the last guarded call looked.
static DEVICE_PANIC: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// Whether this thread is inside [`guard`] (its panics are recorded, not printed).
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Installs the hook, once per process; panics elsewhere print as before.
fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let name = std::thread::current().name().map(str::to_owned).unwrap_or_default();
            let device_thread = name.starts_with("DSU-") || name.starts_with("DSD-");
            if !device_thread && !GUARDED.with(Cell::get) {
                return previous(info);
            }
            let message = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("the device runtime stopped");
            let mut slot = DEVICE_PANIC.lock().unwrap_or_else(|e| e.into_inner());
            // The device thread's own message says why; a caller's that follows
            // (a closed channel) says less.
            if slot.is_none() {
                *slot = Some(message.trim().to_string());
            }
        }));
    });
}

/// Runs `f`, which uses the device called `device`: a panic in it or on a device
/// thread while it ran becomes an error.
pub fn guard<T>(device: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    install();
    let was = GUARDED.with(|g| g.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    let recorded = DEVICE_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
    match (result, recorded) {
        (Ok(value), None) => value,
        (_, Some(why)) => Err(failed(device, &why)),
        (Err(_), None) => Err(failed(device, "the device runtime stopped")),
    }
}

fn failed(device: &str, why: &str) -> Error {
    Error::Device(format!("the GPU ({device}) failed: {why}"))
}
