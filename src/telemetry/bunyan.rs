//! The bunyan JSON line format, with the trace identity built in.
//!
//! The record has the shape `tracing-bunyan-formatter` writes. The span's
//! fields come from [`SpanFields`] (which copies its parent's, which is how
//! `session_id` reaches every line a session's tasks log), already
//! serialized. This layer turns each event into one bunyan record and adds
//! the event span's OpenTelemetry `trace_id` and `span_id` as top-level
//! fields, so no call site can forget them.
//!
//! Unlike `tracing-bunyan-formatter`'s `BunyanFormattingLayer` it writes no
//! `[SPAN - START]`/`[SPAN - END]` records: spans go to the trace backend,
//! and a session's lifecycle is told by explicit events. That halves the log volume per session and keeps
//! `msg` equal to what the call site wrote, so `jq 'select(.msg=="session
//! closed")'` works.

use crate::trace_context::push_hex;
use opentelemetry::trace::{SpanId, TraceId};
use std::io::Write;
use std::sync::OnceLock;
use std::time::SystemTime;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use super::span_fields::{Entries, SpanFields};

/// Keys written by the layer itself; span or event fields with these names
/// are not written again (a JSON object with duplicate keys is ambiguous).
pub const RESERVED: &[&str] = &[
    "v",
    "name",
    "msg",
    "level",
    "hostname",
    "pid",
    "instance_id",
    "time",
    "target",
    "trace_id",
    "span_id",
];

/// Event fields whose string value is JSON, written into the line as JSON
/// (an array or object a log query can reach into) rather than as a
/// string. A value that does not parse is written as a string.
pub const JSON_VALUED_FIELDS: &[&str] = &["flight_recorder"];

/// Formats events as bunyan JSON lines and writes each line with one
/// `write_all`, so concurrent lines never interleave.
pub struct BunyanJsonLayer<W> {
    make_writer: W,
    /// The dispatcher this layer is part of, to ask the OpenTelemetry layer
    /// for span contexts. (`dispatcher::get_default` cannot be used: inside
    /// a subscriber callback it answers with the no-op dispatcher whenever
    /// the subscriber is a scoped default, as in tests.) Weak, because the
    /// dispatcher owns this layer.
    dispatch: OnceLock<WeakDispatch>,
    /// `{"v":0,"name":…`: the start of every line, serialized once.
    head: String,
    /// `,"hostname":…,"pid":…,"instance_id":…`: the same on every line.
    /// `instance_id` says which server instance wrote the line: with
    /// several instances behind one load balancer, the one to look at.
    process: String,
}

impl<W> BunyanJsonLayer<W> {
    pub fn new(name: impl Into<String>, instance_id: impl Into<String>, make_writer: W) -> Self {
        let json = |value: &str| serde_json::Value::from(value).to_string();
        Self {
            make_writer,
            dispatch: OnceLock::new(),
            head: format!("{{\"v\":0,\"name\":{}", json(&name.into())),
            process: format!(
                ",\"hostname\":{},\"pid\":{},\"instance_id\":{}",
                json(&hostname()),
                std::process::id(),
                json(&instance_id.into())
            ),
        }
    }
}

pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// bunyan's numeric levels.
pub fn bunyan_level(level: &Level) -> u8 {
    match *level {
        Level::TRACE => 10,
        Level::DEBUG => 20,
        Level::INFO => 30,
        Level::WARN => 40,
        Level::ERROR => 50,
    }
}

/// The OpenTelemetry identity of a span, looked up once and cached in its
/// [`SpanFields`].
fn trace_ids<S>(
    span: &SpanRef<'_, S>,
    dispatch: &OnceLock<WeakDispatch>,
) -> Option<(TraceId, SpanId)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if let Some(ids) = span.extensions().get::<SpanFields>().and_then(|f| f.ids) {
        return Some(ids);
    }
    use opentelemetry::trace::TraceContextExt;
    let dispatch = dispatch.get()?.upgrade()?;
    let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
    let otel_span = cx.span();
    let span_context = otel_span.span_context();
    if !span_context.is_valid() {
        return None;
    }
    let ids = (span_context.trace_id(), span_context.span_id());
    // Every span has its `SpanFields` (`SpanFieldsLayer::on_new_span`).
    if let Some(fields) = span.extensions_mut().get_mut::<SpanFields>() {
        fields.ids = Some(ids);
    }
    Some(ids)
}

/// The line's `msg`: the event's message, or else the name a library gave
/// the event (`BatchSpanProcessor.ExportError`): OpenTelemetry's SDK logs
/// with a name and fields and no message, and `"msg":""` tells a reader
/// nothing. tracing's own default name (`event file.rs:12`) is no message.
fn message<'a>(message: &'a str, meta: &'static tracing::Metadata<'static>) -> &'a str {
    if message.is_empty() && !meta.name().starts_with("event ") {
        return meta.name();
    }
    message
}

/// An event's message, and its other fields serialized as they are
/// visited (no `serde_json::Value` per field).
#[derive(Default)]
struct EventFields {
    message: String,
    fields: Entries,
}

