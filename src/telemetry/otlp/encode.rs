//! OTLP's `ExportTraceServiceRequest`, written as protobuf bytes straight
//! from the SDK's `SpanData`.
//!
//! `opentelemetry-otlp` first copies the whole batch (its gRPC client keeps
//! it for retries), then turns every span into `opentelemetry-proto`'s
//! structs (a `String` per attribute key and value, a `Vec` per id), then
//! encodes those, and frees it all on another thread. That was about 60
//! allocations and most of the telemetry's CPU time per session. Here the
//! batch is read in place and written into one reused buffer.
//!
//! The bytes are exactly what `prost` writes for the message that
//! `opentelemetry-proto`'s conversion builds: fields in tag order, proto3
//! defaults left out, `oneof` and sub-messages that the conversion always
//! sets written even when empty. A unit test compares the two byte for byte.

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use std::time::{SystemTime, UNIX_EPOCH};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// `SpanFlags`: the span says whether its parent is remote, and which.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// The resource's part of every request, encoded once when the SDK hands
/// the exporter its resource.
#[derive(Debug, Default, Clone)]
pub struct EncodedResource {
    /// `ResourceSpans.resource` (field 1), tag and length included.
    resource_field: Vec<u8>,
    /// `ResourceSpans.schema_url` (field 3), tag and length included.
    schema_url_field: Vec<u8>,
}

impl EncodedResource {
    pub fn new(resource: &Resource) -> Self {
        let mut resource_field = Vec::new();
        message(&mut resource_field, 1, |out| {
            for (key, value) in resource.iter() {
                key_value(out, 1, key.as_str(), value);
            }
        });
        let mut schema_url_field = Vec::new();
        string(
            &mut schema_url_field,
            3,
            resource.schema_url().unwrap_or(""),
        );
        Self {
            resource_field,
            schema_url_field,
        }
    }
}

/// Writes one `ExportTraceServiceRequest` for `spans` into `out` (cleared
/// first). Spans are grouped by instrumentation scope, in the order each
/// scope first appears, as `opentelemetry-proto` groups them.
pub fn export_request(resource: &EncodedResource, spans: &[SpanData], out: &mut Vec<u8>) {
    out.clear();
    let mut scopes: Vec<(&InstrumentationScope, Vec<&SpanData>)> = Vec::new();
    for span in spans {
        match scopes
            .iter_mut()
            .find(|(scope, _)| *scope == &span.instrumentation_scope)
        {
            Some((_, members)) => members.push(span),
            None => scopes.push((&span.instrumentation_scope, vec![span])),
        }
    }
    message(out, 1, |out| {
        out.extend_from_slice(&resource.resource_field);
        for (scope, members) in &scopes {
            message(out, 2, |out| scope_spans(out, scope, members));
        }
        out.extend_from_slice(&resource.schema_url_field);
    });
}

fn scope_spans(out: &mut Vec<u8>, scope: &InstrumentationScope, spans: &[&SpanData]) {
    message(out, 1, |out| {
        string(out, 1, scope.name());
        string(out, 2, scope.version().unwrap_or(""));
        for attribute in scope.attributes() {
            key_value(out, 3, attribute.key.as_str(), &attribute.value);
        }
    });
    for data in spans {
        message(out, 2, |out| span(out, data));
    }
    string(out, 3, scope.schema_url().unwrap_or(""));
}

fn span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(out, 1, &context.trace_id().to_bytes());
    bytes(out, 2, &context.span_id().to_bytes());
    string(out, 3, &context.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    string(out, 5, &span.name);
    uint(out, 6, span_kind(&span.span_kind));
    fixed64(out, 7, nanos(span.start_time));
    fixed64(out, 8, nanos(span.end_time));
    for attribute in &span.attributes {
        key_value(out, 9, attribute.key.as_str(), &attribute.value);
    }
    uint(out, 10, span.dropped_attributes_count.into());
    for event in span.events.iter() {
        message(out, 11, |out| {
            fixed64(out, 1, nanos(event.timestamp));
            string(out, 2, &event.name);
            for attribute in &event.attributes {
                key_value(out, 3, attribute.key.as_str(), &attribute.value);
            }
            uint(out, 4, event.dropped_attributes_count.into());
        });
    }
    uint(out, 12, span.events.dropped_count.into());
    for link in span.links.iter() {
        message(out, 13, |out| {
            let linked = &link.span_context;
            bytes(out, 1, &linked.trace_id().to_bytes());
            bytes(out, 2, &linked.span_id().to_bytes());
            string(out, 3, &linked.trace_state().header());
            for attribute in &link.attributes {
                key_value(out, 4, attribute.key.as_str(), &attribute.value);
            }
            uint(out, 5, link.dropped_attributes_count.into());
            fixed32(
                out,
                6,
                span_flags(linked.is_remote(), linked.trace_flags().to_u8()),
            );
        });
    }
    uint(out, 14, span.links.dropped_count.into());
    message(out, 15, |out| {
        let (code, description) = match &span.status {
            Status::Unset => (0, ""),
            Status::Ok => (1, ""),
            Status::Error { description } => (2, description.as_ref()),
        };
        string(out, 2, description);
        uint(out, 3, code);
    });
    fixed32(
        out,
        16,
        span_flags(span.parent_span_is_remote, context.trace_flags().to_u8()),
    );
}

