//! The reader task: reads frames and acts on them; replies go through the
//! writer's queue, messages for others through the hub.

use futures_util::{FutureExt, Stream, StreamExt};

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tracing::Instrument;

use super::close::{CloseDecision, ClosedBy, PeerClose};
use super::commands;
use super::context::{Context, Current, Gone, receive_span};
use super::flight::{Direction, Entry, close_trigger};
use super::message_span_id;
use super::outbound::MessageSampler;
use super::rate::{RateDecision, RateLimiter};
use crate::error::{SessionError, close_code};
use crate::events::{
    ClientFrameRejected, HandlerPanicked, InternalEvent, MessageHandled, RateAbuse, RateLimited,
    SessionReadFailed,
};
use crate::protocol::{self, ClientFrame, DecodeError, ErrorCode, FrameKind, ServerFrame};
use crate::state::ServerState;
use crate::websocket::{Message, WsError};

/// The reader task: reads the socket until it ends, answers each frame
/// through the writer's queue (waiting when it is full: backpressure), and
/// hands messages for others to routing. One per session.
pub(super) struct Reader {
    /// What the frame handlers may touch.
    pub ctx: Context,
    pub state: Arc<ServerState>,
    pub peer_close: Arc<PeerClose>,
    pub sampler: MessageSampler,
    pub rate: RateLimiter,
    /// Echo data frames verbatim instead of speaking protocol v1.
    pub echo_only: bool,
}

