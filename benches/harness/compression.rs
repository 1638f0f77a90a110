//! `WSTRACE_BENCH_ONLY=compression`: what permessage-deflate costs and
//! saves, side by side in one run: wstrace with `--compression on` and with
//! `--compression off`, each with clients that offer the extension (as
//! every browser does). Per server: idle memory per session, and for echoes
//! of a chat-sized JSON message the server's CPU per message and the bytes
//! the client read per message.

use crate::*;

/// The echoed message: a chat line of about 1 KiB, as JSON repeats itself.
fn chat_message() -> String {
    let content: String = (0..12)
        .map(|i| format!("user{i} says: see you at the standup in room {i}, bring the notes. "))
        .collect();
    serde_json::json!({"type": "echo", "content": content}).to_string()
}

/// One session that offers permessage-deflate: the stream, and what came
/// after the response head (the welcome frame).
async fn deflate_session(server: &Server) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let (_, rest) = raw_ws::upgrade_with(&mut stream, &server.path, offer, "wstrace").await;
    (stream, rest)
}

/// Reads one whole server frame's length off the stream: bytes on the wire.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    use tokio::io::AsyncReadExt;
    loop {
        if buf.len() >= 2 {
            let (len, header) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                126 | 127 => (usize::MAX, 0),
                short => (short as usize, 2),
            };
            if header > 0 && buf.len() >= header + len {
                buf.drain(..header + len);
                return header + len;
            }
        }
        let mut chunk = [0u8; 16384];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// (server CPU µs per echo, wire bytes per reply) over `n` echoes.
async fn echoes(server: &Server, n: usize) -> (f64, f64) {
    use tokio::io::AsyncWriteExt;
    let (mut stream, mut buf) = deflate_session(server).await;
    read_frame(&mut stream, &mut buf).await; // the welcome
    let frame = raw_ws::masked_frame(true, 0x1, chat_message().as_bytes(), [7, 7, 7, 7]);
    let cpu = server.cpu();
    let mut wire = 0;
    for _ in 0..n {
        stream.write_all(&frame).await.unwrap();
        wire += read_frame(&mut stream, &mut buf).await;
    }
    let cpu = (server.cpu() - cpu).as_secs_f64() * 1e6 / n as f64;
    (cpu, wire as f64 / n as f64)
}

/// Idle KiB per session over `count` sessions that negotiated compression.
async fn idle_kib(server: &Server, count: usize) -> f64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_kib();
    let mut sessions = Vec::new();
    for _ in 0..count {
        let (mut stream, mut buf) = deflate_session(server).await;
        read_frame(&mut stream, &mut buf).await;
        sessions.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kib = server.rss_kib().saturating_sub(before) as f64 / count as f64;
    drop(sessions);
    kib
}

pub(crate) async fn compression(plan: &Plan) -> String {
    let (idle, n) = match plan.rounds {
        1 => (200, 200),
        _ => (5_000, 20_000),
    };
    let mut rows = Vec::new();
    for setting in ["off", "on"] {
        let server = Server::wstrace(Kind::WstraceFull, |command| {
            command.args(["--compression", setting, "--max-sessions-per-ip", "0"]);
        });
        let kib = idle_kib(&server, idle).await;
        let (cpu, wire) = echoes(&server, n).await;
        rows.push((setting, kib, cpu, wire));
    }
    let message = chat_message().len();
    let mut out = format!(
        "| --compression | idle KiB per session ({idle} sessions) | server CPU µs per echo | bytes on the wire per reply |\n|---|---|---|---|\n"
    );
    for (setting, kib, cpu, wire) in &rows {
        out.push_str(&format!(
            "| {setting} | {kib:.1} | {cpu:.1} | {wire:.0} |\n"
        ));
    }
    out.push_str(&format!(
        "\n{n} echoes of one {message}-byte chat message, one connection, request by request; clients offer permessage-deflate and send uncompressed\n"
    ));
    out
}
