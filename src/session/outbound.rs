//! A session's outbound queue (bounded in frames and in bytes), what goes
//! into it, and which messages are traced.

use crate::websocket::Message;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::sync::Notify;

use crate::protocol::FrameKind;
use crate::routing::Delivery;
use crate::sync::lock;

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
                Message::Deflated(d) => d.wire.len(),
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
///
/// Not a `tokio::sync::mpsc` channel: that allocates a block of 32 slots
/// (about 2 KiB here) when it is created, for every session, idle or not.
/// This queue is one allocation until the first frame, and gives its
/// buffer back when a burst has drained (BENCHMARKS.md, idle memory).
#[derive(Debug)]
pub struct OutboundQueue {
    shared: Arc<Shared>,
}

/// The writer's side. Dropping it (the writer ended) closes the queue, so
/// a reader waiting for room stops waiting.
#[derive(Debug)]
pub struct OutboundReceiver {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<QueueState>,
    /// The writer's waker, registered under the lock when it finds the
    /// queue empty (`QueueState::receiver_waiting`), so a sender that
    /// pushes after that check sees it. Cheaper per message than a
    /// `Notify`, whose waiter list has a lock of its own.
    readable: AtomicWaker,
    /// Senders wait here for room.
    writable: Notify,
    max_frames: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    entries: VecDeque<Queued>,
    /// Bytes queued or being written (given back by `written`).
    bytes: usize,
    senders: usize,
    receiver_gone: bool,
    /// The writer found the queue empty and waits for a wake.
    receiver_waiting: bool,
    senders_waiting: usize,
}

impl QueueState {
    fn has_room(&self, cost: u32, shared: &Shared) -> bool {
        self.entries.len() < shared.max_frames && self.bytes + cost as usize <= shared.max_bytes
    }
}

/// A bounded outbound queue: at most `max_frames` entries and `max_bytes`
/// bytes of frames.
pub fn outbound_queue(max_frames: usize, max_bytes: usize) -> (OutboundQueue, OutboundReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(QueueState {
            senders: 1,
            ..QueueState::default()
        }),
        readable: AtomicWaker::new(),
        writable: Notify::new(),
        max_frames: max_frames.max(1),
        max_bytes: max_bytes.max(1),
    });
    (
        OutboundQueue {
            shared: shared.clone(),
        },
        OutboundReceiver { shared },
    )
}

impl Clone for OutboundQueue {
    fn clone(&self) -> Self {
        lock(&self.shared.state).senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for OutboundQueue {
    fn drop(&mut self) {
        let last = {
            let mut state = lock(&self.shared.state);
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.shared.readable.wake();
        }
    }
}

impl Drop for OutboundReceiver {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.receiver_gone = true;
        // What is queued will never be written: free it now, not when the
        // last sender goes.
        state.entries = VecDeque::new();
        drop(state);
        self.shared.writable.notify_waiters();
    }
}

/// A sender counted in `senders_waiting`, uncounted when it stops waiting
/// (woken, or its future dropped).
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).senders_waiting -= 1;
    }
}

impl OutboundQueue {
    /// Queues `item`, waiting for room: the backpressure that stops a
    /// session's reader when its client does not read the replies.
    pub async fn send(&self, item: Outbound) -> Result<(), QueueError> {
        let mut item = Some(item);
        self.wait_for(|wait| self.push(&mut item, wait)).await
    }

    /// Waits until an entry of `bytes` would fit, and queues nothing: for
    /// a frame that another path will queue without waiting (a sender's
    /// own copy of its message, queued by routing).
    pub async fn room_for(&self, bytes: usize) -> Result<(), QueueError> {
        let cost = u32::try_from(bytes.min(self.shared.max_bytes)).unwrap_or(u32::MAX);
        self.wait_for(|wait| {
            let mut state = lock(&self.shared.state);
            if state.receiver_gone {
                return Err(QueueError::Closed);
            }
            if !state.has_room(cost, &self.shared) {
                state.senders_waiting += usize::from(wait);
                return Err(QueueError::Full);
            }
            Ok(())
        })
        .await
    }

    /// Runs `attempt` until it finds room. `attempt(wait)` answers Full,
    /// and when `wait` counts the caller among those waiting for room.
    async fn wait_for(
        &self,
        mut attempt: impl FnMut(bool) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        // Room now, the usual case: no waiter to register and unregister
        // (each takes the `Notify`'s lock).
        match attempt(false) {
            Err(QueueError::Full) => {}
            done => return done,
        }
        loop {
            // Registered before the check, so room made between the check
            // and the wait is not missed (`notify_waiters` keeps no permit).
            let room = self.shared.writable.notified();
            let mut room = std::pin::pin!(room);
            room.as_mut().enable();
            match attempt(true) {
                Err(QueueError::Full) => {}
                done => return done,
            }
            // Counted as waiting until woken or cancelled.
            let _waiting = Waiting(&self.shared);
            room.await;
        }
    }

    /// Queues `item` only if there is room now.
    pub fn try_send(&self, item: Outbound) -> Result<(), QueueError> {
        self.push(&mut Some(item), false)
    }

