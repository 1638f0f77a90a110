//! A client frame decoded in one pass over its JSON, with no buffering.
//!
//! `#[serde(tag = "type")]` cannot know the variant until it has seen
//! `type`, which may come last, so serde first copies the whole object
//! into its own `Content` tree (a vector of entries, each a key and a
//! value), then reads the variant from that: two passes and an allocation
//! on every message. Here the fields any variant may have are read into
//! slots as the object is read, strings borrowed from the frame where they
//! have no escapes, and the variant is built from the slots at the end.
//!
//! It accepts only what the derived deserializer accepts, and builds the
//! same frame; anything it does not accept goes to the derived one, which
//! has the last word (tests below and a property test hold this).

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

use super::{ClientFrame, FrameKind};

/// `None`: not accepted here; the derived deserializer decides.
pub(super) fn decode(text: &str) -> Option<ClientFrame> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let slots = deserializer.deserialize_map(SlotsVisitor).ok()?;
    deserializer.end().ok()?;
    slots.into_frame()
}

/// One field as read: the derived deserializer refuses a field of the
/// variant that is duplicated or has the wrong type, and ignores fields
/// of other variants whatever they hold.
#[derive(Default)]
enum Slot<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Null,
    /// Another type, or the key more than once.
    Refused,
}

impl<'a> Slot<'a> {
    fn set(&mut self, value: Slot<'a>) {
        *self = match self {
            Slot::Absent => value,
            _ => Slot::Refused,
        };
    }

    /// A `String` field.
    fn required(self) -> Option<String> {
        match self {
            Slot::Str(s) => Some(s.into_owned()),
            _ => None,
        }
    }

    /// An `Option<String>` field with `#[serde(default)]`: `Some(None)`
    /// when absent or null.
    fn optional(self) -> Option<Option<String>> {
        match self {
            Slot::Absent | Slot::Null => Some(None),
            Slot::Str(s) => Some(Some(s.into_owned())),
            Slot::Refused => None,
        }
    }
}

#[derive(Default)]
struct Slots<'a> {
    kind: Slot<'a>,
    id: Slot<'a>,
    content: Slot<'a>,
    channel: Slot<'a>,
    to_session: Slot<'a>,
    to_user: Slot<'a>,
}

impl Slots<'_> {
    fn into_frame(self) -> Option<ClientFrame> {
        let Slot::Str(kind) = self.kind else {
            return None;
        };
        // The wire names are `FrameKind`'s table, as for the derived
        // deserializer's `rename_all` (a test holds the two to the same).
        Some(match FrameKind::client_kind(&kind)? {
            FrameKind::Ping => ClientFrame::Ping {
                id: self.id.optional()?,
            },
            FrameKind::Echo => ClientFrame::Echo {
                content: self.content.required()?,
            },
            FrameKind::Subscribe => ClientFrame::Subscribe {
                channel: self.channel.required()?,
            },
            FrameKind::Unsubscribe => ClientFrame::Unsubscribe {
                channel: self.channel.required()?,
            },
            FrameKind::Publish => ClientFrame::Publish {
                channel: self.channel.required()?,
                content: self.content.required()?,
            },
            FrameKind::Direct => ClientFrame::Direct {
                to_session: self.to_session.optional()?,
                to_user: self.to_user.optional()?,
                content: self.content.required()?,
            },
            // Not client frames: `client_kind` never names them. Listed
            // rather than `_`, so a new kind is a compile error here until it
            // gets its arm (or joins this list).
            FrameKind::Welcome
            | FrameKind::Pong
            | FrameKind::Subscribed
            | FrameKind::Unsubscribed
            | FrameKind::Message
            | FrameKind::Error
            | FrameKind::Binary
            | FrameKind::Invalid => return None,
        })
    }
}

struct SlotsVisitor;

impl<'de> Visitor<'de> for SlotsVisitor {
    type Value = Slots<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut slots = Slots::default();
        while let Some(key) = map.next_key::<Key>()? {
            let slot = match key {
                Key::Type => &mut slots.kind,
                Key::Id => &mut slots.id,
                Key::Content => &mut slots.content,
                Key::Channel => &mut slots.channel,
                Key::ToSession => &mut slots.to_session,
                Key::ToUser => &mut slots.to_user,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            slot.set(map.next_value::<SlotValue>()?.0);
        }
        Ok(slots)
    }
}

/// A key, matched as it is read: no copy of it is made, escaped or not.
enum Key {
    Type,
    Id,
    Content,
    Channel,
    ToSession,
    ToUser,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    #[inline]
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl Visitor<'_> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, key: &str) -> Result<Key, E> {
        Ok(match key {
            "type" => Key::Type,
            "id" => Key::Id,
            "content" => Key::Content,
            "channel" => Key::Channel,
            "to_session" => Key::ToSession,
            "to_user" => Key::ToUser,
            _ => Key::Other,
        })
    }
}

