//! The server in process, on a tiny random model: the router driven as a client
//! would drive it over HTTP, the sessions store and the decoding loop driven
//! directly. The real-HTTP tests of `bdh serve` are the binary's
//! (`crates/bdh-cli/tests/serve/`).

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use bdh::data::Tokenizer;
use bdh::infer::{Prepared, State};
use bdh::model::bdh::BdhConfig;
use bdh::{Model, ModelConfig};
use bdh_serve::sessions::Sessions;
use bdh_serve::{Config, Server};
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;

mod disk;
mod engine;
mod health;
mod refusals;
mod sessions;

/// Tests run one at a time: they count the states the process makes, which any
/// other test running meanwhile would move.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A tiny BDH config: L2 D32 H2, N = 128 neurons per head, V = `vocab`.
fn tiny_config(vocab: usize) -> BdhConfig {
    BdhConfig {
        n_layer: 2,
        n_embd: 32,
        n_head: 2,
        mlp_internal_dim_multiplier: 8,
        vocab_size: vocab,
        dropout: 0.0,
        ..BdhConfig::default()
    }
}

fn tiny_model(vocab: usize) -> Model {
    Model::new(&ModelConfig::Bdh(tiny_config(vocab)), 7).unwrap()
}

fn tiny_prepared(vocab: usize) -> Arc<Prepared> {
    Arc::new(Prepared::new(tiny_model(vocab)).unwrap())
}

/// Moves a state to position `pos`, as if it had read that many tokens.
fn set_pos(state: &mut State, pos: usize) {
    let State::Bdh(s) = state else { panic!("a BDH state") };
    s.pos = pos;
}

/// Sessions of a model in a folder of their own, at most `max_live` in memory.
struct Store {
    sessions: Arc<Sessions>,
    dir: TempDir,
}

impl Store {
    fn new(prepared: &Arc<Prepared>, max_live: usize) -> Store {
        let dir = tempfile::tempdir().unwrap();
        Store { sessions: Arc::new(Sessions::new(prepared.clone(), max_live, dir.path()).unwrap()), dir }
    }

    /// This process's eviction folder.
    fn evicted_dir(&self) -> PathBuf {
        self.dir.path().join(format!("evicted-{}", std::process::id()))
    }
}

impl Deref for Store {
    type Target = Arc<Sessions>;
    fn deref(&self) -> &Arc<Sessions> {
        &self.sessions
    }
}

/// A server of a tiny byte-level model, its router driven in process.
struct Served {
    router: axum::Router,
    runtime: tokio::runtime::Runtime,
    _server: Server,
    dir: TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Served {
    /// The server's sessions directory.
    fn sessions_dir(&self) -> PathBuf {
        self.dir.path().join("sessions")
    }

    /// A server with `edit` applied to its config (sessions in a directory of its own).
    fn start(edit: impl FnOnce(&mut Config)) -> Served {
        let serial = serial();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            model: tiny_model(256),
            tokenizer: Tokenizer::Bytes,
            model_name: "tiny".into(),
            host: "127.0.0.1".into(),
            port: 0,
            sessions_dir: dir.path().join("sessions"),
            max_streams: 8,
            max_sessions: 8,
            max_sessions_on_disk: 64,
            max_disk_bytes: 1 << 30,
            max_connections: 64,
            read_timeout: Duration::from_secs(30),
            max_body_bytes: 1 << 16,
            max_prompt_tokens: 1024,
            max_completion_tokens: 256,
            default_max_tokens: 16,
            grace: Duration::ZERO,
            log_requests: false,
            device: None,
            state_dtype: Default::default(),
        };
        edit(&mut config);
        let server = Server::new(config).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Served { router: server.router(), runtime, _server: server, dir, _serial: serial }
    }

    /// Sends a request; (status, body as JSON, or its text as a JSON string).
    fn call(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let request = Request::builder().method(method).uri(path).body(body).unwrap();
        self.runtime.block_on(async {
            let response = self.router.clone().oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
            let text = String::from_utf8_lossy(&bytes).into_owned();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        })
    }

    fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None)
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(body))
    }

    /// A successful POST's JSON.
    fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post(path, body);
        assert_eq!(status, 200, "{path} {body}: {v}");
        v
    }

    /// A new session's id.
    fn new_session(&self) -> String {
        self.ok("/v1/sessions", &json!({}))["id"].as_str().unwrap().to_string()
    }
}
