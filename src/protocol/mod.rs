//! Protocol v1: JSON text frames tagged by `type`.
//!
//! Client → server: `ping`, `echo`, `subscribe`, `unsubscribe`, `publish`,
//! `direct`. Server → client: `welcome` (always the first frame), `pong`,
//! `echo`, `subscribed`, `unsubscribed`, `message`, `error`. Binary frames
//! are echoed back verbatim (see docs/protocol.md).
//!
//! Decoding never panics and never fails the session: anything that is not a
//! valid client frame becomes a [`DecodeError`] that the session answers with
//! an `error` frame.

mod one_pass;

use serde::{Deserialize, Serialize};

/// Declares [`FrameKind`] from one table: each kind's wire name and, for
/// kinds a client may send, what an `invalid_frame` error says the frame
/// needs. The known-type list in error messages is read from this table.
macro_rules! frame_kinds {
    ($($kind:ident = $name:literal $(, client needs $needs:literal)?;)*) => {
        /// Kinds of frames: the `type` label of the message metrics.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum FrameKind { $($kind),* }

        impl FrameKind {
            pub const ALL: &[FrameKind] = &[$(FrameKind::$kind),*];

            pub const fn as_str(self) -> &'static str {
                match self { $(FrameKind::$kind => $name),* }
            }

            /// What a client frame of this kind must carry; `None` for kinds
            /// only the server sends (or that are not JSON frames).
            pub const fn client_needs(self) -> Option<&'static str> {
                match self { $(FrameKind::$kind => frame_kinds!(@needs $($needs)?)),* }
            }
        }
    };
    (@needs $needs:literal) => { Some($needs) };
    (@needs) => { None };
}

frame_kinds! {
    Welcome = "welcome";
    Ping = "ping", client needs "valid fields";
    Pong = "pong";
    Echo = "echo", client needs "a string \"content\"";
    Subscribe = "subscribe", client needs "a string \"channel\"";
    Subscribed = "subscribed";
    Unsubscribe = "unsubscribe", client needs "a string \"channel\"";
    Unsubscribed = "unsubscribed";
    Publish = "publish", client needs "string \"channel\" and \"content\"";
    Direct = "direct", client needs "a string \"content\" and \"to_session\" or \"to_user\"";
    Message = "message";
    Error = "error";
    // Not JSON frames: binary data, and text that did not decode.
    Binary = "binary";
    Invalid = "invalid";
}

impl FrameKind {
    /// Position in [`FrameKind::ALL`], for counters indexed by kind.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The kinds a client may send, in table order.
    pub fn client_kinds() -> impl Iterator<Item = FrameKind> {
        Self::ALL
            .iter()
            .copied()
            .filter(|k| k.client_needs().is_some())
    }

    /// The client kind named `name` on the wire.
    pub fn client_kind(name: &str) -> Option<FrameKind> {
        Self::client_kinds().find(|k| k.as_str() == name)
    }
}

