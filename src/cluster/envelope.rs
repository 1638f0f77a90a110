//! What one instance tells the others through Redis pub/sub.
//!
//! An envelope is JSON, versioned, and self-contained: the receiving
//! instance needs nothing else to deliver it. It carries two trace
//! contexts: the publisher's span (`origin`, which every receiver's
//! `ws.send` span links to, exactly as for a local delivery) and the
//! `redis.publish` span (`hop`, the parent of the `redis.deliver` span on
//! the receiving instance, so the trace shows the hop between instances).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Bumped on an incompatible change; an instance drops (and counts)
/// envelopes of a version it does not speak.
pub const ENVELOPE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u8,
    /// The instance that published it; it ignores its own envelopes (it
    /// has already delivered locally).
    pub from_instance: String,
    /// `traceparent` of the span that caused it (a `ws.receive` span, the
    /// session's span when unsampled, or an admin request's span).
    pub origin: String,
    /// `traceparent` of the `redis.publish` span, when the message is
    /// sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop: Option<String>,
    /// The publisher's sampling decision, followed by every receiver.
    pub sampled: bool,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// A `message` frame, serialized once by the publishing instance.
    Deliver {
        to: Audience,
        message_id: String,
        frame: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_session: Option<Uuid>,
    },
    /// Close a session (admin `DELETE /api/sessions/{id}`).
    Kick {
        session_id: Uuid,
        code: u16,
        reason: String,
    },
}

/// Who, on the receiving instance, gets a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Audience {
    /// Subscribers of a channel.
    Channel { channel: String },
    /// Every session.
    All,
    /// These sessions (found in the registry: direct messages).
    Sessions { session_ids: Vec<Uuid> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("not a cluster envelope: {0}")]
    Malformed(String),
    #[error("envelope version {0} is not {ENVELOPE_VERSION}")]
    Version(u8),
}

impl Envelope {
    pub fn to_json(&self) -> String {
        // Plain strings, ids and numbers: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Decodes an envelope, or `None` when `instance_id` published it
    /// itself (every instance hears its own publishes, and has delivered
    /// them locally already). That check reads only the head, without
    /// building the rest.
    ///
    /// The error names serde's complaint, never the payload: envelopes hold
    /// message content, which must not reach the logs.
    pub fn decode_from_others(
        payload: &[u8],
        instance_id: &str,
    ) -> Result<Option<Self>, EnvelopeError> {
        #[derive(Deserialize)]
        struct Head<'a> {
            v: u8,
            #[serde(borrow)]
            from_instance: std::borrow::Cow<'a, str>,
        }
        let malformed = |e: serde_json::Error| EnvelopeError::Malformed(e.classify_name());
        let head: Head = serde_json::from_slice(payload).map_err(malformed)?;
        if head.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(head.v));
        }
        if head.from_instance == instance_id {
            return Ok(None);
        }
        serde_json::from_slice(payload).map(Some).map_err(malformed)
    }
}

trait ClassifyName {
    fn classify_name(&self) -> String;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> String {
        let kind = match self.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "unexpected fields",
            serde_json::error::Category::Eof => "truncated JSON",
        };
        format!("{kind} at column {}", self.column())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            v: ENVELOPE_VERSION,
            from_instance: "a-1234".into(),
            origin: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            hop: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01".into()),
            sampled: true,
            action: Action::Deliver {
                to: Audience::Channel {
                    channel: "news".into(),
                },
                message_id: "m1".into(),
                frame: r#"{"type":"message","content":"hi"}"#.into(),
                channel: Some("news".into()),
                from_session: Some(Uuid::nil()),
            },
        }
    }

    #[test]
    fn round_trips() {
        let kick = Envelope {
            hop: None,
            action: Action::Kick {
                session_id: Uuid::now_v7(),
                code: 4000,
                reason: "bye".into(),
            },
            ..sample()
        };
        for envelope in [sample(), kick] {
            let json = envelope.to_json();
            assert_eq!(
                Envelope::decode_from_others(json.as_bytes(), "b-1"),
                Ok(Some(envelope))
            );
            // Its own publishes come back to the publishing instance.
            assert_eq!(
                Envelope::decode_from_others(json.as_bytes(), "a-1234"),
                Ok(None)
            );
        }
        let all = Action::Deliver {
            to: Audience::All,
            message_id: "m".into(),
            frame: "{}".into(),
            channel: None,
            from_session: None,
        };
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"deliver","to":{"type":"all"},"message_id":"m","frame":"{}"}"#
        );
    }

    #[test]
    fn rejects_garbage_without_echoing_it() {
        let secret = br#"{"v":1,"from_instance":"x","content":"s3cret"}"#;
        let decode = |payload: &[u8]| Envelope::decode_from_others(payload, "b-1");
        let error = decode(secret).unwrap_err();
        assert!(matches!(error, EnvelopeError::Malformed(_)));
        assert!(!error.to_string().contains("s3cret"), "{error}");
        assert!(matches!(
            decode(b"not json"),
            Err(EnvelopeError::Malformed(_))
        ));
        let future = sample().to_json().replacen("\"v\":1", "\"v\":9", 1);
        assert_eq!(decode(future.as_bytes()), Err(EnvelopeError::Version(9)));
    }
}
