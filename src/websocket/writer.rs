//! The writing half: messages in, frames out, a burst per syscall.

use bytes::{Buf, BytesMut};
use futures_util::Sink;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;

use super::frame::{OpCode, encode, encode_close, encode_compressed};
use super::{Message, WsError};
use crate::limits::WS_WRITE_BUFFER_BYTES;

/// A connection's writing half as a `Sink` of messages. `feed` encodes a
/// frame into the buffer (written out once it passes
/// [`WS_WRITE_BUFFER_BYTES`]); `flush` writes the rest. After a Close frame
/// nothing more is accepted.
pub struct MessageWriter<W> {
    io: W,
    buffer: BytesMut,
    closed: bool,
    /// Where the bytes written are counted, if anywhere.
    wire: Option<std::sync::Arc<super::Wire>>,
}

impl<W: AsyncWrite + Unpin> MessageWriter<W> {
    pub fn new(io: W) -> Self {
        Self {
            io,
            buffer: BytesMut::new(),
            closed: false,
            wire: None,
        }
    }

    /// Counts every byte written.
    pub fn counting(mut self, wire: std::sync::Arc<super::Wire>) -> Self {
        self.wire = Some(wire);
        self
    }

    fn poll_write_buffer(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        while !self.buffer.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buffer))?;
            if written == 0 {
                return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
            }
            self.buffer.advance(written);
            if let Some(wire) = &self.wire {
                wire.written
                    .fetch_add(written as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if self.buffer.capacity() > WS_WRITE_BUFFER_BYTES {
            // After a large burst: an idle session keeps a small buffer.
            self.buffer = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<Message> for MessageWriter<W> {
    type Error = WsError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        if this.buffer.len() >= WS_WRITE_BUFFER_BYTES {
            ready!(this.poll_write_buffer(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), WsError> {
        let this = self.get_mut();
        if this.closed {
            return Err(WsError::AlreadyClosed);
        }
        let out = &mut this.buffer;
        match &message {
            Message::Text(text) => encode(out, OpCode::Text, text.as_bytes()),
            Message::Binary(bytes) => encode(out, OpCode::Binary, bytes),
            Message::Ping(bytes) => encode(out, OpCode::Ping, bytes),
            Message::Pong(bytes) => encode(out, OpCode::Pong, bytes),
            Message::Deflated(deflated) => {
                let opcode = if deflated.text {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                encode_compressed(out, opcode, &deflated.wire);
            }
            Message::Close(close) => {
                encode_close(out, close.as_ref());
                this.closed = true;
            }
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        let this = self.get_mut();
        ready!(this.poll_write_buffer(cx))?;
        Poll::Ready(ready!(Pin::new(&mut this.io).poll_flush(cx)).map_err(WsError::from))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Poll::Ready(ready!(Pin::new(&mut self.io).poll_shutdown(cx)).map_err(WsError::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::CloseFrame;
    use bytes::Bytes;
    use futures_util::SinkExt;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_burst_goes_out_in_order_and_nothing_follows_a_close() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut writer = MessageWriter::new(server);
        writer.feed(Message::Text("hi".into())).await.unwrap();
        writer
            .feed(Message::Binary(Bytes::from(vec![7; 300])))
            .await
            .unwrap();
        writer
            .feed(Message::Pong(Bytes::from_static(b"p")))
            .await
            .unwrap();
        writer
            .send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: "bye".into(),
            })))
            .await
            .unwrap();
        assert!(matches!(
            writer.send(Message::Text("late".into())).await,
            Err(WsError::AlreadyClosed)
        ));
        drop(writer);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        let mut expected = vec![0x81, 2, b'h', b'i', 0x82, 126, 1, 44];
        expected.extend([7; 300]);
        expected.extend([0x8a, 1, b'p', 0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']);
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_large_burst_is_written_out_before_the_buffer_grows_past_its_bound() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut writer = MessageWriter::new(server);
        for _ in 0..10 {
            writer
                .feed(Message::Binary(Bytes::from(vec![1; 1000])))
                .await
                .unwrap();
            assert!(writer.buffer.len() < WS_WRITE_BUFFER_BYTES + 1004);
        }
        writer.flush().await.unwrap();
        drop(writer);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 10 * 1004);
    }
}
