//! The reader task: frames refused, rate limits, panics, read failures.

use super::target::*;
use super::*;

/// A sampled inbound message, handled: written as its `ws.receive` span
/// ends, after any line its handling wrote, with the span's duration.
#[derive(Debug)]
pub struct MessageHandled {
    pub duration_us: u64,
}

impl MessageHandled {
    pub const MESSAGE: &'static str = "message handled";
}

impl InternalEvent for MessageHandled {
    fn emit(self) {
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
}

impl InternalEvent for ClientFrameRejected<'_> {
    fn emit(self) {
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
}

impl InternalEvent for FrameRefused<'_> {
    fn emit(self) {
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
}

impl InternalEvent for Subscription<'_> {
    fn emit(self) {
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
}

impl InternalEvent for MessagePublished<'_> {
    fn emit(self) {
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
}

impl InternalEvent for DirectMessageSent<'_> {
    fn emit(self) {
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
pub struct RateLimited<'a> {
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
    pub first: bool,
    pub messages_per_second: u32,
    pub burst: u32,
}

impl RateLimited<'_> {
    pub const MESSAGE: &'static str = "message rate exceeded; refusing frames";
}

impl InternalEvent for RateLimited<'_> {
    fn emit(self) {
        let metrics = self.metrics;
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
}

impl InternalEvent for RateAbuse {
    fn emit(self) {
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
}

impl InternalEvent for HandlerPanicked<'_> {
    fn emit(self) {
        tracing::error!(target: READER, panic = %self.panic, message = Self::MESSAGE);
    }
}

/// Reading from the socket failed for a reason other than the peer leaving.
pub struct SessionReadFailed<'a> {
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
    pub error: &'a dyn Display,
    pub close_code: u16,
    /// Over `--max-message-bytes`: also counted in
    /// `wstrace_oversize_messages_total`.
    pub message_too_big: bool,
}

impl SessionReadFailed<'_> {
    pub const MESSAGE: &'static str = "session read failed";
}

impl InternalEvent for SessionReadFailed<'_> {
    fn emit(self) {
        let metrics = self.metrics;
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
