//! Frame headers (RFC 6455 5.2): parsing a client's, writing the server's.

use bytes::{BufMut, Bytes, BytesMut};

use super::{CloseFrame, Utf8Bytes, WsError, is_valid_close_code};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Result<Self, WsError> {
        Ok(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            _ => return Err(WsError::Protocol("reserved opcode")),
        })
    }

    pub(super) fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xa,
        }
    }

    pub(super) fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A client frame's header, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub fin: bool,
    /// RSV1: the message is compressed (permessage-deflate), on the first
    /// frame of a data message only.
    pub compressed: bool,
    pub opcode: OpCode,
    pub mask: [u8; 4],
    /// Payload length.
    pub len: usize,
    /// Header length: where the payload starts.
    pub header_len: usize,
}

/// A control frame's payload limit (RFC 6455 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Parses the header at the start of `buf`: `Ok(None)` until all of it has
/// arrived. A data frame longer than `max_payload` is refused here, before
/// any of its payload is read. RSV1 is allowed only with `deflate`
/// (permessage-deflate was negotiated), and only where RFC 7692 puts it:
/// on a message's first frame, never on a control frame or a continuation.
pub(super) fn parse_header(
    buf: &[u8],
    max_payload: usize,
    deflate: bool,
) -> Result<Option<Header>, WsError> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    if b0 & 0x30 != 0 || (b0 & 0x40 != 0 && !deflate) {
        return Err(WsError::Protocol("reserved bits set"));
    }
    let fin = b0 & 0x80 != 0;
    let compressed = b0 & 0x40 != 0;
    let opcode = OpCode::from_bits(b0 & 0x0f)?;
    if compressed && (opcode.is_control() || opcode == OpCode::Continuation) {
        return Err(WsError::Protocol(
            "RSV1 on a control frame or a continuation",
        ));
    }
    if opcode.is_control() && !fin {
        return Err(WsError::Protocol("fragmented control frame"));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("unmasked client frame"));
    }
    let (len, extended) = match b1 & 0x7f {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.first_chunk::<8>() {
            Some(bytes) => (u64::from_be_bytes(*bytes), 8),
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    if len >> 63 != 0 {
        return Err(WsError::Protocol("frame length has its top bit set"));
    }
    if opcode.is_control() && len > MAX_CONTROL_PAYLOAD as u64 {
        return Err(WsError::Protocol("control frame over 125 bytes"));
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if !opcode.is_control() && len > max_payload {
        return Err(WsError::MessageTooBig {
            size: len,
            limit: max_payload,
        });
    }
    let Some(mask) = rest[extended..].first_chunk::<4>() else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        compressed,
        opcode,
        mask: *mask,
        len,
        header_len: 2 + extended + 4,
    }))
}

/// Unmasks a client payload in place, eight bytes at a time.
pub(super) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let (words, tail) = payload.as_chunks_mut::<8>();
    for word in words {
        *word = (u64::from_ne_bytes(*word) ^ wide).to_ne_bytes();
    }
    // Eight is a multiple of four: the tail starts on mask byte 0.
    for (byte, m) in tail.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

/// Writes a server frame (final, unmasked): header, then payload.
pub(super) fn encode(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    encode_frame(out, 0x80 | opcode.bits(), payload);
}

/// Writes a compressed data message as one frame (RSV1 set).
pub(super) fn encode_compressed(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    encode_frame(out, 0xc0 | opcode.bits(), payload);
}

fn encode_frame(out: &mut BytesMut, first: u8, payload: &[u8]) {
    let len = payload.len();
    out.reserve(10 + len);
    out.put_u8(first);
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(len);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
}

/// A Close frame's payload: the code, then the reason.
pub(super) fn encode_close(out: &mut BytesMut, close: Option<&CloseFrame>) {
    let Some(close) = close else {
        return encode(out, OpCode::Close, &[]);
    };
    // The reason is cut to fit a control frame, on a character boundary.
    let reason = close.reason.as_str();
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason[..cut];
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&close.code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason.as_bytes());
    encode(out, OpCode::Close, &payload[..2 + reason.len()]);
}

/// Reads a peer's Close payload (RFC 6455 5.5.1, 7.4).
pub(super) fn parse_close(payload: Bytes) -> Result<Option<CloseFrame>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason =
                Utf8Bytes::try_from_bytes(payload.slice(2..)).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