impl Reader {
    /// Reads until the stream ends. A client Close is recorded as the close
    /// decision (the writer answers it); so is an error.
    pub async fn run<T>(mut self, mut stream: T)
    where
        T: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        while let Some(item) = stream.next().await {
            let at_us = self.ctx.session.stats.touch();
            let message = match item {
                Ok(message) => message,
                Err(error) => {
                    self.fail(SessionError::from_read(error));
                    return;
                }
            };
            // Boxed: the handling future is large and short-lived; the
            // reader task, which waits on the socket for the whole session,
            // stays small (see BENCHMARKS.md, memory per idle connection).
            // A panic while handling closes this session (1011), not the
            // server.
            let handled = AssertUnwindSafe(async {
                match message {
                    Message::Text(text) if self.echo_only => {
                        Box::pin(self.echo(Message::Text(text))).await
                    }
                    Message::Binary(bytes) if self.echo_only => {
                        Box::pin(self.echo(Message::Binary(bytes))).await
                    }
                    Message::Text(text) => {
                        Box::pin(self.on_data(Data::Text(text.as_str()), at_us)).await
                    }
                    Message::Binary(bytes) => {
                        Box::pin(self.on_data(Data::Binary(bytes), at_us)).await
                    }
                    // Answered through the writer, in order with the rest.
                    Message::Ping(payload) => {
                        self.ctx
                            .reply(FrameKind::Pong, Message::Pong(payload), false)
                            .await
                    }
                    Message::Pong(payload) => {
                        if let Some(rtt) = self.ctx.session.stats.pong(&payload) {
                            tracing::trace!(rtt_us = rtt.as_micros() as u64, "pong");
                        }
                        Ok(())
                    }
                    Message::Close(frame) => {
                        let (code, reason) = frame
                            .map(|f| (f.code, f.reason.to_string()))
                            .unwrap_or((close_code::NO_STATUS, String::new()));
                        self.peer_close.set(code, reason.clone());
                        self.ctx.session.close.decide(CloseDecision::new(
                            code,
                            reason,
                            ClosedBy::Client,
                        ));
                        Ok(())
                    }
                    // The reader inflates what it reads; this is only sent.
                    Message::Deflated(_) => Ok(()),
                }
            })
            .catch_unwind()
            .await;
            match handled {
                Ok(Ok(())) => {}
                Ok(Err(Gone)) => return,
                Err(panic) => return self.panicked(panic),
            }
        }
        // The stream ended without a Close frame from the peer or from us.
        self.ctx.session.close.decide(CloseDecision::new(
            close_code::ABNORMAL,
            "connection lost without close frame",
            ClosedBy::Client,
        ));
    }

    /// The conformance endpoint: every data frame back as it came.
    async fn echo(&mut self, message: Message) -> Result<(), Gone> {
        let (kind, size) = match &message {
            Message::Text(t) => (FrameKind::Echo, t.len()),
            Message::Binary(b) => (FrameKind::Binary, b.len()),
            _ => return Ok(()),
        };
        self.ctx.session.stats.message_in(size);
        self.state.metrics.message_in(kind, size);
        self.ctx.reply(kind, message, false).await
    }

    async fn on_data(&mut self, data: Data<'_>, at_us: u64) -> Result<(), Gone> {
        let size = data.len();
        self.ctx.session.stats.message_in(size);
        match self.rate.check(at_us) {
            RateDecision::Allow => {}
            RateDecision::Refuse { first } => return self.refuse(size, first).await,
            RateDecision::Abuse => {
                self.abuse();
                return Err(Gone);
            }
        }
        // A debug session records every message (one relaxed load when it
        // is not one).
        let debug = self.ctx.session.stats.debug().is_on();
        let sampled = debug || self.sampler.sample();
        let (kind, frame) = match data {
            // Binary frames are echoed verbatim (documented in docs/protocol.md).
            Data::Binary(bytes) => (FrameKind::Binary, Err(bytes)),
            Data::Text(text) => {
                let frame = protocol::decode(text);
                (
                    frame.as_ref().map_or(FrameKind::Invalid, ClientFrame::kind),
                    Ok(frame),
                )
            }
        };
        self.state.metrics.message_in(kind, size);
        // The recorder keeps what the message took on the wire (compressed,
        // with permessage-deflate), as the reader saw it.
        let on_wire = self
            .ctx
            .session
            .stats
            .wire
            .last_read
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        let recorded = if on_wire > 0 { on_wire } else { size };
        let mut entry = Entry::new(Direction::In, kind, recorded, at_us);
        let span = sampled.then(|| receive_span(kind, size));
        entry.span_id = span.as_ref().map(|span| message_span_id(span, debug));
        self.ctx.session.stats.flight().record(entry);
        self.ctx.current = Current::new(kind, size);
        let Some(span) = span else {
            return match frame {
                Ok(frame) => self.handle(frame, false).await,
                Err(bytes) => self.ctx.reply(kind, Message::Binary(bytes), false).await,
            };
        };
        // One line per sampled message, written when its span ends and
        // carrying its duration since the frame was read (the way an HTTP
        // access log line does): the explorer draws the span's bar from it.
        async move {
            let handled = match frame {
                Ok(frame) => self.handle(frame, true).await,
                Err(bytes) => self.ctx.reply(kind, Message::Binary(bytes), true).await,
            };
            let stats = &self.ctx.session.stats;
            MessageHandled {
                duration_us: stats.micros_since_start().saturating_sub(at_us),
            }
            .emit();
            handled
        }
        .instrument(span)
        .await
    }

    async fn handle(
        &mut self,
        frame: Result<ClientFrame, DecodeError>,
        sampled: bool,
    ) -> Result<(), Gone> {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                self.ctx.session.stats.error();
                // Over the session's warning budget: no line, no span.
                let Some(lines_suppressed) = self.ctx.admit_warning() else {
                    return self.ctx.reply_frame(error.to_frame(), sampled).await;
                };
                self.ctx.message_failed(sampled, error.code.as_str(), || {
                    ClientFrameRejected {
                        code: error.code.as_str(),
                        message: &error.message,
                        lines_suppressed,
                    }
                    .emit()
                });
                return self.ctx.reply_frame(error.to_frame(), true).await;
            }
        };
        #[cfg(feature = "fault-injection")]
        if let ClientFrame::Echo { content } = &frame
            && self.state.config.fault_panic_on_echo.as_deref() == Some(content.as_str())
        {
            panic!("injected fault: echo of {content:?}");
        }
        commands::dispatch(&mut self.ctx, frame, sampled).await
    }

    async fn refuse(&mut self, size: usize, first: bool) -> Result<(), Gone> {
        let limits = &self.state.config.limits;
        let refused = RateLimited {
            first,
            messages_per_second: limits.messages_per_second,
            burst: limits.message_burst,
            metrics: &self.state.metrics,
        };
        self.state.metrics.message_in(FrameKind::Invalid, size);
        self.ctx.session.stats.error();
        if !first {
            refused.emit();
            return Ok(());
        }
        // Refused unread: the span says what is known, its size.
        self.ctx.current = Current::new(FrameKind::Invalid, size);
        self.ctx
            .message_failed(false, ErrorCode::RateLimited.as_str(), || refused.emit());
        let frame = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: format!(
                "more than {} messages per second; frames are dropped until the rate falls, \
                 and the session is closed (1008) if it does not",
                self.state.config.limits.messages_per_second
            ),
        };
        self.ctx.reply_frame(frame, true).await
    }

    fn abuse(&self) {
        RateAbuse {
            messages_per_second: self.state.config.limits.messages_per_second,
        }
        .emit();
        self.ctx.session.close.decide(CloseDecision::new(
            close_code::POLICY_VIOLATION,
            "message rate exceeded",
            ClosedBy::Policy,
        ));
    }

    fn panicked(&self, panic: Box<dyn std::any::Any + Send>) {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        self.ctx.session.stats.error();
        self.ctx.message_failed(false, "panic", || {
            HandlerPanicked { panic: &message }.emit()
        });
        self.ctx.session.close.decide(CloseDecision::new(
            close_code::INTERNAL_ERROR,
            "internal error",
            ClosedBy::Error,
        ));
    }

    fn fail(&mut self, error: SessionError) {
        if let SessionError::ConnectionLost(cause) = &error {
            // A client vanishing is its choice, not a server error.
            tracing::debug!(%cause, "peer went away without a close frame");
            self.ctx.session.close.decide(CloseDecision::new(
                close_code::ABNORMAL,
                error.close_reason(),
                ClosedBy::Client,
            ));
            return;
        }
        self.ctx.session.stats.error();
        // The frame that failed is the failing message: it gets its span.
        let size = match error {
            SessionError::MessageTooBig { size, .. } => size,
            _ => 0,
        };
        self.ctx.current = Current::new(FrameKind::Invalid, size);
        let trigger = close_trigger(error.close_code());
        self.ctx.message_failed(false, &trigger, || {
            SessionReadFailed {
                error: &error,
                close_code: error.close_code(),
                message_too_big: matches!(error, SessionError::MessageTooBig { .. }),
                metrics: &self.state.metrics,
            }
            .emit()
        });
        // Errors after which no Close can be sent map to 1006, which the
        // writer never sends (see `CloseDecision::close_frame`).
        self.ctx.session.close.decide(CloseDecision::new(
            error.close_code(),
            error.close_reason(),
            ClosedBy::Error,
        ));
    }
}

enum Data<'a> {
    Text(&'a str),
    Binary(axum::body::Bytes),
}

impl Data<'_> {
    fn len(&self) -> usize {
        match self {
            Data::Text(t) => t.len(),
            Data::Binary(b) => b.len(),
        }
    }
}