fn span_flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    let remote = if parent_is_remote {
        CONTEXT_IS_REMOTE
    } else {
        0
    };
    u32::from(trace_flags) | CONTEXT_HAS_IS_REMOTE | remote
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// A `KeyValue` as field `field` of the message being written.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(out, field, |out| {
        string(out, 1, key);
        message(out, 2, |out| any_value(out, value));
    });
}

/// The `oneof` of an `AnyValue`: always written, even when it is the
/// default (`false`, `0`, `""`), since a `oneof` says which case it is.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => bool_value(out, *b),
        Value::I64(i) => int_value(out, *i),
        Value::F64(f) => double_value(out, *f),
        Value::String(s) => string_value(out, s.as_str()),
        Value::Array(array) => message(out, 5, |out| match array {
            Array::Bool(values) => {
                for b in values {
                    message(out, 1, |out| bool_value(out, *b));
                }
            }
            Array::I64(values) => {
                for i in values {
                    message(out, 1, |out| int_value(out, *i));
                }
            }
            Array::F64(values) => {
                for f in values {
                    message(out, 1, |out| double_value(out, *f));
                }
            }
            Array::String(values) => {
                for s in values {
                    message(out, 1, |out| string_value(out, s.as_str()));
                }
            }
            // Kinds added to the API after this was written have no
            // OTLP mapping here; the value is sent empty, not dropped.
            _ => {}
        }),
        _ => {}
    }
}

fn string_value(out: &mut Vec<u8>, s: &str) {
    tag(out, 1, LEN);
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn bool_value(out: &mut Vec<u8>, b: bool) {
    tag(out, 2, VARINT);
    varint(out, u64::from(b));
}

fn int_value(out: &mut Vec<u8>, i: i64) {
    tag(out, 3, VARINT);
    varint(out, i as u64);
}

fn double_value(out: &mut Vec<u8>, f: f64) {
    tag(out, 4, FIXED64);
    out.extend_from_slice(&f.to_bits().to_le_bytes());
}

// ---------------------------------------------------------------- wire

fn tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire_type)));
}

fn varint(out: &mut Vec<u8>, value: u64) {
    // Most varints here are one byte: tags, short lengths, small numbers.
    if value < 0x80 {
        return out.push(value as u8);
    }
    let (bytes, n) = varint_on_stack(value);
    out.extend_from_slice(&bytes[..n]);
}

/// A proto3 scalar: left out when it is zero.
fn uint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, VARINT);
        varint(out, value);
    }
}

fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        tag(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A proto3 string: left out when it is empty.
fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        tag(out, field, LEN);
        varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }
}

/// A sub-message, always written. Its length is known only once it is
/// written: one byte is kept for it, and when the length needs more (a
/// body of 128 bytes or more: every span) the body is moved along by the
/// extra bytes, the length encoded on the stack.
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LEN);
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
    } else {
        let (prefix, n) = varint_on_stack(len as u64);
        // Move the body along by the extra bytes, then write the length.
        let end = out.len();
        out.resize(end + n - 1, 0);
        out.copy_within(at + 1..end, at + n);
        out[at..at + n].copy_from_slice(&prefix[..n]);
    }
}

