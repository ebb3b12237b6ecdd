//! Sessions on disk are bounded in count and bytes; their files are read and
//! written off the thread that answers `/health`; no error tells a client where
//! the server keeps its files.

use super::*;

#[test]
fn evictions_past_the_disk_bounds_are_refused_with_507_and_a_swap_still_works() {
    let _serial = serial();
    let prepared = tiny_prepared(256);
    let dir = tempfile::tempdir().unwrap();
    let sessions = Arc::new(Sessions::new(prepared.clone(), 1, dir.path()).unwrap().limit_disk(1, u64::MAX));
    let a = sessions.create().unwrap().id;
    set_pos(&mut sessions.check_out(&a).unwrap(), 4);
    let b = sessions.create().unwrap().id; // a goes to disk: the one file allowed
    assert_eq!(sessions.counts(), (1, 1));
    let refused = sessions.create().unwrap_err();
    assert_eq!(refused.status, 507, "{}", refused.message);
    assert!(refused.message.contains("--max-sessions-on-disk"), "{}", refused.message);
    assert!(sessions.fork(&b).is_err_and(|e| e.status == 507));
    assert_eq!(sessions.counts(), (1, 1), "nothing made, nothing lost");
    // Reading a back sends b to disk in its place.
    assert_eq!(sessions.check_out(&a).unwrap().pos(), 4);
    assert_eq!(sessions.counts(), (1, 1));
    assert!(!sessions.info(&b).unwrap().in_memory);
    // Deleting the session on disk makes room again.
    sessions.delete(&b).unwrap();
    sessions.create().unwrap();
    assert_eq!(sessions.counts(), (1, 1));

    // The bytes bound: room for one evicted file, not two.
    let bytes = 2 * prepared.state_bytes() as u64;
    let sessions = Arc::new(Sessions::new(prepared, 1, &dir.path().join("b")).unwrap().limit_disk(100, bytes));
    sessions.create().unwrap();
    sessions.create().unwrap();
    let refused = sessions.create().unwrap_err();
    assert_eq!(refused.status, 507, "{}", refused.message);
    assert!(refused.message.contains("--max-disk-bytes"), "{}", refused.message);
    assert_eq!(sessions.counts(), (1, 1));
}

#[test]
fn the_disk_bound_holds_over_http_with_its_status() {
    let s = Served::start(|c| (c.max_sessions, c.max_sessions_on_disk) = (1, 2));
    for _ in 0..3 {
        s.new_session();
    }
    let (status, v) = s.post("/v1/sessions", &json!({}));
    assert_eq!(status, 507, "{v}");
    assert_eq!(v["error"]["type"], "server_error");
    let (status, health) = s.get("/health");
    assert_eq!((status, &health["sessions_in_memory"], &health["sessions_on_disk"]), (200, &json!(1), &json!(2)));
}

#[test]
fn a_session_file_that_stalls_does_not_stall_health() {
    let s = Served::start(|c| c.max_sessions = 1);
    let a = s.new_session();
    s.new_session(); // a goes to disk
                     // a's file becomes a pipe no one writes: reading it back waits until it opens.
    let file = s.sessions_dir().join(format!("evicted-{}/{a}.state.safetensors", std::process::id()));
    std::fs::remove_file(&file).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(&file).status().unwrap().success());
    // Opens the pipe for writing after a while, whatever happens, so nothing waits for ever.
    let release = {
        let file = file.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(8));
            drop(std::fs::OpenOptions::new().write(true).open(file));
        })
    };
    let took = s.runtime.block_on(async {
        let body = Body::from(json!({"prompt": "a", "max_tokens": 1, "session": a}).to_string());
        let stalled = Request::builder().method(Method::POST).uri("/v1/completions").body(body).unwrap();
        // Timed from here: a read on this thread would hold up the sleep as well.
        let start = std::time::Instant::now();
        let stalled = tokio::spawn(s.router.clone().oneshot(stalled));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let health = Request::builder().uri("/health").body(Body::empty()).unwrap();
        let answer = s.router.clone().oneshot(health).await.unwrap();
        let took = start.elapsed();
        assert_eq!(answer.status(), 200);
        let failed = stalled.await.unwrap().unwrap();
        assert_eq!(failed.status(), 500, "an empty file is no state");
        took
    });
    release.join().unwrap();
    assert!(took < Duration::from_secs(4), "/health took {took:?} while a session file stalled");
}

