//! Typed telemetry events: one type per documented log line.
//!
//! In the manner of Vector's `internal_events`: a line's message string
//! exists once, as its type's `MESSAGE`, and its `emit` writes the line and
//! bumps the metric that counts the same thing, so the two never disagree.
//! The README, `vector.toml`'s tests, `wstrace logs` and the test suites
//! refer to these constants instead of repeating the strings.
//!
//! Each line's `target` names the task that writes it (`wstrace::session`,
//! `…::reader`, `…::writer`, `…::heartbeat`), whatever module the code
//! lives in: "which task wrote this line" is part of the log format.
//!
//! Debug-level lines that only help while developing stay plain `tracing`
//! calls where they happen.

use std::fmt::Display;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::limits::{PROCESS_LINE_INTERVAL, PROCESS_LINES_PER_INTERVAL};
use crate::metrics::Metrics;
use crate::sampling::DebugReason;
use crate::sync::lock;

/// At most `max` lines per `interval`; the rest are not written but
/// counted, and the next line written says how many were left out
/// (`lines_suppressed`), so a flood costs bounded disk and nothing is
/// silently lost.
#[derive(Debug)]
pub struct LineBudget {
    max: u32,
    /// Milliseconds (a `Duration` is 16 bytes, and every session keeps a
    /// budget).
    interval_ms: u32,
    window_start: Instant,
    used: u32,
    suppressed: u64,
    suppressed_total: u64,
}

impl LineBudget {
    pub fn new(max: u32, interval: Duration) -> Self {
        Self {
            max,
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            window_start: Instant::now(),
            used: 0,
            suppressed: 0,
            suppressed_total: 0,
        }
    }

    /// `Some(suppressed since the last written line)` when this line may be
    /// written, `None` when it is suppressed (and counted).
    pub fn admit(&mut self) -> Option<u64> {
        if self.window_start.elapsed() >= Duration::from_millis(u64::from(self.interval_ms)) {
            self.window_start = Instant::now();
            self.used = 0;
        }
        if self.used < self.max {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            self.suppressed_total += 1;
            None
        }
    }

    /// Lines suppressed over the budget's whole life.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }
}

/// One process-wide budget per kind of line that any client can cause
/// without a session (refused requests and upgrades).
fn process_budget(kind: &'static LazyLock<Mutex<LineBudget>>) -> Option<u64> {
    lock(kind).admit()
}

macro_rules! process_budgets {
    ($($name:ident),*) => {
        $(static $name: LazyLock<Mutex<LineBudget>> = LazyLock::new(|| {
            Mutex::new(LineBudget::new(PROCESS_LINES_PER_INTERVAL, PROCESS_LINE_INTERVAL))
        });)*
    };
}

process_budgets!(
    HTTP_REFUSALS,
    UPGRADE_REFUSALS,
    HOST_REFUSALS,
    TRACEPARENT_REFUSALS,
    ADMIN_REFUSALS
);

/// The `target` of each line: the task or part of the server that wrote it.
pub mod target {
    pub const SERVER: &str = "wstrace::app";
    pub const HTTP: &str = "wstrace::http";
    pub const ADMIN: &str = "wstrace::http::api";
    pub const SESSION: &str = "wstrace::session";
    pub const READER: &str = "wstrace::session::reader";
    pub const WRITER: &str = "wstrace::session::writer";
    pub const HEARTBEAT: &str = "wstrace::session::heartbeat";
    pub const ROUTING: &str = "wstrace::routing";
    pub const CLUSTER: &str = "wstrace::cluster";
}

use target::*;

// ---------------------------------------------------------------- server

/// The server is bound and serving.
#[derive(Debug)]
pub struct Listening<'a> {
    pub listen: std::net::SocketAddr,
    pub log_dir: Option<String>,
    pub otlp_endpoint: Option<&'a str>,
    pub admin_api: bool,
    pub jwt_auth: bool,
    pub cluster: bool,
    pub message_sample_ratio: f64,
}

impl Listening<'_> {
    pub const MESSAGE: &'static str = "wstrace listening";
    pub fn emit(self) {
        let addr = self.listen;
        tracing::info!(
            target: SERVER,
            message = Self::MESSAGE,
            listen = %addr,
            ws_url = %format_args!("ws://{addr}/ws"),
            log_dir = self.log_dir,
            otlp_endpoint = self.otlp_endpoint,
            version = env!("CARGO_PKG_VERSION"),
            admin_api = self.admin_api,
            jwt_auth = self.jwt_auth,
            cluster = self.cluster,
            message_sample_ratio = self.message_sample_ratio
        );
    }
}

