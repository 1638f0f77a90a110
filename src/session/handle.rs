//! [`SessionHandle`]: what the rest of the server may know about, and do
//! to, a live session. Routing, the admin API and cluster mode reach a
//! session only through it (as a [`Recipient`]).

use crate::websocket::Message;
use opentelemetry::trace::SpanContext;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::DEBUG_ATTRIBUTE;
use super::close::{CloseDecision, CloseSignal, ClosedBy};
use super::outbound::{Outbound, OutboundQueue, QueueError};
use super::stats::SessionStats;
use crate::error::close_code;
use crate::events::{
    AdminTouchedSession, DebugExpired, DebugSwitched, InternalEvent, OutboundQueueFull,
};
use crate::metrics::Metrics;
use crate::protocol::{self, ServerFrame};
use crate::routing::{Delivery, DeliveryError, Recipient, SessionView};
use crate::sampling::{DebugChange, DebugReason, DebugRefused, DebugSlots, DebugStatus};

/// A live session, shared by its own tasks and by everyone who may send to
/// it or act on it.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: Uuid,
    pub trace_id: String,
    pub user: Option<String>,
    /// The TCP peer (behind a proxy, the proxy).
    pub peer: SocketAddr,
    /// The client: the peer, or whom a trusted proxy named.
    pub client: std::net::IpAddr,
    pub connected_at: SystemTime,
    /// The `ws.session` span: the explicit parent of lines logged on the
    /// session's behalf by other tasks (deliveries, admin actions).
    pub span: tracing::Span,
    /// The `ws.session` span's context, for links and `traceparent`s.
    pub span_context: SpanContext,
    pub stats: Arc<SessionStats>,
    pub close: CloseSignal,
    outbound: OutboundQueue,
}

impl SessionHandle {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Uuid,
        trace_id: String,
        user: Option<String>,
        (peer, client): (SocketAddr, std::net::IpAddr),
        span: tracing::Span,
        span_context: SpanContext,
        stats: Arc<SessionStats>,
        close: CloseSignal,
        outbound: OutboundQueue,
    ) -> Self {
        Self {
            id,
            trace_id,
            user,
            peer,
            client,
            connected_at: SystemTime::now(),
            span,
            span_context,
            stats,
            close,
            outbound,
        }
    }

    /// A `ws.admin` span in the session's trace, linked to the admin
    /// request (made here or on another instance).
    fn admin_span(&self, action: &'static str, origin: &SpanContext) -> tracing::Span {
        let span = tracing::info_span!(parent: &self.span, "ws.admin", admin.action = action);
        span.add_link(origin.clone());
        span
    }
}

impl Recipient for SessionHandle {
    fn id(&self) -> Uuid {
        self.id
    }

    fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn deliver(&self, delivery: Arc<Delivery>, metrics: &Metrics) -> Result<(), DeliveryError> {
        match self.outbound.try_send(Outbound::Delivery(delivery)) {
            Ok(()) => Ok(()),
            Err(QueueError::Full) => {
                let closing = self.close.decide(CloseDecision::new(
                    close_code::TRY_AGAIN_LATER,
                    "outbound queue full",
                    ClosedBy::Policy,
                ));
                OutboundQueueFull {
                    receiver: &self.span,
                    queue_frames: self.outbound.max_frames(),
                    queue_bytes: self.outbound.max_bytes(),
                    closing,
                    metrics,
                }
                .emit();
                Err(DeliveryError::Overflow)
            }
            Err(QueueError::Closed) => Err(DeliveryError::Gone),
        }
    }

    fn notify(&self, frame: &ServerFrame, sampled: bool) {
        let message = Message::Text(frame.to_json().into());
        // A full queue means a client that does not read; what failed is
        // counted where it failed either way.
        let _ = self
            .outbound
            .try_send(Outbound::frame(frame.kind(), message, sampled));
    }

    /// The view without channels: the hub, which keeps them, adds them.
    fn view(&self, instance_id: &str) -> SessionView {
        let stats = &self.stats;
        SessionView {
            session_id: self.id.to_string(),
            instance_id: instance_id.to_string(),
            trace_id: self.trace_id.clone(),
            user: self.user.clone(),
            peer: self.peer.to_string(),
            client: self.client.to_string(),
            connected_at_ms: protocol::unix_ms(self.connected_at),
            idle_ms: self.idle_for().as_millis() as u64,
            channels: Vec::new(),
            messages_in: stats.messages_in.load(Relaxed),
            messages_out: stats.messages_out.load(Relaxed),
            bytes_in: stats.bytes_in.load(Relaxed),
            bytes_out: stats.bytes_out.load(Relaxed),
            errors: stats.errors.load(Relaxed),
            debug: stats.debug().is_on(),
        }
    }

