//! W3C Trace Context at the edge: where a session's trace comes from.
//!
//! The caller's `traceparent` is taken from the request header or, because
//! browsers cannot set headers on a WebSocket, from a `traceparent` query
//! parameter. A value that is missing starts a new root trace silently; a
//! value that is present but unusable starts a new root trace and is reported
//! as a [`RejectedTraceparent`], which describes the value (source, length)
//! without ever copying it, since it is attacker-controlled.

use axum::http::{HeaderMap, Uri};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::collections::HashMap;

use crate::limits::MAX_TRACEPARENT_BYTES;
use crate::sampling::{TRACESTATE_DEBUG, TRACESTATE_KEY};

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Where a `traceparent` value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceparentSource {
    Header,
    Query,
}

impl TraceparentSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceparentSource::Header => "header",
            TraceparentSource::Query => "query",
        }
    }
}

/// A `traceparent` that was present but could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedTraceparent {
    pub source: TraceparentSource,
    pub length: usize,
    pub reason: &'static str,
}

/// What the edge learned about the caller's trace.
#[derive(Debug, Clone)]
pub enum IncomingTrace {
    /// No `traceparent` anywhere: a new root trace.
    Absent,
    /// A valid remote parent to continue.
    Continued {
        parent: Context,
        source: TraceparentSource,
    },
    /// A value was present but unusable: a new root trace, and a warning.
    Rejected(RejectedTraceparent),
}

impl IncomingTrace {
    /// The parent context for the server span (empty for a new root).
    pub fn parent(&self) -> Option<&Context> {
        match self {
            IncomingTrace::Continued { parent, .. } => Some(parent),
            _ => None,
        }
    }

    /// The caller asks for a debug session: a sampled `traceparent` with
    /// `tracestate: wstrace=debug`. Whether it gets one is the server's
    /// call (`--allow-client-debug`).
    pub fn asks_for_debug(&self) -> bool {
        self.parent().is_some_and(|parent| {
            let span = parent.span();
            let context = span.span_context();
            context.is_sampled()
                && context.trace_state().get(TRACESTATE_KEY) == Some(TRACESTATE_DEBUG)
        })
    }
}

/// Reads the caller's trace context, header first, then query.
pub fn extract(headers: &HeaderMap, uri: &Uri) -> IncomingTrace {
    if let Some(value) = headers.get(TRACEPARENT) {
        let tracestate = headers.get(TRACESTATE).and_then(|v| v.to_str().ok());
        return match value.to_str() {
            Ok(value) => parse(value, tracestate, TraceparentSource::Header),
            Err(_) => IncomingTrace::Rejected(RejectedTraceparent {
                source: TraceparentSource::Header,
                length: value.len(),
                reason: "not visible ASCII",
            }),
        };
    }
    match uri.query().and_then(|q| query_param(q, TRACEPARENT)) {
        Some(Ok(value)) => parse(&value, None, TraceparentSource::Query),
        Some(Err(length)) => IncomingTrace::Rejected(RejectedTraceparent {
            source: TraceparentSource::Query,
            length,
            reason: "invalid percent-encoding",
        }),
        None => IncomingTrace::Absent,
    }
}

fn parse(value: &str, tracestate: Option<&str>, source: TraceparentSource) -> IncomingTrace {
    let reject = |reason| {
        IncomingTrace::Rejected(RejectedTraceparent {
            source,
            length: value.len(),
            reason,
        })
    };
    if value.len() > MAX_TRACEPARENT_BYTES {
        return reject("too long");
    }
    if value.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return reject("contains control or non-ASCII characters");
    }
    if !has_w3c_shape(value) {
        return reject("not a valid W3C traceparent");
    }
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_string(), value.to_string());
    if let Some(tracestate) = tracestate {
        carrier.insert(TRACESTATE.to_string(), tracestate.to_string());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        IncomingTrace::Continued { parent, source }
    } else {
        reject("not a valid W3C traceparent")
    }
}

