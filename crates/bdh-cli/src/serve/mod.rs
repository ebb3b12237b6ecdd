//! `bdh serve`: an OpenAI-compatible HTTP server whose sessions keep their state ρ
//! between requests, decoding every stream in flight together.

mod api;
mod engine;
mod error;
mod routes;
mod sessions;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bdh::infer::Prepared;

use crate::model_args::ModelArgs;
use api::Limits;
use routes::App;
use sessions::Sessions;

/// Serves a BDH model over HTTP with the OpenAI API (/v1/completions,
/// /v1/chat/completions, /v1/models, /health) and sessions (/v1/sessions) that keep
/// their state between requests. Prints the address it listens on, then serves
/// until SIGTERM or Ctrl-C, which finishes the streams in flight (cancelling those
/// left after --grace-seconds).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The model's name in answers (default: its directory's or file's name).
    #[arg(long)]
    model_name: Option<String>,
    /// The model's BPE tokenizer (a tokenizer.json); by default the one of its run
    /// or checkpoint directory, else bytes.
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Where sessions are saved, restored from and evicted to.
    #[arg(long, default_value = "bdh-sessions")]
    sessions_dir: PathBuf,
    /// Streams decoded at once; more requests get 429.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_streams: u64,
    /// Sessions held in memory; past it the least recently used is evicted to disk.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_sessions: u64,
    /// Bytes a request body may have; larger ones get 413.
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Tokens a prompt may have (after the chat template); longer ones get 413.
    #[arg(long, default_value_t = 65536)]
    max_prompt_tokens: usize,
    /// The largest max_tokens a request may ask for; more gets 400.
    #[arg(long, default_value_t = 4096)]
    max_completion_tokens: usize,
    /// max_tokens of a request that gives none.
    #[arg(long, default_value_t = 256)]
    default_max_tokens: usize,
    /// Seconds a shutdown waits for streams in flight before cancelling them.
    #[arg(long, default_value_t = 10.0)]
    grace_seconds: f64,
    /// Threads of the decoding loop's products (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    crate::set_threads(args.threads)?;
    anyhow::ensure!(
        args.grace_seconds.is_finite() && args.grace_seconds >= 0.0,
        "--grace-seconds must be a number ≥ 0"
    );
    anyhow::ensure!(
        args.default_max_tokens <= args.max_completion_tokens,
        "--default-max-tokens is over --max-completion-tokens"
    );
    let prepared = Prepared::new(args.model.load()?)?;
    anyhow::ensure!(
        matches!(prepared, Prepared::Bdh(_)),
        "bdh serve runs BDH models, whose streams step together with a state of fixed size; this is a GPT \
         (use bdh generate for it)"
    );
    let tokenizer = args.model.tokenizer(args.tokenizer.as_deref(), &prepared.config())?;
    let state_bytes = prepared.state()?.bytes();
    // Every stream may hold a state of its own and every session one in memory.
    let states = (args.max_streams + args.max_sessions) as usize;
    let what = format!("{states} states of {state_bytes} bytes (--max-streams + --max-sessions)");
    bdh::memory::ensure_fits(state_bytes.saturating_mul(states), &what)?;
    let model_name = args.model_name.clone().unwrap_or_else(|| name_of(&args.model.model));
    let prepared = Arc::new(prepared);
    let dir = &args.sessions_dir;
    let sessions = Sessions::new(prepared.clone(), args.max_sessions as usize, dir)
        .with_context(|| format!("preparing the sessions directory {}", dir.display()))?;
    let sessions = Arc::new(Mutex::new(sessions));
    let (jobs, queue) = std::sync::mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let engine = {
        let (prepared, sessions, cancel) = (prepared.clone(), sessions.clone(), cancel.clone());
        std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || engine::run(prepared, sessions, queue, cancel))?
    };
    let app = Arc::new(App {
        jobs: Mutex::new(jobs),
        sessions: sessions.clone(),
        prepared,
        limits: Limits {
            max_prompt_tokens: args.max_prompt_tokens,
            max_tokens: args.max_completion_tokens,
            default_max_tokens: args.default_max_tokens,
        },
        max_streams: args.max_streams as usize,
        streams: Arc::new(AtomicUsize::new(0)),
        model_name,
        tokenizer,
        draining: AtomicBool::new(false),
        ids: AtomicU64::new(1),
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("listening on {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        println!("listening on http://{addr}");
        std::io::stdout().flush()?;
        eprintln!(
            "model {} · state {} bytes a session · up to {} streams",
            app.model_name, state_bytes, app.max_streams
        );
        let grace = Duration::from_secs_f64(args.grace_seconds);
        let shutdown = shutdown(app.clone(), cancel.clone(), grace);
        axum::serve(listener, routes::router(app.clone(), args.max_body_bytes))
            .with_graceful_shutdown(shutdown)
            .await
            .context("serving")
    })?;
    // No request is left: close the queue and let the loop end.
    *app.jobs.lock().unwrap_or_else(|e| e.into_inner()) = std::sync::mpsc::channel().0;
    cancel.store(true, Ordering::SeqCst);
    let _ = engine.join();
    sessions::lock(&sessions).clear_evicted();
    eprintln!("shut down");
    Ok(ExitCode::SUCCESS)
}

/// Resolves at SIGTERM or Ctrl-C, after which no new request is taken; the streams
/// in flight go on for `grace`, then are cancelled.
async fn shutdown(app: Arc<App>, cancel: Arc<AtomicBool>, grace: Duration) {
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
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        cancel.store(true, Ordering::SeqCst);
    });
}

/// A model's name from its path: the run or checkpoint directory, or the file's stem.
fn name_of(path: &std::path::Path) -> String {
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map_or_else(|| "bdh".into(), |n| n.to_string_lossy().into_owned())
}
