//! The WebSocket upgrade: origin, token and connection-limit checks, then
//! the session, in its own span, as a child of the request's.

use axum::Extension;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::Response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::Instrument;
use uuid::Uuid;

use super::linger::{LingeringStream, ReadingHalf, TlsConnection, WritingHalf, tls_halves};
use super::trace::RequestTrace;
use crate::auth;
use crate::error::HttpError;
use crate::events::{InternalEvent, Refusal, UpgradeFailed, UpgradeNotOurs, UpgradeRefused};
use crate::session::{SessionInfo, SessionMode, UpgradeInfo, run_session};
use crate::state::ServerState;
use crate::websocket::{self, MessageReader, MessageWriter};

/// A WebSocket upgrade request, checked: the answer's accept key, and the
/// connection to take over once the answer is sent.
pub struct WebSocketRequest {
    accept: HeaderValue,
    /// The permessage-deflate offer the server would accept, if any, and
    /// its answer.
    deflate: Option<(websocket::deflate::Deflate, HeaderValue)>,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketRequest {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, HttpError> {
        let accept = websocket::check_request(&parts.method, &parts.headers)?;
        let deflate = websocket::deflate::negotiate(&parts.headers);
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(HttpError::NotUpgradable)?;
        Ok(Self {
            accept,
            deflate,
            on_upgrade,
        })
    }
}

impl WebSocketRequest {
    /// What the session's writer compresses, if the client offered
    /// permessage-deflate and the server allows it (`min_bytes`); else the
    /// offer is declined and nothing is compressed.
    fn compression(&self, min_bytes: Option<usize>) -> Option<websocket::deflate::Compression> {
        let min_bytes = min_bytes?;
        let (agreed, _) = self.deflate.as_ref()?;
        Some(websocket::deflate::Compression {
            min_bytes,
            max_bytes: agreed.max_compressed_message,
        })
    }

    /// The 101 answer; once it is sent, `session` runs on the connection.
    fn on_upgrade<F, Fut>(
        self,
        max_message_bytes: usize,
        wire: Arc<websocket::Wire>,
        session: F,
    ) -> Response
    where
        F: FnOnce(MessageWriter<WritingHalf>, MessageReader<ReadingHalf>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        // What the session compresses decides it all: the answer header,
        // and whether the reader takes compressed frames.
        let deflate = wire.compression.is_some();
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    UpgradeFailed { error: &error }.emit();
                    return;
                }
            };
            // The server serves every connection through a
            // `LingeringStream`, under TLS when it has `--tls-cert`.
            let (reading, writing, read_buf) = match upgraded.downcast::<TokioIo<LingeringStream>>()
            {
                Ok(parts) => {
                    let (reading, writing) = parts.io.into_inner().into_halves();
                    (reading, writing, parts.read_buf)
                }
                Err(upgraded) => match upgraded.downcast::<TokioIo<TlsConnection>>() {
                    Ok(parts) => {
                        let mut connection = parts.io.into_inner();
                        connection.get_mut().0.end_write_stall();
                        let (reading, writing) = tls_halves(connection);
                        (reading, writing, parts.read_buf)
                    }
                    Err(_) => {
                        UpgradeNotOurs.emit();
                        return;
                    }
                },
            };
            let reader = MessageReader::new(reading, read_buf, max_message_bytes)
                .with_deflate(deflate)
                .counting(wire.clone());
            session(MessageWriter::new(writing).counting(wire), reader).await;
        });
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .header(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        if let Some((_, answer)) = self.deflate.filter(|_| deflate) {
            response = response.header(header::SEC_WEBSOCKET_EXTENSIONS, answer);
        }
        response
            .body(axum::body::Body::empty())
            .expect("a valid response")
    }
}

