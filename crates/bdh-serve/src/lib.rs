//! An OpenAI-compatible HTTP server for BDH models whose sessions keep their state ρ
//! between requests, decoding every stream in flight together.
//!
//! The pieces, in the order a request meets them:
//! - [`routes`]: the endpoints (completions, chat completions, models, health,
//!   sessions) and [`App`], what every handler shares;
//! - [`api`]: the request fields read, checked and bounded, the chat template, and
//!   the JSON of the answers;
//! - [`sessions`]: named states kept between requests, the least recently used
//!   evicted to disk; [`lease`]: a session's state checked out by a stream, put
//!   back when the lease is dropped;
//! - [`engine`]: the decoding loop, one thread that advances every live stream with
//!   one batched step a turn;
//! - [`error`]: a refusal as an HTTP status and an OpenAI-style JSON body;
//! - [`log`]: one line on standard error per request;
//! - the accept loop (private): read timeouts, a cap on connections, and a
//!   shutdown bounded by the grace period.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//!
//! use bdh::data::Tokenizer;
//! use bdh::{Model, ModelConfig};
//!
//! let config = bdh_serve::Config {
//!     model: Model::new(&ModelConfig::Bdh(Default::default()), 1)?,
//!     tokenizer: Tokenizer::Bytes,
//!     model_name: "bdh".into(),
//!     host: "127.0.0.1".into(),
//!     port: 8080,
//!     sessions_dir: "bdh-sessions".into(),
//!     max_streams: 64,
//!     max_sessions: 64,
//!     max_sessions_on_disk: 1024,
//!     max_disk_bytes: 16 << 30,
//!     max_connections: 512,
//!     read_timeout: Duration::from_secs(30),
//!     max_body_bytes: 1 << 20,
//!     max_prompt_tokens: 65536,
//!     max_completion_tokens: 4096,
//!     default_max_tokens: 256,
//!     grace: Duration::from_secs(10),
//!     log_requests: true,
//!     device: None,
//!     state_dtype: Default::default(),
//! };
//! // Prints the address it listens on and serves until SIGTERM or Ctrl-C.
//! bdh_serve::run(config)?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Server::router`] gives the router without binding a socket, to drive it in
//! process.

pub mod api;
pub mod engine;
pub mod error;
pub mod lease;
mod listen;
pub mod log;
pub mod routes;
pub mod sessions;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use bdh::data::Tokenizer;
use bdh::infer::Prepared;
use bdh::Model;

use api::Limits;
pub use routes::App;
use sessions::Sessions;

/// Session files read or written at once, each on a blocking thread of its own so
/// that no disk holds up the thread that answers `/health`.
const DISK_JOBS: usize = 4;

/// Every setting of a server: what `bdh serve`'s flags give.
pub struct Config {
    /// The model served (BDH: its streams step together with a state of fixed size).
    pub model: Model,
    /// How prompts become tokens and tokens text.
    pub tokenizer: Tokenizer,
    /// The model's name in answers.
    pub model_name: String,
    /// Address to listen on.
    pub host: String,
    /// Port to listen on (0: any free port).
    pub port: u16,
    /// Where sessions are saved, restored from and evicted to.
    pub sessions_dir: PathBuf,
    /// Streams decoded at once; more requests get 429.
    pub max_streams: usize,
    /// Sessions held in memory; past it the least recently used is evicted to disk.
    pub max_sessions: usize,
    /// Sessions evicted to disk at most; an eviction past it is refused with 507.
    pub max_sessions_on_disk: usize,
    /// Bytes of evicted sessions' files at most; an eviction past it is refused with 507.
    pub max_disk_bytes: u64,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, and again its body;
    /// a connection silent for longer is closed (a body too slow gets 408).
    pub read_timeout: Duration,
    /// Bytes a request body may have; larger ones get 413.
    pub max_body_bytes: usize,
    /// Tokens a prompt may have (after the chat template); longer ones get 413.
    pub max_prompt_tokens: usize,
    /// The largest `max_tokens` a request may ask for; more gets 400.
    pub max_completion_tokens: usize,
    /// `max_tokens` of a request that gives none.
    pub default_max_tokens: usize,
    /// How long a shutdown waits for streams in flight before cancelling them.
    pub grace: Duration,
    /// One line on standard error per request (method, path, status, tokens
    /// generated, duration); off with `bdh serve --quiet`.
    pub log_requests: bool,
    /// Where the streams run: on a device (room for `max_streams` of them, made by
    /// e.g. `bdh_gpu::streams`), or `None` for the CPU.
    pub device: Option<Box<dyn bdh::engine::Streams>>,
    /// How every stream's and session's ρ is stored on the CPU (f32, or 16 bits: half
    /// the memory and traffic per stream); a device keeps f32.
    pub state_dtype: bdh::model::bdh::StateDtype,
}

/// A server ready to take requests: what the handlers share and the decoding loop's
/// thread. Dropping it closes the loop (cancelling the streams left) and deletes the
/// evicted sessions' files.
pub struct Server {
    app: Arc<App>,
    engine: Option<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    host: String,
    port: u16,
    grace: Duration,
    max_connections: usize,
    device: String, // where the streams run
}