/// The open-file limit at start: raised from the soft to the hard limit,
/// and whether `--max-connections` still exceeds it.
#[derive(Debug)]
pub struct OpenFileLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
    pub max_connections: usize,
}

impl OpenFileLimit {
    pub const MESSAGE: &'static str = "open-file limit";
    pub const TOO_LOW_MESSAGE: &'static str = "open-file limit is below --max-connections: \
         upgrades beyond it will fail; raise the hard limit (ulimit -Hn) or lower --max-connections";
    /// Descriptors besides the sessions: listener, log files, collector,
    /// Redis, lingering closes.
    pub const RESERVED: u64 = 64;

    pub fn emit(self) {
        let needed = self.max_connections as u64 + Self::RESERVED;
        if needed > self.soft {
            tracing::warn!(
                target: SERVER,
                message = Self::TOO_LOW_MESSAGE,
                soft_limit = self.soft,
                hard_limit = self.hard,
                max_connections = self.max_connections,
                needed
            );
        } else {
            tracing::info!(
                target: SERVER,
                message = Self::MESSAGE,
                soft_limit_before = self.soft_before,
                soft_limit = self.soft,
                hard_limit = self.hard,
                max_connections = self.max_connections
            );
        }
    }
}

/// The last line of a run: how many lines came before it, so a reader can
/// check that the file holds every one.
#[derive(Debug)]
pub struct TelemetryFlushing {
    pub log_lines_before: u64,
}

impl TelemetryFlushing {
    pub const MESSAGE: &'static str = "telemetry flushing; bye";
    pub fn emit(self) {
        tracing::info!(
            target: SERVER,
            message = Self::MESSAGE,
            log_lines_before = self.log_lines_before
        );
    }
}

/// Spans were dropped since the last report (a collector that is down).
#[derive(Debug)]
pub struct SpansDropped {
    pub dropped: u64,
    pub dropped_total: u64,
    pub export_failed_total: u64,
    pub queue_full_total: u64,
    pub interval_ms: u64,
}

impl SpansDropped {
    pub const MESSAGE: &'static str =
        "spans dropped: the OTLP collector is unreachable or too slow";
    pub fn emit(self) {
        tracing::warn!(
            target: HTTP,
            message = Self::MESSAGE,
            dropped = self.dropped,
            dropped_total = self.dropped_total,
            export_failed_total = self.export_failed_total,
            queue_full_total = self.queue_full_total,
            interval_ms = self.interval_ms
        );
    }
}

/// The oldest log files were deleted to keep the directory under
/// `--log-max-bytes`.
#[derive(Debug)]
pub struct LogFilesPruned {
    pub files: usize,
    pub bytes: u64,
    pub max_bytes: u64,
}

impl LogFilesPruned {
    pub const MESSAGE: &'static str = "oldest log files deleted (--log-max-bytes)";
    pub fn emit(self) {
        tracing::warn!(
            target: HTTP,
            message = Self::MESSAGE,
            files = self.files,
            bytes = self.bytes,
            max_bytes = self.max_bytes
        );
    }
}

/// Log lines could not be written since the last report.
#[derive(Debug)]
pub struct LogLinesDropped {
    pub dropped: u64,
    pub dropped_total: u64,
}

impl LogLinesDropped {
    pub const MESSAGE: &'static str = "log lines dropped: the log writer is gone";
    pub fn emit(self) {
        tracing::error!(
            target: HTTP,
            message = Self::MESSAGE,
            dropped = self.dropped,
            dropped_total = self.dropped_total
        );
    }
}

// ------------------------------------------------------------------ http

/// A `traceparent` that does not parse: the request starts a new trace.
#[derive(Debug)]
pub struct TraceparentIgnored<'a> {
    pub source: &'a str,
    pub length: usize,
    pub reason: &'a str,
}

impl TraceparentIgnored<'_> {
    pub const MESSAGE: &'static str = "ignoring malformed traceparent; starting a new trace";
    pub fn emit(self) {
        let Some(suppressed) = process_budget(&TRACEPARENT_REFUSALS) else {
            return;
        };
        tracing::warn!(
            target: HTTP,
            message = Self::MESSAGE,
            lines_suppressed = suppressed,
            traceparent.source = self.source,
            traceparent.length = self.length,
            reason = self.reason
        );
    }
}

/// An HTTP request answered with a 4xx or 5xx status.
#[derive(Debug)]
pub struct HttpRequestRefused<'a> {
    pub status: u16,
    pub route: &'a str,
}

