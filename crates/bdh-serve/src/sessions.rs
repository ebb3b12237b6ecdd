//! Sessions: named states kept between requests. At most `max_live` are held in
//! memory; past that the least recently used idle one is written to disk and read
//! back when it is next used. A request checks its session's state out while it
//! runs (a second request on the same session meanwhile is refused) as a [`Lease`],
//! which puts the state back, having read the prompt and output, when it ends.
//!
//! The lock guards only the table of where each session is; no file is read or
//! written while it is held, so the decoding loop, which takes it to put states
//! back, never waits on a disk. A session on its way to or from disk is marked so
//! meanwhile: a request for it gets 409, and its state stays with the one thread
//! moving it (put back if the move fails).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bdh::infer::{Prepared, State};
use bdh::io::state;
use serde::Serialize;

use crate::error::ApiError;
use crate::lease::{Holder, Lease};

/// What a client sees of a session.
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    /// The session's id.
    pub id: String,
    /// Always `"session"`.
    pub object: &'static str,
    /// Tokens its state has read (`null` while a request holds it, or it is on disk).
    pub position: Option<usize>,
    /// Bytes of its state, the same however long the conversation.
    pub state_bytes: usize,
    /// Whether it is in memory (else evicted to disk).
    pub in_memory: bool,
}

/// One session in memory.
struct Live {
    held: Held,
    last_used: u64,
}

/// Who has a session's state in memory.
enum Held {
    /// The session: it is idle.
    Idle(State),
    /// A lease: a request's, or an eviction's writing it to disk.
    Out(Holder),
}

/// A session on disk: stored (its file's bytes), or being read back by one thread.
enum Disk {
    Stored(u64),
    Reading(u64),
}

impl Disk {
    fn bytes(&self) -> u64 {
        match self {
            Disk::Stored(b) | Disk::Reading(b) => *b,
        }
    }
}

/// Every session of the server, shared by the handlers and the decoding loop.
pub struct Sessions {
    prepared: Arc<Prepared>,
    max_live: usize,
    max_on_disk: usize,
    max_disk_bytes: u64,
    dir: PathBuf,
    /// Whether this store made `dir` (it then removes it at the end if empty).
    made_dir: bool,
    evicted_dir: PathBuf, // this server's own: servers sharing `dir` keep apart
    /// Whether `evicted_dir` has been made: at the first eviction, not before.
    evicted_made: Mutex<bool>,
    table: Mutex<Table>,
}

/// Where every session is, behind the lock.
struct Table {
    live: HashMap<String, Live>,
    on_disk: HashMap<String, Disk>,
    disk_bytes: u64, // of the evicted sessions' files
    reserved: usize, // places in memory promised to states on their way in
    clock: u64,
    next_id: u64,
}

/// A place in memory reserved for a state on its way in, counted with the sessions
/// in memory; given back if dropped unfilled (a state that could not be made).
struct Room<'a> {
    sessions: &'a Sessions,
    filled: bool,
}

impl Room<'_> {
    /// The reservation becomes `id`'s entry in `t` (the lock held by the caller).
    fn fill(mut self, t: &mut Table, id: &str, held: Held) {
        t.reserved -= 1;
        t.clock += 1;
        t.live.insert(id.into(), Live { held, last_used: t.clock });
        self.filled = true;
    }
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        if !self.filled {
            self.sessions.lock().reserved -= 1;
        }
    }
}

impl Table {
    /// Takes session `id`'s state out for `by` if it is idle in memory: a request's
    /// check-out counts as a use of the session, an eviction does not.
    fn take(&mut self, id: &str, by: Holder) -> Result<State, ApiError> {
        self.clock += 1;
        let clock = self.clock;
        let live = self.live.get_mut(id).ok_or_else(|| unknown(id))?;
        match std::mem::replace(&mut live.held, Held::Out(by)) {
            Held::Idle(state) => {
                if by == Holder::Request {
                    live.last_used = clock;
                }
                Ok(state)
            }
            held => {
                let refused = busy(id, &held);
                live.held = held;
                Err(refused)
            }
        }
    }
}

