//! The HTTP side: the accept loop, routes, the per-request server span, the
//! upgrade, and graceful shutdown.
//!
//! Shutdown follows mini-redis: one `CancellationToken` is the broadcast
//! that every session watches, a `TaskTracker` tells when they are all
//! done, and a `Semaphore` caps concurrent sessions (see [`ServerState`]).

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use opentelemetry::trace::TraceContextExt;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::auth;
use crate::error::HttpError;
use crate::limits::{WS_READ_BUFFER_BYTES, WS_WRITE_BUFFER_BYTES};
use crate::session::{SessionInfo, SessionMode, UpgradeInfo, run_session};
use crate::state::{ServerConfig, ServerState};
use crate::trace_context::{self, IncomingTrace};

pub const X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");
pub const TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");
/// User agents are attacker-controlled; keep what a human needs.
const MAX_USER_AGENT_CHARS: usize = 256;

/// The trace identity of one HTTP request, put in its extensions by the
/// tracing middleware.
#[derive(Clone)]
pub struct RequestTrace {
    pub span: tracing::Span,
    pub trace_id: String,
    user_agent: String,
    origin: &'static str,
}

/// A bound, not yet serving, server.
pub struct Server {
    listener: TcpListener,
    state: Arc<ServerState>,
}

impl Server {
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            state: ServerState::new(config),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<ServerState> {
        self.state.clone()
    }

    /// Serves until `signal` resolves, then: stop accepting, send Close 1001
    /// to every session, wait (bounded) for each to write its `session
    /// closed` line.
    pub async fn run(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Server { listener, state } = self;
        let app = router(state.clone());
        // HTTP connections (not yet upgraded) are tracked apart from
        // sessions: at shutdown they get hyper's graceful close.
        let connections = tokio_util::task::TaskTracker::new();
        let shutdown = state.shutdown.clone();
        let mut signal = std::pin::pin!(signal);
        let watch = tokio::spawn(watch_telemetry(state.clone()));
        let cluster_tasks = crate::cluster::ClusterTasks::start(&state);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of fds, mostly: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut signal => break,
                _ = shutdown.cancelled() => break,
            };
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let service = TowerToHyperService::new(tower::service_fn(
                move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    app.clone().oneshot(request.map(axum::body::Body::new))
                },
            ));
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(state.limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let mut connection = std::pin::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    _ = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, %peer, "http connection ended with an error");
                }
            });
        }
        drop(listener);
        watch.abort();
        shutdown.cancel();
        state.sessions.close();
        tracing::info!(
            open_sessions = state.sessions.len(),
            "stopped accepting; closing sessions"
        );
        let timeout = state.limits.shutdown_timeout;
        connections.close();
        let drained = async {
            connections.wait().await;
            state.sessions.wait().await;
        };
        if tokio::time::timeout(timeout, drained).await.is_err() {
            tracing::error!(
                open_sessions = state.sessions.len(),
                timeout_ms = timeout.as_millis() as u64,
                "sessions still open at shutdown timeout"
            );
        }
        if let Some(cluster_tasks) = cluster_tasks {
            cluster_tasks.finish(timeout).await;
        }
        Ok(())
    }
}

/// Says, at most once per interval, when log lines or spans were dropped
/// (a collector that is down, say): counted in `/metrics` always, and
/// visible in the logs without flooding them.
async fn watch_telemetry(state: Arc<ServerState>) {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(counters) = state.telemetry.clone() else {
        return;
    };
    let interval = state.limits.telemetry_report_interval;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let (mut spans_before, mut lines_before) = (0, 0);
    loop {
        ticks.tick().await;
        let spans = counters.spans_dropped();
        let lines = counters.log_lines_dropped.load(Relaxed);
        if spans > spans_before {
            tracing::warn!(
                dropped = spans - spans_before,
                dropped_total = spans,
                export_failed_total = counters.spans_export_failed.load(Relaxed),
                queue_full_total = counters.spans_dropped_queue_full.load(Relaxed),
                interval_ms = interval.as_millis() as u64,
                "spans dropped: the OTLP collector is unreachable or too slow"
            );
        }
        if lines > lines_before {
            tracing::error!(
                dropped = lines - lines_before,
                dropped_total = lines,
                "log lines dropped: the log writer is gone"
            );
        }
        (spans_before, lines_before) = (spans, lines);
    }
}

