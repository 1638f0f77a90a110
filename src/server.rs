//! The HTTP side: routes, the per-request server span, the upgrade, and
//! graceful shutdown.
//!
//! Shutdown follows mini-redis: one [`CancellationToken`] is the broadcast
//! that every session watches, a [`TaskTracker`] tells when they are all
//! done, and a [`Semaphore`] caps concurrent sessions.

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use opentelemetry::trace::TraceContextExt;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use crate::error::HttpError;
use crate::limits::Limits;
use crate::session::{SessionInfo, UpgradeInfo, run_session};
use crate::trace_context::{self, IncomingTrace};

pub const X_TRACE_ID: HeaderName = HeaderName::from_static("x-trace-id");
pub const TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");
/// User agents are attacker-controlled; keep what a human needs.
const MAX_USER_AGENT_CHARS: usize = 256;

#[derive(Clone)]
struct AppState {
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    connections: Arc<Semaphore>,
}

/// The trace identity of one HTTP request, put in its extensions by the
/// tracing middleware.
#[derive(Clone)]
struct RequestTrace {
    span: tracing::Span,
    trace_id: String,
    user_agent: String,
    origin: &'static str,
}

/// A bound, not yet serving, server.
pub struct Server {
    listener: TcpListener,
    state: AppState,
}

impl Server {
    pub async fn bind(addr: SocketAddr, limits: Limits) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let connections = Arc::new(Semaphore::new(limits.max_connections));
        Ok(Self {
            listener,
            state: AppState {
                limits: Arc::new(limits),
                shutdown: CancellationToken::new(),
                sessions: TaskTracker::new(),
                connections,
            },
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `signal` resolves, then: stop accepting, send Close 1001
    /// to every session, wait (bounded) for each to write its `session
    /// closed` line.
    pub async fn run(
        self,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Server { listener, state } = self;
        let shutdown = state.shutdown.clone();
        let sessions = state.sessions.clone();
        let shutdown_timeout = state.limits.shutdown_timeout;
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        let stop = shutdown.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = signal => {}
                    _ = stop.cancelled() => {}
                }
                stop.cancel();
            })
            .await?;

        sessions.close();
        let open = sessions.len();
        tracing::info!(open_sessions = open, "stopped accepting; closing sessions");
        if tokio::time::timeout(shutdown_timeout, sessions.wait())
            .await
            .is_err()
        {
            tracing::error!(
                open_sessions = sessions.len(),
                timeout_ms = shutdown_timeout.as_millis() as u64,
                "sessions still open at shutdown timeout"
            );
        }
        Ok(())
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(ws_upgrade))
        .layer(middleware::from_fn(trace_http))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        HttpError::ShuttingDown.into_response()
    } else {
        Json(json!({ "status": "ok", "sessions": state.sessions.len() })).into_response()
    }
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
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&trace_id) {
        headers.insert(X_TRACE_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&trace_context::traceresponse(&span_context)) {
        headers.insert(TRACERESPONSE, value);
    }
    response
}

async fn ws_upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(trace): Extension<RequestTrace>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    if state.shutdown.is_cancelled() {
        return Err(HttpError::ShuttingDown);
    }
    let permit = state.connections.clone().try_acquire_owned().map_err(|_| {
        tracing::warn!(
            limit = state.limits.max_connections,
            "connection limit reached"
        );
        HttpError::TooManyConnections {
            limit: state.limits.max_connections,
        }
    })?;
    let info = SessionInfo {
        session_id: Uuid::now_v7(),
        trace_id: trace.trace_id,
        peer,
        upgrade: UpgradeInfo {
            user_agent: trace.user_agent,
            trace_origin: trace.origin,
        },
    };
    let session_span = info.span(&trace.span);
    let limits = state.limits.clone();
    let shutdown = state.shutdown.clone();
    let sessions = state.sessions.clone();
    Ok(upgrade
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_failed_upgrade(|error| tracing::warn!(%error, "websocket upgrade failed"))
        .on_upgrade(move |socket| {
            let session = async move {
                run_session(socket, info, limits, shutdown).await;
                drop(permit);
            };
            sessions.track_future(session.instrument(session_span))
        }))
}
