//! The reader task: reads frames and acts on them; replies go through the
//! writer's queue, messages for others through the hub.

use futures_util::{FutureExt, Stream, StreamExt};
use opentelemetry::trace::{SpanContext, Status, TraceContextExt};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::close::{CloseDecision, ClosedBy, PeerClose};
use super::commands;
use super::flight::{Direction, Entry, close_trigger};
use super::handle::SessionHandle;
use super::message_span_id;
use super::outbound::{MessageSampler, Outbound, OutboundQueue};
use super::rate::{RateDecision, RateLimiter};
use crate::error::{SessionError, close_code};
use crate::events::{
    ClientFrameRejected, FrameRefused, HandlerPanicked, LineBudget, MessageHandled, RateAbuse,
    RateLimited, SessionReadFailed,
};
use crate::protocol::{self, ClientFrame, DecodeError, ErrorCode, FrameKind, ServerFrame};
use crate::routing::{Audience, Delivery, ForwardError, Routed, Sender, SharedRecipient};
use crate::state::ServerState;
use crate::websocket::{Message, WsError};

/// The reader task: reads the socket until it ends, answers each frame
/// through the writer's queue (waiting when it is full: backpressure), and
/// hands messages for others to routing. One per session.
pub struct Reader {
    pub(super) session: Arc<SessionHandle>,
    pub(super) outbound: OutboundQueue,
    pub(super) state: Arc<ServerState>,
    pub peer_close: Arc<PeerClose>,
    pub sampler: MessageSampler,
    pub rate: RateLimiter,
    /// Bounds this session's warning lines (a client can cause one per
    /// frame); what it leaves out is counted in the next line and in
    /// `session closed`.
    pub warnings: LineBudget,
    /// Echo data frames verbatim instead of speaking protocol v1.
    pub echo_only: bool,
    /// The message being handled, for the span of a failure and for the
    /// flight recorder.
    pub current: Current,
}

/// The message the reader is handling.
#[derive(Debug, Clone, Copy)]
pub struct Current {
    pub kind: FrameKind,
    /// Saturated: the span of a 4 GiB message can say 4 GiB.
    pub size: u32,
}

impl Current {
    fn new(kind: FrameKind, size: usize) -> Self {
        Self {
            kind,
            size: u32::try_from(size).unwrap_or(u32::MAX),
        }
    }
}

impl Default for Current {
    fn default() -> Self {
        Self::new(FrameKind::Invalid, 0)
    }
}

/// The span of one inbound message.
fn receive_span(kind: FrameKind, size: usize) -> tracing::Span {
    tracing::info_span!(
        "ws.receive",
        ws.message.type = kind.as_str(),
        ws.message.size = size,
        ws.message.id = tracing::field::Empty,
    )
}

/// The outbound queue is closed: the session is ending.
pub(super) struct Gone;