    fn idle_for(&self) -> Duration {
        self.stats.last_seen().elapsed()
    }

    fn admin_touched(&self, action: &'static str, origin: &SpanContext) {
        let span = self.admin_span(action, origin);
        span.in_scope(|| {
            AdminTouchedSession {
                action,
                link: origin,
            }
            .emit()
        });
    }

    fn set_debug(
        self: Arc<Self>,
        change: DebugChange,
        requested_by: &str,
        origin: &SpanContext,
        slots: &Arc<DebugSlots>,
    ) -> Result<DebugStatus, DebugRefused> {
        let span = self.admin_span("debug", origin);
        let minutes = match change {
            DebugChange::On { minutes } => minutes,
            DebugChange::Off => {
                self.stats.debug().turn_off(None);
                span.in_scope(|| {
                    DebugSwitched {
                        on: false,
                        minutes: None,
                        requested_by,
                        link: origin,
                    }
                    .emit()
                });
                return Ok(self.stats.debug().status());
            }
        };
        let period = Duration::from_secs(u64::from(minutes) * 60);
        let until = SystemTime::now() + period;
        let status = self
            .stats
            .debug()
            .turn_on(slots, DebugReason::Admin, Some(until))?;
        self.span.set_attribute(DEBUG_ATTRIBUTE, true);
        span.in_scope(|| {
            DebugSwitched {
                on: true,
                minutes: Some(minutes),
                requested_by,
                link: origin,
            }
            .emit()
        });
        if status.until.is_some() {
            // Ends by itself; a later change (another grant, or off) makes
            // this timer's generation stale. Holds the session weakly: a
            // session that ends first is not kept.
            let session = Arc::downgrade(&self);
            let generation = status.generation;
            tokio::spawn(async move {
                tokio::time::sleep(period).await;
                if let Some(session) = session.upgrade()
                    && session.stats.debug().turn_off(Some(generation)).is_some()
                {
                    session.span.in_scope(|| DebugExpired.emit());
                }
            });
        }
        Ok(status)
    }

    fn close_by_admin(&self, code: u16, reason: String) -> bool {
        self.close
            .decide(CloseDecision::new(code, reason, ClosedBy::Admin))
    }

    fn shut_down(&self) -> bool {
        self.close.decide(CloseDecision::new(
            close_code::GOING_AWAY,
            "server shutting down",
            ClosedBy::Shutdown,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::DebugSlots;

    fn handle() -> Arc<SessionHandle> {
        let (queue, _) = super::super::outbound::outbound_queue(4, 1024);
        Arc::new(SessionHandle::new(
            Uuid::now_v7(),
            "0".repeat(32),
            None,
            ("127.0.0.1:4242".parse().unwrap(), [127, 0, 0, 1].into()),
            tracing::Span::none(),
            SpanContext::empty_context(),
            Arc::new(SessionStats::new()),
            CloseSignal::new(),
            queue,
        ))
    }

    #[tokio::test(start_paused = true)]
    async fn an_operators_debug_period_ends_by_itself_and_a_new_one_restarts_it() {
        let session = handle();
        let slots = DebugSlots::new(1);
        let ten = DebugChange::On { minutes: 10 };
        let origin = SpanContext::empty_context();
        let on = |session: &Arc<SessionHandle>| {
            session
                .clone()
                .set_debug(ten.clone(), "test", &origin, &slots)
                .unwrap()
        };
        let minutes = |m: u64| tokio::time::sleep(Duration::from_secs(m * 60));
        assert!(on(&session).until.is_some());
        minutes(9).await;
        assert!(session.stats.debug().is_on());
        // Extended at 9 minutes: the first period's end no longer applies.
        on(&session);
        minutes(2).await;
        assert!(session.stats.debug().is_on(), "a stale timer ended it");
        minutes(9).await;
        assert!(!session.stats.debug().is_on());
        assert_eq!(slots.open(), 0, "its place under the cap is given back");
    }
}
