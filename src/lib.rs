//! wstrace: a WebSocket server whose every session can be found, end to
//! end, by one trace ID.
//!
//! Map of the crate:
//!
//! - [`cli`]: the command line; every flag also has a `WSTRACE_*` variable.
//! - [`app`]: `wstrace serve`, from telemetry setup to flushed exit.
//! - [`server`]: the accept loop, routes, the HTTP server span, the upgrade,
//!   graceful shutdown.
//! - [`state`]: what all parts of a running server share.
//! - [`session`]: one WebSocket session: its span, its reader, writer and
//!   heartbeat tasks, message sampling, rate limit, and the `session
//!   closed` record.
//! - [`hub`]: the session registry, users and channels; non-blocking
//!   fan-out.
//! - [`cluster`]: cluster mode over Redis: cross-instance delivery, the
//!   session registry, reconnection.
//! - [`api`]: the admin REST API.
//! - [`auth`]: JWT for sessions, the Origin allowlist, secrets that never
//!   print.
//! - [`metrics`]: Prometheus text at `/metrics`.
//! - [`doctor`]: `wstrace doctor`, one session followed through the
//!   production pipeline.
//! - [`http_client`]: the small HTTP client the tools use.
//! - [`client`], [`load`], [`logs`]: `wstrace client`, `wstrace load` and
//!   `wstrace logs`, the everyday tools.
//! - [`explorer`]: the session explorer page at `GET /`.
//! - [`protocol`]: the JSON frames of protocol v1.
//! - [`trace_context`]: W3C `traceparent` in (header or query) and
//!   `traceresponse` out.
//! - [`telemetry`]: the tracing subscriber: bunyan JSON lines with
//!   `trace_id`/`span_id`/`session_id`, lossless file and stdout writers,
//!   OTLP export; and the guard that flushes them.
//! - [`error`]: every failure and its close code or HTTP status.
//! - [`limits`]: every bound the server enforces.
//! - [`shutdown`]: the signals that start a graceful shutdown.

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod doctor;
pub mod error;
pub mod explorer;
pub mod http_client;
pub mod hub;
pub mod limits;
pub mod load;
pub mod logs;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod trace_context;
