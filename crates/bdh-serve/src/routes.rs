//! The HTTP endpoints: completions and chat completions (whole or as server-sent
//! events), models, health, and sessions.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bdh::data::Tokenizer;
use bdh::infer::{Prepared, Sampler};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::sync::Semaphore;

use crate::api::{Kind, Limits, Meta, Request};
use crate::engine::{Event, Job, Slot};
use crate::error::ApiError;
use crate::lease::Lease;
use crate::log::Logged;
use crate::sessions::Sessions;

use bdh::model::MAX_POSITION;

/// What every handler shares.
pub struct App {
    /// Requests for the decoding loop.
    pub jobs: Mutex<Sender<Job>>,
    /// The sessions.
    pub sessions: Arc<Sessions>,
    /// The model, for fresh states.
    pub prepared: Arc<Prepared>,
    /// Limits on requests.
    pub limits: Limits,
    /// Bytes a request body may have.
    pub max_body_bytes: usize,
    /// How long a client has to send a request's body.
    pub read_timeout: Duration,
    /// Permits for the session operations that read or write files.
    pub disk_jobs: Semaphore,
    /// Streams at most at once.
    pub max_streams: usize,
    /// Streams in flight.
    pub streams: Arc<AtomicUsize>,
    /// The model's name in answers.
    pub model_name: String,
    /// How prompts become tokens and tokens text.
    pub tokenizer: Tokenizer,
    /// Set at shutdown: new requests are refused.
    pub draining: AtomicBool,
    /// Numbers the answers' ids.
    pub ids: AtomicU64,
    /// Whether each request is logged on standard error.
    pub log_requests: bool,
}

/// The router of every endpoint.
pub fn router(app: Arc<App>) -> Router {
    let (max_body_bytes, read_timeout, log) = (app.max_body_bytes, app.read_timeout, app.log_requests);
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/v1/sessions", post(create_session).get(list_sessions))
        .route("/v1/sessions/restore", post(restore_session))
        .route("/v1/sessions/{id}", get(session_info).delete(delete_session))
        .route("/v1/sessions/{id}/fork", post(fork_session))
        .route("/v1/sessions/{id}/save", post(save_session))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError { status: StatusCode::METHOD_NOT_ALLOWED, message: "method not allowed here".into() }
        })
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state((max_body_bytes, read_timeout), read_body))
        .layer(axum::middleware::from_fn_with_state(log, crate::log::requests))
        .with_state(app)
}

/// Reads the whole body before the handler runs, refusing one whose
/// Content-Length is over the limit before reading any of it (the body limit alone
/// would wait for bytes a lying client never sends), one that grows past the limit
/// (413), and one not sent within the read timeout (408, and the connection is
/// closed: a client that stalls half-way holds nothing for long).
async fn read_body(
    State((limit, wait)): State<(usize, Duration)>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let claimed = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if claimed.is_some_and(|n| n > limit as u64) {
        return too_large().into_response();
    }
    let deadline = tokio::time::Instant::now() + wait;
    let (parts, body) = req.into_parts();
    let mut chunks = body.into_data_stream();
    let mut read = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(None) => break,
            Ok(Some(Ok(chunk))) if read.len() + chunk.len() <= limit => read.extend_from_slice(&chunk),
            Ok(Some(Ok(_))) => return too_large().into_response(),
            Ok(Some(Err(e))) => return ApiError::bad(format!("reading the request body: {e}")).into_response(),
            Err(_) => {
                let message = format!("the request body did not arrive within {:.0} s", wait.as_secs_f64());
                let mut refused = ApiError { status: StatusCode::REQUEST_TIMEOUT, message }.into_response();
                refused.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return refused;
            }
        }
    }
    next.run(axum::extract::Request::from_parts(parts, Body::from(read))).await
}

