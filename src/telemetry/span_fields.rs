//! Each span's fields, kept as the JSON text every log line under the span
//! will carry.
//!
//! `tracing-bunyan-formatter`'s `JsonStorageLayer` kept a `HashMap` of
//! `serde_json::Value` per span: about 600 bytes and six allocations for
//! the `ws.session` span, held for the session's whole life, and the map
//! re-sorted and re-serialized for every line. Here a span's fields are
//! one string of `,"key":value` entries, sorted by key, serialized once when
//! the span is created, with the parent's entries merged in (that is how
//! `session_id` reaches the lines of a message span). Fields that no line
//! writes (`otel.*`, attributes that only repeat another field, the keys
//! the line itself writes) are not kept at all.
//!
//! The span's OpenTelemetry ids are cached beside them, as ids rather than
//! as hex strings, the first time a line under the span needs them.

use opentelemetry::trace::{SpanId, TraceId};
use std::fmt::Write as _;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Whether a span field is written in log lines.
///
/// A `match` rather than a search of the bunyan layer's `RESERVED` keys: it runs
/// for every field of every span and line (a test in `bunyan.rs` keeps the
/// two in step).
pub(super) fn is_logged(key: &str) -> bool {
    match key {
        // RESERVED: the line's own keys.
        "v" | "name" | "msg" | "level" | "hostname" | "pid" | "instance_id" | "time" | "target"
        | "trace_id" | "span_id" => false,
        // Span attributes that only repeat another field in a line
        // (`ws.connection.id` is `session_id`), and the message (`msg`).
        "ws.connection.id" | "message" => false,
        _ => !(key.starts_with("otel.") || key.starts_with("log.")),
    }
}

/// A span's fields as JSON, and its trace identity once known.
#[derive(Debug, Default)]
pub struct SpanFields {
    /// `,"key":value` entries sorted by key; keys are field names, values
    /// JSON (see [`entry_bounds`] for where one ends).
    pub(super) json: String,
    pub(super) ids: Option<(TraceId, SpanId)>,
}

impl SpanFields {
    /// The entries, each with its key and its text (leading comma included).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        entries(&self.json)
    }

    #[cfg(test)]
    fn as_json_object(&self) -> String {
        format!("{{{}}}", self.json.strip_prefix(',').unwrap_or(""))
    }
}

fn entries(json: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = json;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (key_end, end) = entry_bounds(rest.as_bytes());
        let (entry, tail) = rest.split_at(end);
        rest = tail;
        Some((&entry[2..key_end], entry))
    })
}

/// In `,"key":value…`, where the key ends and where the entry ends.
///
/// The value is skipped by its JSON form, not by looking for the next
/// `,"`: that pair also occurs inside a string that ends with a comma
/// (`"a,"`), and splitting there put half an entry out of order in a
/// merge. The searches are `memchr`'s: a byte-by-byte scan for `,"` and
/// `str::find` for the key were a fifth of a sampled message's telemetry
/// (BENCHMARKS.md, seventh round).
fn entry_bounds(entry: &[u8]) -> (usize, usize) {
    // Keys are field names: no quote or escape inside.
    let key_end = memchr::memchr(b'"', &entry[2..]).map_or(entry.len(), |i| i + 2);
    // After `":`.
    let value = (key_end + 2).min(entry.len());
    let end = match entry.get(value) {
        Some(b'"') => string_end(entry, value + 1),
        // Never written for a span's own fields; read with serde_json,
        // as `bunyan` checks its JSON-valued fields.
        Some(b'{' | b'[') => {
            let mut values = serde_json::Deserializer::from_slice(&entry[value..])
                .into_iter::<serde::de::IgnoredAny>();
            match values.next() {
                Some(Ok(_)) => value + values.byte_offset(),
                _ => entry.len(),
            }
        }
        // A number, `true`, `false` or `null`: up to the next comma.
        _ => memchr::memchr(b',', &entry[value..]).map_or(entry.len(), |i| value + i),
    };
    (key_end, end)
}

/// Just past the quote that closes the string whose text starts at `at`.
fn string_end(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() {
        let Some(i) = memchr::memchr2(b'"', b'\\', &bytes[at..]) else {
            break;
        };
        if bytes[at + i] == b'"' {
            return at + i + 1;
        }
        // An escape: the byte after the backslash is part of it.
        at += i + 2;
    }
    bytes.len()
}

/// Collects fields as serialized entries, in the order they were written.
/// Fields no log line writes are left out (see [`is_logged`]).
#[derive(Default)]
pub(super) struct Entries {
    text: String,
    /// Key and byte range in `text` of each entry.
    spans: Vec<(&'static str, usize, usize)>,
}

/// A scratch buffer larger than this (after a huge field) is not kept.
const KEPT_SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    /// Entries reused by every span created on this thread: its text and
    /// index grow once, not (in several steps) for every span.
    static SCRATCH: std::cell::Cell<Entries> = const { std::cell::Cell::new(Entries::new()) };
}

impl Entries {
    pub(super) const fn new() -> Self {
        Self {
            text: String::new(),
            spans: Vec::new(),
        }
    }