impl EventFields {
    const fn new() -> Self {
        Self {
            message: String::new(),
            fields: Entries::new(),
        }
    }

    fn clear(&mut self) {
        self.message.clear();
        self.fields.clear();
    }
}

impl Visit for EventFields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.record_i64(field, value);
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.record_u64(field, value);
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.record_f64(field, value);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.record_bool(field, value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.message);
        } else if JSON_VALUED_FIELDS.contains(&field.name())
            && serde_json::from_str::<serde::de::IgnoredAny>(value).is_ok()
        {
            self.fields.push_json(field, value);
        } else {
            self.fields.record_str(field, value);
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.fields.record_error(field, value);
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.record_debug(field, value);
        }
    }
}

impl<S, W> Layer<S> for BunyanJsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        // This thread's field buffers from the last line, emptied.
        let mut fields = FIELDS.try_with(|f| f.take()).unwrap_or_default();
        fields.clear();
        event.record(&mut fields);
        let span = ctx.event_span(event);
        let ids = span
            .as_ref()
            .and_then(|span| trace_ids(span, &self.dispatch));

        // This thread's buffer from the last line (a line logged while this
        // one is formatted, if any, gets a new one).
        let mut line = LINE.try_with(|line| line.take()).unwrap_or_default();
        line.clear();
        line.extend_from_slice(self.head.as_bytes());
        line.extend_from_slice(b",\"msg\":");
        write_json(&mut line, message(&fields.message, meta));
        let _ = write!(line, ",\"level\":{}", bunyan_level(meta.level()));
        line.extend_from_slice(self.process.as_bytes());
        let _ = write!(
            line,
            ",\"time\":\"{}\",\"target\":",
            humantime::format_rfc3339_micros(SystemTime::now())
        );
        write_json(&mut line, meta.target());
        if let Some((trace_id, span_id)) = ids {
            line.extend_from_slice(b",\"trace_id\":\"");
            push_hex(&mut line, &trace_id.to_bytes());
            line.extend_from_slice(b"\",\"span_id\":\"");
            push_hex(&mut line, &span_id.to_bytes());
            line.push(b'"');
        }
        if let Some(span) = &span {
            let extensions = span.extensions();
            if let Some(span_fields) = extensions.get::<SpanFields>() {
                for (key, entry) in span_fields.entries() {
                    // The event's own value for a key wins.
                    if !fields.fields.has(key) {
                        line.extend_from_slice(entry.as_bytes());
                    }
                }
            }
        }
        line.extend_from_slice(fields.fields.text().as_bytes());
        line.extend_from_slice(b"}\n");
        // Each output counts what it could not take (`LineCounts`).
        let _ = self.make_writer.make_writer_for(meta).write_all(&line);
        if line.capacity() <= KEPT_LINE_CAPACITY {
            // Not kept when the thread is exiting (its slot is gone).
            let _ = LINE.try_with(|kept| kept.set(line));
        }
        if fields.fields.worth_keeping() && fields.message.capacity() <= KEPT_LINE_CAPACITY {
            let _ = FIELDS.try_with(|kept| kept.set(fields));
        }
    }
}

thread_local! {
    static LINE: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    static FIELDS: std::cell::Cell<EventFields> = const { std::cell::Cell::new(EventFields::new()) };
}

/// A line buffer larger than this (after a huge line) is not kept.
const KEPT_LINE_CAPACITY: usize = 16 * 1024;

/// Writes `value` as JSON. Into a `Vec`, serializing a string, a number
/// or a `serde_json::Value` cannot fail.
fn write_json(line: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    let _ = serde_json::to_writer(line, value);
}

#[cfg(test)]
mod tests {
    use super::super::span_fields::is_logged;
    use super::*;

    #[test]
    fn the_lines_own_keys_and_span_only_attributes_are_never_logged() {
        for key in RESERVED.iter().chain(&["ws.connection.id"]) {
            assert!(!is_logged(key), "{key}");
        }
        for key in ["otel.status_code", "log.target", "message"] {
            assert!(!is_logged(key), "{key}");
        }
        for key in ["session_id", "close_code", "net.peer.ip", "ws.message.id"] {
            assert!(is_logged(key), "{key}");
        }
    }

    #[test]
    fn a_named_event_without_a_message_is_said_by_its_name() {
        use std::sync::{Arc, Mutex};
        use tracing_subscriber::layer::SubscriberExt;
        struct Messages(Arc<Mutex<Vec<String>>>);
        impl<S: Subscriber> Layer<S> for Messages {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                let said = message("", event.metadata()).to_string();
                self.0.lock().unwrap().push(said);
            }
        }
        let said = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Messages(said.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // As OpenTelemetry's SDK logs an export failure.
            tracing::error!(name: "BatchSpanProcessor.ExportError", error = "refused");
            tracing::error!(error = "refused");
        });
        assert_eq!(
            *said.lock().unwrap(),
            ["BatchSpanProcessor.ExportError", ""]
        );
    }
}