impl HttpRequestRefused<'_> {
    pub const MESSAGE: &'static str = "request refused";
    /// 404s (scanners, typos) at debug: not worth a line each by default.
    pub fn emit(self) {
        if self.status == 404 {
            tracing::debug!(
                target: HTTP,
                message = Self::MESSAGE,
                status = self.status,
                route = %self.route
            );
            return;
        }
        let Some(suppressed) = process_budget(&HTTP_REFUSALS) else {
            return;
        };
        tracing::info!(
            target: HTTP,
            message = Self::MESSAGE,
            status = self.status,
            route = %self.route,
            lines_suppressed = suppressed
        );
    }
}

/// Why an upgrade was refused; the `reason` label of
/// `wstrace_upgrades_rejected_total`.
#[derive(Debug)]
pub enum UpgradeRefused {
    OriginNotAllowed,
    /// The JWT's problem (`missing`, `expired`, …), never the token.
    BadToken {
        code: &'static str,
    },
    ConnectionLimit {
        limit: usize,
    },
    /// `--max-sessions-per-ip` reached for the client's address.
    PerIpLimit {
        limit: usize,
    },
    /// `--max-sessions-per-user` reached for the token's user.
    PerUserLimit {
        limit: usize,
    },
}

impl UpgradeRefused {
    pub const ORIGIN_MESSAGE: &'static str = "upgrade refused: origin not allowed";
    pub const TOKEN_MESSAGE: &'static str = "upgrade refused: bad token";
    pub const LIMIT_MESSAGE: &'static str = "upgrade refused: connection limit reached";
    pub const PER_IP_MESSAGE: &'static str = "upgrade refused: sessions per address limit reached";
    pub const PER_USER_MESSAGE: &'static str = "upgrade refused: sessions per user limit reached";

    pub fn emit(self, metrics: &Metrics) {
        let reason = match &self {
            UpgradeRefused::OriginNotAllowed => "origin",
            UpgradeRefused::BadToken { .. } => "auth",
            UpgradeRefused::ConnectionLimit { .. } => "connection_limit",
            UpgradeRefused::PerIpLimit { .. } => "per_ip_limit",
            UpgradeRefused::PerUserLimit { .. } => "per_user_limit",
        };
        metrics.upgrade_rejected(reason);
        let Some(suppressed) = process_budget(&UPGRADE_REFUSALS) else {
            return;
        };
        match self {
            UpgradeRefused::OriginNotAllowed => tracing::warn!(
                target: HTTP,
                message = Self::ORIGIN_MESSAGE,
                lines_suppressed = suppressed
            ),
            UpgradeRefused::BadToken { code } => tracing::warn!(
                target: HTTP,
                message = Self::TOKEN_MESSAGE,
                reason = code,
                lines_suppressed = suppressed
            ),
            UpgradeRefused::ConnectionLimit { limit } => tracing::warn!(
                target: HTTP,
                message = Self::LIMIT_MESSAGE,
                limit,
                lines_suppressed = suppressed
            ),
            UpgradeRefused::PerIpLimit { limit } => tracing::warn!(
                target: HTTP,
                message = Self::PER_IP_MESSAGE,
                limit,
                lines_suppressed = suppressed
            ),
            UpgradeRefused::PerUserLimit { limit } => tracing::warn!(
                target: HTTP,
                message = Self::PER_USER_MESSAGE,
                limit,
                lines_suppressed = suppressed
            ),
        }
    }
}

/// A request for a `Host` name the server is not for (DNS rebinding);
/// counted as an upgrade rejection with reason `host`.
#[derive(Debug)]
pub struct HostRefused<'a> {
    pub path: &'a str,
}

impl HostRefused<'_> {
    pub const MESSAGE: &'static str = "request refused: Host not allowed (see --allowed-host)";
    pub fn emit(self, metrics: &Metrics) {
        metrics.upgrade_rejected("host");
        let Some(suppressed) = process_budget(&HOST_REFUSALS) else {
            return;
        };
        tracing::warn!(
            target: HTTP,
            message = Self::MESSAGE,
            url.path = %self.path,
            lines_suppressed = suppressed
        );
    }
}

/// An admin request without the right bearer token.
#[derive(Debug)]
pub struct AdminTokenRefused;

impl AdminTokenRefused {
    pub const MESSAGE: &'static str = "admin request refused: missing or wrong token";
    pub fn emit(self) {
        if let Some(suppressed) = process_budget(&ADMIN_REFUSALS) {
            tracing::warn!(target: ADMIN, message = Self::MESSAGE, lines_suppressed = suppressed);
        }
    }
}