    /// Empties the entries, keeping their memory.
    pub(super) fn clear(&mut self) {
        self.text.clear();
        self.spans.clear();
    }

    /// Whether these entries are small enough to keep for reuse.
    pub(super) fn worth_keeping(&self) -> bool {
        self.text.capacity() <= KEPT_SCRATCH_BYTES
    }

    /// Runs `f` with this thread's scratch entries, empty. (A span created
    /// while `f` runs, if any, gets new ones.)
    fn with_scratch<R>(f: impl FnOnce(&mut Entries) -> R) -> R {
        let mut entries = SCRATCH.try_with(std::cell::Cell::take).unwrap_or_default();
        entries.clear();
        let result = f(&mut entries);
        if entries.worth_keeping() {
            // Not kept when the thread is exiting (its slot is gone).
            let _ = SCRATCH.try_with(|kept| kept.set(entries));
        }
        result
    }

    /// The entries, `,"key":value` each, in the order they were written.
    pub(super) fn text(&self) -> &str {
        &self.text
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.spans.iter().any(|(k, _, _)| *k == key)
    }

    fn push(&mut self, field: &Field, write: impl FnOnce(&mut String)) {
        let key = field.name();
        if !is_logged(key) {
            return;
        }
        let start = self.text.len();
        self.text.push_str(",\"");
        self.text.push_str(key);
        self.text.push_str("\":");
        write(&mut self.text);
        self.spans.push((key, start, self.text.len()));
    }

    /// An entry whose value is already JSON (checked by the caller).
    pub(super) fn push_json(&mut self, field: &Field, json: &str) {
        self.push(field, |text| text.push_str(json));
    }

    /// An entry whose value is `value`'s `Display` text as a JSON string,
    /// escaped as it is formatted.
    fn push_quoted(&mut self, field: &Field, value: impl std::fmt::Display) {
        self.push(field, |text| {
            text.push('"');
            let _ = write!(JsonEscaped(text), "{value}");
            text.push('"');
        });
    }

    /// Merges these entries into `base` (sorted), replacing entries with
    /// the same key.
    fn merge_into(&mut self, base: &str) -> String {
        // Of two values for one key, the one written last wins: reversed,
        // a stable sort puts it first among its equals, and `dedup` keeps
        // the first.
        self.spans.reverse();
        self.spans.sort_by_key(|(key, _, _)| *key);
        self.spans.dedup_by_key(|(key, _, _)| *key);
        let mut out = String::with_capacity(base.len() + self.text.len());
        let mut own = self.spans.iter().peekable();
        for (key, entry) in entries(base) {
            while let Some((_, start, end)) = own.next_if(|(k, _, _)| *k < key) {
                out.push_str(&self.text[*start..*end]);
            }
            match own.next_if(|(k, _, _)| *k == key) {
                Some((_, start, end)) => out.push_str(&self.text[*start..*end]),
                None => out.push_str(entry),
            }
        }
        for (_, start, end) in own {
            out.push_str(&self.text[*start..*end]);
        }
        out
    }
}

/// Writes what is formatted into it as the inside of a JSON string, so a
/// `Display` or `Debug` value is escaped as it is formatted, without a
/// `String` of its own.
struct JsonEscaped<'a>(&'a mut String);

impl std::fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let mut plain = 0;
        for (i, byte) in s.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.push_str(&s[plain..i]);
            if escaped.is_empty() {
                let _ = write!(self.0, "\\u{byte:04x}");
            } else {
                self.0.push_str(escaped);
            }
            plain = i + 1;
        }
        self.0.push_str(&s[plain..]);
        Ok(())
    }
}

impl Visit for Entries {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, |text| {
            text.push_str(itoa::Buffer::new().format(value))
        });
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, |text| {
            text.push_str(itoa::Buffer::new().format(value))
        });
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity; serde_json writes them as null.
        self.push(field, |text| match serde_json::Number::from_f64(value) {
            Some(number) => {
                let _ = write!(text, "{number}");
            }
            None => text.push_str("null"),
        });
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, |text| {
            text.push_str(if value { "true" } else { "false" })
        });
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        // Escaped directly: through `write!` a `str` costs the formatting
        // machinery for nothing.
        self.push(field, |text| {
            text.push('"');
            let _ = std::fmt::Write::write_str(&mut JsonEscaped(text), value);
            text.push('"');
        });
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.push_quoted(field, value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push_quoted(field, format_args!("{value:?}"));
    }
}

/// Keeps `SpanFields` in each span's extensions.
pub struct SpanFieldsLayer;