/// Runs `work`, a session operation that may read or write files, on a blocking
/// thread (at most [`App::disk_jobs`] at once), so that the thread answering
/// other requests, `/health` among them, never waits on a disk.
async fn on_disk<T: Send + 'static>(
    app: &Arc<App>,
    work: impl FnOnce(&App) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _permit = app.disk_jobs.acquire().await.map_err(|_| ApiError::unavailable("the server is shutting down"))?;
    let app = app.clone();
    tokio::task::spawn_blocking(move || work(&app)).await.unwrap_or_else(|e| {
        eprintln!("a session operation failed: {e}");
        Err(ApiError::internal("a session operation failed"))
    })
}

/// A session id from the path, or the JSON refusal of a path that holds none (one
/// not UTF-8 once decoded).
struct Id(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Id {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| ApiError::bad(format!("the session id in the path: {}", e.body_text())))?;
        Ok(Id(id))
    }
}

fn too_large() -> ApiError {
    ApiError::too_large("the request body is larger than this server accepts (--max-body-bytes)")
}

/// A body as the handlers take it: its bytes, or why they could not be read.
type Raw = Result<Bytes, BytesRejection>;

/// The body's bytes, or the error a body too large or unreadable deserves.
fn bytes(body: Raw) -> Result<Bytes, ApiError> {
    body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        _ => ApiError::bad(r.body_text()),
    })
}

/// The request's log line, to which a completion adds the tokens it generated.
type Log = Extension<Arc<Logged>>;

async fn completions(State(app): State<Arc<App>>, Extension(log): Log, body: Raw) -> Response {
    complete(app, body, Kind::Text, log).await.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(app): State<Arc<App>>, Extension(log): Log, body: Raw) -> Response {
    complete(app, body, Kind::Chat, log).await.unwrap_or_else(IntoResponse::into_response)
}

/// Checks a request, hands it to the decoding loop and answers, whole or streamed.
async fn complete(app: Arc<App>, body: Raw, kind: Kind, log: Arc<Logged>) -> Result<Response, ApiError> {
    let spec = Request::parse(&bytes(body)?)?.spec(kind, &app.limits, &app.tokenizer)?;
    if app.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let slot = Slot::take(&app.streams, app.max_streams)
        .ok_or_else(|| ApiError::busy(format!("all {} streams are busy; try again later", app.max_streams)))?;
    let sampler = Sampler::new(spec.sampling).map_err(|e| ApiError::bad(e.to_string()))?;
    let state = match &spec.session {
        Some(id) => {
            let id = id.clone();
            on_disk(&app, move |app| app.sessions.check_out(&id)).await?
        }
        None => Lease::fresh(app.prepared.state().map_err(|e| ApiError::internal(e.to_string()))?),
    };
    let end = state.pos().saturating_add(spec.prompt.len()).saturating_add(spec.generation.max_tokens);
    if end > MAX_POSITION {
        let at = state.pos();
        return Err(ApiError::bad(format!(
            "the session is at position {at}; this request could take it past 2^24 tokens, where positions \
             are no longer exact in f32: start a new session"
        )));
    }
    let (events, rx) = unbounded_channel();
    let job = Job { prompt: spec.prompt, generation: spec.generation, sampler, state, events, _slot: slot };
    // A job the loop no longer takes is dropped here, its state back in its session.
    if app.jobs.lock().unwrap_or_else(|e| e.into_inner()).send(job).is_err() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
    let meta = Meta {
        id: format!("{prefix}-{}", app.ids.fetch_add(1, Ordering::SeqCst)),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        model: app.model_name.clone(),
        kind,
        session: spec.session,
    };
    let state_bytes = app.prepared.state_bytes();
    if spec.stream {
        return Ok(stream(meta, rx, state_bytes, log));
    }
    let mut rx = rx;
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Done(f) => {
                log.generated(f.completion_tokens);
                return Ok(Json(meta.answer(&text, &f, state_bytes)).into_response());
            }
            Event::Failed(m) => return Err(ApiError::internal(m)),
        }
    }
    Err(ApiError::internal("the decoding loop ended before the answer"))
}

