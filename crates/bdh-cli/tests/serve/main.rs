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

#[path = "../common/mod.rs"]
mod common;
use common::{bdh, golden, temp};

mod answers;
mod limits;
mod log;
mod sessions;

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

/// What `bdh generate --no-echo` prints for `prompt` with `flags` (the continuation
/// alone), without its final newline.
fn generate(prompt: &str, flags: &[&str]) -> String {
    generate_with(&model(), prompt, flags)
}

fn generate_with(model: &str, prompt: &str, flags: &[&str]) -> String {
    let mut args = vec!["generate", "--model", model, "--prompt", prompt, "--no-echo"];
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