/// `version-traceid-parentid-flags` with exactly 2, 32, 16 and 2 lowercase
/// hex digits (the propagator alone accepts shorter ids). Version 00 has
/// nothing after the flags; a later version may append `-…` fields.
fn has_w3c_shape(value: &str) -> bool {
    let is_hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let mut parts = value.splitn(5, '-');
    let (Some(version), Some(trace_id), Some(span_id), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let rest_ok = match parts.next() {
        None => true,
        Some(_) => version != "00",
    };
    is_hex(version, 2)
        && version != "ff"
        && is_hex(trace_id, 32)
        && is_hex(span_id, 16)
        && is_hex(flags, 2)
        && rest_ok
}

/// Finds one query parameter and percent-decodes it. `Err` carries the raw
/// length when the encoding is broken.
pub fn query_param(query: &str, name: &str) -> Option<Result<String, usize>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| percent_decode(value).ok_or(value.len()))
    })
}

/// `+` is a space and `%XX` a byte, as in a form. A `%` without two hex
/// digits after it is broken encoding (the crate passes it through as is,
/// so it is checked here), and so are bytes that are not UTF-8.
fn percent_decode(input: &str) -> Option<String> {
    let well_formed = input.split('%').skip(1).all(|after| {
        after
            .get(..2)
            .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    let spaced = input.replace('+', " ");
    let decoded = percent_encoding::percent_decode_str(&spaced).decode_utf8();
    well_formed.then_some(decoded.ok()?.into_owned())
}

/// The span context a well-formed `traceparent` names (as a remote
/// context), or `None`: for values this server wrote itself, such as the
/// ones in cluster envelopes.
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    match parse(traceparent, None, TraceparentSource::Header) {
        IncomingTrace::Continued { parent, .. } => Some(parent.span().span_context().clone()),
        _ => None,
    }
}

/// The W3C `traceparent` form of a span context; also the value of the
/// `traceresponse` header (Trace Context Level 2).
pub fn format_traceparent(span: &SpanContext) -> String {
    let mut out = Vec::with_capacity(55);
    out.extend_from_slice(b"00-");
    push_hex(&mut out, &span.trace_id().to_bytes());
    out.push(b'-');
    push_hex(&mut out, &span.span_id().to_bytes());
    out.push(b'-');
    push_hex(&mut out, &[span.trace_flags().to_u8()]);
    hex_string(out)
}

/// A trace id in lowercase hex, as `TraceId`'s `Display` writes it.
pub fn trace_id_hex(id: TraceId) -> String {
    hex(&id.to_bytes())
}

/// `bytes` in lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    hex_string(out)
}

/// Appends `bytes` in lowercase hex. Ids are written a few times per
/// session (response header, welcome frame, each log line); `{:032x}`
/// goes through the formatter's padding for each, ten times the work of
/// a table (BENCHMARKS.md, seventh round).
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Through a buffer on the stack: one copy into `out`, not a capacity
    // check per digit.
    for chunk in bytes.chunks(16) {
        let mut hex = [0u8; 32];
        for (pair, &byte) in hex.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        out.extend_from_slice(&hex[..chunk.len() * 2]);
    }
}

