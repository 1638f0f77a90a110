//! What a client frame's handler may touch: its session's handle, its
//! outbound queue, routing, the metrics and the session's warning budget.
//! The reader owns one and lends it to `commands::dispatch`; the commands
//! never see the reader, so neither imports the other both ways.

use opentelemetry::trace::{SpanContext, Status, TraceContextExt};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::handle::SessionHandle;
use super::outbound::{Outbound, OutboundQueue};
use crate::events::{FrameRefused, InternalEvent, LineBudget};
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, FrameKind, ServerFrame};
use crate::routing::{Audience, Delivery, ForwardError, Requester, Routed, Router, Sender};
use crate::websocket::Message;

/// The outbound queue is closed: the session is ending.
pub(super) struct Gone;

/// The message the reader is handling.
#[derive(Debug, Clone, Copy)]
pub(super) struct Current {
    pub kind: FrameKind,
    /// Saturated: the span of a 4 GiB message can say 4 GiB.
    pub size: u32,
}

impl Current {
    pub fn new(kind: FrameKind, size: usize) -> Self {
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
pub(super) fn receive_span(kind: FrameKind, size: usize) -> tracing::Span {
    tracing::info_span!(
        "ws.receive",
        ws.message.type = kind.as_str(),
        // As `i64`: the OpenTelemetry layer records `u64`/`usize` through
        // `Debug`, as a string.
        ws.message.size = size as i64,
        ws.message.id = tracing::field::Empty,
    )
}

/// A handler's view of its session.
pub(super) struct Context {
    pub session: Arc<SessionHandle>,
    pub outbound: OutboundQueue,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    /// `--max-subscriptions`.
    pub max_subscriptions: usize,
    /// Bounds this session's warning lines (a client can cause one per
    /// frame); what it leaves out is counted in the next line and in
    /// `session closed`.
    pub warnings: LineBudget,
    /// The message being handled, for the span of a failure and for the
    /// flight recorder.
    pub current: Current,
}

impl Context {
    /// The current message failed: it gets its `ws.receive` span (status
    /// Error) even when it was not sampled, `line` is written in that span,
    /// and so is the session's flight recorder (once per session). The
    /// error frame that answers it is then sampled too.
    pub fn message_failed(&self, sampled: bool, trigger: &str, line: impl FnOnce()) {
        let span = if sampled {
            tracing::Span::current()
        } else {
            receive_span(self.current.kind, self.current.size as usize)
        };
        span.set_status(Status::error(trigger.to_owned()));
        span.in_scope(|| {
            line();
            self.session.stats.flight().write(trigger, &self.metrics);
        });
    }

    pub async fn no_such_recipient(&mut self, sampled: bool) -> Result<(), Gone> {
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
    pub async fn cluster_unavailable(
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
                .write(code.as_str(), &self.metrics);
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
    pub async fn route(
        &self,
        audience: Audience<'_>,
        delivery: &Arc<Delivery>,
    ) -> Result<Routed, Gone> {
        self.outbound
            .room_for(delivery.frame.len())
            .await
            .map_err(|_| Gone)?;
        let requester = Requester::Session(self.session.clone());
        Ok(Box::pin(self.router.route(audience, delivery, |_| {}, requester)).await)
    }

    /// Tells the client when other instances were not reached.
    pub async fn report_forward(
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
    pub fn delivery(
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

    pub async fn invalid_channel(&mut self, sampled: bool) -> Result<(), Gone> {
        self.error(
            ErrorCode::InvalidChannel,
            "channel names are 1-64 characters of A-Z a-z 0-9 _ - . :",
            sampled,
        )
        .await
    }

    pub async fn error(
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

    pub async fn reply_frame(&mut self, frame: ServerFrame, sampled: bool) -> Result<(), Gone> {
        self.reply(frame.kind(), Message::Text(frame.to_json().into()), sampled)
            .await
    }

    /// Whether this warning fits the session's budget (and how many were
    /// left out before it); a refused one is counted for `session closed`.
    pub fn admit_warning(&mut self) -> Option<u64> {
        let admitted = self.warnings.admit();
        if admitted.is_none() {
            self.session.stats.warnings_suppressed.fetch_add(1, Relaxed);
        }
        admitted
    }

    /// Waiting here is the backpressure: a client that does not read its
    /// replies stops being read.
    pub async fn reply(
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
}