/// An operator closed a session (on this instance, or on the one that holds
/// it when `forwarded_to` names another).
#[derive(Debug)]
pub struct AdminClosedSession<'a> {
    pub session_id: uuid::Uuid,
    pub code: u16,
    /// The instance the close was handed to, when the session is elsewhere.
    pub forwarded_to: Option<&'a str>,
    /// The request was made on another instance and reached this one.
    pub from_elsewhere: bool,
}

impl AdminClosedSession<'_> {
    pub const MESSAGE: &'static str = "admin closed session";
    pub const FORWARDED_MESSAGE: &'static str = "admin close forwarded";
    pub const REMOTE_MESSAGE: &'static str =
        "admin closed session (request made on another instance)";
    pub fn emit(self) {
        let session_id = self.session_id;
        let code = self.code;
        match (self.forwarded_to, self.from_elsewhere) {
            (Some(instance), _) => tracing::info!(
                target: ADMIN,
            message = Self::MESSAGE,
                %session_id,
                code,
                on_instance = %instance,
                message = Self::FORWARDED_MESSAGE
            ),
            (None, true) => {
                tracing::info!(target: CLUSTER, %session_id, code, message = Self::REMOTE_MESSAGE)
            }
            (None, false) => {
                tracing::info!(target: ADMIN, %session_id, code, message = Self::MESSAGE)
            }
        }
    }
}

/// `POST /api/cleanup` closed the sessions idle for long enough.
#[derive(Debug)]
pub struct AdminCleanup {
    pub closed: usize,
    pub idle_s: u64,
}

impl AdminCleanup {
    pub const MESSAGE: &'static str = "admin cleanup";
    pub fn emit(self) {
        tracing::info!(
            target: ADMIN,
            closed = self.closed,
            idle_s = self.idle_s
        );
    }
}

/// In the touched session's own trace (inside its `ws.admin` span): an
/// admin request acted on this session; the link leads to the request.
#[derive(Debug)]
pub struct AdminTouchedSession<'a> {
    pub action: &'static str,
    pub link: &'a opentelemetry::trace::SpanContext,
}

impl AdminTouchedSession<'_> {
    pub const MESSAGE: &'static str = "admin request touched this session";
    pub fn emit(self) {
        tracing::info!(
            target: ADMIN,
            message = Self::MESSAGE,
            admin.action = self.action,
            link.trace_id = %self.link.trace_id(),
            link.span_id = %self.link.span_id()
        );
    }
}

// --------------------------------------------------------------- session

/// The first line of a session.
#[derive(Debug)]
pub struct SessionOpened<'a> {
    pub user_agent: &'a str,
    /// `header`, `query`, or `new`.
    pub trace_origin: &'static str,
    /// Why the session records every message, if it does (`debug` and
    /// `debug_reason` are written only then).
    pub debug: Option<DebugReason>,
}

impl SessionOpened<'_> {
    pub const MESSAGE: &'static str = "session opened";
    pub fn emit(self, metrics: &Metrics) {
        metrics.session_opened();
        match self.debug {
            None => tracing::info!(
                target: SESSION,
                message = Self::MESSAGE,
                user_agent.original = %self.user_agent,
                trace.origin = self.trace_origin
            ),
            Some(reason) => tracing::info!(
                target: SESSION,
                message = Self::MESSAGE,
                user_agent.original = %self.user_agent,
                trace.origin = self.trace_origin,
                debug = true,
                debug_reason = reason.as_str()
            ),
        }
    }
}

/// A debug session asked for at the upgrade (claim, user list, trace
/// context) that the cap refused: it is recorded as an ordinary session.
#[derive(Debug)]
pub struct DebugSessionRefused {
    pub reason: DebugReason,
    pub max_debug_sessions: usize,
}

impl DebugSessionRefused {
    pub const MESSAGE: &'static str = "debug session refused: too many debug sessions";
    pub fn emit(self, metrics: &Metrics) {
        metrics
            .debug_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            target: SESSION,
            message = Self::MESSAGE,
            debug_reason = self.reason.as_str(),
            max_debug_sessions = self.max_debug_sessions
        );
    }
}

/// An operator switched a live session's debug mode (in the session's
/// trace, linked to the admin request).
#[derive(Debug)]
pub struct DebugSwitched<'a> {
    pub on: bool,
    /// For how long, when switched on.
    pub minutes: Option<u32>,
    /// Who asked: the admin request's `requested_by`, or its client address.
    pub requested_by: &'a str,
    pub link: &'a opentelemetry::trace::SpanContext,
}

