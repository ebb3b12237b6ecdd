//! The state a stream holds while it runs: a fresh one, or a session's, checked out
//! of the session and put back when the lease is dropped — whichever way the stream
//! ends (finished, its client gone, failed, a panic unwinding), so no path can
//! forget to give it back.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bdh::infer::State;

use crate::sessions::Sessions;

/// A state held by one stream; dereferences to the [`State`].
pub struct Lease {
    state: Option<State>, // taken only when the lease ends
    home: Option<(Arc<Sessions>, String)>,
}

impl Lease {
    /// A fresh state that belongs to no session: dropped with the lease.
    pub fn fresh(state: State) -> Self {
        Lease { state: Some(state), home: None }
    }

    /// Session `id`'s state, checked out of `sessions` (see [`Sessions::check_out`]).
    pub(crate) fn session(sessions: Arc<Sessions>, id: String, state: State) -> Self {
        Lease { state: Some(state), home: Some((sessions, id)) }
    }

    /// The session the state goes back to, if any.
    pub fn session_id(&self) -> Option<&str> {
        self.home.as_ref().map(|(_, id)| id.as_str())
    }
}

impl Deref for Lease {
    type Target = State;
    fn deref(&self) -> &State {
        self.state.as_ref().expect("a lease holds its state until it is dropped")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut State {
        self.state.as_mut().expect("a lease holds its state until it is dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some((sessions, id)), Some(state)) = (&self.home, self.state.take()) {
            sessions.check_in(id, state);
        }
    }
}
