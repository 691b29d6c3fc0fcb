//! concepts-server: the HTTP face of the runtime — an OpenAI-compatible chat endpoint plus
//! concept management and recognition, over one [`Runtime`] and one concept registry.
//!
//! Its one job is to turn HTTP requests into [`Runtime`] and [`Registry`] calls and their
//! results into the OpenAI wire format. Key design choice: the server owns no model logic
//! and no concept state. Concepts live in the registry; the runtime reads them through
//! [`RegistrySource`] (this crate's glue between the two sibling crates) at the start of
//! every request, so an upload or delete is seen by the next request and never by one in
//! flight.
//!
//! ```text
//! GET    /health                     liveness, model, queue and cache state
//! GET    /v1/models                  the one served model
//! POST   /v1/chat/completions        OpenAI chat (JSON or `stream: true` SSE)
//! GET    /v1/concepts                installed concepts
//! GET    /v1/concepts/{name}         one of them
//! POST   /v1/concepts                upload a .ycpt (raw body or multipart); `?replace=true`
//! DELETE /v1/concepts/{name}         remove one (name or identifier)
//! POST   /v1/recognise               which concepts are in an image (the concept scan)
//! ```
//!
//! Bounds: request bodies, uploads, images and token counts are capped by [`Limits`];
//! inference requests pass a queue of [`ServerConfig::workers`] running and
//! [`ServerConfig::queue_capacity`] waiting requests, and get `429` beyond that *before their
//! body is read*; a `Content-Length` over the limit gets `413` unread. Connections are capped
//! ([`ServerConfig::max_connections`]; more wait in the listen backlog), request headers must
//! arrive within [`ServerConfig::header_timeout`] (idle keep-alive connections close after it
//! too) and bodies within [`ServerConfig::body_timeout`] (`408`). Mutating endpoints need the
//! bearer token when one is set. An empty token is refused at start-up, and so is a
//! non-loopback address without a token unless [`ServerConfig::allow_no_auth`] says so (concept
//! changes then stay disabled). [`Server::run`] shuts down gracefully: it stops accepting and
//! waits for in-flight requests (streams included) to finish.
//!
//! This crate prints nothing and reads no environment; the `concepts` CLI does both.

mod body;
mod concepts;
mod error;
mod images;
mod openai;
mod queue;
mod source;

pub use concepts::score_json;
pub use error::ServerError;
pub use source::{RegistrySource, RemoteRepository};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use concept_registry::Registry;
use concepts_runtime::api::Runtime;
use serde_json::json;

use error::ApiError;
use queue::Admission;

/// Caps on what one request may ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest JSON request body, in bytes (images as data URLs count).
    pub max_body_bytes: usize,
    /// Largest concept upload, in bytes.
    pub max_upload_bytes: usize,
    /// Largest encoded image, in bytes.
    pub max_image_bytes: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Most messages in one chat request.
    pub max_messages: usize,
}

impl Limits {
    /// 16 MiB bodies and uploads, 10 MiB images, at most 1024 generated tokens (256 by
    /// default) and 64 messages.
    pub fn recommended() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_upload_bytes: 16 << 20,
            max_image_bytes: 10 << 20,
            max_tokens: 1024,
            default_max_tokens: 256,
            max_messages: 64,
        }
    }
}

/// How the server listens and admits requests.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen; `127.0.0.1` unless the host says otherwise.
    pub addr: SocketAddr,
    /// Bearer token required by the mutating endpoints (concept upload and delete).
    pub token: Option<String>,
    /// Directory whose files chat requests may name as images (by absolute path or
    /// `file://` URL); `None` allows data URLs only.
    pub image_dir: Option<PathBuf>,
    pub limits: Limits,
    /// Inference requests running at once.
    pub workers: usize,
    /// Inference requests waiting for a worker before new ones get `429`.
    pub queue_capacity: usize,
    /// Listen beyond loopback without a token (chat and recognition open to whoever reaches
    /// the port; concept upload and delete stay disabled). Off: such a bind is refused.
    pub allow_no_auth: bool,
    /// Open connections at most; further ones wait in the listen backlog until one closes.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and the longest a keep-alive
    /// connection may sit idle.
    pub header_timeout: Duration,
    /// Time a client has to send a request's body once the server starts reading it.
    pub body_timeout: Duration,
}

impl ServerConfig {
    /// Loopback on `port`, no token, no image directory, [`Limits::recommended`], 2 workers
    /// and 16 waiting requests, 128 connections, 10 s for headers and 30 s for a body.
    pub fn local(port: u16) -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            token: None,
            image_dir: None,
            limits: Limits::recommended(),
            workers: 2,
            queue_capacity: 16,
            allow_no_auth: false,
            max_connections: 128,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }

    /// Refuses an empty or unsendable token, and a non-loopback address without a token
    /// unless [`ServerConfig::allow_no_auth`].
    pub fn check(&self) -> Result<(), ServerError> {
        if let Some(token) = &self.token {
            if token.trim().is_empty() {
                return Err(ServerError::EmptyToken);
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ServerError::InvalidToken);
            }
        }
        if self.token.is_none() && !self.addr.ip().is_loopback() && !self.allow_no_auth {
            return Err(ServerError::NoTokenBeyondLoopback { addr: self.addr });
        }
        Ok(())
    }
}