/// A frame a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Application-level ping; answered with [`ServerFrame::Pong`].
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Answered with [`ServerFrame::Echo`] carrying the same content.
    Echo {
        content: String,
    },
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        channel: String,
    },
    /// Delivered as [`ServerFrame::Message`] to every subscriber of the
    /// channel (the sender too, if subscribed).
    Publish {
        channel: String,
        content: String,
    },
    /// Delivered to one session, or to every session of one user.
    Direct {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_session: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_user: Option<String>,
        content: String,
    },
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        session_id: String,
        trace_id: String,
        /// The instance serving the session (several share a cluster).
        instance_id: String,
        heartbeat_interval_ms: u64,
    },
    Pong {
        /// Server wall clock, milliseconds since the Unix epoch.
        server_time_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    Echo {
        content: String,
    },
    Subscribed {
        channel: String,
    },
    Unsubscribed {
        channel: String,
    },
    /// A channel publish, a direct message, or an admin send/broadcast.
    Message {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// The sending session; absent for messages from the admin API.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_session: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_user: Option<String>,
        content: String,
        /// Milliseconds since the Unix epoch, when the server accepted it.
        ts: u64,
        /// W3C traceparent of the publisher's span, to follow the message
        /// back to where it came from.
        traceparent: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl ClientFrame {
    pub fn kind(&self) -> FrameKind {
        match self {
            ClientFrame::Ping { .. } => FrameKind::Ping,
            ClientFrame::Echo { .. } => FrameKind::Echo,
            ClientFrame::Subscribe { .. } => FrameKind::Subscribe,
            ClientFrame::Unsubscribe { .. } => FrameKind::Unsubscribe,
            ClientFrame::Publish { .. } => FrameKind::Publish,
            ClientFrame::Direct { .. } => FrameKind::Direct,
        }
    }
}

impl ServerFrame {
    pub fn kind(&self) -> FrameKind {
        match self {
            ServerFrame::Welcome { .. } => FrameKind::Welcome,
            ServerFrame::Pong { .. } => FrameKind::Pong,
            ServerFrame::Echo { .. } => FrameKind::Echo,
            ServerFrame::Subscribed { .. } => FrameKind::Subscribed,
            ServerFrame::Unsubscribed { .. } => FrameKind::Unsubscribed,
            ServerFrame::Message { .. } => FrameKind::Message,
            ServerFrame::Error { .. } => FrameKind::Error,
        }
    }

    /// Serializes to the JSON text sent on the wire.
    ///
    /// Written into a reused per-thread buffer and copied out at its exact
    /// size: a `String` with spare capacity costs `bytes` a second
    /// allocation (a shared header) when it becomes the frame's payload,
    /// and growing one from empty costs several.
    pub fn to_json(&self) -> String {
        /// What a thread keeps between frames; a larger frame's buffer is
        /// let go after it.
        const KEPT: usize = 16 * 1024;
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            // Every variant is plain strings and integers: serialization
            // of these types cannot fail, and JSON text is UTF-8.
            serde_json::to_writer(&mut *buf, self).expect("server frames always serialize");
            let json = std::str::from_utf8(buf)
                .expect("JSON text is UTF-8")
                .to_owned();
            if buf.capacity() > KEPT {
                *buf = Vec::new();
            }
            json
        })
    }
}

/// Machine-readable error codes carried by `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame is not JSON at all.
    InvalidJson,
    /// JSON, but with no string `type` field.
    MissingType,
    /// A `type` this server does not know.
    UnknownType,
    /// A known `type` whose fields are missing or of the wrong kind.
    InvalidFrame,
    /// Channel names are 1–64 characters of `A-Z a-z 0-9 _ - . :`.
    InvalidChannel,
    /// The session already has the most subscriptions allowed.
    TooManySubscriptions,
    /// Unsubscribe from a channel the session is not subscribed to.
    NotSubscribed,
    /// A direct message to a session or user that is not connected.
    NoSuchRecipient,
    /// Over the per-session message rate; the frame was not processed.
    RateLimited,
    /// Cluster mode, Redis unreachable: the message reached this instance's
    /// sessions only, or its recipient may be on another instance.
    ClusterUnavailable,
    /// Cluster mode, Redis stopped answering after the message was sent:
    /// other instances may or may not get it. Resending may duplicate.
    ClusterDeliveryUnknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingType => "missing_type",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::NoSuchRecipient => "no_such_recipient",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ClusterUnavailable => "cluster_unavailable",
            ErrorCode::ClusterDeliveryUnknown => "cluster_delivery_unknown",
        }
    }
}

/// Why a text frame could not be decoded. The message is built from serde's
/// description, never from the frame's content, so it is safe to log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
}

