//! Sessions: named states kept between requests. At most `max_live` are held in
//! memory; past that the least recently used idle one is written to disk and read
//! back when it is next used. A request takes its session's state out while it
//! runs (a second request on the same session meanwhile is refused) and puts it
//! back, having read its prompt and output, when it ends.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bdh::infer::{Prepared, State};
use bdh::io::state;
use serde::Serialize;

use crate::error::ApiError;

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

/// Every session of the server.
pub struct Sessions {
    prepared: Arc<Prepared>,
    live: HashMap<String, Live>,
    evicted: HashSet<String>,
    max_live: usize,
    dir: PathBuf,
    evicted_dir: PathBuf, // this server's own: servers sharing `dir` keep apart
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
        Ok(Sessions {
            prepared,
            live: HashMap::new(),
            evicted: HashSet::new(),
            max_live,
            dir: dir.to_path_buf(),
            evicted_dir: evicted,
            clock: 0,
            next_id: 1,
        })
    }

    /// Sessions in memory and on disk.
    pub fn counts(&self) -> (usize, usize) {
        (self.live.len(), self.evicted.len())
    }

    /// A new session holding `state` (empty if none), making room for it.
    pub fn create(&mut self, state: Option<State>) -> Result<Info, ApiError> {
        self.make_room()?;
        let state = match state {
            Some(s) => s,
            None => self.prepared.state().map_err(|e| ApiError::internal(e.to_string()))?,
        };
        let id = format!("sess-{}", self.next_id);
        self.next_id += 1;
        self.clock += 1;
        self.live.insert(id.clone(), Live { state: Some(state), last_used: self.clock });
        self.info(&id)
    }

    /// What the client sees of session `id`.
    pub fn info(&self, id: &str) -> Result<Info, ApiError> {
        let (position, in_memory) = match self.live.get(id) {
            Some(l) => (l.state.as_ref().map(|s| s.pos()), true),
            None if self.evicted.contains(id) => (None, false),
            None => return Err(unknown(id)),
        };
        Ok(Info { id: id.into(), object: "session", position, state_bytes: self.prepared.state_bytes(), in_memory })
    }

    /// Every session, in memory first.
    pub fn list(&self) -> Vec<Info> {
        let mut ids: Vec<&String> = self.live.keys().chain(&self.evicted).collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.info(id).ok()).collect()
    }

    /// Takes session `id`'s state for a request (reading it back from disk if it
    /// was evicted); [`Sessions::check_in`] returns it.
    pub fn check_out(&mut self, id: &str) -> Result<State, ApiError> {
        self.bring_in(id)?;
        self.clock += 1;
        let live = self.live.get_mut(id).ok_or_else(|| unknown(id))?;
        live.last_used = self.clock;
        live.state.take().ok_or_else(|| in_use(id))
    }

    /// Puts back the state a request took from session `id`.
    pub fn check_in(&mut self, id: &str, state: State) {
        self.clock += 1;
        if let Some(live) = self.live.get_mut(id) {
            live.state = Some(state);
            live.last_used = self.clock;
        }
    }

    /// A copy of session `id`'s state (an idle session's).
    pub fn copy(&mut self, id: &str) -> Result<State, ApiError> {
        self.bring_in(id)?;
        let live = self.live.get(id).ok_or_else(|| unknown(id))?;
        live.state.clone().ok_or_else(|| in_use(id))
    }

    /// Deletes session `id` (not while a request holds it).
    pub fn delete(&mut self, id: &str) -> Result<(), ApiError> {
        if self.evicted.remove(id) {
            let _ = std::fs::remove_file(self.evicted_path(id));
            return Ok(());
        }
        match self.live.get(id) {
            None => Err(unknown(id)),
            Some(l) if l.state.is_none() => Err(in_use(id)),
            Some(_) => {
                self.live.remove(id);
                Ok(())
            }
        }
    }

    /// Saves session `id` as `name` in the sessions directory.
    pub fn save(&mut self, id: &str, name: &str) -> Result<String, ApiError> {
        let path = self.named_path(name)?;
        let st = self.copy(id)?;
        state::save(&self.prepared, &st, &path).map_err(|e| ApiError::internal(format!("saving {name}: {e}")))?;
        Ok(file_name(&path))
    }

    /// A new session from the state saved as `name`.
    pub fn restore(&mut self, name: &str) -> Result<Info, ApiError> {
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
    fn bring_in(&mut self, id: &str) -> Result<(), ApiError> {
        if !self.evicted.contains(id) {
            return if self.live.contains_key(id) { Ok(()) } else { Err(unknown(id)) };
        }
        self.make_room()?;
        let path = self.evicted_path(id);
        let st =
            state::load(&self.prepared, &path).map_err(|e| ApiError::internal(format!("reading back {id}: {e}")))?;
        let _ = std::fs::remove_file(&path);
        self.evicted.remove(id);
        self.live.insert(id.into(), Live { state: Some(st), last_used: self.clock });
        Ok(())
    }

    /// Evicts the least recently used idle session if memory holds `max_live`.
    fn make_room(&mut self) -> Result<(), ApiError> {
        if self.live.len() < self.max_live {
            return Ok(());
        }
        let oldest = self.live.iter().filter(|(_, l)| l.state.is_some()).min_by_key(|(_, l)| l.last_used);
        let Some((id, _)) = oldest else {
            return Err(ApiError::busy(format!(
                "all {} sessions in memory are in use; try again later",
                self.max_live
            )));
        };
        let id = id.clone();
        let path = self.evicted_path(&id);
        let st = self.live[&id].state.as_ref().expect("an idle session holds its state");
        state::save(&self.prepared, st, &path).map_err(|e| ApiError::internal(format!("evicting {id}: {e}")))?;
        self.live.remove(&id);
        self.evicted.insert(id);
        Ok(())
    }

    /// Deletes the evicted sessions' files (at shutdown).
    pub fn clear_evicted(&mut self) {
        let _ = std::fs::remove_dir_all(&self.evicted_dir);
        self.evicted.clear();
    }
}

/// Locks the store; a panic elsewhere while it was held leaves it usable (every
/// change to it is one assignment).
pub fn lock(sessions: &Mutex<Sessions>) -> MutexGuard<'_, Sessions> {
    sessions.lock().unwrap_or_else(|e| e.into_inner())
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