impl DebugSwitched<'_> {
    pub const ON: &'static str = "debug tracing on";
    pub const OFF: &'static str = "debug tracing off";
    pub fn emit(self) {
        tracing::info!(
            target: ADMIN,
            message = if self.on { Self::ON } else { Self::OFF },
            debug = self.on,
            debug_minutes = self.minutes,
            requested_by = self.requested_by,
            link.trace_id = %self.link.trace_id(),
            link.span_id = %self.link.span_id()
        );
    }
}

/// A debug period an operator set has run out.
#[derive(Debug)]
pub struct DebugExpired;

impl DebugExpired {
    pub const MESSAGE: &'static str = "debug tracing expired";
    pub fn emit(self) {
        tracing::info!(target: SESSION, message = Self::MESSAGE, debug = false);
    }
}

/// The flight recorder's messages, written once, at a session's first
/// failure (`session::flight`). `flight_recorder` is a JSON array in the
/// line, not a string.
#[derive(Debug)]
pub struct FlightRecorded<'a> {
    /// What failed: an error code or a close code.
    pub trigger: &'a str,
    pub messages: usize,
    /// Earlier messages the ring no longer held.
    pub skipped: u64,
    /// The entries, as JSON.
    pub recording: &'a str,
}

impl FlightRecorded<'_> {
    pub const MESSAGE: &'static str = "flight recorder";
    /// The field whose value is written as JSON, not as a string.
    pub const FIELD: &'static str = "flight_recorder";
    pub fn emit(self, metrics: &Metrics) {
        metrics
            .flight_recordings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            target: SESSION,
            message = Self::MESSAGE,
            trigger = self.trigger,
            flight.messages = self.messages,
            flight.skipped = self.skipped,
            flight_recorder = self.recording
        );
    }
}

/// The last line of a session: how it ended, and what it did.
#[derive(Debug)]
pub struct SessionClosed<'a> {
    pub close_code: u16,
    pub close_reason: &'a str,
    pub closed_by: &'static str,
    pub close_clean: bool,
    pub peer_close_code: Option<u16>,
    pub duration_ms: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub pings_sent: u64,
    pub ping_rtt_last_ms: Option<f64>,
    pub ping_rtt_mean_ms: Option<f64>,
    pub error_count: u64,
    /// Warning lines of this session left out by its budget.
    pub warnings_suppressed: u64,
}

impl SessionClosed<'_> {
    pub const MESSAGE: &'static str = "session closed";
    pub fn emit(self, metrics: &Metrics) {
        metrics.session_closed(self.close_code, self.closed_by);
        tracing::info!(
            target: SESSION,
            message = Self::MESSAGE,
            close_code = self.close_code,
            close_reason = %self.close_reason,
            closed_by = self.closed_by,
            close_clean = self.close_clean,
            peer_close_code = self.peer_close_code,
            duration_ms = self.duration_ms,
            messages_in = self.messages_in,
            messages_out = self.messages_out,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            pings_sent = self.pings_sent,
            ping_rtt_last_ms = self.ping_rtt_last_ms,
            ping_rtt_mean_ms = self.ping_rtt_mean_ms,
            error_count = self.error_count,
            warnings_suppressed = self.warnings_suppressed
        );
    }
}

/// A session task panicked (its handler's panics are caught earlier; this
/// is anything else).
#[derive(Debug)]
pub struct SessionTaskPanicked {
    pub task: &'static str,
}

impl SessionTaskPanicked {
    pub const MESSAGE: &'static str = "session task panicked";
    pub fn emit(self) {
        tracing::error!(target: SESSION, task = self.task, message = Self::MESSAGE);
    }
}

/// A session task outlived the close timeout.
#[derive(Debug)]
pub struct SessionTaskAborted {
    pub task: &'static str,
    pub timeout_ms: u64,
}

impl SessionTaskAborted {
    pub const MESSAGE: &'static str = "session task did not finish in time; aborted";
    pub fn emit(self) {
        tracing::info!(
            target: SESSION,
            message = Self::MESSAGE,
            task = self.task,
            timeout_ms = self.timeout_ms
        );
    }
}

// ---------------------------------------------------------------- reader

/// A sampled inbound message, handled: written as its `ws.receive` span
/// ends, after any line its handling wrote, with the span's duration.
#[derive(Debug)]
pub struct MessageHandled {
    pub duration_us: u64,
}

impl MessageHandled {
    pub const MESSAGE: &'static str = "message handled";
    pub fn emit(self) {
        tracing::info!(
            target: READER,
            message = Self::MESSAGE,
            duration_us = self.duration_us
        );
    }
}