/// What every handler gets.
pub(crate) struct AppState {
    pub(crate) runtime: Runtime,
    pub(crate) registry: Registry,
    pub(crate) config: ServerConfig,
    /// The canonical image directory.
    pub(crate) image_dir: Option<PathBuf>,
    pub(crate) admission: Admission,
    /// Counter behind response ids.
    pub(crate) next_id: AtomicU64,
}

pub(crate) type SharedState = Arc<AppState>;

/// The routes of the server, for embedding in another axum application.
pub fn router(
    runtime: Runtime,
    registry: Registry,
    config: ServerConfig,
) -> Result<Router, ServerError> {
    config.check()?;
    let image_dir = match &config.image_dir {
        Some(dir) => Some(dir.canonicalize().map_err(|source| ServerError::ImageDir {
            path: dir.clone(),
            source,
        })?),
        None => None,
    };
    let state = Arc::new(AppState {
        admission: Admission::new(
            config.workers.max(1),
            config.queue_capacity,
            config.workers.max(1),
            runtime.config().decode_batch,
        ),
        runtime,
        registry,
        image_dir,
        config,
        next_id: AtomicU64::new(1),
    });
    Ok(Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/concepts", get(concepts::list).post(concepts::upload))
        .route(
            "/v1/concepts/{name}",
            get(concepts::show).delete(concepts::remove),
        )
        .route("/v1/recognise", post(concepts::recognise))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(log_requests))
        .with_state(state))
}

/// A bound server, ready to run.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
    addr: SocketAddr,
    max_connections: usize,
    header_timeout: Duration,
}

impl Server {
    /// Binds `config.addr` (port 0 picks a free port; see [`Server::local_addr`]) after
    /// [`ServerConfig::check`].
    pub async fn bind(
        runtime: Runtime,
        registry: Registry,
        config: ServerConfig,
    ) -> Result<Server, ServerError> {
        let wanted = config.addr;
        let open_bind = !wanted.ip().is_loopback() && config.token.is_none();
        let (max_connections, header_timeout) =
            (config.max_connections.max(1), config.header_timeout);
        // `router` runs `ServerConfig::check`, so an open bind here was explicitly allowed.
        let router = router(runtime, registry, config)?;
        if open_bind {
            tracing::warn!(
                addr = %wanted,
                "listening beyond loopback without a token (--insecure-no-auth): chat is open \
                 to anyone who can reach it; concept upload and delete are disabled"
            );
        }
        let listener = tokio::net::TcpListener::bind(wanted)
            .await
            .map_err(|source| ServerError::Bind {
                addr: wanted,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: wanted,
            source,
        })?;
        Ok(Server {
            listener,
            router,
            addr,
            max_connections,
            header_timeout,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes, then stops accepting connections and waits for
    /// the requests in flight (streams included) to finish.
    ///
    /// The accept loop is this crate's own rather than `axum::serve` for two bounds that
    /// does not offer: a cap on open connections (a connection is accepted only with a free
    /// slot, so stalled clients cannot exhaust file descriptors) and hyper's header-read
    /// timeout (which also closes idle keep-alive connections).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        use hyper_util::service::TowerToHyperService;

        tracing::info!(addr = %self.addr, max_connections = self.max_connections, "serving");
        let slots = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        // Every connection task holds a receiver of `closed`; `stop` tells them to finish.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(());
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors or a connection reset before accept:
                        // back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            // A streamed answer is many small writes: with Nagle's algorithm each waits for
            // the client's delayed ACK (about 40 ms on Linux), so every chunk would stall.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, %peer, "TCP_NODELAY not set");
            }
            let service = TowerToHyperService::new(self.router.clone());
            let mut stop = stop_rx.clone();
            let closed = closed_rx.clone();
            let header_timeout = self.header_timeout;
            tokio::spawn(async move {
                let _slot = slot;
                let _closed = closed;
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                let result = tokio::select! {
                    result = conn.as_mut() => result,
                    _ = stop.changed() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        drop(closed_rx);
        closed_tx.closed().await;
        tracing::info!("server stopped");
        Ok(())
    }
}

async fn health(State(state): State<SharedState>) -> Json<serde_json::Value> {
    let stats = state.runtime.stats();
    let admission = &state.admission;
    Json(json!({
        "status": "ok",
        "model": state.runtime.model_id(),
        "running": admission.running(),
        "queued": admission.queued(),
        "workers": admission.workers(),
        "queue_capacity": admission.capacity(),
        "running_generations": stats.running_generations,
        "resident_concepts": stats.resident_concepts,
        "resident_bytes": stats.resident_bytes,
    }))
}

async fn models(State(state): State<SharedState>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.runtime.model_id(),
            "object": "model",
            "created": 0,
            "owned_by": "concepts",
        }],
    }))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("no route for `{}`", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::method_not_allowed(format!(
        "`{}` does not accept {}",
        request.uri().path(),
        request.method()
    ))
}

/// One structured log line per request: method, path, status and latency.
async fn log_requests(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let start = Instant::now();
    let response = next.run(request).await.into_response();
    tracing::info!(
        %method,
        %path,
        status = response.status().as_u16(),
        latency_ms = start.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    response
}
