//! Sessions continue as one long text, save, restore, fork, go to disk and come back,
//! also with two servers sharing a sessions directory.

use super::*;

#[test]
fn sessions_continue_as_one_long_text_and_save_restore_fork() {
    let s = Server::start(&[]);
    let tmp = temp("serve-session");
    let id = s.ok("/v1/sessions", &json!({}))["id"].as_str().unwrap().to_string();
    let (p1, p2) = ("ROMEO:\n", "\nJULIET:\n");
    let first = s.ok("/v1/completions", &json!({"prompt": p1, "max_tokens": 30, "temperature": 0, "session": id}));
    let g1 = text_of(&first);
    assert_eq!(first["session"]["position"], p1.len() + 30);
    // The second request reads only its own prompt, after the first's text.
    let second = json!({"prompt": p2, "max_tokens": 40, "temperature": 0.8, "seed": 2, "session": id});
    let (g2, last) = s.stream("/v1/completions", &second);
    assert_eq!(last["usage"]["prompt_tokens"], p2.len());
    assert_eq!(last["session"]["position"], p1.len() + 30 + p2.len() + 40);
    assert_eq!(last["session"]["state_bytes"], 8 << 20);
    // bdh generate, saving and loading its state, gives the same two answers.
    let state = tmp.path().join("s.safetensors").display().to_string();
    assert_eq!(g1, generate(p1, &["--max-tokens", "30", "--temperature", "0", "--save-state", &state]));
    let flags = ["--max-tokens", "40", "--temperature", "0.8", "--seed", "2", "--load-state", &state];
    assert_eq!(g2, generate(p2, &flags));
    // One greedy request on the whole text (prefilled in one pass) agrees with the
    // greedy continuation of the session.
    let whole = format!("{p1}{g1}{p2}");
    let greedy = |body: Value| text_of(&s.ok("/v1/completions", &body));
    let fork = s.ok(&format!("/v1/sessions/{id}/fork"), &json!({}))["id"].as_str().unwrap().to_string();
    let from_fork = greedy(json!({"prompt": "\n", "max_tokens": 40, "temperature": 0, "session": fork}));
    let in_one = greedy(json!({"prompt": format!("{whole}{g2}\n"), "max_tokens": 40, "temperature": 0}));
    assert_eq!(from_fork, in_one, "a session continues as one long prompt would");

    // Save, then restore: the restored session answers as the original.
    let saved = s.ok(&format!("/v1/sessions/{id}/save"), &json!({"name": "romeo-1"}));
    assert_eq!(saved["file"], "romeo-1.state.safetensors");
    assert!(s.sessions_dir().join("romeo-1.state.safetensors").is_file());
    let restored = s.ok("/v1/sessions/restore", &json!({"name": "romeo-1"}));
    assert_eq!(restored["position"], p1.len() + 30 + p2.len() + 40);
    let next = |sid: &str| greedy(json!({"prompt": "\nROMEO:", "max_tokens": 30, "temperature": 0, "session": sid}));
    let (a, b) = (next(&id), next(restored["id"].as_str().unwrap()));
    assert_eq!(a, b);
    // The saved file is a state `bdh generate --load-state` continues the same way.
    let file = s.sessions_dir().join("romeo-1.state.safetensors").display().to_string();
    assert_eq!(a, generate("\nROMEO:", &["--max-tokens", "30", "--temperature", "0", "--load-state", &file]));
    // A session near 2^24 tokens (its saved file's position moved there) takes
    // requests that end before it and refuses one that could pass it.
    set_position(&s.sessions_dir().join("romeo-1.state.safetensors"), (1 << 24) - 10);
    let late = s.ok("/v1/sessions/restore", &json!({"name": "romeo-1"}))["id"].as_str().unwrap().to_string();
    let ask = |max: usize| s.post("/v1/completions", &json!({"prompt": "a", "max_tokens": max, "session": late}));
    let (status, v) = ask(20);
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("2^24"), "{v}");
    assert_eq!(ask(9).1["session"]["position"], 1 << 24);
    s.agent.delete(format!("{}/v1/sessions/{late}", s.base)).call().unwrap();
    let (status, list) = s.get("/v1/sessions");
    assert_eq!((status, list["data"].as_array().unwrap().len()), (200, 3));
    let (status, gone) = answer(s.agent.delete(format!("{}/v1/sessions/{fork}", s.base)).call().unwrap());
    assert_eq!((status, gone["deleted"].as_bool()), (200, Some(true)));
    assert_eq!(s.get(&format!("/v1/sessions/{fork}")).0, 404);
}

#[test]
fn least_recently_used_sessions_go_to_disk_and_come_back() {
    let s = Server::start(&["--max-sessions", "2"]);
    let new = || s.ok("/v1/sessions", &json!({}))["id"].as_str().unwrap().to_string();
    let (a, b) = (new(), new());
    for id in [&a, &b] {
        s.ok("/v1/completions", &json!({"prompt": "ROMEO:", "max_tokens": 20, "temperature": 0, "session": id}));
    }
    let c = new(); // a, the least recently used, goes to disk
    assert_eq!(s.get(&format!("/v1/sessions/{a}")).1["in_memory"], false);
    assert_eq!(s.get(&format!("/v1/sessions/{b}")).1["in_memory"], true);
    let (_, health) = s.get("/health");
    assert_eq!((health["sessions_in_memory"].as_u64(), health["sessions_on_disk"].as_u64()), (Some(2), Some(1)));
    let next = |id: &str| {
        let v = s.ok("/v1/completions", &json!({"prompt": "\n", "max_tokens": 25, "temperature": 0, "session": id}));
        (text_of(&v), v["session"]["position"].clone())
    };
    // a comes back from disk as it was (and b or c goes out): it continues as b does.
    assert_eq!(next(&a), next(&b));
    assert_eq!(s.get(&format!("/v1/sessions/{a}")).1["in_memory"], true);
    // c, still empty wherever it went, reads its first prompt.
    assert_eq!(next(&c).1, 1 + 25);
}

/// Rewrites the position of a saved state, keeping its ρ and metadata.
fn set_position(path: &std::path::Path, pos: i64) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let rho = st.tensor("rho").unwrap();
    let pos = pos.to_le_bytes();
    let views = [
        ("rho".to_string(), rho),
        ("position".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![1], &pos).unwrap()),
    ];
    std::fs::write(path, safetensors::serialize(views, meta.metadata().clone()).unwrap()).unwrap();
}

#[test]
fn servers_sharing_a_sessions_directory_keep_their_evicted_sessions_apart() {
    let first = Server::start(&["--max-sessions", "1"]);
    let shared = first.sessions_dir().display().to_string();
    let second = Server::start(&["--max-sessions", "1", "--sessions-dir", &shared]);
    let mut evicted = Vec::new();
    for s in [&first, &second] {
        let id = s.ok("/v1/sessions", &json!({}))["id"].as_str().unwrap().to_string();
        s.ok("/v1/completions", &json!({"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0, "session": id}));
        s.ok("/v1/sessions", &json!({})); // the first session goes to disk
        assert_eq!(s.get(&format!("/v1/sessions/{id}")).1["in_memory"], false);
        evicted.push(id);
    }
    assert_eq!(evicted[0], evicted[1], "both servers number their sessions alike");
    // Each reads its own evicted session back, whatever the other did.
    for s in [&second, &first] {
        let v = s.ok("/v1/completions", &json!({"prompt": "\n", "max_tokens": 5, "session": evicted[0]}));
        assert_eq!(v["session"]["position"], "ROMEO:".len() + 5 + 1 + 5, "{v}");
    }
}
