//! The reading half: bytes in, messages out.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::frame::{OpCode, parse_close, parse_header, unmask};
use super::{Message, Readable, Utf8Bytes, WsError, deflate};
use crate::limits::WS_READ_BUFFER_BYTES;

/// A connection's reading half as a `Stream` of messages. Fragmented
/// messages are put back together; control frames come out as they arrive,
/// in the middle of a fragmented message too. After the peer's Close frame,
/// or an error, the stream ends.
///
/// Nothing is answered here (pings, Close): the session answers through
/// its writer, so that answers and its other frames leave in one order.
pub struct MessageReader<R> {
    io: R,
    buffer: BytesMut,
    max_message_bytes: usize,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    deflate: bool,
    /// Where the bytes read are counted, if anywhere.
    wire: Option<std::sync::Arc<super::Wire>>,
    /// A fragmented message, while its frames arrive.
    fragments: Option<Fragments>,
    done: bool,
}

struct Fragments {
    text: bool,
    /// Compressed: `data` is deflate data, inflated at the last fragment.
    compressed: bool,
    data: BytesMut,
    /// How much of `data` is known to be UTF-8 (text only): checked as each
    /// fragment arrives, so invalid text fails at once, not at the end.
    checked: usize,
}

impl Fragments {
    /// The whole message, once its last fragment has been checked: text
    /// is not checked a second time.
    fn into_message(self, limit: usize) -> Result<Message, WsError> {
        let data = self.data.freeze();
        if self.compressed {
            return whole(self.text, deflate::inflate(&data, limit)?);
        }
        Ok(if self.text {
            Message::Text(Utf8Bytes::from_checked(data))
        } else {
            Message::Binary(data)
        })
    }

    fn check_utf8(&mut self, last: bool) -> Result<(), WsError> {
        if !self.text || self.compressed {
            // Compressed text is checked once inflated.
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => self.checked = self.data.len(),
            // A character cut at the end of a fragment may go on in the next.
            Err(error) if error.error_len().is_none() && !last => {
                self.checked += error.valid_up_to();
            }
            Err(_) => return Err(WsError::InvalidUtf8),
        }
        Ok(())
    }
}

impl<R> MessageReader<R> {
    /// `already_read`: bytes that arrived with the upgrade request.
    pub fn new(io: R, already_read: Bytes, max_message_bytes: usize) -> Self {
        Self {
            io,
            // Copied, not adopted: the bytes are a slice of hyper's read
            // buffer (8 KiB or more), which the session would otherwise
            // keep for its whole life (BENCHMARKS.md, idle memory).
            buffer: BytesMut::from(&already_read[..]),
            max_message_bytes,
            deflate: false,
            wire: None,
            fragments: None,
            done: false,
        }
    }

    /// With permessage-deflate negotiated: compressed messages are
    /// inflated, within the same size limit (on the inflated size).
    pub fn with_deflate(mut self, on: bool) -> Self {
        self.deflate = on;
        self
    }

    /// Counts every byte read (and those that came with the upgrade).
    pub fn counting(mut self, wire: std::sync::Arc<super::Wire>) -> Self {
        let early = self.buffer.len() as u64;
        wire.read
            .fetch_add(early, std::sync::atomic::Ordering::Relaxed);
        self.wire = Some(wire);
        self
    }

