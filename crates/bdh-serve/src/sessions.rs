//! Sessions: named states kept between requests. At most `max_live` are held in
//! memory; past that the least recently used idle one is written to disk and read
//! back when it is next used. A request checks its session's state out while it
//! runs (a second request on the same session meanwhile is refused) as a [`Lease`],
//! which puts the state back, having read the prompt and output, when it ends.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bdh::infer::{Prepared, State};
use bdh::io::state;
use serde::Serialize;

use crate::error::ApiError;
use crate::lease::Lease;

/// What a client sees of a session.
#[derive(Clone, Debug, Serialize)]
pub struct Info {
    /// The session's id.
    pub id: String,
    /// Always `"session"`.
    pub object: &'static str,
    /// Tokens its state has read (`null` while a request holds it).
    pub position: Option<usize>,
    /// Bytes of its state, the same however long the conversation.
    pub state_bytes: usize,
    /// Whether it is in memory (else evicted to disk).
    pub in_memory: bool,
}

/// One session held in memory.
struct Live {
    state: Option<State>, // None while a request holds it
    last_used: u64,
}

/// Every session of the server, shared by the handlers and the decoding loop.
pub struct Sessions {
    prepared: Arc<Prepared>,
    max_live: usize,
    dir: PathBuf,
    evicted_dir: PathBuf, // this server's own: servers sharing `dir` keep apart
    table: Mutex<Table>,
}

/// Where every session is, behind the lock.
struct Table {
    live: HashMap<String, Live>,
    evicted: HashSet<String>,
    clock: u64,
    next_id: u64,
}

impl Sessions {
    /// A store holding at most `max_live` states in memory, saving to `dir` and
    /// evicting to `dir/evicted-PID` (this process's, emptied now: sessions do not
    /// outlive a server, and servers sharing `dir` do not touch each other's).
    pub fn new(prepared: Arc<Prepared>, max_live: usize, dir: &Path) -> anyhow::Result<Self> {
        let evicted = dir.join(format!("evicted-{}", std::process::id()));
        if evicted.is_dir() {
            std::fs::remove_dir_all(&evicted)?;
        }
        std::fs::create_dir_all(&evicted)?;
        let table = Table { live: HashMap::new(), evicted: HashSet::new(), clock: 0, next_id: 1 };
        Ok(Sessions { prepared, max_live, dir: dir.to_path_buf(), evicted_dir: evicted, table: Mutex::new(table) })
    }

