//! A message on its way to one or many sessions.

use crate::websocket::Utf8Bytes;
use opentelemetry::trace::SpanContext;
use std::sync::Arc;
use std::time::SystemTime;
use uuid::Uuid;

use crate::protocol::{self, ServerFrame};
use crate::trace_context::format_traceparent;

/// Who sent a message.
#[derive(Debug, Clone, Copy)]
pub enum Sender<'a> {
    /// A session, by `publish` or `direct`.
    Session { id: Uuid, user: Option<&'a str> },
    /// An operator, through the admin API.
    Admin,
}

/// A `message` frame on its way to one or many receivers, serialized once.
#[derive(Debug)]
pub struct Delivery {
    pub message_id: String,
    /// `message_id` as a UUID, parsed once for every receiver's flight
    /// recorder (`None` if another instance sent one that is not).
    pub id: Option<Uuid>,
    pub frame: Utf8Bytes,
    pub channel: Option<String>,
    pub from_session: Option<Uuid>,
    /// The publisher's span: each receiver's `ws.send` span links to it.
    pub origin: SpanContext,
    /// The publisher's sampling decision, so every receiver of one message
    /// records it, or none does.
    pub sampled: bool,
    /// The frame compressed for permessage-deflate, made by the first
    /// receiver that wants it (`None` inside: it would not shrink).
    pub deflated: std::sync::OnceLock<Option<bytes::Bytes>>,
}

impl Delivery {
    /// A new message, with a fresh id, whose frame carries `origin` as its
    /// `traceparent`. Admin messages are always recorded (they are rare).
    pub fn new(
        from: Sender<'_>,
        channel: Option<String>,
        content: String,
        origin: SpanContext,
        sampled: bool,
    ) -> Arc<Self> {
        let id = Uuid::now_v7();
        let message_id = id.to_string();
        let (from_session, from_user, sampled) = match from {
            Sender::Session { id, user } => (Some(id), user.map(str::to_owned), sampled),
            Sender::Admin => (None, None, true),
        };
        let frame = ServerFrame::Message {
            id: message_id.clone(),
            channel: channel.clone(),
            from_session: from_session.map(|id| id.to_string()),
            from_user,
            content,
            ts: protocol::unix_ms(SystemTime::now()),
            traceparent: format_traceparent(&origin),
        };
        Arc::new(Self {
            message_id,
            id: Some(id),
            frame: frame.to_json().into(),
            channel,
            from_session,
            origin,
            sampled,
            deflated: std::sync::OnceLock::new(),
        })
    }

    /// The frame as permessage-deflate sends it, compressed once.
    pub fn deflated(&self) -> Option<bytes::Bytes> {
        self.deflated
            .get_or_init(|| crate::websocket::deflate::deflate(self.frame.as_bytes()))
            .clone()
    }
}