/// A text frame that is not a valid client frame; answered with an error
/// frame.
#[derive(Debug)]
pub struct ClientFrameRejected<'a> {
    pub code: &'static str,
    pub message: &'a str,
    /// Such lines of this session left out since the last one written
    /// (the session's warning budget, see [`LineBudget`]).
    pub lines_suppressed: u64,
}

impl ClientFrameRejected<'_> {
    pub const MESSAGE: &'static str = "rejected client frame";
    pub fn emit(self) {
        tracing::warn!(
            target: READER,
            message = Self::MESSAGE,
            error.code = self.code,
            error.message = %self.message,
            lines_suppressed = self.lines_suppressed
        );
    }
}

/// A valid frame the server will not act on (bad channel, unknown
/// recipient, …); answered with an error frame.
#[derive(Debug)]
pub struct FrameRefused<'a> {
    pub code: &'static str,
    pub message: &'a str,
    /// As for [`ClientFrameRejected`].
    pub lines_suppressed: u64,
}

impl FrameRefused<'_> {
    pub const MESSAGE: &'static str = "request refused";
    pub fn emit(self) {
        tracing::warn!(
            target: READER,
            message = Self::MESSAGE,
            error.code = self.code,
            error.message = self.message,
            lines_suppressed = self.lines_suppressed
        );
    }
}

/// The session joined or left a channel.
#[derive(Debug)]
pub struct Subscription<'a> {
    pub channel: &'a str,
    pub subscribed: bool,
}

impl Subscription<'_> {
    pub const SUBSCRIBED: &'static str = "subscribed";
    pub const UNSUBSCRIBED: &'static str = "unsubscribed";
    pub fn emit(self) {
        let channel = self.channel;
        if self.subscribed {
            tracing::info!(target: READER, %channel, message = Self::SUBSCRIBED);
        } else {
            tracing::info!(target: READER, %channel, message = Self::UNSUBSCRIBED);
        }
    }
}

/// A sampled channel publish, with where it went.
#[derive(Debug)]
pub struct MessagePublished<'a> {
    pub channel: &'a str,
    pub message_id: &'a str,
    pub delivered: usize,
    pub dropped: usize,
    pub cluster_queued: bool,
}

impl MessagePublished<'_> {
    pub const MESSAGE: &'static str = "message published";
    pub fn emit(self) {
        tracing::info!(
            target: READER,
            message = Self::MESSAGE,
            channel = %self.channel,
            ws.message.id = %self.message_id,
            delivered = self.delivered,
            dropped = self.dropped,
            cluster_queued = self.cluster_queued
        );
    }
}

/// A sampled direct message, with where it went.
#[derive(Debug)]
pub struct DirectMessageSent<'a> {
    pub message_id: &'a str,
    pub delivered: usize,
    pub dropped: usize,
    pub remote_sessions: usize,
}

impl DirectMessageSent<'_> {
    pub const MESSAGE: &'static str = "direct message sent";
    pub fn emit(self) {
        tracing::info!(
            target: READER,
            message = Self::MESSAGE,
            ws.message.id = %self.message_id,
            delivered = self.delivered,
            dropped = self.dropped,
            remote_sessions = self.remote_sessions
        );
    }
}

/// A frame refused by the rate limit. Every one is counted; the first of a
/// streak is also a line (and an error frame to the client).
#[derive(Debug)]
pub struct RateLimited {
    pub first: bool,
    pub messages_per_second: u32,
    pub burst: u32,
}

impl RateLimited {
    pub const MESSAGE: &'static str = "message rate exceeded; refusing frames";
    pub fn emit(self, metrics: &Metrics) {
        metrics
            .rate_limited
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.first {
            tracing::warn!(
                target: READER,
                message = Self::MESSAGE,
                messages_per_second = self.messages_per_second,
                burst = self.burst
            );
        }
    }
}

/// Still over the rate after a whole burst of refusals: closing with 1008.
#[derive(Debug)]
pub struct RateAbuse {
    pub messages_per_second: u32,
}

impl RateAbuse {
    pub const MESSAGE: &'static str = "message rate still exceeded; closing with 1008";
    pub fn emit(self) {
        tracing::warn!(
            target: READER,
            message = Self::MESSAGE,
            messages_per_second = self.messages_per_second
        );
    }
}

/// A panic while handling one frame: the session closes with 1011, the
/// server goes on.
#[derive(Debug)]
pub struct HandlerPanicked<'a> {
    pub panic: &'a str,
}

impl HandlerPanicked<'_> {
    pub const MESSAGE: &'static str = "session handler panicked; closing with 1011";
    pub fn emit(self) {
        tracing::error!(target: READER, panic = %self.panic, message = Self::MESSAGE);
    }
}