impl DecodeError {
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Error {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// The type names a client may use, for error messages.
fn known_types() -> String {
    FrameKind::client_kinds()
        .map(FrameKind::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decodes one text frame. The fast path is one pass with no buffering
/// (`one_pass`); a frame it does not take goes through serde's derived
/// deserializer, and only a failing frame is parsed a third time to say
/// precisely what is wrong.
pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
    match one_pass::decode(text) {
        Some(frame) => Ok(frame),
        None => serde_json::from_str::<ClientFrame>(text).map_err(|_| classify(text)),
    }
}

fn classify(text: &str) -> DecodeError {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
    }
    match serde_json::from_str::<Probe>(text) {
        Err(e) => DecodeError {
            code: ErrorCode::InvalidJson,
            message: format!(
                "frame is not a JSON object ({} at line {} column {})",
                category(&e),
                e.line(),
                e.column()
            ),
        },
        Ok(Probe { kind: None }) => DecodeError {
            code: ErrorCode::MissingType,
            message: format!(
                "frame has no \"type\" field; expected one of: {}",
                known_types()
            ),
        },
        Ok(Probe {
            kind: Some(serde_json::Value::String(kind)),
        }) => match FrameKind::client_kind(&kind) {
            Some(known) => DecodeError {
                code: ErrorCode::InvalidFrame,
                message: invalid_frame_message(known, text),
            },
            None => DecodeError {
                code: ErrorCode::UnknownType,
                message: format!(
                    "unknown frame type ({} bytes); expected one of: {}",
                    kind.len(),
                    known_types()
                ),
            },
        },
        Ok(Probe { kind: Some(_) }) => DecodeError {
            code: ErrorCode::MissingType,
            message: format!(
                "\"type\" must be a string; expected one of: {}",
                known_types()
            ),
        },
    }
}

fn invalid_frame_message(kind: FrameKind, text: &str) -> String {
    let detail = serde_json::from_str::<ClientFrame>(text)
        .err()
        .map(|e| format!(" ({})", category(&e)))
        .unwrap_or_default();
    let needs = kind.client_needs().unwrap_or("valid fields");
    format!("{} needs {needs}{detail}", kind.as_str())
}

fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "io error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "wrong field type or missing field",
        serde_json::error::Category::Eof => "unexpected end of input",
    }
}

/// Milliseconds since the Unix epoch, the unit of every timestamp in the
/// protocol and the admin API.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Longest channel name.
pub const MAX_CHANNEL_NAME: usize = 64;