    /// Pushes `item` (taken only on success); when `wait`, a Full answer
    /// counts the caller among those waiting for room.
    fn push(&self, item: &mut Option<Outbound>, wait: bool) -> Result<(), QueueError> {
        let shared = &*self.shared;
        let Some(entry) = item.as_ref() else {
            return Ok(());
        };
        let cost = entry.cost(shared.max_bytes);
        let mut state = lock(&shared.state);
        if state.receiver_gone {
            return Err(QueueError::Closed);
        }
        // `cost` is at most the whole budget: one entry larger than the
        // budget still passes, alone.
        if !state.has_room(cost, shared) {
            state.senders_waiting += usize::from(wait);
            return Err(QueueError::Full);
        }
        state.bytes += cost as usize;
        state.entries.push_back(Queued {
            item: item.take().expect("checked above"),
            cost,
        });
        let wake = std::mem::take(&mut state.receiver_waiting);
        drop(state);
        if wake {
            shared.readable.wake();
        }
        Ok(())
    }

    pub fn max_frames(&self) -> usize {
        self.shared.max_frames
    }

    pub fn max_bytes(&self) -> usize {
        self.shared.max_bytes
    }
}

impl OutboundReceiver {
    /// The next entry; `None` once every sender is gone and the queue is
    /// empty.
    pub async fn recv(&mut self) -> Option<Queued> {
        std::future::poll_fn(|cx| {
            let mut state = lock(&self.shared.state);
            if let Some(entry) = self.pop(&mut state) {
                return Poll::Ready(Some(entry));
            }
            if state.senders == 0 {
                return Poll::Ready(None);
            }
            // Under the lock: a push after this sees `receiver_waiting`.
            self.shared.readable.register(cx.waker());
            state.receiver_waiting = true;
            Poll::Pending
        })
        .await
    }

    pub fn try_recv(&mut self) -> Option<Queued> {
        self.pop(&mut lock(&self.shared.state))
    }

    fn pop(&self, state: &mut QueueState) -> Option<Queued> {
        let entry = state.entries.pop_front()?;
        if state.entries.is_empty() {
            // A session that has gone quiet holds no buffer (one small
            // allocation per burst instead).
            state.entries = VecDeque::new();
        }
        if state.senders_waiting > 0 {
            self.shared.writable.notify_waiters();
        }
        Some(entry)
    }

    /// The entry has been written: its bytes are free for the next.
    pub fn written(&self, cost: u32) {
        let mut state = lock(&self.shared.state);
        state.bytes -= cost as usize;
        if state.senders_waiting > 0 {
            drop(state);
            self.shared.writable.notify_waiters();
        }
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

    /// `room_for` waits as `send` would, and takes nothing: the frame that
    /// routing then queues without waiting fits.
    #[tokio::test]
    async fn room_for_waits_for_room_and_queues_nothing() {
        let frame =
            |n: usize| Outbound::frame(FrameKind::Echo, Message::Text("x".repeat(n).into()), false);
        let (queue, mut receiver) = outbound_queue(2, 1000);
        queue.room_for(600).await.unwrap();
        queue.try_send(frame(600)).unwrap();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.room_for(600).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "600 + 600 bytes do not fit in 1000");
        let (_, cost) = receiver.try_recv().unwrap().into_parts();
        receiver.written(cost);
        waiting.await.unwrap().unwrap();
        queue.try_send(frame(600)).unwrap();
        drop(receiver);
        assert_eq!(queue.room_for(1).await, Err(QueueError::Closed));
    }

    /// Two senders racing one writer on two threads: every entry arrives,
    /// each sender's in order, the bounds hold, and the writer sees the
    /// end once both senders are gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_arrive_in_order_under_contention() {
        const PER_SENDER: usize = 20_000;
        let (queue, mut receiver) = outbound_queue(8, 64);
        let sender = |tag: &'static str, queue: OutboundQueue| {
            tokio::spawn(async move {
                for i in 0..PER_SENDER {
                    let text = format!("{tag}{i}");
                    let item = Outbound::frame(FrameKind::Echo, Message::Text(text.into()), false);
                    queue.send(item).await.unwrap();
                }
            })
        };
        let a = sender("a", queue.clone());
        let b = sender("b", queue);
        let mut next = [0usize; 2];
        while let Some(entry) = receiver.recv().await {
            {
                let state = lock(&receiver.shared.state);
                assert!(state.entries.len() <= 8 && state.bytes <= 64);
            }
            let (item, cost) = entry.into_parts();
            let Outbound::Frame {
                message: Message::Text(text),
                ..
            } = item
            else {
                panic!("not a text frame");
            };
            let who = usize::from(text.starts_with('b'));
            assert_eq!(text[1..].parse::<usize>().unwrap(), next[who], "{text}");
            next[who] += 1;
            if next[who] % 7 == 0 {
                tokio::task::yield_now().await;
            }
            receiver.written(cost);
        }
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(next, [PER_SENDER, PER_SENDER]);
        assert_eq!(lock(&receiver.shared.state).senders_waiting, 0);
    }

    #[test]
    fn an_idle_queue_holds_no_buffer() {
        let frame = || Outbound::frame(FrameKind::Echo, Message::Text("x".into()), false);
        let (queue, mut receiver) = outbound_queue(64, 1 << 20);
        assert_eq!(lock(&receiver.shared.state).entries.capacity(), 0);
        for _ in 0..40 {
            queue.try_send(frame()).unwrap();
        }
        while receiver.try_recv().is_some() {}
        // The burst's buffer went back when the queue drained.
        assert_eq!(lock(&receiver.shared.state).entries.capacity(), 0);
        drop(receiver);
        assert_eq!(queue.try_send(frame()), Err(QueueError::Closed));
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