impl<S> Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let json = Entries::with_scratch(|own| {
            attrs.record(own);
            let parent = span.parent();
            let parent_extensions = parent.as_ref().map(|p| p.extensions());
            let inherited = parent_extensions
                .as_ref()
                .and_then(|e| e.get::<SpanFields>())
                .map_or("", |f| f.json.as_str());
            own.merge_into(inherited)
        });
        span.extensions_mut().insert(SpanFields { json, ids: None });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        Entries::with_scratch(|own| {
            values.record(own);
            if own.spans.is_empty() {
                return;
            }
            // Inserted by `on_new_span`.
            if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
                fields.json = own.merge_into(&fields.json);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// Captures the fields of the span an event was logged in.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl<S> Layer<S> for Capture
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            let span = ctx.event_span(event).unwrap();
            let extensions = span.extensions();
            let fields = extensions.get::<SpanFields>().unwrap();
            self.0.lock().unwrap().push(fields.as_json_object());
        }
    }

    fn captured(body: impl FnOnce()) -> Vec<Value> {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry()
            .with(SpanFieldsLayer)
            .with(Capture(lines.clone()));
        tracing::subscriber::with_default(subscriber, body);
        let lines = lines.lock().unwrap();
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn children_inherit_and_override_their_parents_fields() {
        let lines = captured(|| {
            let session = tracing::info_span!(
                "ws.session",
                session_id = "s-1",
                net.peer.port = 4242u16,
                ws.connection.id = "s-1",
                otel.status_code = "error",
                quoted = "a \"quoted\", \"comma\":value",
                later = tracing::field::Empty,
            );
            let _s = session.enter();
            tracing::info!("in session");
            session.record("later", 7);
            session.record("net.peer.port", 5);
            let message = tracing::info_span!("ws.receive", msg.kind = "echo", later = true);
            let _m = message.enter();
            tracing::info!("in message");
        });
        assert_eq!(
            lines[0],
            json!({
                "net.peer.port": 4242,
                "quoted": "a \"quoted\", \"comma\":value",
                "session_id": "s-1",
            })
        );
        assert_eq!(
            lines[1],
            json!({
                "later": true,
                "msg.kind": "echo",
                "net.peer.port": 5,
                "quoted": "a \"quoted\", \"comma\":value",
                "session_id": "s-1",
            })
        );
    }

    /// A string that ends with a comma holds `,"` (its comma, then its
    /// closing quote): it must not be taken for the start of an entry
    /// when the span's fields are merged on `record` or into a child.
    #[test]
    fn values_ending_in_a_comma_survive_merges() {
        let lines = captured(|| {
            let session = tracing::info_span!(
                "ws.session",
                a = "x,",
                user.id = "bob,",
                z = tracing::field::Empty,
            );
            let _s = session.enter();
            session.record("z", ",");
            tracing::info!("in session");
            // The child overrides `a`: the parent's whole entry is left out.
            let message = tracing::info_span!("ws.receive", a = 2, b = "y,", m = 1);
            let _m = message.enter();
            tracing::info!("in message");
        });
        assert_eq!(lines[0], json!({"a": "x,", "user.id": "bob,", "z": ","}));
        assert_eq!(
            lines[1],
            json!({"a": 2, "b": "y,", "m": 1, "user.id": "bob,", "z": ","})
        );
    }

    #[test]
    fn strings_are_escaped_as_json() {
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} unicode é ✓";
        let mut text = String::from('"');
        write!(JsonEscaped(&mut text), "{nasty}").unwrap();
        text.push('"');
        assert_eq!(text, serde_json::to_string(nasty).unwrap());
        let parsed: String = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, nasty);
    }

    #[test]
    fn entries_split_where_they_start_not_inside_strings() {
        let tricky = serde_json::to_string("x,\"y\":1,\"").unwrap();
        let json = format!(",\"a\":1,\"b\":{tricky},\"c\":true");
        let split: Vec<_> = entries(&json).collect();
        assert_eq!(
            split,
            [
                ("a", ",\"a\":1"),
                ("b", format!(",\"b\":{tricky}").as_str()),
                ("c", ",\"c\":true"),
            ]
        );
    }

    use proptest::prelude::*;

    proptest! {
        /// Whatever the values hold (commas, quotes, escapes, `,"` in
        /// strings), the entries are exactly the ones written, in order.
        #[test]
        fn entries_are_the_entries_written(
            values in proptest::collection::vec(
                (proptest::sample::select(&["a", "b.c", "session_id", "x_y"][..]),
                 prop_oneof![
                     ".*".prop_map(|s| serde_json::to_string(&s).unwrap()),
                     // Mostly the bytes the split looks at.
                     "[,\":a\\\\ ]{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
                     any::<i64>().prop_map(|n| n.to_string()),
                     Just("true".to_owned()),
                     Just(r#"{"k":"v,\"}","l":[1,"]",{"m":null}]}"#.to_owned()),
                     Just(r#"[",",{"a":[]},"\\"]"#.to_owned()),
                 ]),
                0..8,
            )
        ) {
            let written: Vec<(String, String)> = values
                .iter()
                .map(|(k, v)| ((*k).to_owned(), format!(",\"{k}\":{v}")))
                .collect();
            let json: String = written.iter().map(|(_, e)| e.as_str()).collect();
            let split: Vec<(String, String)> = entries(&json)
                .map(|(k, e)| (k.to_owned(), e.to_owned()))
                .collect();
            prop_assert_eq!(split, written);
        }
    }
}