/// Whether a channel name is acceptable: short, and safe to put in a log
/// line or a URL as it is.
pub fn valid_channel(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CHANNEL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_serialize_at_their_exact_size() {
        let big = "x".repeat(40 * 1024);
        for content in ["hi", big.as_str(), "after a big one"] {
            let frame = ServerFrame::Echo {
                content: content.into(),
            };
            let json = frame.to_json();
            assert_eq!(json, serde_json::to_string(&frame).unwrap());
            // No spare capacity: becoming a frame's `Bytes` costs nothing more.
            assert_eq!(json.capacity(), json.len());
        }
    }

    #[test]
    fn client_frames_round_trip() {
        for frame in [
            ClientFrame::Ping { id: None },
            ClientFrame::Ping {
                id: Some("abc".into()),
            },
            ClientFrame::Echo {
                content: "hello \"world\"\n".into(),
            },
            ClientFrame::Subscribe {
                channel: "room-1".into(),
            },
            ClientFrame::Unsubscribe {
                channel: "room-1".into(),
            },
            ClientFrame::Publish {
                channel: "room-1".into(),
                content: "hi".into(),
            },
            ClientFrame::Direct {
                to_session: Some("s".into()),
                to_user: None,
                content: "psst".into(),
            },
        ] {
            let json = serde_json::to_string(&frame).unwrap();
            assert_eq!(decode(&json).unwrap(), frame, "{json}");
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(value["type"], frame.kind().as_str());
            assert_eq!(
                FrameKind::client_kind(frame.kind().as_str()),
                Some(frame.kind())
            );
        }
    }

    #[test]
    fn server_frames_round_trip() {
        for frame in [
            ServerFrame::Welcome {
                session_id: "s".into(),
                trace_id: "t".into(),
                instance_id: "i".into(),
                heartbeat_interval_ms: 30_000,
            },
            ServerFrame::Pong {
                server_time_ms: 1,
                id: Some("x".into()),
            },
            ServerFrame::Echo {
                content: "c".into(),
            },
            ServerFrame::Error {
                code: ErrorCode::UnknownType,
                message: "m".into(),
            },
            ServerFrame::Subscribed {
                channel: "c".into(),
            },
            ServerFrame::Unsubscribed {
                channel: "c".into(),
            },
            ServerFrame::Message {
                id: "m1".into(),
                channel: Some("c".into()),
                from_session: Some("s".into()),
                from_user: None,
                content: "x".into(),
                ts: 5,
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            },
        ] {
            let json = frame.to_json();
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(value["type"], frame.kind().as_str());
            let back: ServerFrame = serde_json::from_str(&json).unwrap();
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn wire_shape_is_tagged_by_type() {
        let json = ServerFrame::Welcome {
            session_id: "s".into(),
            trace_id: "t".into(),
            instance_id: "i".into(),
            heartbeat_interval_ms: 5,
        }
        .to_json();
        assert_eq!(
            json,
            r#"{"type":"welcome","session_id":"s","trace_id":"t","instance_id":"i","heartbeat_interval_ms":5}"#
        );
        assert_eq!(
            decode(r#"{"type":"ping"}"#).unwrap(),
            ClientFrame::Ping { id: None }
        );
        assert_eq!(
            ServerFrame::Error {
                code: ErrorCode::InvalidJson,
                message: "m".into()
            }
            .to_json(),
            r#"{"type":"error","code":"invalid_json","message":"m"}"#
        );
    }

    #[test]
    fn bad_frames_are_classified() {
        let cases = [
            ("not json", ErrorCode::InvalidJson),
            ("", ErrorCode::InvalidJson),
            ("[1,2]", ErrorCode::InvalidJson),
            ("{\"type\":", ErrorCode::InvalidJson),
            ("{}", ErrorCode::MissingType),
            ("{\"type\":7}", ErrorCode::MissingType),
            ("{\"type\":\"nope\"}", ErrorCode::UnknownType),
            ("{\"type\":\"echo\"}", ErrorCode::InvalidFrame),
            ("{\"type\":\"echo\",\"content\":5}", ErrorCode::InvalidFrame),
            ("{\"type\":\"ping\",\"id\":[]}", ErrorCode::InvalidFrame),
            (
                "{\"type\":\"publish\",\"channel\":\"c\"}",
                ErrorCode::InvalidFrame,
            ),
            ("{\"type\":\"subscribe\"}", ErrorCode::InvalidFrame),
        ];
        for (text, code) in cases {
            let err = decode(text).unwrap_err();
            assert_eq!(err.code, code, "{text:?}: {}", err.message);
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn known_types_come_from_the_kind_table() {
        assert_eq!(
            known_types(),
            "ping, echo, subscribe, unsubscribe, publish, direct"
        );
        let names: std::collections::HashSet<_> =
            FrameKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), FrameKind::ALL.len());
        for (i, kind) in FrameKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn channel_names_are_validated() {
        for ok in ["a", "room-1", "org:team.general", &"x".repeat(64)] {
            assert!(valid_channel(ok), "{ok}");
        }
        for bad in ["", "has space", "new\nline", "ünï", &"x".repeat(65), "a/b"] {
            assert!(!valid_channel(bad), "{bad}");
        }
    }

    #[test]
    fn error_messages_never_echo_frame_content() {
        let secret = "eyJhbGciOiJIUzI1NiJ9.secret";
        for text in [
            format!("{{\"type\":\"{secret}\"}}"),
            secret.to_string(),
            format!("{{\"type\":\"echo\",\"content\":{{\"{secret}\":1}}}}"),
        ] {
            let err = decode(&text).unwrap_err();
            assert!(!err.message.contains(secret), "{}", err.message);
        }
    }
}
