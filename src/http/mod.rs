//! The HTTP side: the accept loop, routes, graceful shutdown, and the
//! endpoints that are not sessions.
//!
//! - [`trace`]: the server span of every request.
//! - [`proxy_protocol`]: the PROXY header of a TCP load balancer (who the
//!   client then is: `crate::client_address`).
//! - [`upgrade`]: `GET /ws` (and `/echo`): checks, then a session.
//! - [`api`]: the admin REST API under `/api`.
//! - [`explorer`]: the session explorer page at `GET /`, and the log
//!   search behind it (`/api/logs`).
//! - [`loki`]: that search asked of Loki instead, with `--loki-url`.
//!
//! Shutdown follows mini-redis: one `CancellationToken` stops the accept
//! loop and the upkeep tasks, the open sessions are then swept through the
//! hub (each closes with 1001), a `TaskTracker` tells when they are all
//! done, and a `Semaphore` caps concurrent sessions (see [`ServerState`]).

pub mod api;
pub mod explorer;
pub mod linger;
pub mod loki;
pub mod proxy_protocol;
pub mod trace;
pub mod upgrade;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::cluster::{ClusterContext, ClusterTasks};
use crate::error::HttpError;
use crate::events::{
    InternalEvent, LogFileRecreated, LogFilesPruned, LogLinesDropped, SpansDropped,
};
use crate::state::{ServerConfig, ServerState};

pub use trace::{TRACERESPONSE, X_TRACE_ID};

/// A bound, not yet serving, server: the listener and the state its
/// sessions will share.
pub struct Server {
    listener: TcpListener,
    state: Arc<ServerState>,
}

impl Server {
    pub async fn bind(addr: SocketAddr, config: ServerConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        Ok(Self {
            listener,
            state: ServerState::bound(config, Some(local)),
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
        let upkeep = tokio::spawn(run_upkeep(state.clone()));
        let tls_reload = state
            .config
            .tls
            .clone()
            .map(|tls| tokio::spawn(reload_on_sighup(tls)));
        let cluster_tasks = start_cluster_tasks(&state);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of fds, mostly: back off instead of spinning.
                        crate::events::AcceptFailed { error: &error }.emit();
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut signal => break,
                _ = shutdown.cancelled() => break,
            };
            let Some((stream, slot)) = connection_slot(&state, stream, peer) else {
                continue;
            };
            connections.spawn(serve_connection(&app, &state, stream, peer, slot));
        }
        drop(listener);
        upkeep.abort();
        if let Some(task) = tls_reload {
            task.abort();
        }
        shut_down(&state, connections, cluster_tasks).await;
        Ok(())
    }
}

/// The peer's place under the per-address cap (none is needed for a
/// trusted proxy, which carries many clients). At the cap the connection
/// gets a 429 in the JSON error shape and is closed.
fn connection_slot(
    state: &ServerState,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<(
    tokio::net::TcpStream,
    Option<crate::caps::Slot<std::net::IpAddr>>,
)> {
    if state.config.trusted_proxies.contains(peer.ip()) {
        return Some((stream, None));
    }
    if let Some(slot) = state.caps.connections_per_ip.try_take(peer.ip()) {
        return Some((stream, Some(slot)));
    }
    let limit = state.caps.connections_per_ip.limit();
    crate::events::ConnectionRefused {
        peer,
        limit,
        metrics: &state.metrics,
    }
    .emit();
    // Written by hand: there is no HTTP connection to answer through yet.
    let error = HttpError::TooManyConnectionsFromAddress { limit };
    let body = error.body().to_string();
    let response = format!(
        "HTTP/1.1 {}\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        error.status(),
        body.len()
    );
    linger::refuse(stream, response.into_bytes());
    None
}

/// Reads the certificate and key again on each SIGHUP (a renewed
/// certificate without a restart); new connections get the new ones.
async fn reload_on_sighup(tls: Arc<crate::tls::Tls>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        let files = tls.files();
        match tls.reload() {
            Ok(()) => crate::events::TlsReloaded { cert: &files.cert }.emit(),
            Err(error) => crate::events::TlsReloadFailed { error: &error }.emit(),
        }
    }
}

/// Cluster mode's tasks (receiving, upkeep), when it is on.
fn start_cluster_tasks(state: &Arc<ServerState>) -> Option<ClusterTasks> {
    let cluster = state.cluster()?;
    let stats_of = Arc::downgrade(state);
    let context = ClusterContext {
        router: state.router.clone(),
        shutdown: state.shutdown.clone(),
        report_every: state.config.limits.telemetry_report_interval,
        // The content's limit, plus the frame's own fields.
        max_frame_bytes: state.config.limits.max_message_bytes + 16 * 1024,
        debug_slots: state.debug_slots.clone(),
        log_search: state.log_search.clone(),
        stats: Box::new(move || {
            stats_of
                .upgrade()
                .map_or(serde_json::Value::Null, |state| state.instance_stats())
        }),
    };
    ClusterTasks::start(cluster.clone(), context)
}