#[test]
fn no_error_tells_a_client_where_the_sessions_are_or_the_process_id() {
    let s = Served::start(|c| c.max_sessions = 1);
    let dir = s.sessions_dir();
    let pid = std::process::id().to_string();
    let mut bodies = Vec::new();
    let a = s.new_session();
    s.new_session(); // a goes to disk
                     // A state file that is not one, restored.
    std::fs::write(dir.join("junk.state.safetensors"), b"not a state").unwrap();
    bodies.push(s.post("/v1/sessions/restore", &json!({"name": "junk"})));
    // An evicted file gone bad, read back.
    std::fs::write(dir.join(format!("evicted-{pid}/{a}.state.safetensors")), b"bad").unwrap();
    bodies.push(s.post("/v1/completions", &json!({"prompt": "x", "session": a})));
    // Evictions and saves that cannot write (the failed read-back sent the other
    // session to disk: memory is filled again first).
    let live = s.new_session();
    let evicted = dir.join(format!("evicted-{pid}"));
    std::fs::remove_dir_all(&evicted).unwrap();
    std::fs::write(&evicted, b"").unwrap();
    bodies.push(s.post("/v1/sessions", &json!({})));
    std::fs::create_dir(dir.join("taken.state.safetensors")).unwrap();
    bodies.push(s.post(&format!("/v1/sessions/{live}/save"), &json!({"name": "taken"})));
    for (status, body) in &bodies {
        let text = body.to_string();
        assert!(*status >= 400 && body["error"]["message"].is_string(), "{status} {text}");
        assert!(!text.contains(dir.to_str().unwrap()) && !text.contains("/tmp"), "a path in {text}");
        assert!(!text.contains(&pid) && !text.contains("evicted-"), "the process id in {text}");
    }
    println!("{bodies:?}");
}

/// The eviction folder is made at the first eviction, not before; at the end the
/// store removes it, and the sessions directory if it made it, once empty.
#[test]
fn the_eviction_folder_is_made_when_first_needed_and_only_what_the_store_made_is_removed() {
    let _serial = serial();
    let prepared = tiny_prepared(256);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sessions");
    let evicted = dir.join(format!("evicted-{}", std::process::id()));
    let sessions = Arc::new(Sessions::new(prepared.clone(), 1, &dir).unwrap());
    assert!(dir.is_dir() && !evicted.exists(), "no eviction folder before an eviction");
    sessions.create().unwrap();
    sessions.create().unwrap(); // the first goes to disk
    assert!(evicted.is_dir());
    sessions.clear_evicted();
    assert!(!dir.exists(), "the store made the sessions directory and leaves none");
    // A directory that was there stays.
    let sessions = Sessions::new(prepared, 1, tmp.path()).unwrap();
    sessions.clear_evicted();
    assert!(tmp.path().is_dir() && std::fs::read_dir(tmp.path()).unwrap().next().is_none());
}

#[test]
fn a_server_with_16_bit_states_answers_and_evicts_its_sessions_in_them() {
    let bf16 = bdh::model::bdh::StateDtype::Bf16;
    let text = |v: &Value| v["choices"][0]["text"].clone();
    // (one server at a time: each holds the tests' lock while it lives)
    let evicted = {
        let s = Served::start(|c| (c.max_sessions, c.state_dtype) = (1, bf16));
        let a = s.new_session();
        let first = s.ok("/v1/completions", &json!({"prompt": "ROMEO:", "max_tokens": 6, "session": a}));
        s.new_session(); // a goes to disk, in bf16
        let file = s.sessions_dir().join(format!("evicted-{}/{a}.state.safetensors", std::process::id()));
        let bytes = std::fs::read(&file).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        assert_eq!(header["rho"]["dtype"], "BF16", "{header}");
        // read back and continued
        let more = s.ok("/v1/completions", &json!({"prompt": "\n", "max_tokens": 4, "session": a}));
        assert_eq!(more["usage"]["completion_tokens"], 4, "{first} {more}");
        (text(&first), text(&more))
    };
    // as a server that kept the session in memory continues it
    let s = Served::start(|c| c.state_dtype = bf16);
    let b = s.new_session();
    let first = s.ok("/v1/completions", &json!({"prompt": "ROMEO:", "max_tokens": 6, "session": b}));
    let more = s.ok("/v1/completions", &json!({"prompt": "\n", "max_tokens": 4, "session": b}));
    assert_eq!(evicted, (text(&first), text(&more)), "evicted and kept alike");
}
