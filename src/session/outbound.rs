//! A session's outbound queue (bounded in frames and in bytes), what goes
//! into it, and which messages are traced.

use axum::extract::ws::Message;
use std::sync::Arc;
use tokio::sync::{Semaphore, TryAcquireError, mpsc};

use crate::protocol::FrameKind;
use crate::routing::Delivery;

/// One entry of a session's bounded outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A frame of the session's own (reply, welcome, ping).
    Frame {
        kind: FrameKind,
        message: Message,
        /// Whether the message that caused it was sampled: its `ws.send`
        /// span and log line follow the same decision.
        sampled: bool,
    },
    /// A message from another session or the admin API.
    Delivery(Arc<Delivery>),
}

impl Outbound {
    pub fn frame(kind: FrameKind, message: Message, sampled: bool) -> Self {
        Outbound::Frame {
            kind,
            message,
            sampled,
        }
    }

    /// What the entry costs of the byte budget: its payload, at most the
    /// whole budget (so one frame larger than it can still pass, alone).
    fn cost(&self, max_bytes: usize) -> u32 {
        let size = match self {
            Outbound::Frame { message, .. } => match message {
                Message::Text(t) => t.len(),
                Message::Binary(b) => b.len(),
                Message::Ping(p) | Message::Pong(p) => p.len(),
                Message::Close(_) => 0,
            },
            Outbound::Delivery(delivery) => delivery.frame.len(),
        };
        u32::try_from(size.min(max_bytes)).unwrap_or(u32::MAX)
    }
}

/// One entry in the queue, with its share of the session's byte budget,
/// which the writer gives back once it has written it
/// ([`OutboundReceiver::written`]).
#[derive(Debug)]
pub struct Queued {
    item: Outbound,
    cost: u32,
}

/// Why an entry did not go into the queue without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The frames or the bytes the queue holds are at their limit.
    Full,
    /// The writer is gone: the session is ending.
    Closed,
}

/// The sending side of a session's outbound queue, bounded twice: in
/// frames (`--outbound-queue-frames`) and in bytes
/// (`--outbound-queue-bytes`), so a client that stops reading pins at most
/// that much of the server's memory, whatever the frame size.
#[derive(Debug, Clone)]
pub struct OutboundQueue {
    frames: mpsc::Sender<Queued>,
    bytes: Arc<Semaphore>,
    max_bytes: usize,
}

/// The writer's side. Dropping it (the writer ended) closes the byte
/// budget too, so a reader waiting for room stops waiting.
#[derive(Debug)]
pub struct OutboundReceiver {
    frames: mpsc::Receiver<Queued>,
    bytes: Arc<Semaphore>,
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        self.bytes.close();
    }
}

/// A bounded outbound queue: at most `max_frames` entries and `max_bytes`
/// bytes of frames.
pub fn outbound_queue(max_frames: usize, max_bytes: usize) -> (OutboundQueue, OutboundReceiver) {
    let (tx, rx) = mpsc::channel(max_frames.max(1));
    let max_bytes = max_bytes.clamp(1, Semaphore::MAX_PERMITS);
    let bytes = Arc::new(Semaphore::new(max_bytes));
    (
        OutboundQueue {
            frames: tx,
            bytes: bytes.clone(),
            max_bytes,
        },
        OutboundReceiver { frames: rx, bytes },
    )
}

impl OutboundQueue {
    /// Queues `item`, waiting for room: the backpressure that stops a
    /// session's reader when its client does not read the replies.
    pub async fn send(&self, item: Outbound) -> Result<(), QueueError> {
        let cost = item.cost(self.max_bytes);
        self.bytes
            .acquire_many(cost)
            .await
            .map_err(|_| QueueError::Closed)?
            .forget();
        self.frames
            .send(Queued { item, cost })
            .await
            .map_err(|_| QueueError::Closed)
    }

