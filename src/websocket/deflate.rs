//! permessage-deflate (RFC 7692): which offer the server accepts, and each
//! message inflated and deflated on its own, without context takeover.
//!
//! Memory is why there is no context takeover, in either direction: a
//! deflate window kept between messages costs tens to hundreds of KiB per
//! session, against an idle session's few KiB. Without it no message
//! depends on the one before, so one compressor and one decompressor per
//! worker thread serve every session (reset after each message), an idle
//! session holds nothing, and a message delivered to many receivers with
//! the same settings is compressed once.
//!
//! The server answers the first acceptable offer with
//! `server_no_context_takeover; client_no_context_takeover` (a server may
//! send both unasked, RFC 7692 7.1.1), and `server_max_window_bits=N` when
//! the client asked for a smaller window: then only messages of at most
//! 2^N bytes are compressed, whose back-references cannot reach further.
//! A malformed or unsupported offer is declined (the next one is tried;
//! none accepted means no compression), never a failed upgrade.

use bytes::Bytes;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use http::{HeaderMap, HeaderValue, header};
use std::cell::RefCell;

use super::WsError;

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";
/// The tail a sync flush leaves, which senders remove (RFC 7692 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Inflated bytes produced per step: the size limit is checked between.
const INFLATE_STEP: usize = 16 * 1024;

/// What was agreed for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The largest message the server compresses: 2^`server_max_window_bits`
    /// when the client asked for a window under 15 bits, else any size.
    pub max_compressed_message: usize,
}

/// What a session's writer compresses: messages from `min_bytes` up to
/// the agreement's largest (see [`Deflate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub min_bytes: usize,
    pub max_bytes: usize,
}

impl Compression {
    pub fn wants(&self, len: usize) -> bool {
        (self.min_bytes..=self.max_bytes).contains(&len)
    }
}

/// The server's answer to the client's offers, if one is acceptable: the
/// agreement and the `Sec-WebSocket-Extensions` response header.
pub fn negotiate(headers: &HeaderMap) -> Option<(Deflate, HeaderValue)> {
    let offers = headers
        .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(split_outside_quotes::<','>);
    offers.filter_map(|offer| accept(&offer)).next()
}

/// One offer (`permessage-deflate; param[=value]; …`), if acceptable.
fn accept(offer: &str) -> Option<(Deflate, HeaderValue)> {
    let mut parts = split_outside_quotes::<';'>(offer).into_iter();
    if !parts.next()?.trim().eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut seen = Vec::new();
    let mut server_bits = None;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(unquote(value.trim())?)),
            None => (param.trim(), None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None; // RFC 7692 7: a parameter twice is a bad offer
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(bits)) => server_bits = Some(window_bits(bits)?),
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                window_bits(bits)?;
            }
            _ => return None, // unknown, or a value where none belongs
        }
        seen.push(name);
    }
    let mut answer = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
    let max_compressed_message = match server_bits {
        Some(bits) if bits < 15 => {
            answer.push_str(&format!("; server_max_window_bits={bits}"));
            1 << bits
        }
        _ => usize::MAX,
    };
    let answer = HeaderValue::try_from(answer).ok()?;
    Some((
        Deflate {
            max_compressed_message,
        },
        answer,
    ))
}

/// A window size: a plain decimal 8 to 15 (RFC 7692 7.1.2), no sign or
/// leading zero.
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// A parameter value, without the quotes of a quoted string.
fn unquote(value: &str) -> Option<&str> {
    match value.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(value),
    }
}

/// Splits at `SEP`, except inside a quoted string.
fn split_outside_quotes<const SEP: char>(text: &str) -> Vec<String> {
    let (mut parts, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c == SEP && !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts.retain(|p| !p.trim().is_empty());
    parts
}

thread_local! {
    // One of each per worker thread, reset after every message.
    static DECOMPRESS: RefCell<Decompress> = RefCell::new(Decompress::new(false));
    static COMPRESS: RefCell<Compress> = RefCell::new(Compress::new(flate2::Compression::fast(), false));
}

/// Inflates one message's payload (as sent, without its tail). Produces at
/// most `limit` bytes: a message that would inflate past it is refused as
/// too big as soon as it gets there, however small it was on the wire.
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Bytes, WsError> {
    DECOMPRESS.with_borrow_mut(|inflater| {
        inflater.reset(false);
        let result = inflate_with(inflater, compressed, limit);
        inflater.reset(false);
        result
    })
}

fn inflate_with(
    inflater: &mut Decompress,
    compressed: &[u8],
    limit: usize,
) -> Result<Bytes, WsError> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; INFLATE_STEP.min(limit + 1)];
    for (part, input) in [compressed, &TAIL[..]].into_iter().enumerate() {
        let theirs = part == 0;
        let mut offset = 0;
        loop {
            // One byte over the limit is enough to know it is over.
            let room = (limit + 1 - out.len()).min(chunk.len());
            let (before_in, before_out) = (inflater.total_in(), inflater.total_out());
            let status = inflater
                .decompress(&input[offset..], &mut chunk[..room], FlushDecompress::Sync)
                .map_err(|_| WsError::Protocol("compressed message is not valid deflate data"))?;
            let took = (inflater.total_in() - before_in) as usize;
            let made = (inflater.total_out() - before_out) as usize;
            offset += took;
            out.extend_from_slice(&chunk[..made]);
            if out.len() > limit {
                return Err(WsError::MessageTooBig {
                    size: out.len(),
                    limit,
                });
            }
            if status == Status::StreamEnd {
                // A final block may end the message; the tail after it is
                // ours, anything else the sender's.
                if theirs && offset < input.len() {
                    return Err(WsError::Protocol(
                        "data after the end of a compressed message",
                    ));
                }
                return Ok(Bytes::from(out));
            }
            if (offset >= input.len() && made < room) || (took == 0 && made == 0) {
                break;
            }
        }
    }
    Ok(Bytes::from(out))
}

