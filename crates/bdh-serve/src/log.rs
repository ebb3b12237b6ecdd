//! One line on standard error per request: method, path, status, the tokens
//! generated (for a completion) and how long it took, a stream's once it has ended.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// What is known of a request so far; its line is written when the last holder
/// (the middleware, or the body of a stream) lets it go.
pub struct Logged {
    on: bool,
    start: Instant,
    method: String,
    path: String,
    status: AtomicU16,
    /// Tokens generated, `usize::MAX` until known.
    tokens: AtomicUsize,
}

impl Logged {
    /// The request generated `n` tokens.
    pub fn generated(&self, n: usize) {
        self.tokens.store(n, Ordering::SeqCst);
    }

    /// The line: `POST /v1/completions 200 16 tokens 41.3 ms`.
    fn line(&self) -> String {
        let tokens = match self.tokens.load(Ordering::SeqCst) {
            usize::MAX => String::new(),
            1 => " 1 token".into(),
            n => format!(" {n} tokens"),
        };
        let ms = self.start.elapsed().as_secs_f64() * 1e3;
        format!("{} {} {}{tokens} {ms:.1} ms", self.method, self.path, self.status.load(Ordering::SeqCst))
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if self.on {
            eprintln!("{}", self.line());
        }
    }
}

/// The middleware: hands the handler a [`Logged`] (an extension) and records the
/// status of the answer; `on` is false under `--quiet`.
pub async fn requests(State(on): State<bool>, mut req: Request, next: Next) -> Response {
    let logged = Arc::new(Logged {
        on,
        start: Instant::now(),
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        status: AtomicU16::new(0),
        tokens: AtomicUsize::new(usize::MAX),
    });
    req.extensions_mut().insert(logged.clone());
    let response = next.run(req).await;
    logged.status.store(response.status().as_u16(), Ordering::SeqCst);
    response
}
