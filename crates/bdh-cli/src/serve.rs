//! `bdh serve`: the flags of the HTTP server of the `bdh_serve` crate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::model_args::ModelArgs;

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
    /// Sessions evicted to disk at most; past it a new session gets 507.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    max_sessions_on_disk: u64,
    /// Bytes of evicted sessions' files at most; past it a new session gets 507.
    #[arg(long, default_value_t = 16 << 30)]
    max_disk_bytes: u64,
    /// Connections served at once; more are answered 503 and closed (keep it under
    /// the process's limit of open files).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_connections: u64,
    /// Seconds a client has to send a request's headers, and again its body; a
    /// connection silent for longer is closed (a body too slow gets 408).
    #[arg(long, default_value_t = 30.0)]
    read_timeout_seconds: f64,
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
    /// No line on stderr per request (method, path, status, tokens generated, duration).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    threads: crate::args::ThreadsArgs,
    /// Where the streams run: the CPU, or a GPU (their states there, room for
    /// --max-streams of them made at the start).
    #[command(flatten)]
    device: crate::device::DeviceArgs,
    #[command(flatten)]
    state: crate::args::StateDtypeArgs,
}

/// Longest wait a flag may ask for: a deadline this far ahead is still one the
/// clock can hold.
const MAX_SECONDS: f64 = 86_400.0;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.threads.size_pool()?;
    let grace = seconds("--grace-seconds", args.grace_seconds)?;
    let read_timeout = seconds("--read-timeout-seconds", args.read_timeout_seconds)?;
    anyhow::ensure!(!read_timeout.is_zero(), "--read-timeout-seconds must be more than 0");
    anyhow::ensure!(
        args.default_max_tokens <= args.max_completion_tokens,
        "--default-max-tokens is over --max-completion-tokens"
    );
    let model = args.model.load()?;
    let tokenizer = args.model.tokenizer(args.tokenizer.as_deref(), &model.config())?;
    let device = match args.state.is_f32() {
        true => args.device.streams(&model, args.max_streams as usize)?,
        false => {
            args.device.cpu_only(&format!("--state-dtype {}", args.state.state_dtype))?;
            None
        }
    };
    bdh_serve::run(bdh_serve::Config {
        model,
        tokenizer,
        model_name: args.model_name.unwrap_or_else(|| name_of(&args.model.model)),
        host: args.host,
        port: args.port,
        sessions_dir: args.sessions_dir,
        max_streams: args.max_streams as usize,
        max_sessions: args.max_sessions as usize,
        max_sessions_on_disk: args.max_sessions_on_disk as usize,
        max_disk_bytes: args.max_disk_bytes,
        max_connections: args.max_connections as usize,
        read_timeout,
        max_body_bytes: args.max_body_bytes,
        max_prompt_tokens: args.max_prompt_tokens,
        max_completion_tokens: args.max_completion_tokens,
        default_max_tokens: args.default_max_tokens,
        grace,
        log_requests: !args.quiet,
        device,
        state_dtype: args.state.state_dtype,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A wait given in seconds by `flag`: a number ≥ 0 a timer can hold.
fn seconds(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        secs.is_finite() && (0.0..=MAX_SECONDS).contains(&secs),
        "{flag} must be a number from 0 to {MAX_SECONDS} (a day)"
    );
    Ok(Duration::from_secs_f64(secs))
}

/// A model's name from its path: the run or checkpoint directory, or the file's stem.
fn name_of(path: &std::path::Path) -> String {
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map_or_else(|| "bdh".into(), |n| n.to_string_lossy().into_owned())
}