fn varint_on_stack(mut value: u64) -> ([u8; 10], usize) {
    let mut bytes = [0; 10];
    let mut n = 0;
    while value >= 0x80 {
        bytes[n] = value as u8 | 0x80;
        value >>= 7;
        n += 1;
    }
    bytes[n] = value as u8;
    (bytes, n + 1)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry::{InstrumentationScope, KeyValue, StringValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;
    use std::borrow::Cow;
    use std::time::Duration;

    /// What `opentelemetry-otlp` would send for the same batch.
    fn reference(resource: &Resource, spans: Vec<SpanData>) -> Vec<u8> {
        let resource = ResourceAttributesWithSchema::from(resource);
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &resource),
        }
        .encode_to_vec()
    }

    fn ours(resource: &Resource, spans: &[SpanData]) -> Vec<u8> {
        let mut out = vec![0xff; 3]; // cleared first
        export_request(&EncodedResource::new(resource), spans, &mut out);
        out
    }

    fn context(trace: u128, span: u64, remote: bool, state: &str) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            state.parse::<TraceState>().unwrap(),
        )
    }

    fn at(us: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(1_764_000_000_000_000 + us)
    }

    pub(in crate::telemetry::otlp) fn span_data(
        scope: &InstrumentationScope,
        name: &'static str,
        i: u64,
    ) -> SpanData {
        SpanData {
            span_context: context(0x4bf92f3577b34da6a3ce929d0e0e4736, 0xa000 + i, false, ""),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(name),
            start_time: at(i),
            end_time: at(i + 1500),
            attributes: vec![KeyValue::new("session_id", "0197c5a2-7d1e-7b4e")],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// Every kind of field and value a span can carry, including the ones
    /// wstrace's own spans never use.
    fn everything(scope: &InstrumentationScope) -> SpanData {
        let long = "x".repeat(300);
        let mut span = span_data(scope, "GET /ws", 1);
        span.span_context = context(1, 2, false, "vendor=a,other=b");
        span.parent_span_id = SpanId::from(0x00f067aa0ba902b7);
        span.parent_span_is_remote = true;
        span.span_kind = SpanKind::Server;
        span.attributes = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("empty", ""),
            KeyValue::new("long", long.clone()),
            KeyValue::new("flag", false),
            KeyValue::new("yes", true),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("negative", -42_i64),
            KeyValue::new("big", i64::MAX),
            KeyValue::new("ratio", 0.25),
            KeyValue::new("nothing", 0.0),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("ints", Value::Array(Array::I64(vec![0, -1, 300]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![1.5, 0.0]))),
            KeyValue::new(
                "strings",
                Value::Array(Array::String(vec![
                    StringValue::from("a"),
                    StringValue::from(""),
                ])),
            ),
            KeyValue::new("no values", Value::Array(Array::I64(vec![]))),
        ];
        span.dropped_attributes_count = 3;
        span.events = SpanEvents::default();
        span.events.events = vec![
            Event::new(
                "frame refused",
                at(7),
                vec![
                    KeyValue::new("level", "WARN"),
                    KeyValue::new("code", 1009_i64),
                ],
                1,
            ),
            Event::new("", UNIX_EPOCH, vec![], 0),
        ];
        span.events.dropped_count = 2;
        span.links = SpanLinks::default();
        span.links.links = vec![
            Link::new(
                context(7, 8, true, "k=v"),
                vec![KeyValue::new("reason", long)],
                4,
            ),
            Link::new(context(9, 10, false, ""), vec![], 0),
        ];
        span.links.dropped_count = 5;
        span.status = Status::error("handler panicked");
        span
    }

    #[test]
    fn bytes_match_opentelemetry_proto_for_every_kind_of_field() {
        let resource = Resource::builder()
            .with_service_name("wstrace")
            .with_attribute(KeyValue::new("service.instance.id", "i-1"))
            .build();
        let scope = InstrumentationScope::builder("wstrace").build();
        let other = InstrumentationScope::builder("other")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.0.0")
            .with_attributes([KeyValue::new("scope.attr", 7_i64)])
            .build();
        let mut ok = span_data(&scope, "ws.session", 2);
        ok.status = Status::Ok;
        ok.span_kind = SpanKind::Client;
        let batch = vec![
            everything(&scope),
            span_data(&other, "ws.receive", 3),
            ok,
            span_data(&scope, "ws.send", 4),
            span_data(&other, "ws.publish", 5),
        ];
        assert_eq!(ours(&resource, &batch), reference(&resource, batch));
    }

    #[test]
    fn bytes_match_for_a_resource_with_a_schema_url_and_large_batches() {
        let resource = Resource::builder_empty()
            .with_schema_url([KeyValue::new("k", "v")], "https://example.com/schema")
            .build();
        let scope = InstrumentationScope::builder("wstrace").build();
        // Large enough that every enclosing length takes several bytes.
        let batch: Vec<SpanData> = (0..600).map(|i| span_data(&scope, "ws.send", i)).collect();
        let encoded = ours(&resource, &batch);
        assert!(
            encoded.len() >= 1 << 14,
            "a three-byte length: {}",
            encoded.len()
        );
        assert_eq!(encoded, reference(&resource, batch));
    }

    #[test]
    fn bytes_match_for_an_empty_batch_and_an_empty_resource() {
        let resource = Resource::builder_empty().build();
        assert_eq!(ours(&resource, &[]), reference(&resource, vec![]));
    }

    #[test]
    fn a_request_decodes_to_the_spans_it_was_given() {
        let resource = Resource::builder().with_service_name("wstrace").build();
        let scope = InstrumentationScope::builder("wstrace").build();
        let batch = vec![everything(&scope)];
        let decoded = ExportTraceServiceRequest::decode(&ours(&resource, &batch)[..]).unwrap();
        let span = &decoded.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "GET /ws");
        assert_eq!(span.parent_span_id, 0x00f067aa0ba902b7_u64.to_be_bytes());
        assert_eq!(span.flags, 0x301, "sampled, parent remote");
        assert_eq!(span.attributes.len(), 15);
        assert_eq!(span.events[0].name, "frame refused");
        assert_eq!(span.links[0].trace_state, "k=v");
        assert_eq!(span.status.as_ref().unwrap().message, "handler panicked");
    }
}
