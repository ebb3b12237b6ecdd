//! The accept loop: each connection served by HTTP/1.1 with a deadline for its
//! request's headers, at most `max` connections at once, and a shutdown that ends
//! within the grace period whatever the clients do.
//!
//! A silent or half-sent client would otherwise hold its socket (and a file
//! descriptor) for ever: enough of them and the server can accept nothing, not
//! even `/health`, and a shutdown waiting for them never ends. So a connection
//! past the cap is answered 503 and closed at once, one that sends no complete
//! headers within the read timeout is closed (idle keep-alive ones included), and
//! a shutdown closes idle connections at once and drops every one left after the
//! grace period. The body's deadline is the router's (`routes::read_body`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How long the streams cancelled at the end of the grace period have to send
/// their last chunk before their connections are dropped.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// What a connection over the cap is told before it is closed.
const REFUSAL: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
content-length: 95\r\n\r\n{\"error\": {\"message\": \"too many connections (--max-connections)\", \"type\": \"unavailable_error\"}}";

/// The limits on connections.
pub(crate) struct Connections {
    /// Connections served at once.
    pub max: usize,
    /// How long a client has to send a request's headers.
    pub read_timeout: Duration,
}

/// Serves `router` on `listener` until `stop` resolves; then takes no connection,
/// closes the idle ones, waits up to `grace` for the requests in flight, sets
/// `cancel` (ending every stream) and drops what is left shortly after.
pub(crate) async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Connections,
    stop: impl Future<Output = ()>,
    grace: Duration,
    cancel: Arc<AtomicBool>,
) {
    let permits = Arc::new(Semaphore::new(limits.max));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.read_timeout);
    tokio::pin!(stop);
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                // Out of descriptors, or a client gone before it was taken: retrying
                // at once would spin.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(socket);
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(socket), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    let finished = graceful.shutdown();
    tokio::pin!(finished);
    if tokio::time::timeout(grace, &mut finished).await.is_err() {
        cancel.store(true, Ordering::SeqCst);
        // Whatever is still open after that (a half-sent request, a client that
        // reads nothing) is dropped with the runtime.
        let _ = tokio::time::timeout(LAST_WORDS, &mut finished).await;
    }
}

/// Answers a connection over the cap with 503, as far as its socket takes the
/// bytes without waiting, and closes it.
fn refuse(socket: TcpStream) {
    let _ = socket.try_write(REFUSAL.as_bytes());
}
