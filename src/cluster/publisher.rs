//! The instance's outgoing bus: channel publishes and broadcasts leave
//! through one queue and one task, so a session that publishes does not
//! wait a Redis round trip per message.
//!
//! The task sends whatever has queued up (at most `BATCH` envelopes) as
//! one Redis pipeline, one round trip for the lot, and batches go one after
//! another: one session's messages reach the other instances in the order
//! it sent them. The queue
//! is bounded: when it is full, or Redis is known to be down, a publish
//! fails at once and the publisher gets an error frame; nothing waits in
//! memory for Redis to return. A publish that fails later (Redis lost
//! mid-flight) sends the error frame from here. At shutdown, once the
//! sessions are gone, the queue is closed and what is in it still goes out
//! (within the shutdown timeout).

use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::routing::{ForwardError, SharedRecipient};

/// Envelopes waiting for Redis.
pub const QUEUE_ENVELOPES: usize = 8192;
/// `PUBLISH` commands sent in one pipeline.
const BATCH: usize = 256;

/// One envelope on its way out.
pub struct PublishJob {
    pub channel: String,
    /// The sealed envelope, as Redis gets it (and as the queue's byte
    /// bound counts it).
    pub wire: String,
    /// The publisher's sampling decision, for its error frame.
    pub sampled: bool,
    /// The `redis.publish` span (disabled when unsampled): open from the
    /// publish until Redis answers.
    pub span: tracing::Span,
    /// The publishing session, for an error frame if it fails.
    pub reply_to: Option<SharedRecipient>,
}

/// Sends queued envelopes until `finish` is cancelled, then closes the
/// queue and sends what is left in it before returning.
pub async fn run_publisher(
    cluster: Arc<Cluster>,
    mut jobs: mpsc::Receiver<PublishJob>,
    finish: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut closed = false;
    loop {
        let received = tokio::select! {
            received = jobs.recv_many(&mut batch, BATCH) => received,
            _ = finish.cancelled(), if !closed => {
                // New publishes are refused from here on; the queued ones
                // still go out below.
                jobs.close();
                closed = true;
                continue;
            }
        };
        if received == 0 {
            return;
        }
        let sealed: Vec<(&str, &str)> = batch
            .iter()
            .map(|job| (job.channel.as_str(), job.wire.as_str()))
            .collect();
        let results = cluster.publish_batch(&sealed).await;
        cluster.dequeued(batch.iter().map(|job| job.wire.len()).sum());
        for (job, result) in batch.drain(..).zip(results) {
            match result {
                Ok(receivers) => {
                    job.span.record("cluster.receivers", receivers as i64);
                }
                Err(error) => {
                    job.span.record("otel.status_code", "error");
                    if let Some(reply_to) = &job.reply_to {
                        reply_to.notify(&ForwardError::from(error).to_frame(), job.sampled);
                    }
                }
            }
        }
    }
}