/// One HTTP connection, served until it ends or the server shuts down
/// (then gracefully: a request in flight is answered). With
/// `--proxy-protocol` it first reads the balancer's PROXY header; with
/// `--tls-cert`, the TLS handshake (bounded by the header read timeout).
fn serve_connection(
    app: &Router,
    state: &Arc<ServerState>,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: Option<crate::caps::Slot<std::net::IpAddr>>,
) -> impl Future<Output = ()> + Send + 'static {
    let _ = stream.set_nodelay(true);
    let app = app.clone();
    let state = state.clone();
    async move {
        // Held for the connection's life, session or not.
        let _slot = slot;
        let write_stall = state.config.limits.write_timeout;
        let proxied = match state.config.proxy_protocol {
            true => match proxy_header(&state, &mut stream, peer).await {
                Some(proxied) => proxied,
                None => return,
            },
            false => None,
        };
        match state.config.tls.clone() {
            Some(tls) => {
                let timeout = state.config.limits.header_read_timeout;
                let stream = linger::LingeringStream::new(stream).with_write_stall(write_stall);
                let handshake = tls.acceptor().accept(stream);
                match tokio::time::timeout(timeout, handshake).await {
                    Ok(Ok(connection)) => serve_http(app, state, connection, peer, proxied).await,
                    Ok(Err(error)) => tls_refused(&state, peer, &error.to_string()),
                    Err(_) => {
                        tls_refused(&state, peer, "no handshake within --header-read-timeout")
                    }
                }
            }
            None => {
                let stream = linger::LingeringStream::new(stream).with_write_stall(write_stall);
                serve_http(app, state, stream, peer, proxied).await
            }
        }
    }
}

fn tls_refused(state: &ServerState, peer: SocketAddr, reason: &str) {
    crate::events::TlsHandshakeFailed {
        peer,
        reason,
        metrics: &state.metrics,
    }
    .emit();
}

/// HTTP/1.1 (with upgrades) over a connection, plain or TLS.
async fn serve_http<IO>(
    app: Router,
    state: Arc<ServerState>,
    io: IO,
    peer: SocketAddr,
    proxied: Option<SocketAddr>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(tower::service_fn(
        move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            if let Some(client) = proxied {
                request
                    .extensions_mut()
                    .insert(crate::client_address::ProxiedClient(client));
            }
            app.clone().oneshot(request.map(axum::body::Body::new))
        },
    ));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = state.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "http connection ended with an error");
    }
}

