//! The server side of RFC 6455: the opening handshake's answer, and a
//! connection's two halves as a `Stream` of messages (the reader) and a
//! `Sink` of messages (the writer).
//!
//! Why not tungstenite under axum's `WebSocketUpgrade`, as before: per
//! message and per session it was the larger part of what a session cost
//! (BENCHMARKS.md, issue 15, sixth round). Its stream is one object, so two
//! tasks share it through a lock taken on every poll; it answers pings and
//! Close frames from inside whichever task happens to hold that lock; and it
//! copies each frame through its own buffers. Here:
//!
//! - the two halves are independent ([`MessageReader`], [`MessageWriter`]),
//!   one per task, with no lock between them;
//! - the reader yields every frame the session must act on (pings and the
//!   peer's Close included), and the session answers them through its
//!   writer, in order with everything else it sends;
//! - a message's payload is cut out of the read buffer, unmasked in place,
//!   without a copy; the writer encodes a burst of frames into one buffer
//!   and writes it with one syscall per flush.
//!
//! Every way a peer can break the protocol is a typed [`WsError`] with its
//! close code (1002, 1007, 1009). Conformance is checked by the Autobahn
//! TestSuite (`scripts/autobahn.sh`), which CI runs.

pub mod deflate;
mod frame;
mod handshake;
mod reader;
mod text;
mod writer;

pub use handshake::{HandshakeError, check_request};
pub use reader::MessageReader;
pub use text::Utf8Bytes;
pub use writer::MessageWriter;

use bytes::Bytes;
use std::task::{Context, Poll};
use tokio::io::AsyncRead;

/// What a [`MessageReader`] reads from: bytes, and, where the transport can
/// tell, whether any are waiting, so that a reader with nothing to read
/// holds no buffer (an idle session's largest allocation otherwise).
pub trait Readable: AsyncRead + Unpin {
    /// Ready when input is waiting (or the connection ended). The default
    /// says so at once, and the reader keeps a buffer while it waits.
    fn poll_readable(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
impl Readable for tokio::io::DuplexStream {}

/// One WebSocket message, or control frame, as the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Utf8Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// A Close frame; `None` when it carried no status code.
    Close(Option<CloseFrame>),
    /// A data message the server compressed (permessage-deflate), sent as
    /// one frame with RSV1: compressed once for every receiver of a
    /// delivery. Never read.
    Deflated(Deflated),
}

/// One connection's wire: the compression agreed at the upgrade, and the
/// bytes it read and wrote as WebSocket frames (headers included; inside
/// TLS), counted by its reader and writer. Shared by them and the session,
/// behind one pointer (an idle session's futures stay small).
#[derive(Debug, Default)]
pub struct Wire {
    /// permessage-deflate, if negotiated: what the writer compresses.
    pub compression: Option<deflate::Compression>,
    pub read: std::sync::atomic::AtomicU64,
    pub written: std::sync::atomic::AtomicU64,
    /// The payload bytes the last data message read took on the wire
    /// (compressed, if it was), for the flight recorder.
    pub last_read: std::sync::atomic::AtomicU64,
}

/// A data message's payload as permessage-deflate sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deflated {
    pub text: bool,
    /// The deflate data, as on the wire.
    pub wire: Bytes,
    /// The message's own size, before compression.
    pub size: usize,
}

/// A Close frame's status code and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: Utf8Bytes,
}

/// Why reading or writing a WebSocket connection failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// A message (or a frame of it) over the size limit; `size` is what the
    /// peer announced, counted before a byte of the payload is read.
    #[error("message of {size} bytes is over the limit of {limit} bytes")]
    MessageTooBig { size: usize, limit: usize },
    /// A text message or a Close reason that is not UTF-8.
    #[error("invalid utf-8 in a text message or close reason")]
    InvalidUtf8,
    /// The peer broke RFC 6455.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The connection ended in the middle of a frame.
    #[error("connection lost in the middle of a frame")]
    Truncated,
    /// A write after our Close frame: nothing may follow it.
    #[error("the connection is closing; nothing may follow a close frame")]
    AlreadyClosed,
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

impl WsError {
    /// Whether the connection is gone, so that no Close frame can be sent.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            WsError::Truncated | WsError::AlreadyClosed | WsError::Io(_)
        )
    }
}

/// Close codes a peer may send (RFC 6455 7.4, the IANA registry): the
/// defined ones and the ranges for libraries and applications. 1005, 1006
/// and 1015 only describe a close; they are never sent.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}