/// Reading from the socket failed for a reason other than the peer leaving.
pub struct SessionReadFailed<'a> {
    pub error: &'a dyn Display,
    pub close_code: u16,
    /// Over `--max-message-bytes`: also counted in
    /// `wstrace_oversize_messages_total`.
    pub message_too_big: bool,
}

impl SessionReadFailed<'_> {
    pub const MESSAGE: &'static str = "session read failed";
    pub fn emit(self, metrics: &Metrics) {
        if self.message_too_big {
            metrics
                .oversize
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::warn!(
            target: READER,
            message = Self::MESSAGE,
            error = %self.error,
            close_code = self.close_code
        );
    }
}

// ---------------------------------------------------------------- writer

/// The receiving side of a sampled delivery (inside its `ws.send` span):
/// the link names the publisher's span.
#[derive(Debug)]
pub struct MessageDelivered<'a> {
    pub message_id: &'a str,
    pub channel: Option<&'a str>,
    pub from_session: Option<uuid::Uuid>,
    pub link: &'a opentelemetry::trace::SpanContext,
}

impl MessageDelivered<'_> {
    pub const MESSAGE: &'static str = "message delivered";
    pub fn emit(self) {
        tracing::info!(
            target: WRITER,
            message = Self::MESSAGE,
            ws.message.id = %self.message_id,
            channel = self.channel,
            from_session = self.from_session.map(|s| s.to_string()),
            link.trace_id = %self.link.trace_id(),
            link.span_id = %self.link.span_id()
        );
    }
}

/// The writer could not write for `--write-timeout`: the client has
/// stopped reading. The session is closed (1008) without waiting further.
#[derive(Debug)]
pub struct WriterBlocked {
    pub timeout_ms: u64,
}

impl WriterBlocked {
    pub const MESSAGE: &'static str =
        "client is not reading: nothing could be written within --write-timeout; closing";
    pub fn emit(self, metrics: &Metrics) {
        metrics
            .write_timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(target: WRITER, message = Self::MESSAGE, timeout_ms = self.timeout_ms);
    }
}

// ------------------------------------------------------------- heartbeat

/// A heartbeat ping went into the outbound queue.
#[derive(Debug)]
pub struct PingSent;

impl PingSent {
    pub const MESSAGE: &'static str = "ping sent";
    pub fn emit(self) {
        tracing::debug!(target: HEARTBEAT, message = Self::MESSAGE);
    }
}

/// Nothing heard from the client within the idle timeout.
#[derive(Debug)]
pub struct IdleSessionClosing {
    pub silent_ms: u64,
    pub idle_timeout_ms: u64,
}

impl IdleSessionClosing {
    pub const MESSAGE: &'static str = "closing idle session";
    pub fn emit(self) {
        tracing::info!(
            target: HEARTBEAT,
            message = Self::MESSAGE,
            silent_ms = self.silent_ms,
            idle_timeout_ms = self.idle_timeout_ms
        );
    }
}

// --------------------------------------------------------------- routing

/// A delivery found the receiver's queue full. Every refused delivery is
/// counted; the one that decides the close (1013) is also a line, in the
/// receiver's own trace.
#[derive(Debug)]
pub struct OutboundQueueFull<'a> {
    pub receiver: &'a tracing::Span,
    pub queue_frames: usize,
    pub queue_bytes: usize,
    pub closing: bool,
}

impl OutboundQueueFull<'_> {
    pub const MESSAGE: &'static str =
        "outbound queue full: client is not reading; closing with 1013";
    pub fn emit(self, metrics: &Metrics) {
        metrics
            .outbound_queue_drops
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.closing {
            tracing::warn!(
                target: ROUTING,
                parent: self.receiver,
                message = Self::MESSAGE,
                queue_frames = self.queue_frames,
                queue_bytes = self.queue_bytes
            );
        }
    }
}

// --------------------------------------------------------------- cluster

/// Cluster mode is on and Redis answered.
#[derive(Debug)]
pub struct RedisConnected<'a> {
    pub redis: &'a str,
    pub session_ttl_ms: u64,
    /// Envelopes are signed (`--cluster-secret`); unsigned, a warning.
    pub envelopes_signed: bool,
}

impl RedisConnected<'_> {
    pub const MESSAGE: &'static str = "cluster mode: connected to Redis";
    pub const UNSIGNED_MESSAGE: &'static str = "cluster mode without --cluster-secret: \
         anyone who can PUBLISH to this Redis can deliver frames to any session or kick it";
    pub fn emit(self) {
        if !self.envelopes_signed {
            tracing::warn!(target: CLUSTER, message = Self::UNSIGNED_MESSAGE, redis = self.redis);
        }
        tracing::info!(
            target: CLUSTER,
            message = Self::MESSAGE,
            redis = self.redis,
            session_ttl_ms = self.session_ttl_ms,
            envelopes_signed = self.envelopes_signed
        );
    }
}