impl Reader {
    /// Reads until the stream ends. A client Close is recorded as the close
    /// decision (the writer answers it); so is an error.
    pub async fn run<T>(mut self, mut stream: T)
    where
        T: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        while let Some(item) = stream.next().await {
            let at_us = self.session.stats.touch();
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
                        self.reply(FrameKind::Pong, Message::Pong(payload), false)
                            .await
                    }
                    Message::Pong(payload) => {
                        if let Some(rtt) = self.session.stats.pong(&payload) {
                            tracing::trace!(rtt_us = rtt.as_micros() as u64, "pong");
                        }
                        Ok(())
                    }
                    Message::Close(frame) => {
                        let (code, reason) = frame
                            .map(|f| (f.code, f.reason.to_string()))
                            .unwrap_or((close_code::NO_STATUS, String::new()));
                        self.peer_close.set(code, reason.clone());
                        self.session.close.decide(CloseDecision::new(
                            code,
                            reason,
                            ClosedBy::Client,
                        ));
                        Ok(())
                    }
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
        self.session.close.decide(CloseDecision::new(
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
        self.session.stats.message_in(size);
        self.state.metrics.message_in(kind, size);
        self.reply(kind, message, false).await
    }

    async fn on_data(&mut self, data: Data<'_>, at_us: u64) -> Result<(), Gone> {
        let size = data.len();
        self.session.stats.message_in(size);
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
        let debug = self.session.stats.debug().is_on();
        let sampled = debug || self.sampler.sample();
        let (kind, frame) = match data {
            // Binary frames are echoed verbatim (documented in README).
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
        let mut entry = Entry::new(Direction::In, kind, size, at_us);
        let span = sampled.then(|| receive_span(kind, size));
        entry.span_id = span.as_ref().map(|span| message_span_id(span, debug));
        self.session.stats.flight().record(entry);
        self.current = Current::new(kind, size);
        let Some(span) = span else {
            return match frame {
                Ok(frame) => self.handle(frame, false).await,
                Err(bytes) => self.reply(kind, Message::Binary(bytes), false).await,
            };
        };
        // One line per sampled message, written when its span ends and
        // carrying its duration since the frame was read (the way an HTTP
        // access log line does): the explorer draws the span's bar from it.
        async move {
            let handled = match frame {
                Ok(frame) => self.handle(frame, true).await,
                Err(bytes) => self.reply(kind, Message::Binary(bytes), true).await,
            };
            let stats = &self.session.stats;
            MessageHandled {
                duration_us: stats.micros_since_start().saturating_sub(at_us),
            }
            .emit();
            handled
        }
        .instrument(span)
        .await
    }

    /// The current message failed: it gets its `ws.receive` span (status
    /// Error) even when it was not sampled, `line` is written in that span,
    /// and so is the session's flight recorder (once per session). The
    /// error frame that answers it is then sampled too.
    fn message_failed(&self, sampled: bool, trigger: &str, line: impl FnOnce()) {
        let span = if sampled {
            tracing::Span::current()
        } else {
            receive_span(self.current.kind, self.current.size as usize)
        };
        span.set_status(Status::error(trigger.to_owned()));
        span.in_scope(|| {
            line();
            self.session
                .stats
                .flight()
                .write(trigger, &self.state.metrics);
        });
    }

    async fn handle(
        &mut self,
        frame: Result<ClientFrame, DecodeError>,
        sampled: bool,
    ) -> Result<(), Gone> {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                self.session.stats.error();
                // Over the session's warning budget: no line, no span.
                let Some(lines_suppressed) = self.admit_warning() else {
                    return self.reply_frame(error.to_frame(), sampled).await;
                };
                self.message_failed(sampled, error.code.as_str(), || {
                    ClientFrameRejected {
                        code: error.code.as_str(),
                        message: &error.message,
                        lines_suppressed,
                    }
                    .emit()
                });
                return self.reply_frame(error.to_frame(), true).await;
            }
        };
        commands::dispatch(self, frame, sampled).await
    }

    pub(super) async fn no_such_recipient(&mut self, sampled: bool) -> Result<(), Gone> {
        self.error(
            ErrorCode::NoSuchRecipient,
            "no such session or user is connected",
            sampled,
        )
        .await
    }

    /// Tells the client its message may not have reached everyone. No log
    /// line per message: an outage would flood the logs; the cluster's
    /// upkeep task reports failures once per interval.
    pub(super) async fn cluster_unavailable(
        &mut self,
        error: &ForwardError,
        sampled: bool,
    ) -> Result<(), Gone> {
        self.session.stats.error();
        // An outage fails every message: the span only when sampled (the
        // upkeep task reports the outage), the flight recorder once.
        let frame = error.to_frame();
        if let ServerFrame::Error { code, .. } = &frame {
            self.session
                .stats
                .flight()
                .write(code.as_str(), &self.state.metrics);
        }
        self.reply_frame(frame, sampled).await
    }

    /// Hands a message from this session to routing. This session gets an
    /// error frame if a queued forward to other instances fails later.
    ///
    /// When this session is in the audience (subscribed to the channel, or
    /// a direct message to its own user), routing queues its copy without
    /// waiting, as for every receiver. Waiting for room for that copy here
    /// first makes it backpressure, like a reply: a client that sends faster
    /// than it reads its own copies stops being read, rather than being
    /// closed as a slow consumer.
    pub(super) async fn route(
        &self,
        audience: Audience<'_>,
        delivery: &Arc<Delivery>,
    ) -> Result<Routed, Gone> {
        self.outbound
            .room_for(delivery.frame.len())
            .await
            .map_err(|_| Gone)?;
        let reply_to: SharedRecipient = self.session.clone();
        Ok(Box::pin(
            self.state
                .router
                .route(audience, delivery, |_| {}, Some(reply_to)),
        )
        .await)
    }

    /// Tells the client when other instances were not reached.
    pub(super) async fn report_forward(
        &mut self,
        error: Option<ForwardError>,
        sampled: bool,
    ) -> Result<(), Gone> {
        match error {
            Some(error) => self.cluster_unavailable(&error, sampled).await,
            None => Ok(()),
        }
    }

    /// A `message` frame from this session, serialized once for every
    /// receiver, carrying this span (sampled) or the session's as its
    /// origin.
    pub(super) fn delivery(
        &self,
        channel: Option<String>,
        content: String,
        sampled: bool,
    ) -> Arc<Delivery> {
        let origin: SpanContext = if sampled {
            tracing::Span::current()
                .context()
                .span()
                .span_context()
                .clone()
        } else {
            self.session.span_context.clone()
        };
        let from = Sender::Session {
            id: self.session.id,
            user: self.session.user.as_deref(),
        };
        let delivery = Delivery::new(from, channel, content, origin, sampled);
        if let Some(id) = delivery.id {
            self.session.stats.flight().identify_last_inbound(id);
        }
        if sampled {
            tracing::Span::current().record("ws.message.id", delivery.message_id.as_str());
        }
        delivery
    }

