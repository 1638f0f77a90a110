//! A session's lifecycle: opened, debug switches, flight recorder, closed.

use super::target::*;
use super::*;

/// The first line of a session.
#[derive(Debug)]
pub struct SessionOpened<'a> {
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
    pub user_agent: &'a str,
    /// `header`, `query`, or `new`.
    pub trace_origin: &'static str,
    /// permessage-deflate was negotiated.
    pub compression: bool,
    /// Why the session records every message, if it does (`debug` and
    /// `debug_reason` are written only then).
    pub debug: Option<DebugReason>,
}

impl SessionOpened<'_> {
    pub const MESSAGE: &'static str = "session opened";
}

impl InternalEvent for SessionOpened<'_> {
    fn emit(self) {
        let metrics = self.metrics;
        metrics.session_opened();
        match self.debug {
            None => tracing::info!(
                target: SESSION,
                message = Self::MESSAGE,
                user_agent.original = %self.user_agent,
                trace.origin = self.trace_origin,
                compression = self.compression
            ),
            Some(reason) => tracing::info!(
                target: SESSION,
                message = Self::MESSAGE,
                user_agent.original = %self.user_agent,
                trace.origin = self.trace_origin,
                compression = self.compression,
                debug = true,
                debug_reason = reason.as_str()
            ),
        }
    }
}

/// A debug session asked for at the upgrade (claim, user list, trace
/// context) that the cap refused: it is recorded as an ordinary session.
#[derive(Debug)]
pub struct DebugSessionRefused<'a> {
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
    pub reason: DebugReason,
    pub max_debug_sessions: usize,
}

impl DebugSessionRefused<'_> {
    pub const MESSAGE: &'static str = "debug session refused: too many debug sessions";
}

impl InternalEvent for DebugSessionRefused<'_> {
    fn emit(self) {
        let metrics = self.metrics;
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
}

impl InternalEvent for DebugSwitched<'_> {
    fn emit(self) {
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
}

impl InternalEvent for DebugExpired {
    fn emit(self) {
        tracing::info!(target: SESSION, message = Self::MESSAGE, debug = false);
    }
}

/// The flight recorder's messages, written once, at a session's first
/// failure (`session::flight`). `flight_recorder` is a JSON array in the
/// line, not a string.
#[derive(Debug)]
pub struct FlightRecorded<'a> {
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
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
}

impl InternalEvent for FlightRecorded<'_> {
    fn emit(self) {
        let metrics = self.metrics;
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
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
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
    /// permessage-deflate was negotiated.
    pub compression: bool,
    /// Bytes read and written as frames: with compression, less than the
    /// message bytes above.
    pub wire_bytes_in: u64,
    pub wire_bytes_out: u64,
    pub pings_sent: u64,
    pub ping_rtt_last_ms: Option<f64>,
    pub ping_rtt_mean_ms: Option<f64>,
    pub error_count: u64,
    /// Warning lines of this session left out by its budget.
    pub warnings_suppressed: u64,
}

impl SessionClosed<'_> {
    pub const MESSAGE: &'static str = "session closed";
}

impl InternalEvent for SessionClosed<'_> {
    fn emit(self) {
        let metrics = self.metrics;
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
            compression = self.compression,
            wire_bytes_in = self.wire_bytes_in,
            wire_bytes_out = self.wire_bytes_out,
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
}

impl InternalEvent for SessionTaskPanicked {
    fn emit(self) {
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
}

impl InternalEvent for SessionTaskAborted {
    fn emit(self) {
        tracing::info!(
            target: SESSION,
            message = Self::MESSAGE,
            task = self.task,
            timeout_ms = self.timeout_ms
        );
    }
}