/// The connection's PROXY header: `Some(client)` to serve it (`None`
/// inside for a balancer's own `LOCAL` check), or `None` (refused, with a
/// counted line) when the peer is not trusted or the header is not valid.
async fn proxy_header(
    state: &ServerState,
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<Option<SocketAddr>> {
    let refuse = |reason| {
        crate::events::ProxyHeaderRefused {
            peer,
            reason,
            metrics: &state.metrics,
        }
        .emit()
    };
    if !state.config.trusted_proxies.contains(peer.ip()) {
        refuse("untrusted_peer");
        return None;
    }
    let timeout = state.config.limits.header_read_timeout;
    match proxy_protocol::read_header(stream, timeout).await {
        Ok(client) => Some(client),
        Err(error) => {
            refuse(error.as_str());
            None
        }
    }
}

/// The graceful shutdown: every session is sent 1001 (swept through the
/// hub), then the connections and sessions are waited for up to
/// `--shutdown-timeout`, then cluster mode sends what it still holds.
async fn shut_down(
    state: &ServerState,
    connections: tokio_util::task::TaskTracker,
    cluster_tasks: Option<ClusterTasks>,
) {
    state.shutdown.cancel();
    // After the flag: a session that joins the hub later sees it.
    for session in state.hub().sessions() {
        session.shut_down();
    }
    state.sessions.close();
    crate::events::StoppedAccepting {
        open_sessions: state.sessions.len(),
    }
    .emit();
    let timeout = state.config.limits.shutdown_timeout;
    connections.close();
    let drained = async {
        connections.wait().await;
        state.sessions.wait().await;
    };
    if tokio::time::timeout(timeout, drained).await.is_err() {
        crate::events::ShutdownTimedOut {
            open_sessions: state.sessions.len(),
            timeout_ms: timeout.as_millis() as u64,
        }
        .emit();
    }
    if let Some(cluster_tasks) = cluster_tasks {
        cluster_tasks.finish(timeout).await;
    }
}

/// Once per interval: keeps the log directory under `--log-max-bytes`, and
/// says when log lines or spans were dropped (a collector that is down,
/// say): counted in `/metrics` always, and visible in the logs without
/// flooding them.
async fn run_upkeep(state: Arc<ServerState>) {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = state.config.telemetry.clone();
    let interval = state.config.limits.telemetry_report_interval;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut spans_before = 0;
    // (dropped, recreated) of each log output at the last report.
    let mut outputs_before = Vec::new();
    loop {
        ticks.tick().await;
        if let (Some(dir), Some(max_bytes)) = (&state.config.log_dir, state.config.log_max_bytes) {
            let (dir, prefix, max) = (dir.clone(), state.config.log_file_prefix.clone(), max_bytes);
            let pruned = tokio::task::spawn_blocking(move || {
                crate::telemetry::prune_log_dir(&dir, &prefix, max)
            });
            if let Ok((files, bytes)) = pruned.await
                && files > 0
            {
                LogFilesPruned {
                    files,
                    bytes,
                    max_bytes,
                }
                .emit();
            }
        }
        let Some(counters) = &counters else { continue };
        let spans = counters.spans_dropped();
        if spans > spans_before {
            SpansDropped {
                reason: counters
                    .last_export_error
                    .lock()
                    .ok()
                    .and_then(|mut last| last.take()),
                dropped: spans - spans_before,
                dropped_total: spans,
                export_failed_total: counters.spans_export_failed.load(Relaxed),
                queue_full_total: counters.spans_dropped_queue_full.load(Relaxed),
                interval_ms: interval.as_millis() as u64,
            }
            .emit();
        }
        spans_before = spans;
        report_log_outputs(counters, &mut outputs_before);
    }
}

/// Says which log output lost lines since the last report, and why, and
/// whether the log file had to be started again. Said through the outputs
/// that still work: a stuck stdout's losses reach the file.
fn report_log_outputs(
    counters: &crate::telemetry::TelemetryCounters,
    before: &mut Vec<(u64, u64)>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    before.resize(counters.log_outputs.len(), (0, 0));
    for (output, (dropped_before, recreated_before)) in counters.log_outputs.iter().zip(before) {
        let dropped = output.counts.dropped();
        let recreated = output.counts.recreated.load(Relaxed);
        if dropped > *dropped_before {
            LogLinesDropped {
                output: output.name,
                cause: output.counts.take_cause(),
                dropped: dropped - *dropped_before,
                dropped_total: dropped,
            }
            .emit();
        }
        if recreated > *recreated_before {
            LogFileRecreated { times: recreated }.emit();
        }
        (*dropped_before, *recreated_before) = (dropped, recreated);
    }
}

fn router(state: Arc<ServerState>) -> Router {
    let mut routes = Router::new().route("/ws", get(upgrade::ws_upgrade::<false>));
    if state.config.echo_endpoint {
        routes = routes.route("/echo", get(upgrade::ws_upgrade::<true>));
    }
    routes
        .nest("/api", api::router(state.clone()))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            trace::trace_http,
        ))
        .route("/", get(explorer::page))
        .route("/explorer/app.js", get(explorer::script))
        .route("/explorer/config.json", get(explorer::config))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        // Liveness probes use whatever name reaches the server, and the
        // answer tells a rebinding page nothing worth having.
        .route("/healthz", get(healthz))
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

/// Every error answer is `{"error":{"code","message"}}`. The server's own
/// errors already are (`HttpError`); axum's rejections (a body that is not
/// JSON, too large, the wrong content type), unknown routes and wrong
/// methods come back as text or empty, and are rewritten here, keeping
/// their status and headers (`Allow` on a 405).
async fn json_errors(request: Request, next: middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Rejection texts are one short sentence.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let rewritten = HttpError::Rejected { status, message }.into_response();
    let (rewritten_parts, body) = rewritten.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(rewritten_parts.headers);
    Response::from_parts(parts, body)
}

/// Every route but `/healthz` answers only to the `Host` names the server
/// is for (DNS rebinding, see `auth::HostPolicy`).
async fn check_host(
    State(state): State<Arc<ServerState>>,
    request: Request,
    next: middleware::Next,
) -> Response {
    if state.hosts.allows(request.headers().get(header::HOST)) {
        return next.run(request).await;
    }
    crate::events::HostRefused {
        path: request.uri().path(),
        metrics: &state.metrics,
    }
    .emit();
    HttpError::HostNotAllowed.into_response()
}

async fn healthz(State(state): State<Arc<ServerState>>) -> Response {
    if state.shutdown.is_cancelled() {
        HttpError::ShuttingDown.into_response()
    } else {
        Json(json!({ "status": "ok", "sessions": state.hub().len() })).into_response()
    }
}

/// `GET /metrics`: every metric family of the running server.
pub fn metrics_text(state: &ServerState) -> String {
    crate::metrics::render(&state.metric_families())
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Response {
    let body = metrics_text(&state);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