    pub(super) async fn invalid_channel(&mut self, sampled: bool) -> Result<(), Gone> {
        self.error(
            ErrorCode::InvalidChannel,
            "channel names are 1-64 characters of A-Z a-z 0-9 _ - . :",
            sampled,
        )
        .await
    }

    pub(super) async fn error(
        &mut self,
        code: ErrorCode,
        message: &str,
        sampled: bool,
    ) -> Result<(), Gone> {
        self.session.stats.error();
        let frame = ServerFrame::Error {
            code,
            message: message.to_owned(),
        };
        // Over the session's warning budget: no line, no span.
        let Some(lines_suppressed) = self.admit_warning() else {
            return self.reply_frame(frame, sampled).await;
        };
        self.message_failed(sampled, code.as_str(), || {
            FrameRefused {
                code: code.as_str(),
                message,
                lines_suppressed,
            }
            .emit()
        });
        self.reply_frame(frame, true).await
    }

    pub(super) async fn reply_frame(
        &mut self,
        frame: ServerFrame,
        sampled: bool,
    ) -> Result<(), Gone> {
        self.reply(frame.kind(), Message::Text(frame.to_json().into()), sampled)
            .await
    }

    /// Whether this warning fits the session's budget (and how many were
    /// left out before it); a refused one is counted for `session closed`.
    fn admit_warning(&mut self) -> Option<u64> {
        let admitted = self.warnings.admit();
        if admitted.is_none() {
            self.session.stats.warnings_suppressed.fetch_add(1, Relaxed);
        }
        admitted
    }

    /// Waiting here is the backpressure: a client that does not read its
    /// replies stops being read.
    async fn reply(
        &mut self,
        kind: FrameKind,
        message: Message,
        sampled: bool,
    ) -> Result<(), Gone> {
        self.outbound
            .send(Outbound::frame(kind, message, sampled))
            .await
            .map_err(|_| Gone)
    }

    async fn refuse(&mut self, size: usize, first: bool) -> Result<(), Gone> {
        let limits = &self.state.config.limits;
        let refused = RateLimited {
            first,
            messages_per_second: limits.messages_per_second,
            burst: limits.message_burst,
        };
        self.state.metrics.message_in(FrameKind::Invalid, size);
        self.session.stats.error();
        if !first {
            refused.emit(&self.state.metrics);
            return Ok(());
        }
        // Refused unread: the span says what is known, its size.
        self.current = Current::new(FrameKind::Invalid, size);
        self.message_failed(false, ErrorCode::RateLimited.as_str(), || {
            refused.emit(&self.state.metrics)
        });
        let frame = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: format!(
                "more than {} messages per second; frames are dropped until the rate falls, \
                 and the session is closed (1008) if it does not",
                self.state.config.limits.messages_per_second
            ),
        };
        self.reply_frame(frame, true).await
    }

    fn abuse(&self) {
        RateAbuse {
            messages_per_second: self.state.config.limits.messages_per_second,
        }
        .emit();
        self.session.close.decide(CloseDecision::new(
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
        self.session.stats.error();
        self.message_failed(false, "panic", || {
            HandlerPanicked { panic: &message }.emit()
        });
        self.session.close.decide(CloseDecision::new(
            close_code::INTERNAL_ERROR,
            "internal error",
            ClosedBy::Error,
        ));
    }

    fn fail(&mut self, error: SessionError) {
        if let SessionError::ConnectionLost(cause) = &error {
            // A client vanishing is its choice, not a server error.
            tracing::debug!(%cause, "peer went away without a close frame");
            self.session.close.decide(CloseDecision::new(
                close_code::ABNORMAL,
                error.close_reason(),
                ClosedBy::Client,
            ));
            return;
        }
        self.session.stats.error();
        // The frame that failed is the failing message: it gets its span.
        let size = match error {
            SessionError::MessageTooBig { size, .. } => size,
            _ => 0,
        };
        self.current = Current::new(FrameKind::Invalid, size);
        let trigger = close_trigger(error.close_code());
        self.message_failed(false, &trigger, || {
            SessionReadFailed {
                error: &error,
                close_code: error.close_code(),
                message_too_big: matches!(error, SessionError::MessageTooBig { .. }),
            }
            .emit(&self.state.metrics)
        });
        // Errors after which no Close can be sent map to 1006, which the
        // writer never sends (see `CloseDecision::close_frame`).
        self.session.close.decide(CloseDecision::new(
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

pub(super) fn now_ms() -> u64 {
    protocol::unix_ms(std::time::SystemTime::now())
}
