//! The writer task: the only code that writes to the socket, pings
//! included.

use crate::websocket::deflate::{self, Compression};
use crate::websocket::{CloseFrame, Deflated, Message, WsError};
use futures_util::{Sink, SinkExt};
use opentelemetry::trace::SpanId;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::close::{CloseDecision, CloseSignal, ClosedBy, Waiter};
use super::flight::{Direction, Entry};
use super::heartbeat::{Beat, Heartbeat};
use super::message_span_id;
use super::outbound::{Outbound, OutboundReceiver};
use super::stats::SessionStats;
use crate::error::close_code;
use crate::events::{InternalEvent, MessageDelivered, WriterBlocked};
use crate::protocol::FrameKind;
use crate::routing::Delivery;
use crate::state::ServerState;

/// The writer task: the only code that writes to the socket. It drains the
/// session's outbound queue in batches (one flush per burst), records the
/// sampled sends, and sends the Close frame for the server's own
/// decisions. One per session.
pub struct Writer {
    pub stats: Arc<SessionStats>,
    pub state: Arc<ServerState>,
    /// The session's close: waited on for the decision, and decided here
    /// when the client stops reading or has been silent too long.
    pub close: CloseSignal,
    /// Pings and the idle timeout, on the writer's own timer.
    pub heartbeat: Heartbeat,
    /// permessage-deflate, if negotiated: which messages go compressed.
    pub compression: Option<Compression>,
}

impl Writer {
    /// Writes queued frames until the queue closes or a close is decided;
    /// on a server-side decision it sends the Close frame and stops
    /// (nothing may follow a Close).
    pub async fn run<K>(mut self, mut sink: K, mut outbound: OutboundReceiver)
    where
        K: Sink<Message, Error = WsError> + Unpin,
    {
        // A decision made before this task starts is seen all the same.
        let close = self.close.clone();
        let limit = self.state.config.limits.write_timeout;
        let heartbeat_timer = sleep_until(self.heartbeat.next_wake(&self.stats));
        let mut heartbeat_timer = std::pin::pin!(heartbeat_timer);
        loop {
            tokio::select! {
                biased;
                () = close.decided(Waiter::Writer) => break,
                next = outbound.recv() => {
                    // Every sender gone: the session is ending. The close
                    // decision may have come in the same instant, after
                    // the branch above was polled: it is checked below.
                    let Some(item) = next else { break };
                    // Drain what is already queued, then flush once: one
                    // syscall for a burst instead of one per frame.
                    let burst = within(limit, async {
                        // One clock read per burst, for the flight recorder.
                        let at_us = self.stats.micros_since_start();
                        let mut batch = Some(item);
                        while let Some(item) = batch.take() {
                            let (item, cost) = item.into_parts();
                            self.feed(&mut sink, item, at_us).await?;
                            outbound.written(cost);
                            batch = outbound.try_recv();
                        }
                        sink.flush().await
                    });
                    let written = burst.await;
                    if self.after_write(written, limit).is_break() {
                        return;
                    }
                }
                () = &mut heartbeat_timer => {
                    match self.heartbeat.on_timer(&self.stats, Instant::now()) {
                        Beat::Ping(payload) => {
                            let ping = within(limit, sink.send(Message::Ping(payload.to_vec().into())));
                            let written = ping.await;
                            if self.after_write(written, limit).is_break() {
                                return;
                            }
                            self.heartbeat.sent();
                        }
                        // Seen by the first branch on the next turn.
                        Beat::Idle(decision) => {
                            self.close.decide(decision);
                        }
                        Beat::Wait => {}
                    }
                    let next = self.heartbeat.next_wake(&self.stats);
                    heartbeat_timer.as_mut().reset(next);
                }
            }
        }
        let decision = close.decision();
        if let Some((decision, frame)) =
            decision.and_then(|d| d.close_frame().map(|frame| (d, frame)))
        {
            // Frames queued before the decision still go out first (a
            // stalled peer blocks here; the supervisor gives up after the
            // close timeout).
            let last = within(limit, async {
                let at_us = self.stats.micros_since_start();
                while let Some(item) = outbound.try_recv() {
                    let (item, _) = item.into_parts();
                    self.feed(&mut sink, item, at_us).await?;
                }
                send_close(&mut sink, &decision, frame).await;
                Ok(())
            });
            if let Err(_elapsed) = last.await {
                self.blocked(limit);
            }
        }
    }

    /// What a write's outcome means for the writer: `Break` ends it. A
    /// client that reads nothing for the write timeout is given up on.
    fn after_write(&self, written: Written, limit: std::time::Duration) -> ControlFlow<()> {
        match written {
            Ok(Ok(())) => ControlFlow::Continue(()),
            Ok(Err(error)) => {
                tracing::debug!(%error, "write failed; peer is gone");
                ControlFlow::Break(())
            }
            Err(_) => {
                self.blocked(limit);
                ControlFlow::Break(())
            }
        }
    }

