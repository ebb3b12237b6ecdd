//! Read-only memory maps of data files: the one use of `unsafe` that is not a
//! kernel, kept in this crate so that every other crate forbids `unsafe`.

use std::fs::File;

/// A file mapped read-only into memory.
#[derive(Debug)]
pub struct Mapped(memmap2::Mmap);

impl Mapped {
    /// Maps `file` read-only.
    pub fn new(file: &File) -> std::io::Result<Self> {
        // SAFETY: the map is only read. The one hazard of mapping is another process
        // truncating the file while it is read, which the data files of a run do not see.
        let map = unsafe { memmap2::Mmap::map(file) }?;
        Ok(Mapped(map))
    }
}

impl std::ops::Deref for Mapped {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}
