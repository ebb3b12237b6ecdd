//! What the server reports about itself and its sessions costs no state: the
//! state's bytes come from the model's config.

use bdh::infer::states_made;

use super::*;

#[test]
fn health_and_the_session_list_make_no_state() {
    let s = Served::start(|c| c.max_sessions = 2);
    let bytes = tiny_prepared(256).state_bytes();
    let ids: Vec<String> = (0..5).map(|_| s.new_session()).collect();
    let prompt = json!({"prompt": "ab", "max_tokens": 3, "temperature": 0, "session": ids[4]});
    assert_eq!(s.ok("/v1/completions", &prompt)["session"]["state_bytes"], bytes);
    // Two sessions in memory, three evicted to disk.
    let before = states_made();
    let (status, health) = s.get("/health");
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["sessions_in_memory"], 2);
    assert_eq!(health["sessions_on_disk"], 3);
    assert_eq!(health["state_bytes"], bytes);
    let (status, list) = s.get("/v1/sessions");
    assert_eq!(status, 200, "{list}");
    let list = list["data"].as_array().unwrap();
    assert_eq!(list.len(), 5);
    assert_eq!(list.iter().filter(|i| i["in_memory"] == true).count(), 2);
    assert!(list.iter().all(|i| i["state_bytes"] == bytes), "{list:?}");
    for id in &ids {
        let (status, info) = s.get(&format!("/v1/sessions/{id}"));
        assert_eq!((status, &info["state_bytes"]), (200, &json!(bytes)), "{info}");
    }
    assert_eq!(s.get(&format!("/v1/sessions/{}", ids[4])).1["position"], 2 + 3);
    assert_eq!(states_made(), before, "health or the session list made a state");
}
