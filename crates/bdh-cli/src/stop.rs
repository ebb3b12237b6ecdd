//! Ctrl-C and SIGTERM: a flag a run checks to stop and save, and the exit status
//! that says which signal stopped it (128 + its number, as a shell reports it:
//! 130 after Ctrl-C, 143 after SIGTERM), so that `bdh train && bdh eval` stops too.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use bdh::train::Collective;
use signal_hook::consts::{SIGINT, SIGTERM};

/// The stop flag and the signal that set it.
pub struct Stop {
    flag: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl Stop {
    /// Sets the flag on Ctrl-C or SIGTERM, remembering which came.
    pub fn on_signals() -> anyhow::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicUsize::new(0));
        for s in [SIGINT, SIGTERM] {
            signal_hook::flag::register_usize(s, signal.clone(), s as usize)
                .and_then(|_| signal_hook::flag::register(s, flag.clone()))
                .context("installing the Ctrl-C and SIGTERM handler")?;
        }
        Ok(Stop { flag, signal })
    }

    /// The flag: set by a signal, or by the run itself (a closed output pipe).
    pub fn flag(&self) -> &Arc<AtomicBool> {
        &self.flag
    }

    /// The exit status of a run that stopped: 130 after Ctrl-C, 143 after SIGTERM,
    /// and success if no signal stopped it (a closed output pipe). On several
    /// processes, all exit alike: Ctrl-C if any process had it, else SIGTERM if any had it.
    pub fn exit_code(&self, collective: &dyn Collective) -> anyhow::Result<ExitCode> {
        let own = self.signal.load(Ordering::SeqCst) as i32;
        let mut seen = [(own == SIGINT) as u8 as f32, (own == SIGTERM) as u8 as f32];
        if collective.size() > 1 {
            collective.all_reduce_mean(&mut seen).context("agreeing on the signal that stopped the run")?;
        }
        Ok(match seen {
            [int, _] if int > 0.0 => ExitCode::from(128 + SIGINT as u8),
            [_, term] if term > 0.0 => ExitCode::from(128 + SIGTERM as u8),
            _ => ExitCode::SUCCESS,
        })
    }
}
