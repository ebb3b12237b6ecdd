//! `bdh serve` over real HTTP on loopback: answers equal `bdh generate`'s, streamed
//! and whole, alone and decoded together; sessions continue as one long text, save,
//! restore, fork and come back from disk; every refusal is JSON with its status;
//! a client that goes away frees its slot; SIGTERM finishes or cancels streams.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

mod common;
use common::{bdh, golden, temp};

/// The trained small model every test serves.
fn model() -> String {
    golden("ref-small-trained")
}

/// A running server on a free port, killed when dropped.
struct Server {
    child: Child,
    base: String,
    agent: ureq::Agent,
    dir: TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Server::start_model(&model(), extra)
    }

    fn start_model(model: &str, extra: &[&str]) -> Server {
        let dir = temp("serve");
        let sessions = dir.path().join("sessions").display().to_string();
        // `--sessions-dir` in `extra` replaces the test's own directory.
        let own = if extra.contains(&"--sessions-dir") { vec![] } else { vec!["--sessions-dir", sessions.as_str()] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_bdh"))
            .args(["serve", "--model", model, "--port", "0"])
            .args(own)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bdh serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("address line: {line:?}")).into();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build();
        Server { child, base, agent: ureq::Agent::new_with_config(config), dir }
    }

    fn sessions_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("sessions")
    }

    /// POSTs raw bytes; (status, body as JSON, or the text as a JSON string).
    fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let r = self.agent.post(format!("{}{path}", self.base)).header("content-type", "application/json").send(body);
        answer(r.unwrap())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, body.to_string().as_bytes())
    }

    fn get(&self, path: &str) -> (u16, Value) {
        answer(self.agent.get(format!("{}{path}", self.base)).call().unwrap())
    }

    /// A successful POST's JSON.
    fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body);
        assert_eq!(status, 200, "{path} {body}: {v}");
        v
    }

    /// A streamed completion: the text of its chunks, and its last chunk.
    fn stream(&self, path: &str, body: &Value) -> (String, Value) {
        let mut body = body.clone();
        body["stream"] = json!(true);
        let r = self.agent.post(format!("{}{path}", self.base)).send(body.to_string()).unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let lines = BufReader::new(r.into_body().into_reader()).lines().map(|l| l.unwrap());
        let (mut text, mut last, mut done) = (String::new(), Value::Null, false);
        for line in lines.filter(|l| !l.is_empty()) {
            let data = line.strip_prefix("data: ").unwrap_or_else(|| panic!("an SSE line: {line:?}"));
            assert!(!done, "nothing after [DONE]");
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            let choice = &v["choices"][0];
            if choice["finish_reason"].is_string() {
                last = v.clone();
            }
            text.push_str(choice["text"].as_str().or(choice["delta"]["content"].as_str()).unwrap_or(""));
        }
        assert!(done && last.is_object(), "ends with a finish and [DONE]");
        (text, last)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answer(mut r: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// What `bdh generate` prints for `prompt` with `flags`, without its final newline.
fn generate(prompt: &str, flags: &[&str]) -> String {
    generate_with(&model(), prompt, flags)
}

fn generate_with(model: &str, prompt: &str, flags: &[&str]) -> String {
    let mut args = vec!["generate", "--model", model, "--prompt", prompt];
    args.extend_from_slice(flags);
    let o = bdh(&args);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    out.strip_suffix('\n').unwrap_or(&out).to_string()
}

fn text_of(v: &Value) -> String {
    let c = &v["choices"][0];
    c["text"].as_str().or(c["message"]["content"].as_str()).unwrap().to_string()
}

#[test]
fn answers_equal_generate_streamed_and_whole() {
    let s = Server::start(&[]);
    let cases = [
        (
            json!({"prompt": "ROMEO:", "max_tokens": 60, "temperature": 0}),
            vec!["--max-tokens", "60", "--temperature", "0"],
        ),
        (
            json!({"prompt": "KING HENRY:\n", "max_tokens": 80, "temperature": 0.9, "top_p": 0.9, "seed": 7, "stop": ["\n\n", "lord"]}),
            vec![
                "--max-tokens",
                "80",
                "--temperature",
                "0.9",
                "--top-p",
                "0.9",
                "--seed",
                "7",
                "--stop",
                "\n\n",
                "--stop",
                "lord",
            ],
        ),
        (
            json!({"prompt": "First Citizen:", "max_tokens": 50, "seed": 3}),
            vec!["--max-tokens", "50", "--temperature", "1", "--seed", "3"],
        ),
    ];
    for (body, flags) in cases {
        let want = generate(body["prompt"].as_str().unwrap(), &flags);
        let whole = s.ok("/v1/completions", &body);
        assert_eq!(text_of(&whole), want, "{body}");
        let (streamed, last) = s.stream("/v1/completions", &body);
        assert_eq!(streamed, want, "{body} streamed");
        let usage = &whole["usage"];
        assert_eq!(usage["prompt_tokens"], body["prompt"].as_str().unwrap().len());
        assert_eq!(last["usage"], *usage, "the last chunk carries the same counts");
        let reason = whole["choices"][0]["finish_reason"].as_str().unwrap();
        let n = usage["completion_tokens"].as_u64().unwrap();
        assert!((reason == "length") == (n == body["max_tokens"].as_u64().unwrap()), "{reason} after {n}");
        println!("{body}: {reason}, {n} tokens, {want:?}");
    }
    // Chat: the messages through the template, then the same generation.
    let chat = json!({"messages": [{"role": "system", "content": "A play."}, {"role": "user", "content": "Speak."}],
                      "max_tokens": 40, "temperature": 0.7, "seed": 11});
    let want = generate(
        "system: A play.\nuser: Speak.\nassistant:",
        &["--max-tokens", "40", "--temperature", "0.7", "--seed", "11"],
    );
    let whole = s.ok("/v1/chat/completions", &chat);
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(whole["choices"][0]["message"]["role"], "assistant");
    assert_eq!(text_of(&whole), want);
    let (streamed, last) = s.stream("/v1/chat/completions", &chat);
    assert_eq!((streamed, last["object"].as_str()), (want, Some("chat.completion.chunk")));
    let (status, models) = s.get("/v1/models");
    assert_eq!((status, models["data"][0]["id"].as_str()), (200, Some("ref-small-trained")));
    let (status, health) = s.get("/health");
    assert_eq!((status, health["status"].as_str(), health["state_bytes"].as_u64()), (200, Some("ok"), Some(8 << 20)));
}

#[test]
fn streams_decoded_together_each_equal_their_own_generate() {
    let s = Server::start(&[]);
    let prompts = ["ROMEO:", "JULIET:\nO ", "To be", "MENENIUS:\nWhat", "Ay, my lord", "Now is the winter"];
    let answers: Vec<(String, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let s = &s;
                scope.spawn(move || {
                    let body = json!({"prompt": p, "max_tokens": 100 + 10 * k, "temperature": 0.8, "seed": k});
                    if k % 2 == 0 {
                        s.stream("/v1/completions", &body).0
                    } else {
                        text_of(&s.ok("/v1/completions", &body))
                    }
                })
            })
            .collect();
        handles.into_iter().zip(prompts).map(|(h, p)| (p.to_string(), h.join().unwrap())).collect()
    });
    for (k, (p, got)) in answers.iter().enumerate() {
        let (max, seed) = ((100 + 10 * k).to_string(), k.to_string());
        let want = generate(p, &["--max-tokens", &max, "--temperature", "0.8", "--seed", &seed]);
        assert_eq!(got, &want, "stream {k} ({p:?})");
    }
}

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