// The integration tests' hand-written client side, so the unit tests
// build frames with the same code (its `upgrade` is theirs alone).
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../tests/it/common/raw_ws.rs"]
mod raw_ws;

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A client frame, masked, as a client writes it: `first` is the whole
    /// first byte (FIN, reserved bits, opcode).
    pub(crate) fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        super::raw_ws::masked_frame(first & 0x80 != 0, first & 0x7f, payload, mask)
    }

    #[test]
    fn headers_of_every_length_form_parse() {
        for len in [0, 1, 125, 126, 0xffff, 0x10000] {
            let frame = client_frame(0x82, &vec![7; len], [1, 2, 3, 4]);
            let header = parse_header(&frame, 1 << 20, false).unwrap().unwrap();
            assert_eq!(header.len, len);
            assert_eq!(header.opcode, OpCode::Binary);
            assert!(header.fin);
            assert_eq!(header.mask, [1, 2, 3, 4]);
            assert_eq!(header.header_len + len, frame.len());
            // Every shorter prefix of the header asks for more.
            for cut in 0..header.header_len {
                assert_eq!(parse_header(&frame[..cut], 1 << 20, false).unwrap(), None);
            }
        }
    }

    #[test]
    fn rsv1_is_compression_on_a_first_data_frame_once_negotiated() {
        let compressed = parse_header(&[0xc1, 0x80, 0, 0, 0, 0], 100, true);
        assert!(compressed.unwrap().unwrap().compressed);
        let first_fragment = parse_header(&[0x42, 0x80, 0, 0, 0, 0], 100, true);
        assert!(first_fragment.unwrap().unwrap().compressed);
        let cases: &[(&[u8], &str)] = &[
            (
                &[0xc9, 0x80, 0, 0, 0, 0],
                "RSV1 on a control frame or a continuation",
            ),
            (
                &[0xc0, 0x80, 0, 0, 0, 0],
                "RSV1 on a control frame or a continuation",
            ),
            (&[0xa1, 0x80, 0, 0, 0, 0], "reserved bits set"),
            (&[0x91, 0x80, 0, 0, 0, 0], "reserved bits set"),
        ];
        for (frame, why) in cases {
            match parse_header(frame, 100, true) {
                Err(WsError::Protocol(reason)) => assert_eq!(reason, *why, "{frame:x?}"),
                other => panic!("{frame:x?}: {other:?}"),
            }
        }
    }

    #[test]
    fn broken_headers_are_protocol_errors() {
        let cases: &[(&[u8], &str)] = &[
            (&[0xc1, 0x80, 0, 0, 0, 0], "reserved bits set"),
            (&[0x83, 0x80, 0, 0, 0, 0], "reserved opcode"),
            (&[0x8b, 0x80, 0, 0, 0, 0], "reserved opcode"),
            (&[0x09, 0x80, 0, 0, 0, 0], "fragmented control frame"),
            (&[0x81, 0x00], "unmasked client frame"),
            (
                &[0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0],
                "control frame over 125 bytes",
            ),
            (
                &[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "frame length has its top bit set",
            ),
        ];
        for (frame, why) in cases {
            match parse_header(frame, 1 << 20, false) {
                Err(WsError::Protocol(reason)) => assert_eq!(reason, *why, "{frame:x?}"),
                other => panic!("{frame:x?}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_oversize_data_frame_is_refused_from_its_header() {
        let header = [0x82, 0x80 | 126, 0x01, 0x00];
        assert!(matches!(
            parse_header(&header, 255, false),
            Err(WsError::MessageTooBig {
                size: 256,
                limit: 255
            })
        ));
        assert!(parse_header(&header, 256, false).unwrap().is_none());
    }

    #[test]
    fn unmasking_matches_the_byte_by_byte_rule() {
        for len in 0..40 {
            let plain: Vec<u8> = (0..len as u8).collect();
            let mask = [0x11, 0x22, 0x33, 0x44];
            let mut masked: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            unmask(&mut masked, mask);
            assert_eq!(masked, plain);
        }
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        for (len, header) in [(5, 2), (126, 4), (70_000, 10)] {
            let mut out = BytesMut::new();
            encode(&mut out, OpCode::Text, &vec![b'a'; len]);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x81);
        }
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(parse_close(Bytes::new()).unwrap(), None);
        let ok = parse_close(Bytes::from_static(b"\x03\xe8bye"))
            .unwrap()
            .unwrap();
        assert_eq!((ok.code, ok.reason.as_str()), (1000, "bye"));
        assert!(matches!(
            parse_close(Bytes::from_static(b"\x03")),
            Err(WsError::Protocol(_))
        ));
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let payload = Bytes::copy_from_slice(&code.to_be_bytes());
            assert!(
                matches!(parse_close(payload), Err(WsError::Protocol(_))),
                "{code}"
            );
        }
        assert!(matches!(
            parse_close(Bytes::from_static(b"\x03\xe8\xff")),
            Err(WsError::InvalidUtf8)
        ));
    }

    #[test]
    fn a_long_close_reason_is_cut_on_a_character_boundary() {
        let reason = "é".repeat(100);
        let mut out = BytesMut::new();
        encode_close(
            &mut out,
            Some(&CloseFrame {
                code: 1011,
                reason: reason.into(),
            }),
        );
        let payload_len = usize::from(out[1]);
        assert!(payload_len <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
        assert_eq!(&out[2..4], &1011u16.to_be_bytes());
    }
}
