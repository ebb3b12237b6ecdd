//! The processes of `mpirun -np K` as a [`Collective`]: Open MPI through the `mpi`
//! crate (rsmpi). Built with the `mpi` cargo feature only.
//!
//! Errors inside MPI are fatal (MPI's default handler): a failed transfer ends the
//! whole job rather than returning here. A process that hits an error of its own
//! calls [`Mpi::abort`], which ends every process of the job with its message.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Root};
use mpi::Threading;

use super::Collective;
use crate::error::Result;

/// Environment variables one of which a launcher (Open MPI's `mpirun`, or another
/// PMI/PMIx launcher such as Slurm's `srun`) sets in every process it starts.
const LAUNCHER_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"];

/// This process's place in an MPI job, initialised once; MPI is finalised when it
/// is dropped.
pub struct Mpi {
    /// Keeps MPI initialised while this lives.
    _universe: Universe,
    world: SimpleCommunicator,
    /// What this process sends in an all-reduce (rsmpi has no in-place form).
    send: RefCell<Vec<f32>>,
    waited: Cell<f64>,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mpi {{ rank: {}, size: {} }}", self.rank(), self.size())
    }
}

impl Mpi {
    /// Joins the job this process was launched into, or `None` if no MPI launcher
    /// started it (a plain `bdh train`: then it runs as one process and never
    /// touches MPI). In a job of several processes a panic ends the whole job
    /// (`MPI_Abort`) after its message, instead of leaving the others waiting.
    pub fn join() -> Option<Mpi> {
        if !LAUNCHER_VARS.iter().any(|v| std::env::var_os(v).is_some()) {
            return None;
        }
        // Only the main thread calls MPI; the worker threads compute.
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)?;
        let world = universe.world();
        if world.size() > 1 {
            let report = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                report(info);
                SimpleCommunicator::world().abort(101)
            }));
        }
        Some(Mpi { _universe: universe, world, send: RefCell::new(Vec::new()), waited: Cell::new(0.0) })
    }

    /// Prints `message` as this process's and ends every process of the job
    /// (`MPI_Abort`) with exit status `code`.
    pub fn abort(&self, message: &str, code: i32) -> ! {
        eprintln!("error (process {} of {}): {message}", self.rank(), self.size());
        self.world.abort(code)
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = f();
        self.waited.set(self.waited.get() + t0.elapsed().as_secs_f64());
        out
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn all_reduce_mean(&self, buf: &mut [f32]) -> Result<()> {
        let mut send = self.send.borrow_mut();
        send.clear();
        send.extend_from_slice(buf);
        self.timed(|| self.world.all_reduce_into(&send[..], buf, SystemOperation::sum()));
        let scale = 1.0 / self.size() as f32;
        buf.iter_mut().for_each(|x| *x *= scale);
        Ok(())
    }
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.timed(|| self.world.process_at_rank(root as i32).broadcast_into(buf));
        Ok(())
    }
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        let root = self.world.process_at_rank(root as i32);
        self.timed(|| {
            let mut len = bytes.len() as u64;
            root.broadcast_into(&mut len);
            bytes.resize(len as usize, 0);
            root.broadcast_into(&mut bytes[..]);
        });
        Ok(())
    }
    fn seconds_waiting(&self) -> f64 {
        self.waited.get()
    }
}