/// Sends `raw` bytes as an HTTP request and returns the status of the answer.
fn raw_http(base: &str, raw: &[u8]) -> u16 {
    let mut conn = TcpStream::connect(base.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    conn.write_all(raw).unwrap();
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).unwrap();
    line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("a status line: {line:?}"))
}

#[test]
fn every_refusal_is_json_with_its_status_and_nothing_panics() {
    let s =
        Server::start(&["--max-body-bytes", "4096", "--max-prompt-tokens", "100", "--max-completion-tokens", "500"]);
    let long = "x".repeat(101);
    let deep = "[".repeat(3000);
    let bad_bodies: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not JSON", b"{\"prompt\": ".to_vec(), 400),
        ("non-UTF-8", b"{\"prompt\": \"\xff\xfe\"}".to_vec(), 400),
        ("deep nesting", deep.into_bytes(), 400),
        ("a number for the prompt", br#"{"prompt": 5}"#.to_vec(), 400),
        ("a string for max_tokens", br#"{"prompt": "a", "max_tokens": "ten"}"#.to_vec(), 400),
        ("a word for temperature", br#"{"prompt": "a", "temperature": "hot"}"#.to_vec(), 400),
        ("negative max_tokens", br#"{"prompt": "a", "max_tokens": -1}"#.to_vec(), 400),
        ("huge max_tokens", br#"{"prompt": "a", "max_tokens": 1e30}"#.to_vec(), 400),
        ("huge integer", br#"{"prompt": "a", "max_tokens": 99999999999999999999999}"#.to_vec(), 400),
        ("max_tokens over the limit", br#"{"prompt": "a", "max_tokens": 501}"#.to_vec(), 400),
        ("infinite temperature", br#"{"prompt": "a", "temperature": 1e300}"#.to_vec(), 400),
        ("negative temperature", br#"{"prompt": "a", "temperature": -1}"#.to_vec(), 400),
        ("top_p 0", br#"{"prompt": "a", "top_p": 0}"#.to_vec(), 400),
        ("negative seed", br#"{"prompt": "a", "seed": -3}"#.to_vec(), 400),
        ("n = 2", br#"{"prompt": "a", "n": 2}"#.to_vec(), 400),
        ("five stops", br#"{"prompt": "a", "stop": ["a","b","c","d","e"]}"#.to_vec(), 400),
        ("empty prompt", br#"{"prompt": ""}"#.to_vec(), 400),
        ("no prompt", br#"{"max_tokens": 3}"#.to_vec(), 400),
        ("two prompts", br#"{"prompt": ["a", "b"]}"#.to_vec(), 400),
        ("prompt too long", format!(r#"{{"prompt": "{long}"}}"#).into_bytes(), 413),
        ("body too large", format!(r#"{{"prompt": "{}"}}"#, "y".repeat(5000)).into_bytes(), 413),
        ("unknown session", br#"{"prompt": "a", "session": "sess-404"}"#.to_vec(), 404),
        ("a session id that is a path", br#"{"prompt": "a", "session": "../../etc/passwd"}"#.to_vec(), 404),
    ];
    for (what, body, status) in bad_bodies {
        let (got, v) = s.post_raw("/v1/completions", &body);
        println!("{what}: {got} {v}");
        assert_eq!(got, status, "{what}: {v}");
        assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string(), "{what}: {v}");
    }
    let chats = [
        json!({"messages": []}),
        json!({"messages": [{"role": "wizard", "content": "hi"}]}),
        json!({"messages": "hi"}),
    ];
    for body in chats {
        let (got, v) = s.post("/v1/chat/completions", &body);
        assert_eq!(got, 400, "{body}: {v}");
    }
    // Session names are file names in the server's directory, nothing else.
    let id = s.ok("/v1/sessions", &json!({}))["id"].as_str().unwrap().to_string();
    for name in ["../escape", "a/b", "/tmp/x", "", ".hidden", "x".repeat(65).as_str(), "nul\u{0}"] {
        let (got, v) = s.post(&format!("/v1/sessions/{id}/save"), &json!({ "name": name }));
        assert_eq!(got, 400, "{name:?}: {v}");
        assert_eq!(s.post("/v1/sessions/restore", &json!({ "name": name })).0, 400, "{name:?}");
    }
    assert!(!s.dir.path().join("escape.state.safetensors").exists());
    assert_eq!(std::fs::read_dir(s.sessions_dir()).unwrap().count(), 1, "only the evicted-PID/ directory");
    assert_eq!(s.post("/v1/sessions/restore", &json!({"name": "never-saved"})).0, 404);
    assert_eq!(s.post("/v1/sessions/restore", &json!({"file": "x"})).0, 400);
    assert_eq!(s.post("/v1/sessions/sess-404/fork", &json!({})).0, 404);
    assert_eq!(s.post("/v1/sessions/sess-404/save", &json!({"name": "x"})).0, 404);
    assert_eq!(answer(s.agent.delete(format!("{}/v1/sessions/sess-404", s.base)).call().unwrap()).0, 404);
    let (got, v) = s.get("/v1/nothing");
    assert_eq!((got, v["error"]["type"].as_str()), (404, Some("not_found_error")));
    // A malformed request line and a lying Content-Length.
    let lying = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n{}";
    assert_eq!(raw_http(&s.base, lying), 413);
    assert_eq!(raw_http(&s.base, b"GARBAGE\r\n\r\n"), 400);
    assert_eq!(raw_http(&s.base, b"POST /v1/completions HTTP/1.1\r\nContent-Length: abc\r\n\r\n"), 400);
    // After all that the server still answers.
    assert_eq!(s.ok("/v1/completions", &json!({"prompt": "a", "max_tokens": 2}))["usage"]["completion_tokens"], 2);
}

/// Starts a streamed completion and reads up to its first chunk; the connection stays open.
fn start_stream(s: &Server, body: &Value) -> BufReader<TcpStream> {
    let host = s.base.trim_start_matches("http://");
    let mut conn = TcpStream::connect(host).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut body = body.clone();
    body["stream"] = json!(true);
    let body = body.to_string();
    let req = format!("POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    conn.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream began");
    }
    reader
}

#[test]
fn busy_streams_get_429_and_a_client_that_leaves_frees_its_slot() {
    let s = Server::start(&["--max-streams", "1"]);
    let id = s.ok("/v1/sessions", &json!({}))["id"].as_str().unwrap().to_string();
    let long = json!({"prompt": "ROMEO:", "max_tokens": 4000, "session": id});
    let reader = start_stream(&s, &long);
    let (got, v) = s.post("/v1/completions", &json!({"prompt": "a", "max_tokens": 1}));
    assert_eq!((got, v["error"]["type"].as_str()), (429, Some("rate_limit_error")), "{v}");
    assert_eq!(s.get("/health").1["streams"], 1);
    // The session is held by the stream in flight.
    assert_eq!(s.post(&format!("/v1/sessions/{id}/fork"), &json!({})).0, 409);
    let t = Instant::now();
    drop(reader);
    while s.get("/health").1["streams"] != 0 {
        assert!(t.elapsed() < Duration::from_secs(5), "the slot is freed when the client goes away");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("slot freed {:.0} ms after the client left", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(s.ok("/v1/completions", &json!({"prompt": "a", "max_tokens": 1}))["usage"]["completion_tokens"], 1);
    // The session got its state back, having read what was generated before the client left.
    let pos = s.get(&format!("/v1/sessions/{id}")).1["position"].as_u64().unwrap();
    assert!(pos > 6 && pos < 4006, "position {pos}");
    // A client waiting for a whole answer that leaves frees its slot as well.
    let host = s.base.trim_start_matches("http://");
    let mut conn = TcpStream::connect(host).unwrap();
    let body = json!({"prompt": "ROMEO:", "max_tokens": 4000}).to_string();
    let req = format!("POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    conn.write_all(req.as_bytes()).unwrap();
    let t = Instant::now();
    while s.get("/health").1["streams"] != 1 {
        assert!(t.elapsed() < Duration::from_secs(5), "the request started");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(conn);
    while s.get("/health").1["streams"] != 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the slot is freed when a waiting client goes away");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -TERM");
}

/// Reads the rest of a stream: (its text, its finish_reason, whether [DONE] came).
fn rest_of_stream(reader: BufReader<TcpStream>) -> (String, String, bool) {
    let (mut text, mut reason, mut done) = (String::new(), String::new(), false);
    for line in reader.lines().map_while(Result::ok) {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = serde_json::from_str(data).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        if let Some(r) = v["choices"][0]["finish_reason"].as_str() {
            reason = r.to_string();
        }
    }
    (text, reason, done)
}

fn exits_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(t.elapsed() < limit, "the server exits after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_finishes_streams_in_flight_then_cancels_after_the_grace_period() {
    // Finishes: 300 tokens fit in the grace period.
    let mut s = Server::start(&[]);
    let reader = start_stream(&s, &json!({"prompt": "ROMEO:", "max_tokens": 300, "temperature": 0}));
    sigterm(&s.child);
    let (_, reason, done) = rest_of_stream(reader);
    assert_eq!((reason.as_str(), done), ("length", true));
    assert_eq!(exits_within(&mut s.child, Duration::from_secs(20)), Some(0));
    assert!(TcpStream::connect(s.base.trim_start_matches("http://")).is_err(), "no longer listening");

    // Cancels: no grace, a stream far too long.
    let mut s = Server::start(&["--grace-seconds", "0"]);
    let reader = start_stream(&s, &json!({"prompt": "ROMEO:", "max_tokens": 4000}));
    sigterm(&s.child);
    let (_, reason, done) = rest_of_stream(reader);
    assert_eq!((reason.as_str(), done), ("cancelled", true));
    assert_eq!(exits_within(&mut s.child, Duration::from_secs(20)), Some(0));
}

#[test]
fn a_gpt_is_refused_with_the_reason() {
    let o = bdh(&["serve", "--model", &golden("gpt-tiny"), "--port", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("BDH models"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_openai_python_client_reads_the_server() {
    let has = Command::new("python3").args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    if !has {
        eprintln!(
            "SKIPPED the OpenAI Python client check: the `openai` Python package is not installed (pip install openai)"
        );
        return;
    }
    let s = Server::start(&[]);
    let script = format!(
        r#"
import openai
c = openai.OpenAI(base_url="{}/v1", api_key="none")
a = c.completions.create(model="m", prompt="ROMEO:", max_tokens=20, temperature=0)
b = "".join(x.choices[0].text for x in c.completions.create(model="m", prompt="ROMEO:", max_tokens=20, temperature=0, stream=True))
m = c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "Speak."}}], max_tokens=10, seed=1)
assert a.choices[0].text == b, (a, b)
print(a.choices[0].text == b, a.usage.completion_tokens, m.choices[0].message.role)
"#,
        s.base
    );
    let o = Command::new("python3").args(["-c", &script]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(out.trim(), "True 20 assistant");
}

#[test]
fn a_model_that_reads_a_bpe_is_served_with_its_tokenizer() {
    let tmp = temp("serve-bpe");
    let p = |name: &str| tmp.path().join(name).display().to_string();
    let (data, tok, run) = (p("text.txt"), p("tok.json"), p("run"));
    let lines = ["the dragon keeps a map of the north.", "la señora reads the café's menu.", "東京の猫 finds the egg."];
    let corpus: String = (0..600).map(|i| format!("{} {}\n", lines[i % 3], i % 7)).collect();
    std::fs::write(&data, &corpus).unwrap();
    assert!(bdh(&["tokenizer", "train", "--data", &data, "--vocab-size", "300", "--out", &tok]).status.success());
    let mut a = vec!["train", "--preset", "tiny", "--data", &data, "--tokenizer", &tok, "--out", &run, "--quiet"];
    a.extend(["--set", "training.max_steps=3", "--set", "training.batch_size=2", "--set", "training.eval_batches=1"]);
    assert!(bdh(&a).status.success());
    let s = Server::start_model(&run, &[]);
    let body = json!({"prompt": "la señora ", "max_tokens": 12, "temperature": 0.8, "seed": 5});
    let v = s.ok("/v1/completions", &body);
    let want = generate_with(&run, "la señora ", &["--max-tokens", "12", "--temperature", "0.8", "--seed", "5"]);
    assert_eq!(text_of(&v), want);
    assert_eq!(v["usage"]["completion_tokens"], 12, "tokens of the BPE, not bytes: {v}");
    // A tokenizer of another vocabulary than the model's is refused at start.
    let o = bdh(&["serve", "--model", &model(), "--tokenizer", &tok, "--port", "0"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("vocab"), "{o:?}");
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