    /// Notes what the data message about to be returned took on the wire.
    fn on_the_wire(&self, payload_bytes: usize) {
        if let Some(wire) = &self.wire {
            wire.last_read
                .store(payload_bytes as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The most a frame may carry on the wire: the message limit, or with
    /// compression a little more (incompressible data grows by about 5
    /// bytes per 16 KiB block); the inflated size is checked on its own.
    fn wire_limit(&self) -> usize {
        match self.deflate {
            true => self.max_message_bytes + self.max_message_bytes / 1024 + 1024,
            false => self.max_message_bytes,
        }
    }

    /// The next message whose frames are all in the buffer.
    fn next_message(&mut self) -> Result<Option<Message>, WsError> {
        loop {
            let Some(header) = parse_header(&self.buffer, self.wire_limit(), self.deflate)? else {
                return Ok(None);
            };
            let compressed = match (&self.fragments, header.opcode) {
                (Some(fragments), OpCode::Continuation) => fragments.compressed,
                _ => header.compressed,
            };
            let limit = match compressed {
                true => self.wire_limit(),
                false => self.max_message_bytes,
            };
            let so_far = match (&self.fragments, header.opcode) {
                (Some(fragments), OpCode::Continuation) => fragments.data.len(),
                _ => 0,
            };
            // Refused before its payload is read.
            let size = so_far.saturating_add(header.len);
            if !header.opcode.is_control() && size > limit {
                return Err(WsError::MessageTooBig { size, limit });
            }
            let frame_len = header.header_len + header.len;
            if self.buffer.len() < frame_len {
                self.buffer.reserve(frame_len - self.buffer.len());
                return Ok(None);
            }
            let mut payload = self.buffer.split_to(frame_len);
            payload.advance(header.header_len);
            unmask(&mut payload, header.mask);
            let text = match header.opcode {
                OpCode::Ping => return Ok(Some(Message::Ping(payload.freeze()))),
                OpCode::Pong => return Ok(Some(Message::Pong(payload.freeze()))),
                OpCode::Close => {
                    return parse_close(payload.freeze()).map(|c| Some(Message::Close(c)));
                }
                OpCode::Text => true,
                OpCode::Binary => false,
                OpCode::Continuation => {
                    let Some(fragments) = &mut self.fragments else {
                        return Err(WsError::Protocol(
                            "continuation frame with no message to continue",
                        ));
                    };
                    fragments.data.extend_from_slice(&payload);
                    fragments.check_utf8(header.fin)?;
                    if !header.fin {
                        continue;
                    }
                    let whole = self.fragments.take().expect("matched above");
                    self.on_the_wire(whole.data.len());
                    return whole.into_message(self.max_message_bytes).map(Some);
                }
            };
            if self.fragments.is_some() {
                return Err(WsError::Protocol("new message before the last one ended"));
            }
            if header.fin {
                self.on_the_wire(payload.len());
            }
            if header.fin && header.compressed {
                let inflated = deflate::inflate(&payload, self.max_message_bytes)?;
                return Ok(Some(whole(text, inflated)?));
            }
            if header.fin {
                return Ok(Some(whole(text, payload.freeze())?));
            }
            let mut fragments = Fragments {
                text,
                compressed: header.compressed,
                data: payload,
                checked: 0,
            };
            fragments.check_utf8(false)?;
            self.fragments = Some(fragments);
        }
    }
}

/// A whole message's payload, as a message.
fn whole(text: bool, payload: Bytes) -> Result<Message, WsError> {
    if !text {
        return Ok(Message::Binary(payload));
    }
    match std::str::from_utf8(&payload) {
        Ok(_) => Ok(Message::Text(Utf8Bytes::from_checked(payload))),
        Err(_) => Err(WsError::InvalidUtf8),
    }
}

impl<R: Readable> Stream for MessageReader<R> {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Ok(Some(message)) => {
                    this.done = matches!(message, Message::Close(_));
                    if this.buffer.is_empty() && this.buffer.capacity() > 4 * WS_READ_BUFFER_BYTES {
                        // A large message passed: an idle session keeps a
                        // small buffer, not the largest it has seen.
                        this.buffer = BytesMut::new();
                    }
                    return Poll::Ready(Some(Ok(message)));
                }
                Ok(None) => {}
                Err(error) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            if this.buffer.capacity() == 0 {
                // No buffer until there is something to read.
                if let Err(error) = ready!(this.io.poll_readable(cx)) {
                    this.done = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
            if this.buffer.capacity() == this.buffer.len() {
                this.buffer.reserve(WS_READ_BUFFER_BYTES);
            }
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buffer);
            let Poll::Ready(read) = read else {
                if this.buffer.is_empty() && this.fragments.is_none() {
                    // Waiting between messages, maybe for a long time: an
                    // idle session holds no read buffer.
                    this.buffer = BytesMut::new();
                }
                return Poll::Pending;
            };
            match read {
                Ok(0) => {
                    this.done = true;
                    // Between frames, the connection just ended: the
                    // session says so (1006). In a frame, that is an error.
                    let cut = !this.buffer.is_empty() || this.fragments.is_some();
                    return Poll::Ready(cut.then_some(Err(WsError::Truncated)));
                }
                Ok(n) => {
                    if let Some(wire) = &this.wire {
                        wire.read
                            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(error) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::tests::client_frame;
    use super::*;
    use futures_util::StreamExt;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// Reads what a client sent as `frames`, written in pieces of `chunk`
    /// bytes (so every frame boundary and split header is met).
    async fn read_all(
        frames: &[Vec<u8>],
        chunk: usize,
        limit: usize,
    ) -> Vec<Result<Message, String>> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let bytes: Vec<u8> = frames.concat();
        let writer = tokio::spawn(async move {
            for piece in bytes.chunks(chunk.max(1)) {
                // The reader stops reading after a Close frame.
                if client.write_all(piece).await.is_err() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
        let reader = MessageReader::new(server, Bytes::new(), limit);
        let out: Vec<_> = reader.map(|r| r.map_err(|e| e.to_string())).collect().await;
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn messages_come_out_whole_however_the_bytes_arrive() {
        let frames = vec![
            client_frame(0x81, b"hello", MASK),
            client_frame(0x82, &[0, 1, 2, 255], MASK),
            // "héllo" in three fragments, cutting "é" in two, a ping between.
            client_frame(0x01, b"h\xc3", MASK),
            client_frame(0x89, b"beat", MASK),
            client_frame(0x00, b"\xa9l", MASK),
            client_frame(0x80, b"lo", MASK),
            client_frame(0x8a, b"", MASK),
            client_frame(0x82, &vec![9; 70_000], MASK),
            client_frame(0x88, b"\x03\xe8done", MASK),
            // Nothing after a Close is read.
            client_frame(0x81, b"late", MASK),
        ];
        for chunk in [1, 3, 7, 1000, 1 << 20] {
            let got = read_all(&frames, chunk, 1 << 20).await;
            let expected = vec![
                Ok(Message::Text("hello".into())),
                Ok(Message::Binary(Bytes::from_static(&[0, 1, 2, 255]))),
                Ok(Message::Ping(Bytes::from_static(b"beat"))),
                Ok(Message::Text("héllo".into())),
                Ok(Message::Pong(Bytes::new())),
                Ok(Message::Binary(vec![9; 70_000].into())),
                Ok(Message::Close(Some(super::super::CloseFrame {
                    code: 1000,
                    reason: "done".into(),
                }))),
            ];
            assert_eq!(got, expected, "chunk {chunk}");
        }
    }

    #[tokio::test]
    async fn protocol_errors_end_the_stream_with_their_reason() {
        let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
            (
                vec![client_frame(0x80, b"x", MASK)],
                "continuation frame with no message",
            ),
            (
                vec![
                    client_frame(0x01, b"a", MASK),
                    client_frame(0x81, b"b", MASK),
                ],
                "new message before the last one ended",
            ),
            (
                vec![client_frame(0x81, b"\xce\xba\xff", MASK)],
                "invalid utf-8",
            ),
            // Fails at the fragment with the bad byte, before the message ends.
            (
                vec![
                    client_frame(0x01, b"ok\xff", MASK),
                    client_frame(0x80, b"x", MASK),
                ],
                "invalid utf-8",
            ),
            (
                vec![
                    client_frame(0x01, b"\xc3", MASK),
                    client_frame(0x80, b"", MASK),
                ],
                "invalid utf-8",
            ),
            (
                vec![client_frame(0x82, &[0; 101], MASK)],
                "101 bytes is over the limit of 100",
            ),
            (
                vec![
                    client_frame(0x02, &[0; 60], MASK),
                    client_frame(0x80, &[0; 60], MASK),
                ],
                "120 bytes is over the limit of 100",
            ),
            (
                vec![client_frame(0x88, b"\x03\xed", MASK)],
                "invalid close code",
            ),
            (
                vec![client_frame(0x81, b"hello", MASK)[..5].to_vec()],
                "in the middle of a frame",
            ),
        ];
        for (frames, why) in cases {
            let got = read_all(&frames, 1 << 20, 100).await;
            let last = got.last().cloned();
            assert!(
                matches!(&last, Some(Err(e)) if e.contains(why)),
                "{why}: {got:?}"
            );
        }
    }

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    /// A frame as a client might send it, well-formed or not: any first
    /// byte (FIN, reserved bits, opcode), any payload.
    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![
                // Mostly the opcodes a session sees, with and without FIN.
                prop::sample::select(vec![0x81u8, 0x82, 0x01, 0x02, 0x00, 0x80, 0x89, 0x8a, 0x88]),
                any::<u8>(),
            ],
            prop::collection::vec(any::<u8>(), 0..200),
            any::<[u8; 4]>(),
        )
            .prop_map(|(first, payload, mask)| client_frame(first, &payload, mask))
    }

    proptest::proptest! {
        /// However the bytes are cut, the same messages and the same error
        /// come out, and nothing panics: the parser keeps no state that
        /// depends on where a read ended.
        #[test]
        fn the_result_does_not_depend_on_how_the_bytes_arrive(
            frames in prop::collection::vec(any_frame(), 0..8),
            chunk in 1usize..64,
            limit in 50usize..300,
        ) {
            let whole = block_on(read_all(&frames, 1 << 20, limit));
            let pieces = block_on(read_all(&frames, chunk, limit));
            proptest::prop_assert_eq!(whole, pieces);
        }

        /// Arbitrary bytes end in messages and at most one error, never a
        /// panic or a hang.
        #[test]
        fn arbitrary_bytes_end_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let out = block_on(read_all(&[bytes], 7, 100));
            let errors = out.iter().filter(|r| r.is_err()).count();
            proptest::prop_assert!(errors <= 1);
            if errors == 1 {
                proptest::prop_assert!(out.last().unwrap().is_err());
            }
        }

        /// Well-formed single-frame messages come out as they went in.
        #[test]
        fn well_formed_messages_come_out_as_sent(
            messages in prop::collection::vec(
                prop_oneof![
                    ".{0,40}".prop_map(|t: String| (true, t.into_bytes())),
                    prop::collection::vec(any::<u8>(), 0..100).prop_map(|b| (false, b)),
                ],
                0..10,
            ),
        ) {
            let frames: Vec<Vec<u8>> = messages
                .iter()
                .map(|(text, payload)| client_frame(if *text { 0x81 } else { 0x82 }, payload, MASK))
                .collect();
            let out = block_on(read_all(&frames, 5, 1000));
            let expected: Vec<Result<Message, String>> = messages
                .into_iter()
                .map(|(text, payload)| {
                    Ok(if text {
                        Message::Text(String::from_utf8(payload).unwrap().into())
                    } else {
                        Message::Binary(payload.into())
                    })
                })
                .collect();
            proptest::prop_assert_eq!(out, expected);
        }
    }

    /// Reads `frames` from a client that negotiated permessage-deflate.
    async fn read_deflated(frames: &[Vec<u8>], limit: usize) -> Vec<Result<Message, String>> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let bytes: Vec<u8> = frames.concat();
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&bytes).await;
        });
        let reader = MessageReader::new(server, Bytes::new(), limit).with_deflate(true);
        let out: Vec<_> = reader.map(|r| r.map_err(|e| e.to_string())).collect().await;
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn compressed_messages_are_inflated_within_the_limit() {
        let text = "compress me, ".repeat(40);
        let wire = deflate::deflate(text.as_bytes()).unwrap();
        let (first, rest) = wire.split_at(wire.len() / 2);
        let frames = vec![
            client_frame(0xc1, &wire, MASK),
            // Fragmented: RSV1 on the first frame only, a ping between.
            client_frame(0x41, first, MASK),
            client_frame(0x89, b"beat", MASK),
            client_frame(0x80, rest, MASK),
            // Not every message need be compressed.
            client_frame(0x81, b"plain", MASK),
        ];
        let got = read_deflated(&frames, 1000).await;
        assert_eq!(
            got,
            vec![
                Ok(Message::Text(text.as_str().into())),
                Ok(Message::Ping(Bytes::from_static(b"beat"))),
                Ok(Message::Text(text.as_str().into())),
                Ok(Message::Text("plain".into())),
            ]
        );
        // The limit is on the inflated size: 520 bytes of text in a few
        // dozen on the wire is still over a 500-byte limit.
        let over = read_deflated(&[client_frame(0xc1, &wire, MASK)], 500).await;
        assert!(
            matches!(&over[..], [Err(e)] if e.contains("over the limit of 500")),
            "{over:?}"
        );
        // Inflated text is checked as UTF-8.
        let bad = deflate::deflate(&b"\xff\xfe".repeat(200)).unwrap();
        let got = read_deflated(&[client_frame(0xc1, &bad, MASK)], 1000).await;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("invalid utf-8")),
            "{got:?}"
        );
        // RSV1 on a continuation, or without the extension: 1002.
        let got = read_deflated(
            &[
                client_frame(0x01, b"a", MASK),
                client_frame(0xc0, b"b", MASK),
            ],
            1000,
        )
        .await;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("RSV1")),
            "{got:?}"
        );
        let got = read_all(&[client_frame(0xc1, &wire, MASK)], 1 << 20, 1000).await;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("reserved bits")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_that_ends_between_frames_just_ends() {
        let got = read_all(&[client_frame(0x81, b"hi", MASK)], 1 << 20, 100).await;
        assert_eq!(got, vec![Ok(Message::Text("hi".into()))]);
    }

    #[tokio::test]
    async fn bytes_read_with_the_upgrade_request_come_first() {
        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        let first = Bytes::from(client_frame(0x81, b"early", MASK));
        let got: Vec<_> = MessageReader::new(server, first, 100)
            .map(|r| r.unwrap())
            .collect()
            .await;
        assert_eq!(got, vec![Message::Text("early".into())]);
    }
}