    /// Queues `item` only if there is room now.
    pub fn try_send(&self, item: Outbound) -> Result<(), QueueError> {
        let cost = item.cost(self.max_bytes);
        match self.bytes.try_acquire_many(cost) {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => return Err(QueueError::Full),
            Err(TryAcquireError::Closed) => return Err(QueueError::Closed),
        }
        self.frames
            .try_send(Queued { item, cost })
            .map_err(|error| {
                // Not queued after all: its bytes are free again.
                self.bytes.add_permits(cost as usize);
                match error {
                    mpsc::error::TrySendError::Full(_) => QueueError::Full,
                    mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
                }
            })
    }

    pub fn max_frames(&self) -> usize {
        self.frames.max_capacity()
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

impl OutboundReceiver {
    pub async fn recv(&mut self) -> Option<Queued> {
        self.frames.recv().await
    }

    pub fn try_recv(&mut self) -> Option<Queued> {
        self.frames.try_recv().ok()
    }

    /// The entry has been written: its bytes are free for the next.
    pub fn written(&self, cost: u32) {
        self.bytes.add_permits(cost as usize);
    }
}

impl Queued {
    /// The entry, and what to hand to [`OutboundReceiver::written`] once
    /// it is written.
    pub fn into_parts(self) -> (Outbound, u32) {
        (self.item, self.cost)
    }
}

/// Decides which messages get spans and log lines. Errors, closes and the
/// session lifecycle are recorded whatever it says.
#[derive(Debug, Clone)]
pub struct MessageSampler {
    threshold: u64,
    state: u64,
}

impl MessageSampler {
    /// `ratio` in [0, 1]; `seed` makes sessions independent.
    pub fn new(ratio: f64, seed: u64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio * u64::MAX as f64) as u64
        };
        Self {
            threshold,
            state: seed | 1,
        }
    }

    pub fn sample(&mut self) -> bool {
        match self.threshold {
            0 => false,
            u64::MAX => true,
            threshold => {
                // xorshift64: a few instructions, good enough to pick 1 in N.
                let mut x = self.state;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.state = x;
                x < threshold
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_as_well_as_frames() {
        let frame =
            |n: usize| Outbound::frame(FrameKind::Echo, Message::Text("x".repeat(n).into()), false);
        let (queue, mut receiver) = outbound_queue(64, 1000);
        queue.try_send(frame(600)).unwrap();
        // 600 + 600 > 1000 bytes, though only 2 of 64 frames.
        assert_eq!(queue.try_send(frame(600)), Err(QueueError::Full));
        queue.try_send(frame(400)).unwrap();
        // Written: its bytes are free again.
        let (_, cost) = receiver.try_recv().unwrap().into_parts();
        receiver.written(cost);
        queue.try_send(frame(600)).unwrap();
        // A frame larger than the whole budget passes, alone.
        let (big, mut big_receiver) = outbound_queue(64, 1000);
        big.try_send(frame(5000)).unwrap();
        assert_eq!(big.try_send(frame(1)), Err(QueueError::Full));
        let (_, cost) = big_receiver.try_recv().unwrap().into_parts();
        big_receiver.written(cost);
        big.try_send(frame(1)).unwrap();
        // A reader waiting for room stops waiting when the writer goes.
        let (queue, receiver) = outbound_queue(64, 10);
        queue.try_send(frame(10)).unwrap();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.send(frame(10)).await }
        });
        tokio::task::yield_now().await;
        drop(receiver);
        assert_eq!(waiting.await.unwrap(), Err(QueueError::Closed));
    }

    #[test]
    fn sampler_honours_the_ratio() {
        let mut all = MessageSampler::new(1.0, 7);
        let mut none = MessageSampler::new(0.0, 7);
        assert!((0..1000).all(|_| all.sample()));
        assert!((0..1000).all(|_| !none.sample()));
        let mut tenth = MessageSampler::new(0.1, 12345);
        let hits = (0..100_000).filter(|_| tenth.sample()).count();
        assert!((8_000..12_000).contains(&hits), "{hits}");
        assert!(!MessageSampler::new(f64::NAN, 1).sample());
    }
}
