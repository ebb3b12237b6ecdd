//! A session's state checked out by a stream comes back whichever way the stream
//! ends.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bdh::infer::Prepared;
use bdh_serve::sessions::Sessions;

use super::*;

/// A store of at most `max_live` sessions in memory of the tiny model, in `dir`.
fn store(dir: &TempDir, max_live: usize) -> Arc<Sessions> {
    let prepared = Arc::new(Prepared::new(tiny_model(256)).unwrap());
    Arc::new(Sessions::new(prepared, max_live, dir.path()).unwrap())
}

#[test]
fn a_checked_out_state_goes_back_when_its_lease_is_dropped() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let sessions = store(&dir, 4);
    let id = sessions.create(None).unwrap().id;
    let mut lease = sessions.check_out(&id).unwrap();
    assert_eq!(lease.session_id(), Some(id.as_str()));
    assert_eq!(sessions.info(&id).unwrap().position, None, "held by a request");
    assert_eq!(sessions.check_out(&id).err().unwrap().status, 409);
    assert_eq!(sessions.delete(&id).unwrap_err().status, 409);
    set_pos(&mut lease, 7);
    drop(lease);
    assert_eq!(sessions.info(&id).unwrap().position, Some(7), "back, as the stream left it");
    assert_eq!(sessions.check_out(&id).unwrap().pos(), 7);
}

#[test]
fn a_checked_out_state_goes_back_when_its_holder_panics() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let sessions = store(&dir, 4);
    let id = sessions.create(None).unwrap().id;
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        let mut lease = sessions.check_out(&id).unwrap();
        set_pos(&mut lease, 3);
        panic!("a stream fails half-way");
    }));
    assert!(unwound.is_err());
    assert_eq!(sessions.info(&id).unwrap().position, Some(3));
    assert_eq!(sessions.check_out(&id).unwrap().pos(), 3);
}
