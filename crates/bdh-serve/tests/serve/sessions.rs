//! A session's state checked out by a stream comes back whichever way the stream
//! ends; moves to and from disk that fail, or race with requests, lose no state.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::*;

#[test]
fn a_checked_out_state_goes_back_when_its_lease_is_dropped() {
    let (_serial, sessions) = (serial(), Store::new(&tiny_prepared(256), 4));
    let id = sessions.create().unwrap().id;
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
    let (_serial, sessions) = (serial(), Store::new(&tiny_prepared(256), 4));
    let id = sessions.create().unwrap().id;
    let unwound = catch_unwind(AssertUnwindSafe(|| {
        let mut lease = sessions.check_out(&id).unwrap();
        set_pos(&mut lease, 3);
        panic!("a stream fails half-way");
    }));
    assert!(unwound.is_err());
    assert_eq!(sessions.info(&id).unwrap().position, Some(3));
    assert_eq!(sessions.check_out(&id).unwrap().pos(), 3);
}

#[test]
fn an_eviction_that_cannot_write_puts_the_state_back() {
    let (_serial, sessions) = (serial(), Store::new(&tiny_prepared(256), 1));
    let a = sessions.create().unwrap().id;
    set_pos(&mut sessions.check_out(&a).unwrap(), 5);
    // No eviction folder before the first eviction; a file where it is to be made:
    // every write into it fails.
    assert!(!sessions.evicted_dir().exists());
    std::fs::write(sessions.evicted_dir(), b"").unwrap();
    let refused = sessions.create().unwrap_err();
    assert_eq!(refused.status, 500, "{}", refused.message);
    assert!(refused.message.contains("evicting"), "{}", refused.message);
    assert_eq!(sessions.counts(), (1, 0));
    assert_eq!(sessions.info(&a).unwrap().position, Some(5), "idle in memory again, as it was");
    // With the folder back, the next new session evicts it, and it comes back whole.
    std::fs::remove_file(sessions.evicted_dir()).unwrap();
    std::fs::create_dir(sessions.evicted_dir()).unwrap();
    let b = sessions.create().unwrap().id;
    assert_eq!(sessions.counts(), (1, 1));
    assert_eq!(sessions.check_out(&a).unwrap().pos(), 5);
    assert!(!sessions.info(&b).unwrap().in_memory);
}

#[test]
fn a_session_that_cannot_be_read_back_stays_on_disk_and_frees_the_room_made_for_it() {
    let (_serial, sessions) = (serial(), Store::new(&tiny_prepared(256), 1));
    let a = sessions.create().unwrap().id;
    set_pos(&mut sessions.check_out(&a).unwrap(), 9);
    sessions.create().unwrap(); // a goes to disk
    let file = sessions.evicted_dir().join(format!("{a}.state.safetensors"));
    let kept = sessions.dir.path().join("kept");
    std::fs::rename(&file, &kept).unwrap();
    let refused = sessions.check_out(&a).err().unwrap();
    assert_eq!(refused.status, 500, "{}", refused.message);
    assert!(refused.message.contains("reading back"), "{}", refused.message);
    // Room was made for it (the other session went to disk) and given back.
    assert_eq!(sessions.counts(), (0, 2));
    assert!(!sessions.info(&a).unwrap().in_memory);
    sessions.create().unwrap();
    assert_eq!(sessions.counts(), (1, 2));
    std::fs::rename(&kept, &file).unwrap();
    assert_eq!(sessions.check_out(&a).unwrap().pos(), 9);
}

#[test]
fn sessions_moved_to_and_from_disk_by_racing_threads_lose_no_state() {
    let (_serial, sessions) = (serial(), Store::new(&tiny_prepared(256), 2));
    let ids: Vec<String> = (0..5).map(|_| sessions.create().unwrap().id).collect();
    // Each thread advances sessions by one position at a time; every check-out of a
    // session on disk evicts another, while other threads hold or move them.
    let advanced: usize = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (sessions, ids) = (&*sessions, &ids);
                scope.spawn(move || {
                    let mut advanced = 0;
                    for i in 0..60 {
                        match sessions.check_out(&ids[(t + 3 * i) % ids.len()]) {
                            Ok(mut lease) => {
                                let pos = lease.pos();
                                set_pos(&mut lease, pos + 1);
                                advanced += 1;
                            }
                            Err(e) => assert!([409, 429].contains(&e.status.as_u16()), "{}", e.message),
                        }
                        assert!(sessions.counts().0 <= 2, "more sessions in memory than allowed");
                    }
                    advanced
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).sum()
    });
    assert!(advanced > 0);
    let positions: usize = ids.iter().map(|id| sessions.check_out(id).unwrap().pos()).sum();
    assert_eq!(positions, advanced, "every advance kept");
    assert_eq!(sessions.counts(), (2, 3));
}

#[test]
fn sessions_remove_no_file_or_folder_they_did_not_write() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    // A folder of this process's eviction name, left by someone else.
    let foreign = dir.path().join(format!("evicted-{}", std::process::id()));
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("sess-1.state.safetensors"), "not ours").unwrap();
    let sessions = Arc::new(Sessions::new(tiny_prepared(256), 1, dir.path()).unwrap());
    assert_eq!(std::fs::read_to_string(foreign.join("sess-1.state.safetensors")).unwrap(), "not ours");
    let a = sessions.create().unwrap().id;
    sessions.create().unwrap(); // a goes to disk, into a folder of this store's own
    let own = dir.path().join(format!("evicted-{}-2", std::process::id()));
    assert!(own.join(format!("{a}.state.safetensors")).is_file());
    std::fs::write(own.join("notes"), "keep").unwrap();
    sessions.clear_evicted();
    assert!(!own.join(format!("{a}.state.safetensors")).exists(), "its own files go");
    assert_eq!(std::fs::read_to_string(own.join("notes")).unwrap(), "keep");
    assert_eq!(std::fs::read_to_string(foreign.join("sess-1.state.safetensors")).unwrap(), "not ours");
}
