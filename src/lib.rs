//! wstrace: a WebSocket server whose every session can be found, end to
//! end, by one trace ID.
//!
//! Map of the crate, top to bottom: a module uses only modules below it
//! (`tests/it/architecture.rs` enforces it).
//!
//! - Entry: [`cli`] (the command line; every flag also has a `WSTRACE_*`
//!   variable) and [`app`] (`wstrace serve`, from telemetry setup to
//!   flushed exit).
//! - [`http`]: the accept loop, graceful shutdown, and the endpoints.
//!   - [`http::trace`]: the server span of every request (`traceparent` in,
//!     `x-trace-id`/`traceresponse` out).
//!   - [`http::upgrade`]: `GET /ws`: checks, then a session.
//!   - [`http::api`]: the admin REST API; [`http::explorer`]: the page at
//!     `GET /` and its log search.
//! - [`tools`] (beside `http`, using only `protocol`, the log line format
//!   of `telemetry` and `events`, and `auth::Secret`): [`tools::client`], [`tools::load`],
//!   [`tools::logs`], [`tools::doctor`], [`tools::http_client`].
//! - [`session`]: one WebSocket session.
//!   - [`session::handle`]: what others may know about and do to it.
//!   - [`session::close`]: the close protocol; [`session::stats`]: its
//!     counters; [`session::outbound`]: its queue and message sampling;
//!     [`session::flight`]: its flight recorder.
//!   - reader, writer and heartbeat tasks; one handler per client frame
//!     type in `commands/`, which sees only the session's `context`.
//! - [`state`]: the server's settings ([`state::ServerConfig`]) and what
//!   its parts share while it runs ([`state::ServerState`]).
//! - [`cluster`]: cluster mode over Redis, plugged into routing.
//!   - [`cluster::forward`]: routing's forwarder; [`cluster::publisher`]:
//!     the outgoing queue; [`cluster::bus`]: the receiving side and
//!     upkeep; [`cluster::registry`]: which session is where;
//!     [`cluster::envelope`]: the wire format between instances.
//! - [`routing`]: who gets a message.
//!   - [`routing::hub`]: the sessions here, their users and channels.
//!   - [`routing::delivery`]: a message serialized once for all receivers.
//!   - [`routing::recipient`]: what routing knows of a session;
//!     [`routing::forward`]: the seam cluster mode plugs into.
//! - Foundations, used by all of the above:
//!   - [`protocol`]: the JSON frames of protocol v1 and their kinds.
//!   - [`events`]: one type per documented log line, with its metric, one
//!     file per part of the server, one `InternalEvent::emit`.
//!   - [`telemetry`]: the tracing stack (bunyan JSON lines with
//!     `trace_id`/`span_id`/`session_id`, lossless writers, OTLP export),
//!     the guard that flushes it, and [`telemetry::logfile`] to read the
//!     lines back.
//!   - [`metrics`]: metric descriptors and the Prometheus text format.
//!   - [`error`]: every failure and its close code or HTTP status.
//!   - [`auth`]: JWT, the Origin allowlist, secrets that never print.
//!   - [`trace_context`]: W3C `traceparent` parsing and formatting.
//!   - [`tls`]: the listener's certificate (`--tls-cert`), reloaded on
//!     SIGHUP.
//!   - [`client_address`]: who the client is behind trusted proxies
//!     (`Forwarded`, `X-Forwarded-For`, a PROXY header's source).
//!   - [`websocket`]: RFC 6455, server side: the handshake's answer, and a
//!     connection as a reading `Stream` and a writing `Sink` of messages.
//!   - [`sampling`]: the tiers of message tracing, and debug sessions.
//!   - [`limits`]: every bound the server enforces; [`caps`]: sessions
//!     counted per client address and per user.
//!   - [`shutdown`]: the signals that start a graceful shutdown;
//!     [`sync`]: locks that survive a panic elsewhere.

pub mod app;
pub mod auth;
pub mod caps;
pub mod cli;
pub mod client_address;
pub mod cluster;
pub mod error;
pub mod events;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod routing;
pub mod sampling;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod tools;
pub mod trace_context;
pub mod websocket;
