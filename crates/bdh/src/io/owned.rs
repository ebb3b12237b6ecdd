//! What this program wrote, provably, so that it removes nothing else. A directory
//! it makes carries a marker naming that very directory (its name and, on Unix, its
//! device and inode), so neither a folder of the same name nor a copy of a marked
//! one passes for it; a temporary file is created new under a name nobody holds.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The marker file in a directory this program made.
const MARKER: &str = ".bdh-written";
/// Longest marker read: a real one is well under 100 bytes.
const MAX_MARKER: u64 = 256;
/// Temporary names tried before giving up (each taken one is someone else's).
const TRIES: u32 = 64;

/// Makes directory `dir` (and its parent if need be), refusing one that exists, and
/// marks it as made here.
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| Error::io("creating directory", parent, e))?;
    }
    fs::create_dir(dir).map_err(|e| Error::io("creating directory", dir, e))?;
    let meta = fs::symlink_metadata(dir).map_err(|e| Error::io("reading", dir, e))?;
    let marker = dir.join(MARKER);
    fs::write(&marker, mark(dir, &meta)).map_err(|e| Error::io("writing", &marker, e))
}

/// Whether `dir` is a directory (not a link to one) that [`create_dir`] made.
pub(crate) fn is_marked(dir: &Path) -> bool {
    let Ok(meta) = fs::symlink_metadata(dir) else { return false };
    let Ok(file) = fs::File::open(dir.join(MARKER)) else { return false };
    let mut found = Vec::new();
    meta.is_dir() && file.take(MAX_MARKER).read_to_end(&mut found).is_ok() && found == mark(dir, &meta).as_bytes()
}

/// Removes `dir` with everything in it if [`create_dir`] made it; leaves anything
/// else where it is. Whether it was removed.
pub(crate) fn remove_marked(dir: &Path) -> bool {
    is_marked(dir) && fs::remove_dir_all(dir).is_ok()
}

/// What the marker of `dir` says.
fn mark(dir: &Path, meta: &fs::Metadata) -> String {
    let name = dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    format!("made by bdh: {name}, directory {}\n", identity(meta))
}

#[cfg(unix)]
fn identity(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{}:{}", meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(meta: &fs::Metadata) -> String {
    let made = meta.created().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    format!("made at {}", made.map_or(0, |d| d.as_nanos()))
}

/// A new file beside `path`, created here (never one that existed), to be renamed
/// over `path` or removed: its path and the open file.
pub(crate) fn create_temp(path: &Path) -> Result<(PathBuf, fs::File)> {
    let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut last = None;
    for k in 0..TRIES {
        let tmp = path.with_file_name(format!(".{name}.{}-{k}.tmp", std::process::id()));
        match fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(Error::io("creating", &tmp, e)),
        }
    }
    let e = last.expect("at least one try");
    Err(Error::io("creating a temporary file beside", path, e))
}
