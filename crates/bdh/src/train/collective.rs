//! Gradient averaging across the processes of a data-parallel run. A single
//! process is the trivial case; other transports implement the same trait.

use crate::error::Result;

/// The operations data-parallel training needs from its transport.
pub trait Collective {
    /// This process's index, 0 for the one that writes checkpoints.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Replaces `buf` on every process by the mean of all processes' `buf`.
    fn all_reduce_mean(&self, buf: &mut [f32]) -> Result<()>;
    /// Replaces `buf` on every process by the one of process `root`.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// Replaces `bytes` on every process by the ones of process `root` (whose length
    /// may differ from the others').
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Seconds this process has spent in the operations above (waiting for the
    /// slowest process included): the share of a step lost to communication.
    fn seconds_waiting(&self) -> f64;
}

/// One process: the mean of one buffer is itself, and there is no one to send to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_mean(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _bytes: &mut Vec<u8>, _root: usize) -> Result<()> {
        Ok(())
    }
    fn seconds_waiting(&self) -> f64 {
        0.0
    }
}
