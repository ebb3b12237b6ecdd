//! The state a stream holds while it runs: a fresh one, or a session's, checked out
//! of the session and put back when the lease is dropped — whichever way the stream
//! ends (finished, its client gone, failed, a panic unwinding), so no path can
//! forget to give it back. An eviction holds a session's state the same way while
//! it writes it to disk.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use bdh::infer::State;

use crate::sessions::Sessions;

/// A state held by one stream; dereferences to the [`State`].
pub struct Lease {
    state: Option<State>, // taken only when the lease ends
    home: Option<(Arc<Sessions>, String, Holder)>,
}

/// Who holds a session's state out of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// A request, until its stream ends.
    Request,
    /// An eviction, while it writes the state to disk.
    Eviction,
}

impl Lease {
    /// A fresh state that belongs to no session: dropped with the lease.
    pub fn fresh(state: State) -> Self {
        Lease { state: Some(state), home: None }
    }

    /// Session `id`'s state, taken out of `sessions` for `by`; made with the
    /// sessions' lock released, since dropping it takes the lock.
    pub(crate) fn checked_out(sessions: Arc<Sessions>, id: String, state: State, by: Holder) -> Self {
        Lease { state: Some(state), home: Some((sessions, id, by)) }
    }

    /// The session the state goes back to, if any.
    pub fn session_id(&self) -> Option<&str> {
        self.home.as_ref().map(|(_, id, _)| id.as_str())
    }

    /// Ends the lease without putting the state back: it was written to disk.
    pub(crate) fn written(mut self) {
        self.state = None;
    }
}

impl Deref for Lease {
    type Target = State;
    fn deref(&self) -> &State {
        self.state.as_ref().expect("a lease holds its state until it ends")
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut State {
        self.state.as_mut().expect("a lease holds its state until it ends")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some((sessions, id, by)), Some(state)) = (&self.home, self.state.take()) {
            sessions.check_in(id, state, *by);
        }
    }
}
