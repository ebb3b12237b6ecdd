//! One line on stderr per request (method, path, status, tokens, duration), none
//! under `--quiet`; a server that fails to start leaves no folders behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{model, temp};

/// Serves with `extra` flags, asks for a completion of 5 tokens, a stream of 3 and
/// /health, stops the server, and gives back what it wrote on stderr.
fn serve_and_log(extra: &[&str]) -> String {
    let dir = temp("serve-log");
    let (sessions, log) = (dir.path().join("sessions"), dir.path().join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_bdh"))
        .args(["serve", "--model", &model(), "--port", "0", "--sessions-dir", sessions.to_str().unwrap()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_string();
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let body = r#"{"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0}"#;
    assert_eq!(agent.post(format!("{base}/v1/completions")).send(body).unwrap().status(), 200);
    let stream = r#"{"prompt": "ROMEO:", "max_tokens": 3, "temperature": 0, "stream": true}"#;
    let mut r = agent.post(format!("{base}/v1/completions")).send(stream).unwrap();
    r.body_mut().read_to_string().unwrap();
    assert_eq!(agent.get(format!("{base}/health")).call().unwrap().status(), 200);
    assert_eq!(agent.get(format!("{base}/nowhere")).call().unwrap().status(), 404);
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(20), "the server exits after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::read_to_string(&log).unwrap()
}

/// `POST /v1/completions 200 5 tokens 12.3 ms`: the line's parts, the duration a number.
fn logged(err: &str, start: &str) -> bool {
    err.lines().any(|l| {
        l.strip_prefix(start)
            .and_then(|rest| rest.trim().strip_suffix(" ms"))
            .is_some_and(|ms| ms.parse::<f64>().is_ok_and(|ms| ms >= 0.0))
    })
}

#[test]
fn each_request_is_one_line_on_stderr_unless_quiet() {
    let err = serve_and_log(&[]);
    assert!(logged(&err, "POST /v1/completions 200 5 tokens "), "{err}");
    assert!(logged(&err, "POST /v1/completions 200 3 tokens "), "a stream's, once it ended: {err}");
    assert!(logged(&err, "GET /health 200 "), "{err}");
    assert!(logged(&err, "GET /nowhere 404 "), "{err}");
    let err = serve_and_log(&["--quiet"]);
    assert!(!err.contains("/v1/completions") && !err.contains("/health"), "{err}");
    assert!(err.contains("shut down"), "--quiet keeps the other messages: {err}");
}

/// A server that cannot start (its port taken) leaves no sessions directory and no
/// eviction folder behind.
#[test]
fn a_server_that_fails_to_start_leaves_no_folders() {
    let dir = temp("serve-taken");
    let sessions = dir.path().join("sessions");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let o = Command::new(env!("CARGO_BIN_EXE_bdh"))
        .args(["serve", "--model", &model(), "--port", &port, "--sessions-dir", sessions.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("in use"), "{err}");
    assert!(!sessions.exists(), "{:?}", std::fs::read_dir(dir.path()).unwrap().collect::<Vec<_>>());
}