impl Sessions {
    /// A store holding at most `max_live` states in memory, saving to `dir` and
    /// evicting to `dir/evicted-PID` (or `evicted-PID-2`, … if that name is taken:
    /// a folder already there, say of a server that ended without clearing it, is
    /// not this one's and is left as it is), a folder made at the first eviction.
    pub fn new(prepared: Arc<Prepared>, max_live: usize, dir: &Path) -> anyhow::Result<Self> {
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir)?;
        let base = format!("evicted-{}", std::process::id());
        let evicted = (1..)
            .map(|k| dir.join(if k == 1 { base.clone() } else { format!("{base}-{k}") }))
            .find(|d| !d.exists())
            .expect("a free name");
        let table =
            Table { live: HashMap::new(), on_disk: HashMap::new(), disk_bytes: 0, reserved: 0, clock: 0, next_id: 1 };
        Ok(Sessions {
            prepared,
            max_live,
            max_on_disk: usize::MAX,
            max_disk_bytes: u64::MAX,
            dir: dir.to_path_buf(),
            made_dir,
            evicted_dir: evicted,
            evicted_made: Mutex::new(false),
            table: Mutex::new(table),
        })
    }

    /// Bounds the sessions evicted to disk: at most `sessions` of them, in files of
    /// at most `bytes` together. An eviction past either is refused with 507, and
    /// with it the new session it was to make room for.
    pub fn limit_disk(mut self, sessions: usize, bytes: u64) -> Self {
        (self.max_on_disk, self.max_disk_bytes) = (sessions, bytes);
        self
    }

    /// Locks the table; a panic elsewhere while it was held leaves it usable (no
    /// code that can panic runs under it).
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions in memory and on disk.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.live.len(), t.on_disk.len())
    }

    /// A new, empty session, made once there is room for it.
    pub fn create(self: &Arc<Self>) -> Result<Info, ApiError> {
        let room = self.reserve(0)?;
        let state = self.prepared.state().map_err(|e| ApiError::internal(e.to_string()))?;
        self.add(room, state)
    }

    /// A new session, a copy of idle session `id`.
    pub fn fork(self: &Arc<Self>, id: &str) -> Result<Info, ApiError> {
        // Copied with the lock released; the original is idle again before room is
        // made, so it may be the one evicted for its copy.
        let copy = State::clone(&*self.check_out(id)?);
        self.add(self.reserve(0)?, copy)
    }

    /// Enters `state` as a new session in the room reserved for it.
    fn add(&self, room: Room<'_>, state: State) -> Result<Info, ApiError> {
        let mut t = self.lock();
        let id = format!("sess-{}", t.next_id);
        t.next_id += 1;
        room.fill(&mut t, &id, Held::Idle(state));
        self.info_in(&t, &id)
    }

    /// What the client sees of session `id`.
    pub fn info(&self, id: &str) -> Result<Info, ApiError> {
        self.info_in(&self.lock(), id)
    }

    fn info_in(&self, t: &Table, id: &str) -> Result<Info, ApiError> {
        let (position, in_memory) = match t.live.get(id) {
            Some(Live { held: Held::Idle(state), .. }) => (Some(state.pos()), true),
            Some(_) => (None, true),
            None if t.on_disk.contains_key(id) => (None, false),
            None => return Err(unknown(id)),
        };
        Ok(Info { id: id.into(), object: "session", position, state_bytes: self.prepared.state_bytes(), in_memory })
    }

    /// Every session, in memory first.
    pub fn list(&self) -> Vec<Info> {
        let t = self.lock();
        let mut ids: Vec<&String> = t.live.keys().chain(t.on_disk.keys()).collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.info_in(&t, id).ok()).collect()
    }

    /// Checks session `id`'s state out for a request (reading it back from disk if
    /// it was evicted); it comes back when the lease is dropped.
    pub fn check_out(self: &Arc<Self>, id: &str) -> Result<Lease, ApiError> {
        let mut t = self.lock();
        if t.live.contains_key(id) {
            let state = t.take(id, Holder::Request)?;
            drop(t);
            // Made with the lock released: dropping a lease takes the lock.
            return Ok(Lease::checked_out(self.clone(), id.into(), state, Holder::Request));
        }
        match t.on_disk.get_mut(id) {
            None => Err(unknown(id)),
            Some(Disk::Reading(_)) => Err(moving(id)),
            Some(disk) => {
                *disk = Disk::Reading(disk.bytes());
                drop(t);
                self.read_back(id)
            }
        }
    }

    /// Puts back the state a lease of session `id` held: a request's end counts as a
    /// use of the session, an eviction that failed does not.
    pub(crate) fn check_in(&self, id: &str, state: State, by: Holder) {
        let mut t = self.lock();
        t.clock += 1;
        let clock = t.clock;
        if let Some(live) = t.live.get_mut(id) {
            live.held = Held::Idle(state);
            if by == Holder::Request {
                live.last_used = clock;
            }
        }
    }

    /// Deletes session `id` (not while a request holds it or it is moving).
    pub fn delete(&self, id: &str) -> Result<(), ApiError> {
        let mut t = self.lock();
        match (t.live.get(id), t.on_disk.get(id)) {
            (Some(Live { held: Held::Idle(_), .. }), _) => {
                t.live.remove(id);
                Ok(())
            }
            (Some(live), _) => Err(busy(id, &live.held)),
            (None, Some(&Disk::Stored(bytes))) => {
                t.disk_bytes -= bytes;
                t.on_disk.remove(id);
                drop(t);
                let _ = std::fs::remove_file(self.evicted_path(id));
                Ok(())
            }
            (None, Some(Disk::Reading(_))) => Err(moving(id)),
            (None, None) => Err(unknown(id)),
        }
    }

    /// Saves session `id` as `name` in the sessions directory.
    pub fn save(self: &Arc<Self>, id: &str, name: &str) -> Result<String, ApiError> {
        let path = self.named_path(name)?;
        let lease = self.check_out(id)?;
        state::save(&self.prepared, &lease, &path).map_err(|e| file_error(format!("saving {name}"), &e))?;
        Ok(file_name(&path))
    }

    /// A new session from the state saved as `name`.
    pub fn restore(self: &Arc<Self>, name: &str) -> Result<Info, ApiError> {
        let path = self.named_path(name)?;
        if !path.is_file() {
            return Err(ApiError::not_found(format!("no saved session named {name:?}")));
        }
        let st = state::load(&self.prepared, &path).map_err(|e| {
            let mut refused = file_error(format!("restoring {name}"), &e);
            // What the file holds is the client's doing, not the server's failure.
            refused.status = axum::http::StatusCode::BAD_REQUEST;
            refused
        })?;
        self.add(self.reserve(0)?, st)
    }

    /// The file of a saved session: `name` (letters, digits, `-`, `_`; 1 to 64 of
    /// them) in the sessions directory, never anywhere else.
    fn named_path(&self, name: &str) -> Result<PathBuf, ApiError> {
        let ok =
            (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(ApiError::bad(format!("session name {name:?}: give 1 to 64 letters, digits, '-' or '_'")));
        }
        Ok(self.dir.join(format!("{name}.state.safetensors")))
    }

    fn evicted_path(&self, id: &str) -> PathBuf {
        self.evicted_dir.join(format!("{id}.state.safetensors"))
    }

    /// Reads session `id`, marked as being read back, into memory for a request.
    fn read_back(self: &Arc<Self>, id: &str) -> Result<Lease, ApiError> {
        let path = self.evicted_path(id);
        // Its own file goes once it is read: the eviction that makes room for it
        // may pass the disk bound by that one file meanwhile.
        let read = self.reserve(1).and_then(|room| {
            let st = state::load(&self.prepared, &path).map_err(|e| file_error(format!("reading back {id}"), &e))?;
            // Removed before the session is back in memory, where it could be
            // evicted again to this very path.
            let _ = std::fs::remove_file(&path);
            Ok((room, st))
        });
        let mut t = self.lock();
        match read {
            Ok((room, state)) => {
                if let Some(disk) = t.on_disk.remove(id) {
                    t.disk_bytes -= disk.bytes();
                }
                room.fill(&mut t, id, Held::Out(Holder::Request));
                drop(t);
                Ok(Lease::checked_out(self.clone(), id.into(), state, Holder::Request))
            }
            Err(e) => {
                if let Some(disk) = t.on_disk.get_mut(id) {
                    *disk = Disk::Stored(disk.bytes());
                }
                Err(e)
            }
        }
    }

    /// Reserves a place in memory for a state on its way in, evicting the least
    /// recently used idle sessions to disk while memory is full, as long as the
    /// disk's bounds allow, passed by `slack` files (those that go once the state
    /// is in).
    fn reserve(self: &Arc<Self>, slack: usize) -> Result<Room<'_>, ApiError> {
        loop {
            let mut t = self.lock();
            if t.live.len() + t.reserved < self.max_live {
                t.reserved += 1;
                return Ok(Room { sessions: self, filled: false });
            }
            let idle = t.live.iter().filter(|(_, l)| matches!(l.held, Held::Idle(_)));
            let Some(id) = idle.min_by_key(|(_, l)| l.last_used).map(|(id, _)| id.clone()) else {
                return Err(ApiError::busy(format!(
                    "all {} sessions in memory are in use; try again later",
                    self.max_live
                )));
            };
            self.disk_has_room(&t, slack)?;
            let state = t.take(&id, Holder::Eviction)?;
            drop(t);
            self.evict(&id, Lease::checked_out(self.clone(), id.clone(), state, Holder::Eviction))?;
        }
    }

    /// Writes session `id`'s state, leased for its eviction, to disk with the lock
    /// released, then records it there; a write that fails (or panics) drops the
    /// lease, which puts the state back.
    fn evict(&self, id: &str, lease: Lease) -> Result<(), ApiError> {
        {
            let mut made = self.evicted_made.lock().unwrap_or_else(|e| e.into_inner());
            if !*made {
                std::fs::create_dir_all(&self.evicted_dir).map_err(|e| {
                    eprintln!("making {}: {e}", self.evicted_dir.display());
                    ApiError::internal(format!("evicting {id}: making the folder of evicted sessions failed"))
                })?;
                *made = true;
            }
        }
        let path = self.evicted_path(id);
        state::save(&self.prepared, &lease, &path).map_err(|e| file_error(format!("evicting {id}"), &e))?;
        let bytes = std::fs::metadata(&path).map_or(self.file_bytes(), |m| m.len());
        // On disk now: its memory goes before the session is recorded there.
        lease.written();
        let mut t = self.lock();
        t.live.remove(id);
        t.on_disk.insert(id.into(), Disk::Stored(bytes));
        t.disk_bytes += bytes;
        Ok(())
    }

    /// The bytes an evicted session's file takes, for the bound before it is
    /// written: its state and a header.
    fn file_bytes(&self) -> u64 {
        self.prepared.state_bytes() as u64 + FILE_HEADER_BYTES
    }

    /// Refuses an eviction that would pass a bound of the disk by more than `slack`
    /// files, with 507.
    fn disk_has_room(&self, t: &Table, slack: usize) -> Result<(), ApiError> {
        let files = t.on_disk.len().saturating_sub(slack);
        let bytes = t.disk_bytes.saturating_sub(self.file_bytes().saturating_mul(slack as u64));
        if files < self.max_on_disk && bytes.saturating_add(self.file_bytes()) <= self.max_disk_bytes {
            return Ok(());
        }
        Err(ApiError {
            status: axum::http::StatusCode::INSUFFICIENT_STORAGE,
            message: format!(
                "memory holds {} sessions and the disk {} more ({} bytes), as many as this server keeps \
                 (--max-sessions, --max-sessions-on-disk, --max-disk-bytes): delete a session first",
                t.live.len(),
                t.on_disk.len(),
                t.disk_bytes
            ),
        })
    }

    /// Deletes the evicted sessions' files (at shutdown, or after a start that
    /// failed), then their folder, and the sessions directory if this store made it,
    /// if that leaves them empty: nothing this store did not write.
    pub fn clear_evicted(&self) {
        let ids: Vec<String> = {
            let mut t = self.lock();
            t.disk_bytes = 0;
            t.on_disk.drain().map(|(id, _)| id).collect()
        };
        for id in ids {
            let _ = std::fs::remove_file(self.evicted_path(&id));
        }
        if *self.evicted_made.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = std::fs::remove_dir(&self.evicted_dir);
        }
        if self.made_dir {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// The header of a state file, above its tensors' bytes, at most: the metadata
/// (config, weights' fingerprint, format) and the tensors' table.
const FILE_HEADER_BYTES: u64 = 64 << 10;

/// A session file that could not be read or written: the client is told what
/// failed without the server's paths (the sessions directory, its process id);
/// the whole error goes to the server's log.
fn file_error(what: String, e: &bdh::Error) -> ApiError {
    eprintln!("{what}: {e}");
    let why = match e {
        bdh::Error::Format { msg, .. } => msg.clone(),
        bdh::Error::Io { op, cause, .. } => format!("{op} its file failed ({})", cause.kind()),
        _ => "see the server's log".into(),
    };
    ApiError::internal(format!("{what}: {why}"))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned())
}

fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!("no session {id:?}"))
}

/// The refusal of a session whose state someone else holds.
fn busy(id: &str, held: &Held) -> ApiError {
    match held {
        Held::Out(Holder::Eviction) => moving(id),
        _ => ApiError::conflict(format!("session {id:?} is in use by a request in flight")),
    }
}

fn moving(id: &str) -> ApiError {
    ApiError::conflict(format!("session {id:?} is being moved between memory and disk; try again"))
}