/// Deflates one message's payload as RFC 7692 sends it (sync flush, the
/// tail removed), or `None` when that would not make it smaller.
pub fn deflate(payload: &[u8]) -> Option<Bytes> {
    COMPRESS.with_borrow_mut(|compressor| {
        compressor.reset();
        let result = deflate_with(compressor, payload);
        compressor.reset();
        result
    })
}

fn deflate_with(compressor: &mut Compress, payload: &[u8]) -> Option<Bytes> {
    // Room for the worst case (stored blocks: 5 bytes per 64 KiB) at once.
    let mut out = Vec::with_capacity(payload.len() + payload.len() / 16_000 + 64);
    let mut offset = 0;
    loop {
        let before = compressor.total_in();
        compressor
            .compress_vec(&payload[offset..], &mut out, FlushCompress::Sync)
            .ok()?;
        offset += (compressor.total_in() - before) as usize;
        if offset >= payload.len() && out.len() < out.capacity() {
            break; // all taken, and the flush had room to finish
        }
        out.reserve(out.capacity().max(64));
    }
    if !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    // Not worth it when it does not shrink (random bytes, tiny frames).
    (out.len() < payload.len()).then(|| Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Option<(Deflate, String)> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::SEC_WEBSOCKET_EXTENSIONS, value.parse().unwrap());
        }
        negotiate(&headers).map(|(d, h)| (d, h.to_str().unwrap().to_owned()))
    }

    const ANSWER: &str =
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

    #[test]
    fn the_first_acceptable_offer_is_answered_without_context_takeover() {
        // What browsers and Python's websockets send.
        for value in [
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            "PerMessage-Deflate ; client_no_context_takeover ; server_no_context_takeover",
            "x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=10",
            r#"permessage-deflate; client_max_window_bits="12""#,
        ] {
            let (agreed, answer) = offer(&[value]).unwrap_or_else(|| panic!("{value}"));
            assert_eq!(answer, ANSWER, "{value}");
            assert_eq!(agreed.max_compressed_message, usize::MAX);
        }
        // A smaller server window is honoured: only messages that fit it
        // are compressed.
        let (agreed, answer) = offer(&["permessage-deflate; server_max_window_bits=10"]).unwrap();
        assert_eq!(answer, format!("{ANSWER}; server_max_window_bits=10"));
        assert_eq!(agreed.max_compressed_message, 1024);
        // Several offers, the first bad: the next is taken.
        let (_, answer) = offer(&[
            "permessage-deflate; server_max_window_bits=7, permessage-deflate; server_max_window_bits=15",
        ])
        .unwrap();
        assert_eq!(answer, ANSWER);
        let (_, answer) = offer(&["permessage-deflate; nope", "permessage-deflate"]).unwrap();
        assert_eq!(answer, ANSWER);
    }

    #[test]
    fn malformed_or_unsupported_offers_are_declined_not_failed() {
        for value in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; unknown_param",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; client_max_window_bits=20",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            r#"permessage-deflate; client_max_window_bits="10"#,
        ] {
            assert_eq!(offer(&[value]), None, "{value:?}");
        }
    }

    #[test]
    fn messages_round_trip_and_small_or_random_ones_are_left_alone() {
        let text = br#"{"type":"message","channel":"lobby","content":"hello hello hello hello"}"#
            .repeat(20);
        let wire = deflate(&text).unwrap();
        assert!(
            wire.len() * 4 < text.len(),
            "{} of {}",
            wire.len(),
            text.len()
        );
        assert!(!wire.ends_with(&TAIL), "the tail is removed");
        assert_eq!(inflate(&wire, text.len()).unwrap(), &text[..]);
        // Each message stands alone: the same bytes every time.
        assert_eq!(deflate(&text).unwrap(), wire);
        assert_eq!(deflate(b"a"), None);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64: bytes deflate cannot shrink.
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 56) as u8
            })
            .collect();
        assert_eq!(deflate(&random), None);
    }

    #[test]
    fn a_message_that_inflates_past_the_limit_stops_there() {
        // 64 MiB of zeros in under 1 MiB on the wire: a zip bomb.
        let bomb = deflate(&vec![0u8; 64 << 20]).unwrap();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        match inflate(&bomb, 65536) {
            Err(WsError::MessageTooBig { size, limit }) => {
                assert_eq!(limit, 65536);
                assert!(size <= limit + INFLATE_STEP, "produced {size}");
            }
            other => panic!("{other:?}"),
        }
        // The inflater is reset for the next message.
        let ok = deflate(&[b'x'; 1000]).unwrap();
        assert_eq!(inflate(&ok, 1000).unwrap(), &[b'x'; 1000][..]);
        assert!(matches!(
            inflate(&ok, 999),
            Err(WsError::MessageTooBig { .. })
        ));
        assert!(matches!(
            inflate(b"\xff\xff\xff", 1000),
            Err(WsError::Protocol(_))
        ));
    }
}
