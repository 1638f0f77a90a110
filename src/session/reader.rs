//! The reader task: reads frames and acts on them; replies go through the
//! writer's queue, messages for others through the hub.

use axum::extract::ws::Message;
use futures_util::{FutureExt, Stream, StreamExt};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::outbound::{Delivery, MessageSampler, Outbound};
use super::rate::{RateDecision, RateLimiter};
use super::stats::{CloseDecision, ClosedBy, PeerClose};
use crate::cluster::route::{Audience, route};
use crate::error::{SessionError, close_code};
use crate::hub::{SessionHandle, SubscribeError};
use crate::metrics::FrameKind;
use crate::protocol::{self, ClientFrame, DecodeError, ErrorCode, ServerFrame};
use crate::state::ServerState;
use crate::trace_context::format_traceparent;

pub struct Reader {
    pub session: Arc<SessionHandle>,
    pub outbound: mpsc::Sender<Outbound>,
    pub state: Arc<ServerState>,
    pub peer_close: Arc<PeerClose>,
    pub sampler: MessageSampler,
    pub rate: RateLimiter,
    /// Echo data frames verbatim instead of speaking protocol v1.
    pub echo_only: bool,
}

/// The outbound queue is closed: the session is ending.
struct Gone;

impl Reader {
    /// Reads until the stream ends. A client Close is recorded and reading
    /// goes on, so the WebSocket layer can send its reply and end the
    /// stream cleanly; an error is recorded as the close decision.
    pub async fn run<T>(mut self, mut stream: T)
    where
        T: Stream<Item = Result<Message, axum::Error>> + Unpin,
    {
        while let Some(item) = stream.next().await {
            self.session.stats.touch();
            let message = match item {
                Ok(message) => message,
                Err(error) => {
                    let error = SessionError::from_read(error, self.state.limits.max_message_bytes);
                    self.fail(error);
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
                    Message::Text(text) => Box::pin(self.on_data(Data::Text(text.as_str()))).await,
                    Message::Binary(bytes) => Box::pin(self.on_data(Data::Binary(bytes))).await,
                    // The WebSocket layer answers pings by itself.
                    Message::Ping(_) => Ok(()),
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

    async fn on_data(&mut self, data: Data<'_>) -> Result<(), Gone> {
        let size = data.len();
        self.session.stats.message_in(size);
        match self.rate.check() {
            RateDecision::Allow => {}
            RateDecision::Refuse { first } => return self.refuse(size, first).await,
            RateDecision::Abuse => {
                self.abuse();
                return Err(Gone);
            }
        }
        let sampled = self.sampler.sample();
        let (kind, frame) = match data {
            Data::Binary(bytes) => {
                self.state.metrics.message_in(FrameKind::Binary, size);
                // Binary frames are echoed verbatim (documented in README).
                return self
                    .reply(FrameKind::Binary, Message::Binary(bytes), sampled)
                    .await;
            }
            Data::Text(text) => {
                let frame = protocol::decode(text);
                (frame.as_ref().map_or(FrameKind::Invalid, kind_of), frame)
            }
        };
        self.state.metrics.message_in(kind, size);
        if !sampled {
            return self.handle(frame, false).await;
        }
        let span = tracing::info_span!(
            "ws.receive",
            ws.message.type = kind.as_str(),
            ws.message.size = size,
            ws.message.id = tracing::field::Empty,
        );
        self.handle(frame, true).instrument(span).await
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
                tracing::warn!(
                    error.code = error.code.as_str(),
                    error.message = %error.message,
                    "rejected client frame"
                );
                return self.reply_frame(error.to_frame(), sampled).await;
            }
        };
        if sampled {
            tracing::info!("message received");
        }
        match frame {
            ClientFrame::Ping { id } => {
                if let Some(id) = &id {
                    tracing::Span::current().record("ws.message.id", id.as_str());
                }
                let pong = ServerFrame::Pong {
                    server_time_ms: now_ms(),
                    id,
                };
                self.reply_frame(pong, sampled).await
            }
            ClientFrame::Echo { content } => {
                if self.state.fault_panic_on_echo.as_deref() == Some(content.as_str()) {
                    panic!("injected fault: echo of {content:?}");
                }
                self.reply_frame(ServerFrame::Echo { content }, sampled)
                    .await
            }
            ClientFrame::Subscribe { channel } => self.subscribe(channel, sampled).await,
            ClientFrame::Unsubscribe { channel } => {
                if !self.state.hub.unsubscribe(&self.session, &channel) {
                    return self
                        .error(
                            ErrorCode::NotSubscribed,
                            "not subscribed to that channel",
                            sampled,
                        )
                        .await;
                }
                tracing::info!(%channel, "unsubscribed");
                self.reply_frame(ServerFrame::Unsubscribed { channel }, sampled)
                    .await
            }
            ClientFrame::Publish { channel, content } => {
                if !protocol::valid_channel(&channel) {
                    return self.invalid_channel(sampled).await;
                }
                let delivery = self.delivery(Some(channel.clone()), content, sampled);
                let audience = Audience::Channel(&channel);
                let reply_to = Some(&self.outbound);
                let routed =
                    Box::pin(route(&self.state, audience, &delivery, |_| {}, reply_to)).await;
                if sampled {
                    tracing::info!(
                        %channel,
                        ws.message.id = %delivery.message_id,
                        delivered = routed.local.delivered,
                        dropped = routed.local.dropped,
                        cluster_queued = routed.queued_for_cluster,
                        "message published"
                    );
                }
                match routed.cluster_error {
                    Some(error) => self.cluster_unavailable(&error, sampled).await,
                    None => Ok(()),
                }
            }
            ClientFrame::Direct {
                to_session,
                to_user,
                content,
            } => self.direct(to_session, to_user, content, sampled).await,
        }
    }

    async fn subscribe(&mut self, channel: String, sampled: bool) -> Result<(), Gone> {
        if !protocol::valid_channel(&channel) {
            return self.invalid_channel(sampled).await;
        }
        let limit = self.state.limits.max_subscriptions;
        match self.state.hub.subscribe(&self.session, &channel, limit) {
            Ok(_) => {
                tracing::info!(%channel, "subscribed");
                self.reply_frame(ServerFrame::Subscribed { channel }, sampled)
                    .await
            }
            Err(SubscribeError::TooMany { limit }) => {
                let message = format!("at most {limit} subscriptions per session");
                self.error(ErrorCode::TooManySubscriptions, &message, sampled)
                    .await
            }
        }
    }

    async fn direct(
        &mut self,
        to_session: Option<String>,
        to_user: Option<String>,
        content: String,
        sampled: bool,
    ) -> Result<(), Gone> {
        let audience = match (&to_session, &to_user) {
            (Some(id), _) => match Uuid::parse_str(id) {
                Ok(id) => Audience::Session(id),
                Err(_) => return self.no_such_recipient(sampled).await,
            },
            (None, Some(user)) => Audience::User(user),
            (None, None) => return self.no_such_recipient(sampled).await,
        };
        let delivery = self.delivery(None, content, sampled);
        let reply_to = Some(&self.outbound);
        let routed = Box::pin(route(&self.state, audience, &delivery, |_| {}, reply_to)).await;
        if routed.reached_nobody() {
            return match routed.cluster_error {
                Some(error) => self.cluster_unavailable(&error, sampled).await,
                None => self.no_such_recipient(sampled).await,
            };
        }
        if sampled {
            tracing::info!(
                ws.message.id = %delivery.message_id,
                delivered = routed.local.delivered,
                dropped = routed.local.dropped,
                remote_sessions = routed.remote_sessions,
                "direct message sent"
            );
        }
        match routed.cluster_error {
            Some(error) => self.cluster_unavailable(&error, sampled).await,
            None => Ok(()),
        }
    }

    async fn no_such_recipient(&mut self, sampled: bool) -> Result<(), Gone> {
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
    async fn cluster_unavailable(
        &mut self,
        error: &crate::cluster::ClusterError,
        sampled: bool,
    ) -> Result<(), Gone> {
        self.session.stats.error();
        self.outbound
            .send(crate::cluster::publisher::error_frame(error, sampled))
            .await
            .map_err(|_| Gone)
    }

    /// A `message` frame from this session, serialized once for every
    /// receiver, carrying this span as its origin.
    fn delivery(&self, channel: Option<String>, content: String, sampled: bool) -> Arc<Delivery> {
        let origin: SpanContext = if sampled {
            tracing::Span::current()
                .context()
                .span()
                .span_context()
                .clone()
        } else {
            self.session.span_context.clone()
        };
        let message_id = Uuid::now_v7().to_string();
        if sampled {
            tracing::Span::current().record("ws.message.id", message_id.as_str());
        }
        let frame = ServerFrame::Message {
            id: message_id.clone(),
            channel: channel.clone(),
            from_session: Some(self.session.id.to_string()),
            from_user: self.session.user.clone(),
            content,
            ts: now_ms(),
            traceparent: format_traceparent(&origin),
        };
        Arc::new(Delivery {
            message_id,
            frame: frame.to_json().into(),
            channel,
            from_session: Some(self.session.id),
            origin,
            sampled,
        })
    }

    async fn invalid_channel(&mut self, sampled: bool) -> Result<(), Gone> {
        self.error(
            ErrorCode::InvalidChannel,
            "channel names are 1-64 characters of A-Z a-z 0-9 _ - . :",
            sampled,
        )
        .await
    }

    async fn error(&mut self, code: ErrorCode, message: &str, sampled: bool) -> Result<(), Gone> {
        self.session.stats.error();
        tracing::warn!(
            error.code = code.as_str(),
            error.message = message,
            "request refused"
        );
        let frame = ServerFrame::Error {
            code,
            message: message.to_owned(),
        };
        self.reply_frame(frame, sampled).await
    }

    async fn reply_frame(&mut self, frame: ServerFrame, sampled: bool) -> Result<(), Gone> {
        let kind = match &frame {
            ServerFrame::Welcome { .. } => FrameKind::Welcome,
            ServerFrame::Pong { .. } => FrameKind::Pong,
            ServerFrame::Echo { .. } => FrameKind::Echo,
            ServerFrame::Subscribed { .. } => FrameKind::Subscribed,
            ServerFrame::Unsubscribed { .. } => FrameKind::Unsubscribed,
            ServerFrame::Message { .. } => FrameKind::Message,
            ServerFrame::Error { .. } => FrameKind::Error,
        };
        self.reply(kind, Message::Text(frame.to_json().into()), sampled)
            .await
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
        self.state.metrics.rate_limited.fetch_add(1, Relaxed);
        self.state.metrics.message_in(FrameKind::Invalid, size);
        self.session.stats.error();
        if !first {
            return Ok(());
        }
        tracing::warn!(
            messages_per_second = self.state.limits.messages_per_second,
            burst = self.state.limits.message_burst,
            "message rate exceeded; refusing frames"
        );
        let frame = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: format!(
                "more than {} messages per second; frames are dropped until the rate falls, \
                 and the session is closed (1008) if it does not",
                self.state.limits.messages_per_second
            ),
        };
        self.reply_frame(frame, false).await
    }

    fn abuse(&self) {
        tracing::warn!(
            messages_per_second = self.state.limits.messages_per_second,
            "message rate still exceeded; closing with 1008"
        );
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
        tracing::error!(panic = %message, "session handler panicked; closing with 1011");
        self.session.close.decide(CloseDecision::new(
            close_code::INTERNAL_ERROR,
            "internal error",
            ClosedBy::Error,
        ));
    }

    fn fail(&self, error: SessionError) {
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
        if let SessionError::MessageTooBig { .. } = error {
            self.state.metrics.oversize.fetch_add(1, Relaxed);
        }
        self.session.stats.error();
        tracing::warn!(
            error = %error,
            close_code = error.close_code(),
            "session read failed"
        );
        // Errors after which no Close can be sent map to 1006, which the
        // writer never sends (see `CloseDecision::server_sends_close`).
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

fn kind_of(frame: &ClientFrame) -> FrameKind {
    match frame {
        ClientFrame::Ping { .. } => FrameKind::Ping,
        ClientFrame::Echo { .. } => FrameKind::Echo,
        ClientFrame::Subscribe { .. } => FrameKind::Subscribe,
        ClientFrame::Unsubscribe { .. } => FrameKind::Unsubscribe,
        ClientFrame::Publish { .. } => FrameKind::Publish,
        ClientFrame::Direct { .. } => FrameKind::Direct,
    }
}

fn now_ms() -> u64 {
    protocol::unix_ms(SystemTime::now())
}
