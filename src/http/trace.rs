//! The HTTP server span of every request: continues the caller's W3C
//! trace when it sent a valid `traceparent`, and answers with the trace
//! identity in `x-trace-id` and `traceresponse`.

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::TraceContextExt;
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::client_address::{self, AddressSource, ClientAddress, ProxiedClient};
use crate::events::{
    ForwardedHeaderIgnored, HttpRequestRefused, InternalEvent, TraceparentIgnored,
};
use crate::state::ServerState;
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
    /// The span's OpenTelemetry context, taken once: each `context()` call
    /// looks the span up and builds a new `Context`.
    pub context: opentelemetry::Context,
    pub trace_id: String,
    pub user_agent: String,
    /// `header`, `query`, or `new` when the request started a new trace.
    pub origin: &'static str,
    /// The caller's trace context asks for a debug session
    /// (`tracestate: wstrace=debug`, sampled).
    pub client_debug: bool,
    /// Who the client is: the TCP peer, or what a trusted proxy said.
    pub client: ClientAddress,
}

/// Opens the HTTP server span, continuing the caller's trace when it sent a
/// valid `traceparent`, and answers with the trace identity in
/// `x-trace-id` and `traceresponse`. The span names the client (behind
/// trusted proxies, the one they name) and the TCP peer apart.
pub async fn trace_http(
    State(state): State<Arc<ServerState>>,
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
    let proxied = request.extensions().get::<ProxiedClient>().map(|p| p.0);
    let (client, ignored) = client_address::resolve(
        peer,
        proxied,
        request.headers(),
        &state.config.trusted_proxies,
    );
    // Never the query: it may carry tokens.
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        // Strings recorded as strings: `%` would format each through
        // `Display` in every layer.
        http.request.method = method.as_str(),
        http.route = route.as_str(),
        url.path = request.uri().path(),
        url.scheme = if state.config.tls.is_some() { "https" } else { "http" },
        user_agent.original = user_agent.as_str(),
        // Formatted once, not once per layer.
        client.address = client.ip.to_string().as_str(),
        // An OpenTelemetry integer (see `SessionInfo::span`).
        client.port = client.port.map(i64::from),
        otel.status_code = tracing::field::Empty,
    );
    if client.source != AddressSource::Peer {
        // Behind a proxy the TCP peer is someone else: the span says both.
        // (Span attributes only, and only then: a direct client's peer is
        // `client.address`, and each declared field costs every request.)
        span.set_attribute("network.peer.address", peer.ip().to_string());
        span.set_attribute("network.peer.port", i64::from(peer.port()));
    }
    if let Some(ignored) = ignored {
        span.in_scope(|| {
            ForwardedHeaderIgnored {
                header: ignored.header,
                reason: ignored.reason,
                length: ignored.length,
                metrics: &state.metrics,
            }
            .emit()
        });
    }
    let incoming = trace_context::extract(request.headers(), request.uri());
    if let Some(parent) = incoming.parent() {
        // Cannot fail: the span was created just above and not yet entered.
        let _ = span.set_parent(parent.clone());
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if let IncomingTrace::Rejected(rejected) = &incoming {
        span.in_scope(|| {
            TraceparentIgnored {
                source: rejected.source.as_str(),
                length: rejected.length,
                reason: rejected.reason,
            }
            .emit()
        });
    }
    let trace_id = trace_context::trace_id_hex(span_context.trace_id());
    let origin = match &incoming {
        IncomingTrace::Continued { source, .. } => source.as_str(),
        IncomingTrace::Absent | IncomingTrace::Rejected(_) => "new",
    };
    request.extensions_mut().insert(RequestTrace {
        span: span.clone(),
        context,
        trace_id: trace_id.clone(),
        user_agent,
        origin,
        client_debug: incoming.asks_for_debug(),
        client,
    });

    let mut response = next.run(request).instrument(span.clone()).await;

    let status = response.status();
    // An OpenTelemetry attribute only: `record` would also re-render the
    // span's JSON fields, for lines that have the status of their own
    // (`HttpRequestRefused`), and costs a session 4k instructions more.
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    if status.is_client_error() || status.is_server_error() {
        span.in_scope(|| {
            HttpRequestRefused {
                status: status.as_u16(),
                route: &route,
            }
            .emit()
        });
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
