//! The client side of the WebSocket wire, by hand: the upgrade over a bare
//! socket and masked frames. For tests that need the socket itself (small
//! buffers, malformed frames) and for the benchmark harness, whose clients
//! must cost as little as they can. The harness and the unit tests of
//! `src/websocket` include this file with `#[path]`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends the upgrade request for `path` and reads the `101` response head.
/// Returns what came after the head (the start of the first frame, if any).
/// `what` names the server in a failure.
pub async fn upgrade(stream: &mut TcpStream, path: &str, what: &str) -> Vec<u8> {
    upgrade_with(stream, path, "", what).await.1
}

/// The same with `extra` request headers (each ending in CRLF); the
/// response head as well.
pub async fn upgrade_with(
    stream: &mut TcpStream,
    path: &str,
    extra: &str,
    what: &str,
) -> (String, Vec<u8>) {
    let addr = stream.peer_addr().unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "{what}: closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{what}: {}",
        String::from_utf8_lossy(&buf[..head_end])
    );
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    (head, buf)
}

/// One client frame: `opcode` with the FIN bit as given, `payload` masked
/// with `mask` (RFC 6455 §5.2).
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}
