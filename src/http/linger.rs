//! A lingering close for every accepted connection.
//!
//! When the server ends a connection while the peer is still sending (it
//! refused an oversize message with 1009, say), closing a socket with
//! unread input makes the kernel send RST, and the RST makes the peer's
//! kernel throw away what it had not yet handed to the application: the
//! Close frame that says why. So, as HTTP servers have long done: when the
//! connection is dropped while the peer's input is still arriving, shut
//! down our sending side (after everything written, including the Close
//! frame, the peer gets FIN) and read and discard the peer's input until it
//! closes too, for a bounded time and a bounded number of bytes. A
//! connection with no input waiting (a clean close) just closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::limits::{LINGER_MAX_BYTES, LINGER_TIMEOUT};

/// A TCP stream that lingers when dropped (see the module doc).
#[derive(Debug)]
pub struct LingeringStream {
    stream: Option<TcpStream>,
    /// While serving plain HTTP: a peer that takes no byte of a response
    /// for this long (it never reads) is cut. Sessions have their own
    /// write timeout (`session::writer`), so an upgrade ends this.
    write_stall: Option<WriteStall>,
}

#[derive(Debug)]
struct WriteStall {
    limit: std::time::Duration,
    /// Running while a write waits for the peer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LingeringStream {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream: Some(stream),
            write_stall: None,
        }
    }

    /// Cuts the connection when a write makes no progress for `limit`.
    pub fn with_write_stall(mut self, limit: std::time::Duration) -> Self {
        self.write_stall = Some(WriteStall { limit, timer: None });
        self
    }

    /// The connection became a session, which times its own writes.
    pub fn end_write_stall(&mut self) {
        self.write_stall = None;
    }

    /// A write that is `Pending` starts (or checks) the stall timer; one
    /// that made progress stops it.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let Some(stall) = &mut self.write_stall else {
            return poll;
        };
        if poll.is_ready() {
            stall.timer = None;
            return poll;
        }
        let limit = stall.limit;
        let timer = stall
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took nothing for --write-timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn stream(&mut self) -> &mut TcpStream {
        // Only `Drop` takes the stream out.
        self.stream.as_mut().expect("stream is present until drop")
    }

    fn shared(&self) -> &TcpStream {
        self.stream.as_ref().expect("stream is present until drop")
    }

    /// A reading and a writing half for two tasks, with no lock between
    /// them (a socket reads and writes through a shared reference). The
    /// connection closes, lingering if it must, when both are gone.
    pub fn into_halves(self) -> (ReadingHalf, WritingHalf) {
        let shared = Arc::new(self);
        (
            ReadingHalf::Plain(shared.clone()),
            WritingHalf::Plain(shared),
        )
    }
}

/// A connection over TLS (`--tls-cert`), the socket still lingering.
pub type TlsConnection = tokio_rustls::server::TlsStream<LingeringStream>;

/// The two halves of a TLS connection: TLS state is one object, so they
/// share it behind tokio's split lock (what a plain socket avoids).
pub fn tls_halves(connection: TlsConnection) -> (ReadingHalf, WritingHalf) {
    let (reading, writing) = tokio::io::split(connection);
    (ReadingHalf::Tls(reading), WritingHalf::Tls(writing))
}

/// See [`LingeringStream::into_halves`] and [`tls_halves`].
#[derive(Debug)]
pub enum ReadingHalf {
    Plain(Arc<LingeringStream>),
    Tls(tokio::io::ReadHalf<TlsConnection>),
}

/// See [`LingeringStream::into_halves`]. Shutting it down does nothing:
/// the connection closes when both halves are gone.
#[derive(Debug)]
pub enum WritingHalf {
    Plain(Arc<LingeringStream>),
    Tls(tokio::io::WriteHalf<TlsConnection>),
}

impl AsyncRead for ReadingHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = match self.get_mut() {
            ReadingHalf::Plain(stream) => stream.shared(),
            ReadingHalf::Tls(tls) => return Pin::new(tls).poll_read(cx, buf),
        };
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // Readiness can be stale: `WouldBlock` clears it, and the next
            // turn waits for the socket again.
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }
}

impl crate::websocket::Readable for ReadingHalf {
    /// Over TLS, decrypted input may wait inside the TLS state where the
    /// socket shows none: such a reader keeps its buffer while it waits.
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            ReadingHalf::Plain(stream) => stream.shared().poll_read_ready(cx),
            ReadingHalf::Tls(_) => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for WritingHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = match self.get_mut() {
            WritingHalf::Plain(stream) => stream.shared(),
            WritingHalf::Tls(tls) => return Pin::new(tls).poll_write(cx, data),
        };
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(data) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                written => return Poll::Ready(written),
            }
        }
    }

    /// A socket has nothing to flush; TLS has the records it holds.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WritingHalf::Plain(_) => Poll::Ready(Ok(())),
            WritingHalf::Tls(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(self.stream()).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(self.stream()).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_shutdown(cx)
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Most connections end cleanly: the peer has stopped sending, and
        // a plain close (FIN) loses nothing. Only a peer still sending
        // (input waiting right now) would meet a reset: linger for it.
        let mut probe = [0u8; 512];
        if !matches!(stream.try_read(&mut probe), Ok(n) if n > 0) {
            return;
        }
        // Outside a runtime (the process is exiting) the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream));
        }
    }
}

/// Answers a connection the server will not serve with `response`, then
/// closes it lingering, so the answer is not wiped out by a reset when the
/// peer's request arrives after it. Bounded by `LINGER_TIMEOUT`.
pub fn refuse(mut stream: TcpStream, response: Vec<u8>) {
    tokio::spawn(async move {
        let written = tokio::time::timeout(LINGER_TIMEOUT, stream.write_all(&response)).await;
        if matches!(written, Ok(Ok(()))) {
            linger(stream).await;
        }
    });
}

async fn linger(mut stream: TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut scratch = [0u8; 8 * 1024];
    let mut discarded = 0;
    let drain = async {
        while discarded < LINGER_MAX_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// The server writes its last words and drops the connection while the
    /// client's bytes sit unread in its receive buffer. A plain close
    /// would send RST and the client would lose the last words; a
    /// lingering one delivers them, then EOF.
    async fn last_words_reach_a_client_still_sending(linger: bool) -> std::io::Result<Vec<u8>> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(&[b'x'; 64 * 1024]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if linger {
            // As a session holds it: two halves, dropped one after the other.
            let (reading, mut writing) = LingeringStream::new(server).into_halves();
            writing.write_all(b"bye").await.unwrap();
            drop(writing);
            drop(reading);
        } else {
            let mut server = server;
            server.write_all(b"bye").await.unwrap();
            drop(server);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut received = Vec::new();
        client.read_to_end(&mut received).await?;
        Ok(received)
    }

    #[tokio::test]
    async fn a_lingering_close_delivers_the_last_words() {
        assert_eq!(
            last_words_reach_a_client_still_sending(true).await.unwrap(),
            b"bye"
        );
        // What it prevents: without it, the reset wipes them out.
        assert!(
            last_words_reach_a_client_still_sending(false)
                .await
                .is_err()
        );
    }
}