fn hex_string(hex: Vec<u8>) -> String {
    // Only ASCII digits and dashes were pushed.
    String::from_utf8(hex).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    fn trace_id(trace: &IncomingTrace) -> String {
        trace
            .parent()
            .expect("continued")
            .span()
            .span_context()
            .trace_id()
            .to_string()
    }

    #[test]
    fn header_is_continued() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        let trace = extract(&headers, &uri("/ws"));
        assert!(matches!(
            trace,
            IncomingTrace::Continued {
                source: TraceparentSource::Header,
                ..
            }
        ));
        assert_eq!(trace_id(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn tracestate_debug_counts_only_with_the_sampled_flag() {
        let asks = |traceparent: &'static str, tracestate: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, HeaderValue::from_static(traceparent));
            if let Some(state) = tracestate {
                headers.insert(TRACESTATE, HeaderValue::from_static(state));
            }
            extract(&headers, &uri("/ws")).asks_for_debug()
        };
        assert!(asks(VALID, Some("vendor=x,wstrace=debug")));
        assert!(!asks(VALID, Some("wstrace=off")));
        assert!(!asks(VALID, None));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!asks(unsampled, Some("wstrace=debug")));
        assert!(!IncomingTrace::Absent.asks_for_debug());
    }

    #[test]
    fn query_is_continued_and_percent_decoded() {
        let encoded = VALID.replace('-', "%2D");
        let trace = extract(
            &HeaderMap::new(),
            &uri(&format!("/ws?a=1&traceparent={encoded}")),
        );
        assert!(matches!(
            trace,
            IncomingTrace::Continued {
                source: TraceparentSource::Query,
                ..
            }
        ));
        assert_eq!(trace_id(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn header_wins_over_query() {
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        let other = "00-11111111111111111111111111111111-2222222222222222-01";
        let trace = extract(&headers, &uri(&format!("/ws?traceparent={other}")));
        assert_eq!(trace_id(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn absent_is_a_silent_new_root() {
        assert!(matches!(
            extract(&HeaderMap::new(), &uri("/ws?x=1")),
            IncomingTrace::Absent
        ));
    }

    #[test]
    fn malformed_values_are_rejected_with_a_reason() {
        let long = "0".repeat(MAX_TRACEPARENT_BYTES + 1);
        let cases = [
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            long.as_str(),
        ];
        for value in cases {
            let mut headers = HeaderMap::new();
            headers.insert(TRACEPARENT, HeaderValue::from_str(value).unwrap());
            match extract(&headers, &uri("/ws")) {
                IncomingTrace::Rejected(r) => {
                    assert_eq!(r.length, value.len());
                    assert_eq!(r.source, TraceparentSource::Header);
                }
                other => panic!("{value}: {other:?}"),
            }
        }
    }

    #[test]
    fn control_characters_in_query_are_rejected() {
        let trace = extract(
            &HeaderMap::new(),
            &uri(
                "/ws?traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01%0A%7B%22level%22%3A50%7D",
            ),
        );
        match trace {
            IncomingTrace::Rejected(r) => {
                assert_eq!(r.reason, "contains control or non-ASCII characters");
                assert_eq!(r.source, TraceparentSource::Query);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            extract(&HeaderMap::new(), &uri("/ws?traceparent=%zz")),
            IncomingTrace::Rejected(RejectedTraceparent {
                reason: "invalid percent-encoding",
                ..
            })
        ));
    }

    #[test]
    fn traceresponse_has_w3c_shape() {
        let trace = extract(
            &{
                let mut h = HeaderMap::new();
                h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
                h
            },
            &uri("/ws"),
        );
        let cx = trace.parent().unwrap().span().span_context().clone();
        assert_eq!(format_traceparent(&cx), VALID);
    }

    #[test]
    fn hex_is_what_display_writes() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceState};
        let traces = [
            0u128,
            1,
            0xf,
            0x10,
            u128::MAX,
            0x0123_4567_89ab_cdef << 64,
            42 << 120,
        ];
        let spans = [0u64, 1, 0xa0, u64::MAX, 0x00f0_67aa_0ba9_02b7];
        for (&trace, &span) in traces.iter().zip(spans.iter().cycle()) {
            let (trace, span) = (TraceId::from(trace), SpanId::from(span));
            assert_eq!(trace_id_hex(trace), trace.to_string());
            let mut out = Vec::new();
            push_hex(&mut out, &span.to_bytes());
            assert_eq!(String::from_utf8(out).unwrap(), span.to_string());
            // Longer than one stack buffer (16 bytes) too.
            let mut long = Vec::new();
            let both: Vec<u8> = [trace.to_bytes().as_slice(), &span.to_bytes()].concat();
            push_hex(&mut long, &both);
            assert_eq!(String::from_utf8(long).unwrap(), format!("{trace}{span}"));
            for flags in [TraceFlags::default(), TraceFlags::SAMPLED] {
                let cx = SpanContext::new(trace, span, flags, true, TraceState::default());
                assert_eq!(
                    format_traceparent(&cx),
                    format!("00-{trace}-{span}-{:02x}", flags.to_u8())
                );
            }
        }
    }
}
