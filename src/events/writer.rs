//! The writer task: deliveries and a client that stopped reading.

use super::target::*;
use super::*;

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
}

impl InternalEvent for MessageDelivered<'_> {
    fn emit(self) {
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
pub struct WriterBlocked<'a> {
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
    pub timeout_ms: u64,
}

impl WriterBlocked<'_> {
    pub const MESSAGE: &'static str =
        "client is not reading: nothing could be written within --write-timeout; closing";
}

impl InternalEvent for WriterBlocked<'_> {
    fn emit(self) {
        let metrics = self.metrics;
        metrics
            .write_timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(target: WRITER, message = Self::MESSAGE, timeout_ms = self.timeout_ms);
    }
}
