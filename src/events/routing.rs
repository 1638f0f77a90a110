//! Routing: a receiver's queue full.

use super::target::*;
use super::*;

/// A delivery found the receiver's queue full. Every refused delivery is
/// counted; the one that decides the close (1013) is also a line, in the
/// receiver's own trace.
#[derive(Debug)]
pub struct OutboundQueueFull<'a> {
    /// The server's metrics, which this line's counter is in.
    pub metrics: &'a Metrics,
    pub receiver: &'a tracing::Span,
    pub queue_frames: usize,
    pub queue_bytes: usize,
    pub closing: bool,
}

impl OutboundQueueFull<'_> {
    pub const MESSAGE: &'static str =
        "outbound queue full: client is not reading; closing with 1013";
}

impl InternalEvent for OutboundQueueFull<'_> {
    fn emit(self) {
        let metrics = self.metrics;
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