    /// Nothing could be written for `limit`: the client has stopped
    /// reading. Decides the close (no Close frame can get through) and
    /// ends the writer; its queue and the memory it holds go with it.
    fn blocked(&self, limit: std::time::Duration) {
        WriterBlocked {
            timeout_ms: limit.as_millis() as u64,
            metrics: &self.state.metrics,
        }
        .emit();
        // A decision already made (a shutdown, say) stands.
        self.close.decide(CloseDecision::new(
            close_code::POLICY_VIOLATION,
            "client not reading",
            ClosedBy::Policy,
        ));
    }

    async fn feed<K>(&self, sink: &mut K, item: Outbound, at_us: u64) -> Result<(), WsError>
    where
        K: Sink<Message, Error = WsError> + Unpin,
    {
        let debug = self.stats.debug().is_on();
        match item {
            Outbound::Frame {
                kind,
                message,
                sampled,
            } => {
                let size = data_len(&message);
                let message = self.compressed(message);
                let on_wire = wire_len(&message);
                let mut span_id = None;
                if sampled && let Some(size) = size {
                    let span = tracing::info_span!(
                        "ws.send",
                        ws.message.type = kind.as_str(),
                        ws.message.size = size as i64,
                    );
                    span_id = Some(message_span_id(&span, debug));
                    sink.feed(message).instrument(span).await?;
                } else {
                    sink.feed(message).await?;
                }
                if let Some(size) = size {
                    self.stats.message_out(size);
                    self.state.metrics.message_out(kind, size);
                    // The welcome is in `session opened`; the recorder
                    // stays unallocated until a real message.
                    if kind != FrameKind::Welcome {
                        // What it took on the wire (compressed, if it was).
                        let recorded = on_wire.unwrap_or(size);
                        let mut entry = Entry::new(Direction::Out, kind, recorded, at_us);
                        entry.span_id = span_id;
                        self.stats.flight().record(entry);
                    }
                }
            }
            Outbound::Delivery(delivery) => {
                let size = delivery.frame.len();
                let span_id =
                    (delivery.sampled || debug).then(|| record_delivery(&delivery, size, debug));
                let message = match self.compression {
                    // Compressed once for every receiver (no context
                    // takeover: the same bytes suit all of them).
                    Some(c) if c.wants(size) => match delivery.deflated() {
                        Some(wire) => Message::Deflated(Deflated {
                            text: true,
                            wire,
                            size,
                        }),
                        None => Message::Text(delivery.frame.clone()),
                    },
                    _ => Message::Text(delivery.frame.clone()),
                };
                let on_wire = wire_len(&message).unwrap_or(size);
                sink.feed(message).await?;
                self.stats.message_out(size);
                self.state.metrics.message_out(FrameKind::Message, size);
                let mut entry = Entry::new(Direction::Out, FrameKind::Message, on_wire, at_us);
                entry.message_id = delivery.id;
                entry.span_id = span_id;
                self.stats.flight().record(entry);
            }
        }
        Ok(())
    }
}

impl Writer {
    /// A data message as it goes out: compressed when negotiated, large
    /// enough, and smaller for it.
    fn compressed(&self, message: Message) -> Message {
        let Some(compression) = self.compression else {
            return message;
        };
        let (text, payload): (bool, &[u8]) = match &message {
            Message::Text(text) => (true, text.as_bytes()),
            Message::Binary(bytes) => (false, bytes),
            _ => return message,
        };
        if !compression.wants(payload.len()) {
            return message;
        }
        match deflate::deflate(payload) {
            Some(wire) => Message::Deflated(Deflated {
                text,
                wire,
                size: payload.len(),
            }),
            None => message,
        }
    }
}

/// The receiver's side of a delivery: a `ws.send` span linked (not
/// parented: each session keeps its own trace) to the publisher's span, and
/// a log line naming that span.
fn record_delivery(delivery: &Delivery, size: usize, debug: bool) -> SpanId {
    let span = tracing::info_span!(
        "ws.send",
        ws.message.type = "message",
        ws.message.size = size as i64,
        ws.message.id = %delivery.message_id,
    );
    span.add_link(delivery.origin.clone());
    span.in_scope(|| {
        MessageDelivered {
            message_id: &delivery.message_id,
            channel: delivery.channel.as_deref(),
            from_session: delivery.from_session,
            link: &delivery.origin,
        }
        .emit();
    });
    message_span_id(&span, debug)
}