/// The answer as server-sent events: a chunk per piece of text, a last chunk with
/// the finish reason and the counts, then `data: [DONE]`. The request's log line
/// is written once the stream has ended.
fn stream(meta: Meta, rx: UnboundedReceiver<Event>, state_bytes: usize, log: Arc<Logged>) -> Response {
    let events = futures_util::stream::unfold(Some(rx), move |rx| {
        let (meta, log) = (meta.clone(), log.clone());
        async move {
            let mut rx = rx?;
            let data = |v: Value| format!("data: {v}\n\n");
            let (out, more) = match rx.recv().await {
                Some(Event::Text(t)) => (data(meta.chunk(&t)), true),
                Some(Event::Done(f)) => {
                    log.generated(f.completion_tokens);
                    (data(meta.last_chunk(&f, state_bytes)) + "data: [DONE]\n\n", false)
                }
                Some(Event::Failed(m)) => {
                    (data(json!({ "error": { "message": m, "type": "server_error" } })) + "data: [DONE]\n\n", false)
                }
                None => return None,
            };
            Some((Ok::<_, Infallible>(out), more.then_some(rx)))
        }
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], Body::from_stream(events))
        .into_response()
}

async fn models(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{ "id": app.model_name, "object": "model", "created": 0, "owned_by": "bdh" }],
    }))
}

async fn health(State(app): State<Arc<App>>) -> Json<Value> {
    let (live, on_disk) = app.sessions.counts();
    Json(json!({
        "status": if app.draining.load(Ordering::SeqCst) { "shutting down" } else { "ok" },
        "model": app.model_name,
        "streams": app.streams.load(Ordering::SeqCst),
        "max_streams": app.max_streams,
        "sessions_in_memory": live,
        "sessions_on_disk": on_disk,
        "state_bytes": app.prepared.state_bytes(),
    }))
}

/// The body of a request that needs none is read all the same (bounded), so the
/// connection stays usable for the next request.
async fn create_session(State(app): State<Arc<App>>, body: Raw) -> Result<Json<Value>, ApiError> {
    bytes(body)?;
    Ok(Json(json!(on_disk(&app, |app| app.sessions.create()).await?)))
}

async fn list_sessions(State(app): State<Arc<App>>) -> Json<Value> {
    Json(json!({ "object": "list", "data": app.sessions.list() }))
}

async fn session_info(State(app): State<Arc<App>>, Id(id): Id) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(app.sessions.info(&id)?)))
}

async fn delete_session(State(app): State<Arc<App>>, Id(id): Id) -> Result<Json<Value>, ApiError> {
    let i = id.clone();
    on_disk(&app, move |app| app.sessions.delete(&i)).await?;
    Ok(Json(json!({ "id": id, "object": "session", "deleted": true })))
}

async fn fork_session(State(app): State<Arc<App>>, Id(id): Id, body: Raw) -> Result<Json<Value>, ApiError> {
    bytes(body)?;
    Ok(Json(json!(on_disk(&app, move |app| app.sessions.fork(&id)).await?)))
}

/// The body of save and restore: the name of the file in the sessions directory.
#[derive(Deserialize)]
struct Named {
    name: String,
}

fn named(body: Raw) -> Result<String, ApiError> {
    let body = bytes(body)?;
    let n: Named = serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("give {{\"name\": ...}}: {e}")))?;
    Ok(n.name)
}

async fn save_session(State(app): State<Arc<App>>, Id(id): Id, body: Raw) -> Result<Json<Value>, ApiError> {
    let name = named(body)?;
    let (i, n) = (id.clone(), name.clone());
    let file = on_disk(&app, move |app| app.sessions.save(&i, &n)).await?;
    Ok(Json(json!({ "id": id, "object": "session.saved", "name": name, "file": file })))
}

async fn restore_session(State(app): State<Arc<App>>, body: Raw) -> Result<Json<Value>, ApiError> {
    let name = named(body)?;
    Ok(Json(json!(on_disk(&app, move |app| app.sessions.restore(&name)).await?)))
}
