//! The processes of a training run: this one alone, or, built with the `mpi`
//! feature and started by `mpirun -np K`, the K processes of one data-parallel run.

use std::process::ExitCode;

use bdh::train::{Collective, Single};

/// The processes this one trains with.
pub struct Processes {
    #[cfg(feature = "mpi")]
    mpi: Option<bdh::train::Mpi>,
}

impl Processes {
    /// Joins the MPI job that launched this process, if any (and if built with MPI).
    /// Without MPI, a launch as one of several processes is refused: each would
    /// train alone, all into one run directory.
    pub fn join() -> anyhow::Result<Self> {
        #[cfg(not(feature = "mpi"))]
        if let Some(k) = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
            .iter()
            .filter_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
            .find(|&k| k > 1)
        {
            anyhow::bail!(
                "this bdh was built without MPI, so under mpirun its {k} processes would each train alone: build \
                 it with `--features mpi` (README: Train on several processes)"
            );
        }
        Ok(Processes {
            #[cfg(feature = "mpi")]
            mpi: bdh::train::Mpi::join(),
        })
    }

    /// The transport gradients are averaged over.
    pub fn collective(&self) -> &dyn Collective {
        #[cfg(feature = "mpi")]
        if let Some(mpi) = &self.mpi {
            return mpi;
        }
        &Single
    }

    /// The command's result; an error on one process of several ends all of them
    /// (`MPI_Abort`), with the message of the process that saw it.
    pub fn finish(self, result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
        #[cfg(feature = "mpi")]
        if let (Err(e), Some(mpi)) = (&result, &self.mpi) {
            if mpi.size() > 1 {
                mpi.abort(&format!("{e:#}"), crate::exit_status(&e).into());
            }
        }
        result
    }
}