fn router(state: Arc<ServerState>) -> Router {
    let mut routes = Router::new().route("/ws", get(ws_upgrade::<false>));
    if state.echo_endpoint {
        routes = routes.route("/echo", get(ws_upgrade::<true>));
    }
    routes
        .nest("/api", crate::api::router(state.clone()))
        .layer(middleware::from_fn(trace_http))
        .route("/healthz", get(healthz))
        .route("/", get(crate::explorer::page))
        .route("/explorer/config.json", get(crate::explorer::config))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(state): State<Arc<ServerState>>) -> Response {
    if state.shutdown.is_cancelled() {
        HttpError::ShuttingDown.into_response()
    } else {
        Json(json!({ "status": "ok", "sessions": state.hub.len() })).into_response()
    }
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    let body = state.metrics.render(
        state.hub.gauges(),
        state.telemetry.as_deref(),
        state.cluster.as_ref().map(|c| c.report()),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Opens the HTTP server span, continuing the caller's trace when it sent a
/// valid `traceparent`, and answers with the trace identity in
/// `x-trace-id` and `traceresponse`.
async fn trace_http(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let user_agent: String = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(MAX_USER_AGENT_CHARS)
        .collect();
    // Never the query: it may carry tokens.
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        url.scheme = "http",
        user_agent.original = %user_agent,
        client.address = %peer.ip(),
        client.port = peer.port(),
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let incoming = trace_context::extract(request.headers(), request.uri());
    if let Some(parent) = incoming.parent() {
        // Cannot fail: the span was created just above and not yet entered.
        let _ = span.set_parent(parent.clone());
    }
    let span_context = span.context().span().span_context().clone();
    if let IncomingTrace::Rejected(rejected) = &incoming {
        span.in_scope(|| {
            tracing::warn!(
                traceparent.source = rejected.source.as_str(),
                traceparent.length = rejected.length,
                reason = rejected.reason,
                "ignoring malformed traceparent; starting a new trace"
            )
        });
    }
    let trace_id = span_context.trace_id().to_string();
    let origin = match &incoming {
        IncomingTrace::Continued { source, .. } => source.as_str(),
        IncomingTrace::Absent | IncomingTrace::Rejected(_) => "new",
    };
    request.extensions_mut().insert(RequestTrace {
        span: span.clone(),
        trace_id: trace_id.clone(),
        user_agent,
        origin,
    });

    let mut response = next.run(request).instrument(span.clone()).await;

    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    if status.is_client_error() || status.is_server_error() {
        span.in_scope(|| tracing::info!(status = status.as_u16(), %route, "request refused"));
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&trace_id) {
        headers.insert(X_TRACE_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&trace_context::format_traceparent(&span_context)) {
        headers.insert(TRACERESPONSE, value);
    }
    response
}

/// `GET /ws` (`ECHO = false`): a protocol v1 session. `GET /echo`
/// (`ECHO = true`, with `--echo-endpoint`): a raw echo session, with the
/// same checks, limits and telemetry.
async fn ws_upgrade<const ECHO: bool>(
    state: State<Arc<ServerState>>,
    peer: ConnectInfo<SocketAddr>,
    trace: Extension<RequestTrace>,
    request_headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    upgrade: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    let mode = if ECHO {
        SessionMode::Echo
    } else {
        SessionMode::Protocol
    };
    upgrade_session(state, peer, trace, request_headers, uri, upgrade, mode).await
}

async fn upgrade_session(
    State(state): State<Arc<ServerState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(trace): Extension<RequestTrace>,
    request_headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    upgrade: WebSocketUpgrade,
    mode: SessionMode,
) -> Result<Response, HttpError> {
    if state.shutdown.is_cancelled() {
        return Err(HttpError::ShuttingDown);
    }
    if !state.origins.allows(
        request_headers.get(header::ORIGIN),
        request_headers.get(header::HOST),
    ) {
        state.metrics.upgrade_rejected("origin");
        tracing::warn!("upgrade refused: origin not allowed");
        return Err(HttpError::OriginNotAllowed);
    }
    let user = match &state.jwt {
        None => None,
        Some(jwt) => {
            let token =
                auth::bearer_token(&request_headers, uri.query()).ok_or(auth::AuthError::Missing);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match token.and_then(|t| jwt.verify(&t, now)) {
                Ok(user) => Some(user),
                Err(error) => {
                    state.metrics.upgrade_rejected("auth");
                    // The reason, never the token.
                    tracing::warn!(reason = error.code(), "upgrade refused: bad token");
                    return Err(error.into());
                }
            }
        }
    };
    let permit = state.connections.clone().try_acquire_owned().map_err(|_| {
        state.metrics.upgrade_rejected("connection_limit");
        tracing::warn!(
            limit = state.limits.max_connections,
            "upgrade refused: connection limit reached"
        );
        HttpError::TooManyConnections {
            limit: state.limits.max_connections,
        }
    })?;
    let info = SessionInfo {
        session_id: Uuid::now_v7(),
        trace_id: trace.trace_id,
        peer,
        user,
        upgrade: UpgradeInfo {
            user_agent: trace.user_agent,
            trace_origin: trace.origin,
        },
        mode,
    };
    let session_span = info.span(&trace.span);
    let limits = &state.limits;
    let upgrade = upgrade
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(WS_WRITE_BUFFER_BYTES)
        .on_failed_upgrade(|error| tracing::warn!(%error, "websocket upgrade failed"));
    let sessions = state.sessions.clone();
    Ok(upgrade.on_upgrade(move |socket| {
        let session = async move {
            run_session(socket, info, state).await;
            drop(permit);
        };
        sessions.track_future(session.instrument(session_span))
    }))
}
