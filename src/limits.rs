//! Every bound the server enforces, in one place.
//!
//! Defaults are chosen so that one slow or hostile peer cannot make the
//! server use unbounded memory or time; each one is overridable from the CLI
//! (see [`crate::cli::ServeArgs`]).

use std::time::Duration;

/// How often the server pings an idle-looking peer.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// A session that sends nothing (not even a pong) for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long we wait for the peer to answer our Close before dropping TCP.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for sessions to finish their close handshake.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest WebSocket message (after reassembly of fragments) we accept.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Concurrent sessions; beyond this the upgrade is answered with 503.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Sessions from one client address (0: no cap). Above any one browser's
/// or NAT's need; a single host cannot take every slot.
pub const DEFAULT_MAX_SESSIONS_PER_IP: usize = 2_000;
/// Sessions of one JWT user (0: no cap): a leaked token cannot take every
/// slot either.
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 100;
/// Messages a session's flight recorder keeps (0: no recorder).
pub const DEFAULT_FLIGHT_RECORDER_MESSAGES: usize = 32;
/// Debug sessions (every message traced) open at once on one instance.
pub const DEFAULT_MAX_DEBUG_SESSIONS: usize = 20;
/// Longest debug period an operator may set on a session (24 hours).
pub const MAX_DEBUG_MINUTES: u32 = 24 * 60;
/// Longest `requested_by` of a debug switch, in characters: it goes into
/// log lines and cluster envelopes.
pub const MAX_REQUESTED_BY_CHARS: usize = 128;
/// Messages a session may send per second (token bucket refill rate);
/// 0 disables the limit.
pub const DEFAULT_MESSAGES_PER_SECOND: u32 = 100;
/// Token bucket size: a burst this long passes; a client that keeps going
/// after as many refusals is closed with 1008.
pub const DEFAULT_MESSAGE_BURST: u32 = 200;
/// Channels one session may be subscribed to at once.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 100;
/// A client must finish sending its HTTP request head within this time.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// WebSocket read buffer per connection, as each read asks for it.
/// tungstenite's default was 128 KiB, which cost ~140 KB per idle
/// connection; a larger message still works: the buffer grows to the size
/// its header announces, and goes back to small after it. 1 KiB still
/// reads ~25 typical frames per syscall (BENCHMARKS.md).
pub const WS_READ_BUFFER_BYTES: usize = 1024;
/// A session's writer writes its buffered frames out once they pass this
/// many bytes, even in the middle of a burst, and keeps a buffer no larger
/// than this between bursts.
pub const WS_WRITE_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes of frames queued for one session's writer: with 64 KiB frames,
/// a client that stops reading would otherwise pin 64 × 64 KiB.
pub const DEFAULT_OUTBOUND_QUEUE_BYTES: usize = 256 * 1024;
/// A session whose writer could write nothing for this long (its client
/// reads nothing) is closed.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames queued for one session's writer. When a client stops reading the
/// reader stops too (backpressure) instead of buffering without bound.
pub const OUTBOUND_QUEUE_FRAMES: usize = 64;
/// Bytes of log lines each output's writer thread may hold before logging
/// waits for it (`--log-buffer-bytes`): see `telemetry::line_writer`. About
/// 30,000 session lines.
pub const DEFAULT_LOG_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// A full stdout buffer makes logging wait at most this long; then stdout
/// counts as stalled (a reader that stopped reading) and its lines are
/// dropped and counted until it takes some again. Files and serving go on.
pub const LOG_STDOUT_STALL: Duration = Duration::from_secs(1);
/// The same for the log file: a disk that takes nothing for this long is
/// broken, not busy.
pub const LOG_FILE_STALL: Duration = Duration::from_secs(30);
/// Finished spans waiting for OTLP export (`OTEL_BSP_MAX_QUEUE_SIZE`
/// overrides). Beyond it spans are dropped and counted in `/metrics`.
pub const SPAN_QUEUE_SPANS: usize = 16 * 1024;
/// Bytes of sealed envelopes waiting for Redis (cluster mode): a frozen
/// Redis cannot make an instance hold more; beyond it publishes fail at
/// once with `cluster_unavailable`.
pub const CLUSTER_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Most of an OTLP export response that is read (an
/// `ExportTraceServiceResponse` is a few bytes; a hostile collector's
/// endless body is cut here, on both transports).
pub const OTLP_RESPONSE_MAX_BYTES: usize = 64 * 1024;
/// How often dropped log lines or spans, if any, are reported: at most one
/// warning per interval, so a dead collector cannot flood the logs.
pub const DEFAULT_TELEMETRY_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// After the server ends a connection, how long it keeps reading (and
/// discarding) what the peer still sends, so that its last frame (a Close
/// with the reason) is not wiped out by a TCP reset (`http::linger`).
pub const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// ...and at most this much of it.
pub const LINGER_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Warning lines one session may write per `--telemetry-report-interval`
/// (rejected frames, refused requests); more are counted, not written.
pub const SESSION_WARNINGS_PER_INTERVAL: u32 = 20;
/// Lines of one kind that clients without a session can cause (refused
/// requests and upgrades) per [`PROCESS_LINE_INTERVAL`], for the process.
pub const PROCESS_LINES_PER_INTERVAL: u32 = 50;
pub const PROCESS_LINE_INTERVAL: Duration = Duration::from_secs(10);
/// `/api/logs`: most matching lines one answer holds...
pub const LOG_SEARCH_MAX_LINES: usize = 2000;
/// ...and most bytes of log one search reads (it says when it stopped).
pub const LOG_SEARCH_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Longest `traceparent` value we will even try to parse. Version 00 is
/// exactly 55 bytes; later versions may append fields.
pub const MAX_TRACEPARENT_BYTES: usize = 512;
/// Longest `Forwarded` or `X-Forwarded-For` (all values together) read from
/// a trusted proxy: a few dozen hops. A longer one is ignored and counted.
pub const MAX_FORWARDED_HEADER_BYTES: usize = 4 * 1024;
/// Longest PROXY protocol header accepted (v1 is at most 107 bytes; v2 is
/// 16 plus its addresses and TLVs).
pub const MAX_PROXY_HEADER_BYTES: usize = 1024;

/// Messages shorter than this are sent uncompressed: deflate would not
/// make them smaller enough to pay for itself.
pub const DEFAULT_COMPRESSION_MIN_BYTES: usize = 256;

/// The limits one running server applies, resolved from CLI and environment.
#[derive(Debug, Clone)]
pub struct Limits {
    pub heartbeat_interval: Duration,
    pub idle_timeout: Duration,
    pub close_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    pub max_sessions_per_ip: usize,
    pub max_sessions_per_user: usize,
    pub outbound_queue_frames: usize,
    pub outbound_queue_bytes: usize,
    pub write_timeout: Duration,
    pub messages_per_second: u32,
    pub message_burst: u32,
    pub max_subscriptions: usize,
    pub header_read_timeout: Duration,
    pub telemetry_report_interval: Duration,
    /// Messages each session's flight recorder keeps (0: none).
    pub flight_recorder_messages: usize,
    /// Debug sessions open at once (every message traced).
    pub max_debug_sessions: usize,
    /// permessage-deflate: messages of at least this many bytes go out
    /// compressed to a client that negotiated it; `None`: the extension is
    /// declined.
    pub compression_min_bytes: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_sessions_per_ip: DEFAULT_MAX_SESSIONS_PER_IP,
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
            outbound_queue_frames: OUTBOUND_QUEUE_FRAMES,
            outbound_queue_bytes: DEFAULT_OUTBOUND_QUEUE_BYTES,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            messages_per_second: DEFAULT_MESSAGES_PER_SECOND,
            message_burst: DEFAULT_MESSAGE_BURST,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            telemetry_report_interval: DEFAULT_TELEMETRY_REPORT_INTERVAL,
            flight_recorder_messages: DEFAULT_FLIGHT_RECORDER_MESSAGES,
            max_debug_sessions: DEFAULT_MAX_DEBUG_SESSIONS,
            compression_min_bytes: Some(DEFAULT_COMPRESSION_MIN_BYTES),
        }
    }
}

/// How long an admin send or broadcast waits for the other instances to
/// say what they delivered; those that do not answer in time are reported
/// as unconfirmed.
pub const CLUSTER_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a cluster-wide log search waits for the other instances; those
/// that do not answer in time are named in its `partial` list.
pub const CLUSTER_LOG_SEARCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The largest log search answer one instance sends another (lines are
/// dropped from the end, and the answer marked truncated, to fit).
pub const CLUSTER_ANSWER_MAX_BYTES: usize = 4 * 1024 * 1024;
