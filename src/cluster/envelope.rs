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
        /// Answer with what was delivered ([`Answer::Delivered`]) to this
        /// request of the publishing instance (admin sends, which report
        /// it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack: Option<Uuid>,
    },
    /// A question for the instances that hear it; each answers the asker
    /// on the asker's own channel.
    Ask {
        request_id: Uuid,
        question: Question,
    },
    /// One instance's answer to an [`Action::Ask`] or an acknowledged
    /// delivery.
    Answer { request_id: Uuid, answer: Answer },
    /// Close a session (admin `DELETE /api/sessions/{id}`).
    Kick {
        session_id: Uuid,
        code: u16,
        reason: String,
    },
    /// Switch a session's debug mode (admin `POST`/`DELETE
    /// /api/sessions/{id}/debug`): on for `minutes`, or off (`None`).
    Debug {
        session_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        minutes: Option<u32>,
        requested_by: String,
    },
}

/// What one instance asks the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Question {
    /// The lines of a trace or session in the instance's log files (`q`:
    /// a trace or session id, full or short, as `GET /api/logs` takes it).
    Logs { q: String },
}

/// One instance's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Answer {
    /// What an acknowledged delivery reached there.
    Delivered { delivered: usize, dropped: usize },
    /// The instance's log search: the body its own `GET /api/logs` answers.
    Logs { found: serde_json::Value },
    /// The instance could not answer.
    Failed { error: String },
}

impl Eq for Answer {}

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
    #[error("envelope not signed with this cluster's --cluster-secret")]
    BadSignature,
    #[error("envelope refused: {0}")]
    Invalid(&'static str),
}

/// HMAC-SHA256 of an envelope's JSON, as 64 hex digits, in front of it.
const MAC_HEX: usize = 64;

/// Signs and checks envelopes with the cluster's shared secret
/// (`--cluster-secret`): anyone who can `PUBLISH` to Redis could otherwise
/// deliver any frame, from any user, or kick any session.
#[derive(Debug, Clone)]
pub struct Sealer {
    key: Option<crate::auth::Secret>,
}

impl Sealer {
    pub fn new(key: Option<crate::auth::Secret>) -> Self {
        Self { key }
    }

    fn mac(key: &crate::auth::Secret) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key.expose().as_bytes())
            .expect("HMAC takes keys of any length")
    }

    pub fn signs(&self) -> bool {
        self.key.is_some()
    }

    /// The wire form of an envelope: its JSON, signed when there is a key.
    pub fn seal(&self, envelope: &Envelope) -> String {
        use hmac::Mac;
        let json = envelope.to_json();
        match &self.key {
            None => json,
            Some(key) => {
                let mut mac = Self::mac(key);
                mac.update(json.as_bytes());
                let tag = mac.finalize().into_bytes();
                let mut wire = crate::trace_context::hex(&tag);
                wire.push_str(&json);
                wire
            }
        }
    }

    /// The JSON of a wire envelope, if its signature is this cluster's.
    pub fn open<'a>(&self, payload: &'a [u8]) -> Result<&'a [u8], EnvelopeError> {
        use hmac::Mac;
        let Some(key) = &self.key else {
            return Ok(payload);
        };
        if payload.len() < MAC_HEX {
            return Err(EnvelopeError::BadSignature);
        }
        let (hex, json) = payload.split_at(MAC_HEX);
        let tag: Option<Vec<u8>> = hex
            .chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok())
            })
            .collect();
        let tag = tag.ok_or(EnvelopeError::BadSignature)?;
        let mut mac = Self::mac(key);
        mac.update(json);
        mac.verify_slice(&tag)
            .map_err(|_| EnvelopeError::BadSignature)?;
        Ok(json)
    }
}