async fn send_close<K>(sink: &mut K, decision: &CloseDecision, frame: Option<CloseFrame>)
where
    K: Sink<Message, Error = WsError> + Unpin,
{
    match sink.send(Message::Close(frame)).await {
        // The answer to the client's own Close: `session closed` says it
        // (`close_clean`).
        Ok(()) if decision.by == ClosedBy::Client => {}
        Ok(()) => tracing::debug!(
            close_code = decision.code,
            closed_by = decision.by.as_str(),
            "close frame sent"
        ),
        Err(error) => tracing::debug!(%error, "could not send close frame"),
    }
}

/// A write's outcome: done, failed, or timed out.
type Written = Result<Result<(), WsError>, TimedOut>;

/// The write did not finish within the write timeout.
#[derive(Debug)]
struct TimedOut;

pin_project_lite::pin_project! {
    /// A write bounded by `limit`. Most writes finish when first polled
    /// (the socket has room), so the timer is made only when one has to
    /// wait: no clock read, no timer and no runtime handle per write.
    struct Within<F> {
        #[pin]
        write: F,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        limit: std::time::Duration,
    }
}

impl<F> Future for Within<F>
where
    F: Future<Output = Result<(), WsError>>,
{
    type Output = Written;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Written> {
        let mut this = self.project();
        if let Poll::Ready(done) = this.write.poll(cx) {
            return Poll::Ready(Ok(done));
        }
        if this.timer.is_none() {
            this.timer.set(Some(tokio::time::sleep(*this.limit)));
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(TimedOut)),
            _ => Poll::Pending,
        }
    }
}

/// `write`, bounded by `limit`, on the heap: the timer and the write exist
/// only while writing, so the writer, parked for the whole session, stays
/// small. Built in a statement of its own, apart from the `.await`: a
/// temporary in the awaiting statement would take room in the writer's
/// future for the session's whole life (BENCHMARKS.md, idle memory).
fn within<F>(limit: std::time::Duration, write: F) -> Pin<Box<Within<F>>>
where
    F: Future<Output = Result<(), WsError>>,
{
    Box::pin(Within {
        write,
        timer: None,
        limit,
    })
}

/// Size of a data frame; control frames are not messages.
/// A data message's payload as it goes on the wire (compressed, if it is).
fn wire_len(message: &Message) -> Option<usize> {
    match message {
        Message::Deflated(d) => Some(d.wire.len()),
        other => data_len(other),
    }
}

fn data_len(message: &Message) -> Option<usize> {
    match message {
        Message::Text(t) => Some(t.len()),
        Message::Binary(b) => Some(b.len()),
        Message::Deflated(d) => Some(d.size),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::outbound::outbound_queue;
    use crate::state::{ServerConfig, ServerState};
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    /// A socket that keeps what is written to it.
    struct Recorder(Arc<Mutex<Vec<Message>>>);

    impl Sink<Message> for Recorder {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
            self.0.lock().unwrap().push(item);
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The reader decides a close and ends, and the supervisor drops the
    /// last queue senders, on another thread while the writer is polling:
    /// the Close frame must go out however the two interleave (it once did
    /// not, and the client saw the connection end without a close code).
    #[test]
    fn a_write_that_finishes_at_once_makes_no_timer() {
        // Outside any runtime: making a timer here would panic.
        let done = within(std::time::Duration::from_secs(1), async { Ok(()) });
        assert!(matches!(
            futures_util::FutureExt::now_or_never(done),
            Some(Ok(Ok(())))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_times_out_at_the_limit() {
        let limit = std::time::Duration::from_millis(300);
        let started = tokio::time::Instant::now();
        let written = within(limit, std::future::pending()).await;
        assert!(matches!(written, Err(TimedOut)));
        assert_eq!(started.elapsed(), limit);
        // One that finishes while waiting is done, not timed out.
        let late = within(limit, async {
            tokio::time::sleep(limit / 2).await;
            Ok(())
        });
        assert!(matches!(late.await, Ok(Ok(()))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_decided_as_the_queue_closes_is_still_sent() {
        let state = ServerState::new(ServerConfig::default());
        for round in 0..20_000 {
            let (tx, rx) = outbound_queue(4, 1024);
            let signal = CloseSignal::new();
            let sent = Arc::new(Mutex::new(Vec::new()));
            let writer = Writer {
                stats: Arc::new(SessionStats::new()),
                state: state.clone(),
                close: signal.clone(),
                compression: None,
                heartbeat: Heartbeat::new(
                    std::time::Duration::from_secs(30),
                    std::time::Duration::from_secs(60),
                    None,
                ),
            };
            let writer = tokio::spawn(writer.run(Recorder(sent.clone()), rx));
            let ending = tokio::spawn(async move {
                signal.decide(CloseDecision::new(1009, "message too big", ClosedBy::Error));
                drop(tx);
            });
            ending.await.unwrap();
            writer.await.unwrap();
            let sent = sent.lock().unwrap();
            assert!(
                matches!(sent.as_slice(), [Message::Close(Some(frame))] if frame.code == 1009),
                "round {round}: {sent:?}"
            );
        }
    }
}
