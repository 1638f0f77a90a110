//! The server process: listening, limits, the last line, its own telemetry.

use super::target::*;
use super::*;

/// The server is bound and serving.
#[derive(Debug)]
pub struct Listening<'a> {
    pub listen: std::net::SocketAddr,
    pub log_dir: Option<String>,
    pub otlp_endpoint: Option<&'a str>,
    pub admin_api: bool,
    pub jwt_auth: bool,
    pub cluster: bool,
    /// `--tls-cert`: `wss://` and `https://`.
    pub tls: bool,
    pub message_sample_ratio: f64,
}

impl Listening<'_> {
    pub const MESSAGE: &'static str = "wstrace listening";
}

impl InternalEvent for Listening<'_> {
    fn emit(self) {
        let addr = self.listen;
        let scheme = if self.tls { "wss" } else { "ws" };
        tracing::info!(
            target: SERVER,
            message = Self::MESSAGE,
            listen = %addr,
            ws_url = %format_args!("{scheme}://{addr}/ws"),
            tls = self.tls,
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
}

impl InternalEvent for OpenFileLimit {
    fn emit(self) {
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
    pub log_lines_dropped: u64,
}

impl TelemetryFlushing {
    pub const MESSAGE: &'static str = "telemetry flushing; bye";
}

impl InternalEvent for TelemetryFlushing {
    fn emit(self) {
        tracing::info!(
            target: SERVER,
            message = Self::MESSAGE,
            log_lines_before = self.log_lines_before,
            log_lines_dropped = self.log_lines_dropped
        );
    }
}

/// Spans were dropped since the last report (a collector that is down).
#[derive(Debug)]
pub struct SpansDropped {
    /// The last export's failure, naming the endpoint (none when only the
    /// queue was full).
    pub reason: Option<String>,
    pub dropped: u64,
    pub dropped_total: u64,
    pub export_failed_total: u64,
    pub queue_full_total: u64,
    pub interval_ms: u64,
}

impl SpansDropped {
    pub const MESSAGE: &'static str =
        "spans dropped: the OTLP collector is unreachable or too slow";
}

impl InternalEvent for SpansDropped {
    fn emit(self) {
        tracing::warn!(
            target: HTTP,
            message = Self::MESSAGE,
            reason = self.reason.as_deref(),
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
}

impl InternalEvent for LogFilesPruned {
    fn emit(self) {
        tracing::warn!(
            target: HTTP,
            message = Self::MESSAGE,
            files = self.files,
            bytes = self.bytes,
            max_bytes = self.max_bytes
        );
    }
}

/// One log output lost lines since the last report (a full disk, a
/// stdout nobody reads); the others did not.
#[derive(Debug)]
pub struct LogLinesDropped {
    pub output: &'static str,
    pub cause: Option<String>,
    pub dropped: u64,
    pub dropped_total: u64,
}

impl LogLinesDropped {
    pub const MESSAGE: &'static str = "log lines dropped by one log output";
}

impl InternalEvent for LogLinesDropped {
    fn emit(self) {
        tracing::error!(
            target: HTTP,
            message = Self::MESSAGE,
            output = self.output,
            cause = self.cause.as_deref(),
            dropped = self.dropped,
            dropped_total = self.dropped_total
        );
    }
}

/// The log file (or its directory) was deleted while open; a new one was
/// started and the lines went there.
#[derive(Debug)]
pub struct LogFileRecreated {
    pub times: u64,
}

impl LogFileRecreated {
    pub const MESSAGE: &'static str = "log file was deleted; started a new one";
}

impl InternalEvent for LogFileRecreated {
    fn emit(self) {
        tracing::warn!(target: HTTP, message = Self::MESSAGE, times = self.times);
    }
}

/// `serve` ended with an error (the process then exits 1).
pub struct ServeFailed<'a> {
    pub error: &'a dyn Display,
}

impl ServeFailed<'_> {
    pub const MESSAGE: &'static str = "server stopped with an error";
}

impl InternalEvent for ServeFailed<'_> {
    fn emit(self) {
        tracing::error!(target: SERVER, error = %self.error, message = Self::MESSAGE);
    }
}

/// A signal (SIGTERM, SIGINT) started the graceful shutdown.
#[derive(Debug)]
pub struct ShutdownRequested {
    pub signal: &'static str,
}

impl ShutdownRequested {
    pub const MESSAGE: &'static str = "shutdown requested";
}

impl InternalEvent for ShutdownRequested {
    fn emit(self) {
        tracing::info!(target: SERVER, signal = self.signal, message = Self::MESSAGE);
    }
}

/// Every session has closed and the listener is gone.
#[derive(Debug)]
pub struct ServerStopped;

impl ServerStopped {
    pub const MESSAGE: &'static str = "server stopped";
}

impl InternalEvent for ServerStopped {
    fn emit(self) {
        tracing::info!(target: SERVER, message = Self::MESSAGE);
    }
}

/// The listener stopped taking connections; the open sessions are being
/// closed (1001).
#[derive(Debug)]
pub struct StoppedAccepting {
    pub open_sessions: usize,
}

impl StoppedAccepting {
    pub const MESSAGE: &'static str = "stopped accepting; closing sessions";
}

impl InternalEvent for StoppedAccepting {
    fn emit(self) {
        tracing::info!(
            target: HTTP,
            open_sessions = self.open_sessions,
            message = Self::MESSAGE
        );
    }
}

/// Sessions outlived `--shutdown-timeout`; the server stops without them.
#[derive(Debug)]
pub struct ShutdownTimedOut {
    pub open_sessions: usize,
    pub timeout_ms: u64,
}

impl ShutdownTimedOut {
    pub const MESSAGE: &'static str = "sessions still open at shutdown timeout";
}

impl InternalEvent for ShutdownTimedOut {
    fn emit(self) {
        tracing::error!(
            target: HTTP,
            open_sessions = self.open_sessions,
            timeout_ms = self.timeout_ms,
            message = Self::MESSAGE
        );
    }
}

/// `accept` failed (out of file descriptors, mostly); the loop backs off.
pub struct AcceptFailed<'a> {
    pub error: &'a dyn Display,
}

impl AcceptFailed<'_> {
    pub const MESSAGE: &'static str = "accept failed";
}

impl InternalEvent for AcceptFailed<'_> {
    fn emit(self) {
        tracing::warn!(target: HTTP, error = %self.error, message = Self::MESSAGE);
    }
}

/// The tracer provider's shutdown failed: some spans were not exported.
pub struct SpanExportIncomplete<'a> {
    pub error: &'a dyn Display,
}

impl SpanExportIncomplete<'_> {
    pub const MESSAGE: &'static str = "span export did not complete at shutdown";
}

impl InternalEvent for SpanExportIncomplete<'_> {
    fn emit(self) {
        tracing::error!(target: TELEMETRY, error = %self.error, message = Self::MESSAGE);
    }
}

/// A collector accepted a batch but rejected some of its spans (OTLP
/// partial success).
#[derive(Debug)]
pub struct SpansRejected<'a> {
    pub rejected_spans: i64,
    pub error_message: &'a str,
}

impl SpansRejected<'_> {
    pub const MESSAGE: &'static str = "the OTLP collector rejected part of a span batch";
}

impl InternalEvent for SpansRejected<'_> {
    fn emit(self) {
        tracing::warn!(
            target: TELEMETRY,
            message = Self::MESSAGE,
            rejected_spans = self.rejected_spans,
            error_message = self.error_message
        );
    }
}