    /// Locks the table; a panic elsewhere while it was held leaves it usable (every
    /// change to it is one assignment).
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions in memory and on disk.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.lock();
        (t.live.len(), t.evicted.len())
    }

    /// A new session holding `state` (empty if none), making room for it.
    pub fn create(&self, state: Option<State>) -> Result<Info, ApiError> {
        let mut t = self.lock();
        self.make_room(&mut t)?;
        let state = match state {
            Some(s) => s,
            None => self.prepared.state().map_err(|e| ApiError::internal(e.to_string()))?,
        };
        let id = format!("sess-{}", t.next_id);
        t.next_id += 1;
        t.clock += 1;
        let last_used = t.clock;
        t.live.insert(id.clone(), Live { state: Some(state), last_used });
        self.info_in(&t, &id)
    }

    /// What the client sees of session `id`.
    pub fn info(&self, id: &str) -> Result<Info, ApiError> {
        self.info_in(&self.lock(), id)
    }

    fn info_in(&self, t: &Table, id: &str) -> Result<Info, ApiError> {
        let (position, in_memory) = match t.live.get(id) {
            Some(l) => (l.state.as_ref().map(|s| s.pos()), true),
            None if t.evicted.contains(id) => (None, false),
            None => return Err(unknown(id)),
        };
        Ok(Info { id: id.into(), object: "session", position, state_bytes: self.prepared.state_bytes(), in_memory })
    }

    /// Every session, in memory first.
    pub fn list(&self) -> Vec<Info> {
        let t = self.lock();
        let mut ids: Vec<&String> = t.live.keys().chain(&t.evicted).collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.info_in(&t, id).ok()).collect()
    }

    /// Checks session `id`'s state out for a request (reading it back from disk if
    /// it was evicted); it comes back when the lease is dropped.
    pub fn check_out(self: &Arc<Self>, id: &str) -> Result<Lease, ApiError> {
        let mut t = self.lock();
        self.bring_in(&mut t, id)?;
        t.clock += 1;
        let clock = t.clock;
        let live = t.live.get_mut(id).ok_or_else(|| unknown(id))?;
        live.last_used = clock;
        let state = live.state.take().ok_or_else(|| in_use(id))?;
        drop(t);
        // The lease is made with the lock released: dropping it takes the lock.
        Ok(Lease::session(self.clone(), id.into(), state))
    }

    /// Puts back the state a lease of session `id` held.
    pub(crate) fn check_in(&self, id: &str, state: State) {
        let mut t = self.lock();
        t.clock += 1;
        let clock = t.clock;
        if let Some(live) = t.live.get_mut(id) {
            live.state = Some(state);
            live.last_used = clock;
        }
    }

    /// A copy of session `id`'s state (an idle session's).
    pub fn copy(&self, id: &str) -> Result<State, ApiError> {
        let mut t = self.lock();
        self.bring_in(&mut t, id)?;
        let live = t.live.get(id).ok_or_else(|| unknown(id))?;
        live.state.clone().ok_or_else(|| in_use(id))
    }

    /// Deletes session `id` (not while a request holds it).
    pub fn delete(&self, id: &str) -> Result<(), ApiError> {
        let mut t = self.lock();
        if t.evicted.remove(id) {
            let _ = std::fs::remove_file(self.evicted_path(id));
            return Ok(());
        }
        match t.live.get(id) {
            None => Err(unknown(id)),
            Some(l) if l.state.is_none() => Err(in_use(id)),
            Some(_) => {
                t.live.remove(id);
                Ok(())
            }
        }
    }

    /// Saves session `id` as `name` in the sessions directory.
    pub fn save(&self, id: &str, name: &str) -> Result<String, ApiError> {
        let path = self.named_path(name)?;
        let st = self.copy(id)?;
        state::save(&self.prepared, &st, &path).map_err(|e| ApiError::internal(format!("saving {name}: {e}")))?;
        Ok(file_name(&path))
    }

    /// A new session from the state saved as `name`.
    pub fn restore(&self, name: &str) -> Result<Info, ApiError> {
        let path = self.named_path(name)?;
        if !path.is_file() {
            return Err(ApiError::not_found(format!("no saved session named {name:?}")));
        }
        let st = state::load(&self.prepared, &path).map_err(|e| ApiError::bad(format!("restoring {name}: {e}")))?;
        self.create(Some(st))
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

    /// Reads an evicted session back into memory, making room for it.
    fn bring_in(&self, t: &mut Table, id: &str) -> Result<(), ApiError> {
        if !t.evicted.contains(id) {
            return if t.live.contains_key(id) { Ok(()) } else { Err(unknown(id)) };
        }
        self.make_room(t)?;
        let path = self.evicted_path(id);
        let st =
            state::load(&self.prepared, &path).map_err(|e| ApiError::internal(format!("reading back {id}: {e}")))?;
        let _ = std::fs::remove_file(&path);
        t.evicted.remove(id);
        t.live.insert(id.into(), Live { state: Some(st), last_used: t.clock });
        Ok(())
    }

    /// Evicts the least recently used idle session if memory holds `max_live`.
    fn make_room(&self, t: &mut Table) -> Result<(), ApiError> {
        if t.live.len() < self.max_live {
            return Ok(());
        }
        let oldest = t.live.iter().filter(|(_, l)| l.state.is_some()).min_by_key(|(_, l)| l.last_used);
        let Some((id, _)) = oldest else {
            return Err(ApiError::busy(format!(
                "all {} sessions in memory are in use; try again later",
                self.max_live
            )));
        };
        let id = id.clone();
        let path = self.evicted_path(&id);
        let st = t.live[&id].state.as_ref().expect("an idle session holds its state");
        state::save(&self.prepared, st, &path).map_err(|e| ApiError::internal(format!("evicting {id}: {e}")))?;
        t.live.remove(&id);
        t.evicted.insert(id);
        Ok(())
    }

    /// Deletes the evicted sessions' files (at shutdown).
    pub fn clear_evicted(&self) {
        let _ = std::fs::remove_dir_all(&self.evicted_dir);
        self.lock().evicted.clear();
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned())
}

fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!("no session {id:?}"))
}

fn in_use(id: &str) -> ApiError {
    ApiError::conflict(format!("session {id:?} is in use by a request in flight"))
}
