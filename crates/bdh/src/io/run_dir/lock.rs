//! The lock of a directory one process writes (a run, a comparison, a merge's
//! output): a file created new that names the owner's PID and start time, removed
//! when the owner lets go, including on every error path (it is dropped). A lock
//! whose process no longer runs (killed) is stale and is taken over.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What a lock file starts with: a file that does not is not a lock of ours.
const HEADER: &str = "bdh lock\n";
/// Longest lock file read: a real one is under 100 bytes.
const MAX_LOCK: u64 = 512;
/// Times a stale lock is taken over before giving up (another process may be
/// taking it over at the same moment).
const TRIES: usize = 4;

/// A directory held by this process until dropped.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    /// What this process wrote into the lock file: only that is removed on drop.
    text: String,
    /// The PID of a process that held the lock and no longer runs, if taken over.
    stale: Option<u32>,
}

impl DirLock {
    /// Takes the lock file `path`, or an error naming the process holding it. A lock
    /// of a process that no longer runs is taken over ([`DirLock::took_over`]).
    pub fn take(path: &Path) -> Result<Self> {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let text = format!("{HEADER}pid {}\nstarted {started}\n", std::process::id());
        let mut stale = None;
        for _ in 0..TRIES {
            match fs::OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    file.write_all(text.as_bytes()).map_err(|e| Error::io("writing", path, e))?;
                    return Ok(DirLock { path: path.to_path_buf(), text, stale });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io("creating the lock", path, e)),
            }
            let held = read(path)?;
            let Some(held) = held else { continue }; // let go of meanwhile
            if held.is_empty() {
                // Created a moment ago, its owner not yet written.
                return Err(Error::Refused(format!("{} is being taken by another process", path.display())));
            }
            let pid = owner(&held).ok_or_else(|| {
                Error::Refused(format!(
                    "{} is not a lock this program wrote; if no bdh process uses the directory, remove it",
                    path.display()
                ))
            })?;
            if alive(pid) {
                return Err(Error::Refused(format!(
                    "{} is in use by process {pid} (lock {}); wait for it to end, or stop it",
                    path.parent().unwrap_or(path).display(),
                    path.display()
                )));
            }
            take_over(path, &held)?;
            stale = Some(pid);
        }
        Err(Error::Refused(format!("{}: the lock changed hands {TRIES} times while being taken", path.display())))
    }

    /// The PID of the process whose stale lock this one replaced, if any.
    pub fn took_over(&self) -> Option<u32> {
        self.stale
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Only a lock file that is still this process's own is removed.
        if read(&self.path).ok().flatten().as_deref() == Some(self.text.as_str()) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The lock file's text, or None if there is none.
fn read(path: &Path) -> Result<Option<String>> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading the lock", path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_LOCK).read_to_end(&mut bytes).map_err(|e| Error::io("reading the lock", path, e))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The PID a lock file of ours names.
fn owner(text: &str) -> Option<u32> {
    text.strip_prefix(HEADER)?.lines().find_map(|l| l.strip_prefix("pid ")?.parse().ok())
}

/// Whether process `pid` runs. Where `/proc` does not list processes, every
/// process is taken to run, so no lock is ever taken from a live one. A process
/// that has ended but not been reaped (a zombie, state Z or X in its `stat`: the
/// ranks of a killed `mpirun` job, whose parent is gone) does not run.
fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    let Ok(stat) = crate::io::read_text_bounded(&proc.join(pid.to_string()).join("stat"), 4096) else {
        return proc.join(pid.to_string()).exists();
    };
    // pid (comm) state …: the state is the first field after the name.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}

/// Removes the stale lock file `path` if it still says `held`: it is moved aside
/// under a name of this process's first, so a lock another process has made there
/// meanwhile is put back, not removed.
fn take_over(path: &Path, held: &str) -> Result<()> {
    let aside = path.with_extension(format!("stale-{}", std::process::id()));
    match fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("moving aside the stale lock", path, e)),
    }
    if read(&aside)?.as_deref() != Some(held) {
        // Another process's fresh lock: back where it was (unless yet another is there).
        let _ = fs::hard_link(&aside, path);
    }
    fs::remove_file(&aside).map_err(|e| Error::io("removing the stale lock", &aside, e))
}