impl Server {
    /// Prepares the model, checks that every stream's and session's state fits in
    /// memory, prepares the sessions directory and starts the decoding loop.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.device.is_none() || config.state_dtype == bdh::model::bdh::StateDtype::F32,
            "a {} synapse state runs on the CPU: a device keeps its streams' states in f32",
            config.state_dtype
        );
        let prepared = Prepared::new(config.model)?.with_state_dtype(config.state_dtype)?;
        anyhow::ensure!(
            matches!(prepared, Prepared::Bdh(_)),
            "bdh serve runs BDH models, whose streams step together with a state of fixed size; this is a GPT \
             (use bdh generate for it)"
        );
        let state_bytes = prepared.state_bytes();
        // Every stream may hold a state of its own and every session one in memory.
        let states = config.max_streams.saturating_add(config.max_sessions);
        let what = format!("{states} states of {state_bytes} bytes (--max-streams + --max-sessions)");
        bdh::memory::ensure_fits(state_bytes.saturating_mul(states), &what)?;
        if let Some(device) = &config.device {
            anyhow::ensure!(
                device.slots() >= config.max_streams,
                "the device holds {} streams, fewer than --max-streams {}",
                device.slots(),
                config.max_streams
            );
        }
        let where_ = config.device.as_ref().map_or_else(|| "CPU".to_string(), |d| d.device());
        let prepared = Arc::new(prepared);
        let dir = &config.sessions_dir;
        let sessions = Sessions::new(prepared.clone(), config.max_sessions, dir)
            .with_context(|| format!("preparing the sessions directory {}", dir.display()))?
            .limit_disk(config.max_sessions_on_disk, config.max_disk_bytes);
        let sessions = Arc::new(sessions);
        let (jobs, queue) = std::sync::mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let engine = {
            let (prepared, cancel) = (prepared.clone(), cancel.clone());
            let device = config.device;
            std::thread::Builder::new()
                .name("decode".into())
                .spawn(move || engine::run(prepared, queue, cancel, device))?
        };
        let limits = Limits {
            max_prompt_tokens: config.max_prompt_tokens,
            max_tokens: config.max_completion_tokens,
            default_max_tokens: config.default_max_tokens,
            vocab_size: prepared.config().vocab_size(),
        };
        let app = Arc::new(App {
            jobs: Mutex::new(jobs),
            sessions,
            prepared,
            limits,
            max_body_bytes: config.max_body_bytes,
            read_timeout: config.read_timeout,
            disk_jobs: tokio::sync::Semaphore::new(DISK_JOBS),
            max_streams: config.max_streams,
            streams: Arc::new(AtomicUsize::new(0)),
            model_name: config.model_name,
            tokenizer: config.tokenizer,
            draining: AtomicBool::new(false),
            ids: AtomicU64::new(1),
            log_requests: config.log_requests,
        });
        Ok(Server {
            app,
            engine: Some(engine),
            cancel,
            host: config.host,
            port: config.port,
            grace: config.grace,
            max_connections: config.max_connections,
            device: where_,
        })
    }

    /// The router of every endpoint, to serve or to drive in process.
    pub fn router(&self) -> axum::Router {
        routes::router(self.app.clone())
    }

    /// Binds the address, prints it on stdout, and serves until SIGTERM or Ctrl-C,
    /// after which no new request is taken and the streams in flight are finished
    /// (cancelled past the grace period).
    pub fn serve(mut self) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind((self.host.as_str(), self.port))
                .await
                .with_context(|| format!("listening on {}:{}", self.host, self.port))?;
            let addr = listener.local_addr()?;
            println!("listening on http://{addr}");
            std::io::stdout().flush()?;
            eprintln!(
                "model {} on the {} · state {} bytes a session · up to {} streams",
                self.app.model_name,
                self.device,
                self.app.prepared.state_bytes(),
                self.app.max_streams
            );
            let limits = listen::Connections { max: self.max_connections, read_timeout: self.app.read_timeout };
            let stop = shutdown(self.app.clone(), self.grace);
            listen::serve(listener, self.router(), limits, stop, self.grace, self.cancel.clone()).await;
            anyhow::Ok(())
        })?;
        self.close();
        eprintln!("shut down");
        Ok(())
    }

    /// Ends the decoding loop once no request is left to send it one, and deletes the
    /// evicted sessions' files.
    fn close(&mut self) {
        let Some(engine) = self.engine.take() else { return };
        // Closing the queue lets the loop end; cancelling ends the streams left.
        *self.app.jobs.lock().unwrap_or_else(|e| e.into_inner()) = std::sync::mpsc::channel().0;
        self.cancel.store(true, Ordering::SeqCst);
        let _ = engine.join();
        self.app.sessions.clear_evicted();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.close();
    }
}

/// Serves `config` until SIGTERM or Ctrl-C: [`Server::new`], then [`Server::serve`].
pub fn run(config: Config) -> anyhow::Result<()> {
    Server::new(config)?.serve()
}

/// Resolves at SIGTERM or Ctrl-C, after which no new request is taken (the streams
/// in flight go on for `grace`, then are cancelled by the accept loop).
async fn shutdown(app: Arc<App>, grace: Duration) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    app.draining.store(true, Ordering::SeqCst);
    eprintln!(
        "shutting down: finishing {} stream(s), cancelling what is left after {:.0} s",
        app.streams.load(Ordering::SeqCst),
        grace.as_secs_f64()
    );
}