impl Action {
    /// What a receiving instance checks before acting, whoever signed the
    /// envelope: kick codes and reasons as the admin API allows them, and
    /// delivered frames of the size and shape a publisher builds.
    pub fn validate(&self, max_frame_bytes: usize) -> Result<(), EnvelopeError> {
        use crate::error::close_code;
        match self {
            Action::Kick { code, reason, .. } => {
                if !close_code::operator_may_use(*code) {
                    return Err(EnvelopeError::Invalid(
                        "kick with a close code operators may not use",
                    ));
                }
                if reason.len() > close_code::MAX_REASON_BYTES {
                    return Err(EnvelopeError::Invalid("kick reason over 123 bytes"));
                }
            }
            Action::Debug {
                minutes,
                requested_by,
                ..
            } => {
                if minutes.is_some_and(|m| !(1..=crate::limits::MAX_DEBUG_MINUTES).contains(&m)) {
                    return Err(EnvelopeError::Invalid("debug minutes out of range"));
                }
                if requested_by.chars().count() > crate::limits::MAX_REQUESTED_BY_CHARS {
                    return Err(EnvelopeError::Invalid(
                        "debug requested_by over 128 characters",
                    ));
                }
            }
            Action::Ask {
                question: Question::Logs { q },
                ..
            } => {
                if !crate::telemetry::logfile::valid_search_id(q) {
                    return Err(EnvelopeError::Invalid(
                        "log search for something that is not an id",
                    ));
                }
            }
            // Matched to a request of this instance, or ignored.
            Action::Answer { .. } => {}
            Action::Deliver { frame, .. } => {
                if frame.len() > max_frame_bytes {
                    return Err(EnvelopeError::Invalid(
                        "delivered frame over the size limit",
                    ));
                }
                let parsed: Result<crate::protocol::ServerFrame, _> = serde_json::from_str(frame);
                if !matches!(parsed, Ok(crate::protocol::ServerFrame::Message { .. })) {
                    return Err(EnvelopeError::Invalid(
                        "delivered frame is not a message frame",
                    ));
                }
            }
        }
        Ok(())
    }
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
                ack: None,
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
            ack: None,
        };
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"deliver","to":{"type":"all"},"message_id":"m","frame":"{}"}"#
        );
    }

    #[test]
    fn sealed_envelopes_open_only_with_the_same_key() {
        let key = Some(crate::auth::Secret::new("cluster-key"));
        let sealer = Sealer::new(key);
        let wire = sealer.seal(&sample());
        let json = sealer.open(wire.as_bytes()).unwrap();
        assert_eq!(
            Envelope::decode_from_others(json, "b-1"),
            Ok(Some(sample()))
        );
        let other = Sealer::new(Some(crate::auth::Secret::new("another-key")));
        assert_eq!(
            other.open(wire.as_bytes()),
            Err(EnvelopeError::BadSignature)
        );
        // Unsigned, or tampered with after signing.
        let plain = sample().to_json();
        assert_eq!(
            sealer.open(plain.as_bytes()),
            Err(EnvelopeError::BadSignature)
        );
        let tampered = wire.replace("news", "nevs");
        assert_eq!(
            sealer.open(tampered.as_bytes()),
            Err(EnvelopeError::BadSignature)
        );
        // Without a key the JSON is the wire form.
        assert_eq!(Sealer::new(None).seal(&sample()), plain);
    }

    #[test]
    fn actions_are_checked_like_admin_requests() {
        let kick = |code: u16, reason: &str| Action::Kick {
            session_id: Uuid::nil(),
            code,
            reason: reason.into(),
        };
        assert!(kick(4000, "bye").validate(1024).is_ok());
        for code in [0, 1005, 1006, 65535, 3000] {
            assert!(kick(code, "x").validate(1024).is_err(), "{code}");
        }
        assert!(kick(4000, &"r".repeat(3002)).validate(1024).is_err());
        let deliver = |frame: &str| Action::Deliver {
            to: Audience::All,
            message_id: "m".into(),
            frame: frame.into(),
            channel: None,
            from_session: None,
            ack: None,
        };
        let message = r#"{"type":"message","id":"m","content":"hi","ts":1,"traceparent":"t"}"#;
        assert!(deliver(message).validate(1024).is_ok());
        assert!(deliver(message).validate(10).is_err());
        assert!(deliver("not json").validate(1024).is_err());
        assert!(deliver(r#"{"type":"welcome","session_id":"s","trace_id":"t","instance_id":"i","heartbeat_interval_ms":1}"#).validate(1024).is_err());
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
