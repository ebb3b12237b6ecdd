//! The `http` target: requests into the server's router, in process, on a tiny
//! random model. An input is a request as text: a line `METHOD PATH`, header lines
//! `Name: value`, an empty line, then the body's bytes. Every answer must carry a
//! status a client can act on (2xx, 4xx, 503 or 507, never another 5xx), a refusal
//! a JSON error with its message and type, a streamed answer end with `[DONE]`.

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use bdh::data::Tokenizer;
use bdh::{Model, ModelConfig};
use bdh_serve::{Config, Server};
use serde_json::Value;
use tower::ServiceExt;

/// A server of a tiny model and the runtime its router is driven on.
pub struct Http {
    router: axum::Router,
    runtime: tokio::runtime::Runtime,
    _server: Server,
}

/// Bytes of an answer read at most (answers here are a few KB).
const MAX_ANSWER: usize = 1 << 22;

impl Http {
    /// A server of `tests/golden/ref-tiny`'s config (random weights), its sessions
    /// in `scratch`, with small limits so that every request is quick.
    pub fn new(root: &Path, scratch: &Path) -> Result<Self, String> {
        let cfg =
            ModelConfig::from_json_file(&root.join("tests/golden/ref-tiny/config.json")).map_err(|e| e.to_string())?;
        let config = Config {
            model: Model::new(&cfg, 0).map_err(|e| e.to_string())?,
            tokenizer: Tokenizer::Bytes,
            model_name: "tiny".into(),
            host: "127.0.0.1".into(),
            port: 0,
            sessions_dir: scratch.join("sessions"),
            max_streams: 4,
            max_sessions: 4,
            max_sessions_on_disk: 16,
            max_disk_bytes: 1 << 24,
            max_connections: 4,
            read_timeout: Duration::from_secs(2),
            max_body_bytes: 4096,
            max_prompt_tokens: 256,
            max_completion_tokens: 16,
            default_max_tokens: 8,
            grace: Duration::ZERO,
            log_requests: false,
            device: None,
            state_dtype: Default::default(),
        };
        let server = Server::new(config).map_err(|e| format!("{e:#}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        Ok(Http { router: server.router(), runtime, _server: server })
    }

    /// Sends the request `input` spells; an answer that breaks the rules above
    /// panics, a refusal is the error.
    pub fn run(&self, input: &[u8]) -> Result<(), String> {
        let request = parse(input)?;
        let (status, streamed, bytes) = self.runtime.block_on(async {
            let answer = self.router.clone().oneshot(request).await.expect("the router never fails");
            let streamed = answer.headers().get("content-type").is_some_and(|v| v == "text/event-stream");
            let status = answer.status().as_u16();
            (status, streamed, axum::body::to_bytes(answer.into_body(), MAX_ANSWER).await)
        });
        let bytes = bytes.unwrap_or_else(|e| panic!("status {status}: its body could not be read: {e}"));
        let text = String::from_utf8_lossy(&bytes);
        let json = || serde_json::from_slice::<Value>(&bytes);
        match status {
            200..=299 if streamed => {
                assert!(text.trim_end().ends_with("data: [DONE]"), "a stream that does not end with [DONE]: {text}");
                Ok(())
            }
            200..=299 => json().map(drop).map_err(|e| panic!("status {status}, a body not JSON ({e}): {text}")),
            400..=499 | 503 | 507 => {
                let v = json().unwrap_or_else(|e| panic!("status {status}, a refusal not JSON ({e}): {text}"));
                let (message, kind) = (&v["error"]["message"], &v["error"]["type"]);
                assert!(
                    message.is_string() && kind.is_string(),
                    "status {status}, a refusal without its fields: {text}"
                );
                Err(format!("{status} {kind}: {}", message.as_str().unwrap_or_default()))
            }
            _ => panic!("status {status}: {text}"),
        }
    }
}

/// The request an input spells, or why it spells none.
fn parse(input: &[u8]) -> Result<Request<Body>, String> {
    let split = input.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(at) => (&input[..at], &input[at + 2..]),
        None => (input, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default();
    let (method, path) = first.split_once(' ').ok_or("no `METHOD PATH` line")?;
    let mut request = Request::builder().method(method.as_bytes()).uri(path);
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("a header line without `:`")?;
        request = request.header(name.trim(), value.trim());
    }
    request.body(Body::from(body.to_vec())).map_err(|e| format!("not a request: {e}"))
}

/// Requests of every route, the seeds of the target.
pub fn seeds() -> Vec<Vec<u8>> {
    let json = "content-type: application/json";
    [
        format!("POST /v1/completions\n{json}\n\n{{\"prompt\": \"ROMEO:\", \"max_tokens\": 4, \"temperature\": 0}}"),
        format!(
            "POST /v1/completions\n{json}\n\n{{\"prompt\": [\"a\"], \"max_tokens\": 3, \"stream\": true, \"seed\": 5, \
             \"top_k\": 3, \"top_p\": 0.9, \"min_p\": 0.1, \"repetition_penalty\": 1.2, \"stop\": [\"x\", \"\\n\"]}}"
        ),
        format!(
            "POST /v1/chat/completions\n{json}\n\n{{\"messages\": [{{\"role\": \"system\", \"content\": \"A play.\"}}, \
             {{\"role\": \"user\", \"content\": \"Speak.\"}}], \"max_completion_tokens\": 5, \"stream\": true}}"
        ),
        format!("POST /v1/completions\n{json}\n\n{{\"prompt\": \"a\", \"max_tokens\": 2, \"session\": \"sess-1\"}}"),
        "POST /v1/sessions\n\n".into(),
        "POST /v1/sessions/sess-1/fork\n\n{}".into(),
        format!("POST /v1/sessions/sess-2/save\n{json}\n\n{{\"name\": \"saved-1\"}}"),
        format!("POST /v1/sessions/restore\n{json}\n\n{{\"name\": \"saved-1\"}}"),
        "GET /v1/sessions/sess-1\n\n".into(),
        "DELETE /v1/sessions/sess-3\n\n".into(),
        "GET /v1/sessions\n\n".into(),
        "GET /health\naccept: */*\n\n".into(),
        "GET /v1/models\n\n".into(),
        "POST /v1/completions\ncontent-length: 99999999\n\n{}".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}