/// The pub/sub connection to Redis is gone.
#[derive(Debug)]
pub struct RedisLost<'a> {
    pub redis: &'a str,
    pub cause: &'static str,
}

impl RedisLost<'_> {
    pub const MESSAGE: &'static str = "lost the connection to Redis: sessions here are served \
         as before; cross-instance delivery fails until it returns (retrying with backoff)";
    pub fn emit(self) {
        tracing::warn!(
            target: CLUSTER,
            message = Self::MESSAGE,
            redis = self.redis,
            cause = self.cause
        );
    }
}

/// Redis is back; this instance's sessions are in the registry again.
#[derive(Debug)]
pub struct RedisReconnected<'a> {
    pub redis: &'a str,
    pub down_ms: u64,
    pub sessions_reregistered: usize,
}

impl RedisReconnected<'_> {
    pub const MESSAGE: &'static str = "reconnected to Redis: cross-instance delivery resumed";
    pub fn emit(self) {
        tracing::info!(
            target: CLUSTER,
            message = Self::MESSAGE,
            redis = self.redis,
            down_ms = self.down_ms,
            sessions_reregistered = self.sessions_reregistered
        );
    }
}

/// Cross-instance publishes or registry calls failed during the last
/// interval (one line per interval, with counts).
#[derive(Debug)]
pub struct ClusterDeliveryFailing<'a> {
    pub redis: &'a str,
    pub redis_up: bool,
    pub publish_failures: u64,
    pub registry_failures: u64,
    pub publish_failures_total: u64,
    pub interval_ms: u64,
}

impl ClusterDeliveryFailing<'_> {
    pub const MESSAGE: &'static str =
        "cross-instance delivery failing: messages reached this instance's sessions only";
    pub fn emit(self) {
        tracing::warn!(
            target: CLUSTER,
            message = Self::MESSAGE,
            redis = self.redis,
            redis_up = self.redis_up,
            publish_failures = self.publish_failures,
            registry_failures = self.registry_failures,
            publish_failures_total = self.publish_failures_total,
            interval_ms = self.interval_ms
        );
    }
}

/// An envelope from Redis that does not decode; counted in
/// `wstrace_cluster_malformed_total` by the cluster's counters.
pub struct ClusterEnvelopeDropped<'a> {
    pub error: &'a dyn Display,
    pub bytes: usize,
}

impl ClusterEnvelopeDropped<'_> {
    pub const MESSAGE: &'static str = "dropped a cluster envelope";
    pub fn emit(self) {
        tracing::warn!(
            target: CLUSTER,
            message = Self::MESSAGE,
            error = %self.error,
            bytes = self.bytes
        );
    }
}

/// A sampled message from another instance, handed to the sessions here
/// (inside the `redis.deliver` span).
#[derive(Debug)]
pub struct ClusterMessageDelivered<'a> {
    pub message_id: &'a str,
    pub delivered: usize,
    pub dropped: usize,
    pub link: &'a opentelemetry::trace::SpanContext,
}

impl ClusterMessageDelivered<'_> {
    pub const MESSAGE: &'static str = "cluster message delivered on this instance";
    pub fn emit(self) {
        tracing::info!(
            target: CLUSTER,
            message = Self::MESSAGE,
            ws.message.id = %self.message_id,
            delivered = self.delivered,
            dropped = self.dropped,
            link.trace_id = %self.link.trace_id(),
            link.span_id = %self.link.span_id()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flight_recording_is_written_as_json() {
        // The bunyan layer writes the fields it lists as JSON, not strings.
        assert!(crate::telemetry::JSON_VALUED_FIELDS.contains(&FlightRecorded::FIELD));
    }

    #[test]
    fn a_line_budget_writes_its_share_and_counts_the_rest() {
        let mut budget = LineBudget::new(3, Duration::from_millis(50));
        let first: Vec<_> = (0..10).map(|_| budget.admit()).collect();
        assert_eq!(&first[..3], [Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        assert_eq!(budget.suppressed_total(), 7);
        std::thread::sleep(Duration::from_millis(60));
        // The next line written says how many were left out before it.
        assert_eq!(budget.admit(), Some(7));
        assert_eq!(budget.admit(), Some(0));
        assert_eq!(budget.suppressed_total(), 7);
    }
}
