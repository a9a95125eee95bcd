//! The HTTP server: routes, state, errors and metrics.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests drive it with
//! `app(state).oneshot(request)` or bind `127.0.0.1:0` and use a real client; [`run`] serves
//! it until a shutdown signal, letting in-flight requests finish.

pub mod error;
pub mod metrics;
mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::classifier::worker::{BatchClassifier, ClassifierWorker, WorkerConfig};
use crate::config::{Config, ConfigError};
use crate::policy::TierPolicy;
use crate::request_log::{RequestLog, RequestLogError};

pub use error::AppError;
pub use metrics::Metrics;

/// Errors from building or running the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the classifier worker: {0}")]
    Worker(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    RequestLog(#[from] RequestLogError),
}

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub policy: Arc<TierPolicy>,
    pub worker: ClassifierWorker,
    pub metrics: Arc<Metrics>,
    /// Resolved bearer keys; empty when auth is off.
    api_keys: Arc<[String]>,
    /// The classifier's name, for `/health` and `/v1/models`.
    pub classifier_name: Arc<str>,
    /// Where answered requests are logged (`server.request_log`); `None` when off.
    pub request_log: Option<RequestLog>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("classifier", &self.classifier_name)
            .field("worker", &self.worker)
            .field("auth", &!self.api_keys.is_empty())
            .field("request_log", &self.request_log)
            .finish()
    }
}

impl AppState {
    /// Checks `config`, resolves its secrets from the environment, opens the request log (when
    /// configured) and starts the worker.
    pub fn new(
        config: Config,
        classifier: Arc<dyn BatchClassifier>,
        classifier_name: &str,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let api_keys = config.resolve_api_keys()?;
        let policy = config.tier_policy()?;
        let metrics = Arc::new(Metrics::default());
        let request_log = match &config.server.request_log {
            Some(path) => Some(RequestLog::open(path, Arc::clone(&metrics.request_log))?),
            None => None,
        };
        let observer = {
            let metrics = Arc::clone(&metrics);
            Arc::new(move |report| metrics.record_batch(report))
        };
        let s = &config.server;
        let worker = ClassifierWorker::spawn(
            classifier,
            WorkerConfig {
                queue_capacity: s.queue_capacity,
                max_batch: s.max_batch,
                max_wait: Duration::from_millis(s.batch_wait_ms),
                threads: s.inference_threads,
                max_queue_wait: s.max_queue_wait(),
            },
            Some(observer),
        )
        .map_err(ServerError::Worker)?;
        Ok(Self {
            config: Arc::new(config),
            policy: Arc::new(policy),
            worker,
            metrics,
            api_keys: api_keys.into(),
            classifier_name: classifier_name.into(),
            request_log,
        })
    }

    /// Writes out and flushes the request log (waiting at most 10 s); call once the server
    /// has stopped. Entries from requests still running afterwards are dropped and counted.
    pub async fn finish(&self) {
        let Some(log) = self.request_log.clone() else {
            return;
        };
        let flushed = tokio::task::spawn_blocking(move || log.close(Duration::from_secs(10)))
            .await
            .unwrap_or(false);
        if !flushed {
            tracing::warn!("the request log was not fully written before shutdown");
        }
    }

    /// Whether requests must carry a bearer key.
    pub fn auth_required(&self) -> bool {
        !self.api_keys.is_empty()
    }
}

/// The whole HTTP surface.
pub fn app(state: AppState) -> Router {
    app_with(state, Router::new())
}

/// The HTTP surface plus `extra_api_routes` (e.g. the gateway's `/v1/chat/completions`),
/// which get the same bearer auth, metrics and logs as the native routes. The request body
/// limit (`server.max_body_bytes`) applies to the native routes only; extra routes set their
/// own with `DefaultBodyLimit` when they need one.
pub fn app_with(state: AppState, extra_api_routes: Router<AppState>) -> Router {
    let body_limit = state.config.server.max_body_bytes;
    let api = Router::new()
        .route("/v1/select-model", post(routes::select_model))
        .route("/v1/router/raw", post(routes::router_raw))
        .route("/v1/router/classify", post(routes::router_classify))
        .route("/v1/router/{family}", post(routes::router_family))
        .route("/v1/models", get(routes::list_models))
        .layer(DefaultBodyLimit::max(body_limit))
        .merge(extra_api_routes)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// Serves `state` on `listener` until `shutdown` completes, then lets in-flight requests
/// finish for up to `server.shutdown_grace_secs` and flushes the request log.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let grace = Duration::from_secs(state.config.server.shutdown_grace_secs);
    let result = serve_router(listener, app(state.clone()), grace, shutdown).await;
    state.finish().await;
    result
}

/// Serves `router` (from [`app`] or [`app_with`]) until `shutdown` completes, then lets
/// in-flight requests finish for up to `grace`.
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = signalled_tx.send(());
    });
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.map_err(ServerError::Serve),
        _ = signalled_rx => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result.map_err(ServerError::Serve),
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "in-flight requests did not finish in time; stopping anyway"
            );
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// Refuses requests without a configured key: `Authorization: Bearer <key>` (OpenAI, Morph's
/// SDK) or `x-api-key: <key>` (Anthropic-style clients).
async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, AppError> {
    if state.api_keys.is_empty() {
        return Ok(next.run(request).await);
    }
    let presented = presented_key(request.headers());
    let Some(presented) = presented else {
        return Err(AppError::Unauthorized {
            message: "missing API key: send \"Authorization: Bearer <key>\"".into(),
        });
    };
    // Every key is compared in full, so timing does not tell which prefix matched.
    let valid = state.api_keys.iter().fold(false, |ok, key| {
        constant_time_eq(key.as_bytes(), presented.as_bytes()) | ok
    });
    if !valid {
        return Err(AppError::Unauthorized {
            message: "invalid API key".into(),
        });
    }
    Ok(next.run(request).await)
}

fn presented_key(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value.to_str().ok()?.trim();
        let (scheme, key) = text.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| key.trim().to_string())
            .filter(|k| !k.is_empty());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every request by route and status, and logs it.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let sdk = request
        .headers()
        .get("x-morph-sdk-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    state.metrics.record_request(&endpoint, status.as_u16());
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), elapsed_ms, "request");
    } else {
        tracing::info!(
            %method,
            %path,
            status = status.as_u16(),
            elapsed_ms,
            morph_sdk = sdk.as_deref(),
            "request"
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bearer_and_x_api_key() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer  k1 ".parse().unwrap());
        assert_eq!(presented_key(&h).as_deref(), Some("k1"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(presented_key(&h), None);
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(presented_key(&h).as_deref(), Some("k2"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