/// `GET /ws` (`ECHO = false`): a protocol v1 session. `GET /echo`
/// (`ECHO = true`, with `--echo-endpoint`): a raw echo session, with the
/// same checks, limits and telemetry.
pub async fn ws_upgrade<const ECHO: bool>(
    state: State<Arc<ServerState>>,
    peer: ConnectInfo<SocketAddr>,
    trace: Extension<RequestTrace>,
    request_headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    upgrade: WebSocketRequest,
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
    upgrade: WebSocketRequest,
    mode: SessionMode,
) -> Result<Response, HttpError> {
    if state.shutdown.is_cancelled() {
        return Err(HttpError::ShuttingDown);
    }
    if !state.origins.allows(
        request_headers.get(header::ORIGIN),
        request_headers.get(header::HOST),
    ) {
        refuse(&state, Refusal::OriginNotAllowed);
        return Err(HttpError::OriginNotAllowed);
    }
    let subject = authenticate(&state, &request_headers, &uri)?;
    let debug = state.config.debug.reason(
        subject.as_ref().map(|s| s.user.as_str()),
        subject.as_ref().is_some_and(|s| s.debug),
        trace.client_debug,
    );
    let user = subject.map(|s| s.user);
    let held = take_slots(&state, trace.client.ip, user.as_ref())?;
    let limits = &state.config.limits;
    let info = SessionInfo {
        session_id: Uuid::now_v7(),
        trace_id: trace.trace_id,
        peer,
        client: trace.client.ip,
        user,
        upgrade: UpgradeInfo {
            wire: Arc::new(websocket::Wire {
                compression: upgrade.compression(limits.compression_min_bytes),
                ..Default::default()
            }),
            user_agent: trace.user_agent,
            trace_origin: trace.origin,
        },
        mode,
        debug,
    };
    let session_span = info.span(&trace.context);
    // One box for all the callback takes: the upgrade's task keeps room
    // for the callback for the session's whole life, so the callback is
    // best a single pointer (BENCHMARKS.md, idle memory).
    let max_message_bytes = limits.max_message_bytes;
    let wire = info.upgrade.wire.clone();
    let setup = Box::new(SessionSetup {
        span: session_span,
        info,
        state,
        held,
    });
    Ok(
        upgrade.on_upgrade(max_message_bytes, wire, move |sink, stream| {
            let SessionSetup {
                span,
                info,
                state,
                held,
            } = *setup;
            let sessions = state.sessions.clone();
            // Set up here, in the session's span, rather than in an async block
            // that would keep room for the socket all session long.
            let session = span.in_scope(|| run_session(sink, stream, info, state));
            let session = async move {
                session.await;
                drop(held);
            };
            sessions.track_future(session.instrument(span))
        }),
    )
}

/// Counts and logs a refused upgrade.
fn refuse(state: &ServerState, refusal: Refusal) {
    UpgradeRefused {
        refusal,
        metrics: &state.metrics,
    }
    .emit();
}

/// The session's user, when JWT auth is on; a missing or bad token is a
/// 401 whose line says why, never what the token was.
fn authenticate(
    state: &ServerState,
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Option<auth::TokenSubject>, HttpError> {
    let Some(jwt) = &state.jwt else {
        return Ok(None);
    };
    let token = auth::bearer_token(headers, uri.query()).ok_or(auth::AuthError::Missing);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    token
        .and_then(|t| jwt.verify_subject(&t, now))
        .map(Some)
        .map_err(|error| {
            refuse(state, Refusal::BadToken { code: error.code() });
            error.into()
        })
}

/// What a session holds while it lives: a slot of its client's address
/// (behind a trusted proxy, the client's, not the proxy's), of its user,
/// and of the connection cap, each refused with its own status.
fn take_slots(
    state: &ServerState,
    client: std::net::IpAddr,
    user: Option<&String>,
) -> Result<Held, HttpError> {
    let limits = &state.config.limits;
    let ip_slot = state.caps.per_ip.try_take(client).ok_or_else(|| {
        let limit = limits.max_sessions_per_ip;
        refuse(state, Refusal::PerIpLimit { limit });
        HttpError::TooManySessions {
            what: "from this address",
            limit,
        }
    })?;
    let user_slot = match user {
        Some(user) => Some(state.caps.per_user.try_take(user.clone()).ok_or_else(|| {
            let limit = limits.max_sessions_per_user;
            refuse(state, Refusal::PerUserLimit { limit });
            HttpError::TooManySessions {
                what: "for this user",
                limit,
            }
        })?),
        None => None,
    };
    let permit = state.connections.clone().try_acquire_owned().map_err(|_| {
        let limit = limits.max_connections;
        refuse(state, Refusal::ConnectionLimit { limit });
        HttpError::TooManyConnections { limit }
    })?;
    Ok((permit, ip_slot, user_slot))
}

/// Released when the session ends: its connection permit and its
/// per-address and per-user slots.
type Held = (
    tokio::sync::OwnedSemaphorePermit,
    crate::caps::Slot<std::net::IpAddr>,
    Option<crate::caps::Slot<String>>,
);

/// What a session takes from its upgrade request.
struct SessionSetup {
    span: tracing::Span,
    info: SessionInfo,
    state: Arc<ServerState>,
    held: Held,
}
