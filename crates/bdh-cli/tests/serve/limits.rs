//! Every refusal is JSON with its status; busy streams get 429 and a client that
//! leaves frees its slot; SIGTERM finishes or cancels streams.

use std::io::Read;

use super::*;

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
    // Nothing written: the eviction folder is made only at the first eviction.
    let written = std::fs::read_dir(s.sessions_dir()).map_or(0, |d| d.count());
    assert_eq!(written, 0, "a refused name wrote into the sessions directory");
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
fn a_prompt_outside_a_small_vocabulary_gets_400_and_the_streams_in_flight_go_on() {
    let tmp = temp("serve-vocab");
    let p = |name: &str| tmp.path().join(name).display().to_string();
    let (data, run) = (p("text.txt"), p("run"));
    // Bytes below 64 only: a model of 64 tokens reads all of them.
    let corpus: String = (0..400).map(|i| format!("{} <=> {};\n", i % 13, (i * 7) % 31)).collect();
    std::fs::write(&data, &corpus).unwrap();
    let mut a = vec!["train", "--preset", "tiny", "--data", &data, "--out", &run, "--quiet"];
    a.extend(["--set", "model.vocab_size=64", "--set", "training.max_steps=2", "--set", "training.eval_batches=1"]);
    let o = bdh(&a);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = Server::start_model(&run, &[]);
    let streams: Vec<_> = (0..2)
        .map(|i| start_stream(&s, &json!({"prompt": "1 <=> ", "max_tokens": 1500, "seed": i, "temperature": 1})))
        .collect();
    for prompt in ["ab", "1 <=> z", "\u{7f}"] {
        let (status, v) = s.post("/v1/completions", &json!({"prompt": prompt, "max_tokens": 5}));
        assert_eq!(status, 400, "{prompt:?}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("vocabulary of 64"), "{v}");
    }
    assert_eq!(s.get("/health").1["streams"], 2, "both streams still in flight");
    for reader in streams {
        let (_, reason, done) = rest_of_stream(reader);
        assert_eq!((reason.as_str(), done), ("length", true), "a stream went on to its end");
    }
}

/// Reads until the server closes the connection (a reset counts): what it sent.
fn until_closed(mut conn: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn connect(s: &Server) -> TcpStream {
    let conn = TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    conn
}

/// `/health`'s status over a connection of its own, or None if it was refused.
fn health(s: &Server) -> Option<u16> {
    let mut conn = TcpStream::connect(s.base.trim_start_matches("http://")).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(40))).ok()?;
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let answer = until_closed(conn);
    answer.split(' ').nth(1)?.parse().ok()
}

#[test]
fn silent_and_half_sent_clients_are_dropped_after_the_read_timeout() {
    let s = Server::start(&["--read-timeout-seconds", "1"]);
    let t = Instant::now();
    let mut headers = connect(&s);
    headers.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le").unwrap();
    let mut body = connect(&s);
    body.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"prompt\": ").unwrap();
    let silent = connect(&s);
    let answered = until_closed(body);
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
    until_closed(headers);
    until_closed(silent);
    let took = t.elapsed();
    println!("all three dropped after {took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(health(&s), Some(200));
}

#[test]
fn connections_past_the_cap_are_refused_at_once_and_health_answers_within_the_read_timeout() {
    let s = Server::start(&["--max-connections", "16", "--read-timeout-seconds", "2"]);
    let t = Instant::now();
    let mut silent: Vec<TcpStream> = (0..300).map(|_| connect(&s)).collect();
    // The first 16 hold the server's places; the rest are told so and closed at once.
    let over = silent.split_off(16);
    let refused = over.into_iter().map(until_closed).filter(|a| a.starts_with("HTTP/1.1 503")).count();
    println!("{refused} of 284 answered 503, within {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(2), "refused at once, not after the read timeout");
    while health(&s) != Some(200) {
        assert!(t.elapsed() < Duration::from_secs(10), "/health answers once the silent ones are dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("/health answered after {:?}", t.elapsed());
    drop(silent);
}

#[test]
fn sigterm_ends_within_the_grace_period_while_clients_hold_half_sent_requests() {
    // A stream far longer than the grace period lasts, however fast the machine.
    let mut s = Server::start(&["--grace-seconds", "1", "--max-completion-tokens", "200000"]);
    let mut body = connect(&s);
    body.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n{\"prompt\": ").unwrap();
    let mut headers = connect(&s);
    headers.write_all(b"GET /health HTTP/1.1\r\nHo").unwrap();
    let _silent = connect(&s);
    let stream = start_stream(&s, &json!({"prompt": "ROMEO:", "max_tokens": 200000}));
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    sigterm(&s.child);
    assert_eq!(exits_within(&mut s.child, Duration::from_secs(6)), Some(0));
    println!("exited {:?} after SIGTERM", t.elapsed());
    let (_, reason, done) = rest_of_stream(stream);
    assert_eq!((reason.as_str(), done), ("cancelled", true), "the stream in flight was told");
}