/// Any JSON value, kept only if it is a string or null.
struct SlotValue<'a>(Slot<'a>);

impl<'de> de::Deserialize<'de> for SlotValue<'de> {
    #[inline]
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SlotValueVisitor)
    }
}

struct SlotValueVisitor;

impl<'de> Visitor<'de> for SlotValueVisitor {
    type Value = SlotValue<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(SlotValue(Slot::Str(Cow::Borrowed(s))))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(SlotValue(Slot::Str(Cow::Owned(s.to_owned()))))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(SlotValue(Slot::Str(Cow::Owned(s))))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(SlotValue(Slot::Null))
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(SlotValue(Slot::Null))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(SlotValue(Slot::Refused))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(SlotValue(Slot::Refused))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(SlotValue(Slot::Refused))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(SlotValue(Slot::Refused))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(SlotValue(Slot::Refused))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(SlotValue(Slot::Refused))
    }
}

#[cfg(test)]
mod tests {
    use super::super::ClientFrame;
    use super::decode;
    use proptest::prelude::*;

    fn derived(text: &str) -> Option<ClientFrame> {
        serde_json::from_str::<ClientFrame>(text).ok()
    }

    /// Whatever this path accepts, the derived deserializer accepts as the
    /// same frame.
    fn agrees(text: &str) {
        if let Some(frame) = decode(text) {
            assert_eq!(Some(frame), derived(text), "{text}");
        }
    }

    #[test]
    fn the_frames_of_every_type_decode_as_derived() {
        for text in [
            r#"{"type":"echo","content":"hi"}"#,
            r#"{"content":"type last","type":"echo"}"#,
            r#"{"type":"echo","content":"esc\"aped \u00e9 \n"}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"ping","id":null}"#,
            r#"{"type":"ping","id":"p1","extra":[1,{"a":2}]}"#,
            r#"{"type":"subscribe","channel":"room-1"}"#,
            r#"{"type":"unsubscribe","channel":"room-1","content":5}"#,
            r#"{"type":"publish","channel":"c","content":"x"}"#,
            r#"{"type":"direct","to_user":"u","content":"x"}"#,
            r#"{"type":"direct","to_session":"s","to_user":null,"content":"x"}"#,
            r#" { "ty\u0070e" : "echo" , "content" : "" } "#,
        ] {
            let frame = decode(text).unwrap_or_else(|| panic!("not decoded: {text}"));
            assert_eq!(Some(frame), derived(text), "{text}");
        }
    }

    #[test]
    fn what_the_derived_deserializer_refuses_is_refused() {
        for text in [
            r#"{"type":"echo"}"#,
            r#"{"type":"echo","content":null}"#,
            r#"{"type":"echo","content":7}"#,
            r#"{"type":"echo","content":"a","content":"b"}"#,
            r#"{"type":"echo","type":"echo","content":"a"}"#,
            r#"{"type":"ping","id":5}"#,
            r#"{"type":"nope","content":"x"}"#,
            r#"{"type":5,"content":"x"}"#,
            r#"{"type":null}"#,
            r#"{"content":"x"}"#,
            r#"{"type":"echo","content":"x"} trailing"#,
            r#"{"type":"echo","content":"x""#,
            r#""echo""#,
            "[]",
            "",
        ] {
            assert_eq!(decode(text), None, "{text}");
            assert_eq!(derived(text), None, "{text}");
        }
    }

    #[test]
    fn another_variants_field_may_be_anything_even_twice() {
        let text = r#"{"type":"echo","channel":[1],"channel":{"x":null},"content":"ok"}"#;
        agrees(text);
        assert!(decode(text).is_some());
    }

    fn json_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("3".to_string()),
            Just("[\"a\"]".to_string()),
            Just("{\"k\":\"v\"}".to_string()),
            "[a-z\\\\\"é ]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            prop_oneof![
                Just("echo"),
                Just("ping"),
                Just("subscribe"),
                Just("unsubscribe"),
                Just("publish"),
                Just("direct"),
                Just("other"),
            ]
            .prop_map(|s| format!("\"{s}\"")),
        ]
    }

    proptest! {
        #[test]
        fn objects_of_the_known_keys_decode_as_derived(
            fields in proptest::collection::vec(
                (
                    prop_oneof![
                        Just("type"), Just("id"), Just("content"), Just("channel"),
                        Just("to_session"), Just("to_user"), Just("other"),
                    ],
                    json_value(),
                ),
                0..7,
            )
        ) {
            let body: Vec<String> = fields
                .iter()
                .map(|(key, value)| format!("\"{key}\":{value}"))
                .collect();
            agrees(&format!("{{{}}}", body.join(",")));
        }
    }
}
