//! The load: connections from several loopback addresses, the raw
//! WebSocket client, and one function per measurement (saturation,
//! latency, upgrades, idle memory, log volume, metrics).

use crate::*;

/// Source addresses to spread connections over, past one address's
/// ephemeral port range.
pub(crate) fn source_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 16) as u8))
}

pub(crate) async fn connect(server: &Server, i: usize) -> Ws {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source_ip(i), 0)).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = client_async(server.url(), stream).await.unwrap();
    if server.kind.is_wstrace() {
        // The welcome frame.
        ws.next().await.unwrap().unwrap();
    }
    ws
}

/// A WebSocket client reduced to what a load generator needs: frames are
/// encoded (and masked) once, written in batches with one syscall, and
/// replies are counted by parsing frame headers only. The tungstenite
/// client costs more CPU per message than the servers under test, which
/// would make the client the bottleneck.
pub(crate) struct RawWs;

/// The read side: counts complete data frames.
pub(crate) struct RawReader {
    pub(crate) reader: tokio::net::tcp::OwnedReadHalf,
    pub(crate) buf: Vec<u8>,
    pub(crate) scratch: Vec<u8>,
}

impl RawWs {
    pub(crate) async fn connect(
        server: &Server,
        i: usize,
    ) -> (RawReader, tokio::net::tcp::OwnedWriteHalf) {
        let (stream, leftover) = raw_upgrade(server, i).await;
        stream.set_nodelay(true).unwrap();
        let (reader, writer) = stream.into_split();
        let mut reader = RawReader {
            reader,
            buf: leftover,
            scratch: vec![0u8; 64 * 1024],
        };
        if server.kind.is_wstrace() {
            // The welcome frame.
            while reader.read_frames().await == 0 {}
        }
        (reader, writer)
    }
}

impl RawReader {
    /// Reads until at least one complete data frame is in; returns how many.
    /// Cancel-safe: a cancelled read consumes nothing.
    pub(crate) async fn read_frames(&mut self) -> usize {
        use tokio::io::AsyncReadExt;
        loop {
            let frames = self.parse();
            if frames > 0 {
                return frames;
            }
            let n = self.reader.read(&mut self.scratch).await.unwrap();
            assert!(n > 0, "server closed the connection");
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
    }

    /// Counts complete frames in the buffer and drops them.
    pub(crate) fn parse(&mut self) -> usize {
        let mut frames = 0;
        let mut start = 0;
        loop {
            let b = &self.buf[start..];
            if b.len() < 2 {
                break;
            }
            let (len, header) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if b.len() < header + len {
                break;
            }
            if matches!(b[0] & 0x0f, 1 | 2) {
                frames += 1;
            }
            start += header + len;
        }
        self.buf.drain(..start);
        frames
    }
}

/// One masked text frame, encoded once.
pub(crate) fn masked_frame(payload: &[u8]) -> Vec<u8> {
    raw_ws::masked_frame(true, 0x1, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// The message every server gets: wstrace speaks its protocol, the plain
/// servers echo anything, so the same bytes go to all of them.
pub(crate) fn echo_payload(content_bytes: usize) -> String {
    serde_json::json!({"type": "echo", "content": "x".repeat(content_bytes)}).to_string()
}

pub(crate) struct Saturation {
    pub(crate) messages: u64,
    pub(crate) elapsed: Duration,
    pub(crate) cpu: Duration,
}

/// Closed loop with a window of requests in flight per connection.
pub(crate) async fn saturate(server: &Server, plan: &Plan) -> Saturation {
    saturate_with(server, plan, plan.window, plan.saturation).await
}

pub(crate) async fn saturate_with(
    server: &Server,
    plan: &Plan,
    window: usize,
    duration: Duration,
) -> Saturation {
    use tokio::io::AsyncWriteExt;
    let mut sockets = Vec::new();
    for i in 0..plan.connections {
        sockets.push(RawWs::connect(server, i).await);
    }
    let encoded = Arc::new(masked_frame(echo_payload(plan.payload).as_bytes()));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let cpu_before = server.cpu();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (mut reader, mut writer) in sockets {
        let (encoded, stop, count) = (encoded.clone(), stop.clone(), count.clone());
        tasks.push(tokio::spawn(async move {
            let mut batch = Vec::with_capacity(encoded.len() * window);
            for _ in 0..window {
                batch.extend_from_slice(&encoded);
            }
            writer.write_all(&batch).await.unwrap();
            let mut in_flight = window;
            while in_flight > 0 {
                let replies = reader.read_frames().await;
                in_flight -= replies;
                count.fetch_add(replies as u64, Ordering::Relaxed);
                if !stop.load(Ordering::Relaxed) {
                    // One write for all the replies that came in: keep the
                    // window full.
                    batch.clear();
                    for _ in 0..replies {
                        batch.extend_from_slice(&encoded);
                    }
                    writer.write_all(&batch).await.unwrap();
                    in_flight += replies;
                }
            }
        }));
    }
    tokio::time::sleep(duration).await;
    let messages = count.load(Ordering::Relaxed);
    let elapsed = start.elapsed();
    let cpu = server.cpu() - cpu_before;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    Saturation {
        messages,
        elapsed,
        cpu,
    }
}

/// Open loop at a fixed rate: each connection sends on a schedule, and the
/// latency of a reply is measured from when its request was due, so a slow
/// server cannot hide its delay by slowing the client down.
pub(crate) async fn latency(server: &Server, plan: &Plan, rate: f64) -> Vec<u64> {
    use tokio::io::AsyncWriteExt;
    let connections = plan.latency_connections;
    let interval = Duration::from_secs_f64(connections as f64 / rate.max(1.0));
    let encoded = Arc::new(masked_frame(echo_payload(plan.payload).as_bytes()));
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (mut reader, mut writer) = RawWs::connect(server, i).await;
        let (encoded, duration) = (encoded.clone(), plan.latency);
        let due = Arc::new(std::sync::Mutex::new(VecDeque::<Instant>::new()));
        let done = Arc::new(AtomicBool::new(false));
        let sender = {
            let (due, done) = (due.clone(), done.clone());
            tokio::spawn(async move {
                let first =
                    tokio::time::Instant::now() + interval.mul_f64(i as f64 / connections as f64);
                let mut ticks = tokio::time::interval_at(first, interval);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let end = Instant::now() + duration;
                loop {
                    let tick = ticks.tick().await.into_std();
                    if tick >= end {
                        break;
                    }
                    due.lock().unwrap().push_back(tick);
                    writer.write_all(&encoded).await.unwrap();
                }
                done.store(true, Ordering::Release);
                writer
            })
        };
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let give_up = Instant::now() + duration + Duration::from_secs(10);
            while Instant::now() < give_up {
                if done.load(Ordering::Acquire) && due.lock().unwrap().is_empty() {
                    break;
                }
                let Ok(replies) =
                    tokio::time::timeout(Duration::from_millis(50), reader.read_frames()).await
                else {
                    continue;
                };
                let now = Instant::now();
                let mut due = due.lock().unwrap();
                for _ in 0..replies {
                    let sent = due.pop_front().expect("a reply to a request never sent");
                    samples.push(now.duration_since(sent).as_micros() as u64);
                }
            }
            drop(sender.await.unwrap());
            samples
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    all
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i]
}

/// Sessions opened (upgrade + welcome) and closed, 16 at a time.
pub(crate) async fn upgrades(server: &Server, plan: &Plan) -> (f64, Duration) {
    let cpu_before = server.cpu();
    let start = Instant::now();
    let per_worker = plan.upgrades / 16;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (url, addr, kind) = (server.url(), server.addr, server.kind);
        tasks.push(tokio::spawn(async move {
            for i in 0..per_worker {
                let socket = TcpSocket::new_v4().unwrap();
                socket
                    .bind(SocketAddr::new(source_ip(w * per_worker + i), 0))
                    .unwrap();
                let stream = socket.connect(addr).await.unwrap();
                let (mut ws, _) = client_async(url.as_str(), stream).await.unwrap();
                if kind.is_wstrace() {
                    ws.next().await.unwrap().unwrap();
                }
                ws.close(None).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let n = (per_worker * 16) as f64;
    let elapsed = start.elapsed();
    (
        n / elapsed.as_secs_f64(),
        (server.cpu() - cpu_before).div_f64(n),
    )
}

/// Resident memory per idle session: open sessions up to each checkpoint,
/// let them settle, and compare the server's RSS with what it was before
/// the first. Returns KiB per session at each checkpoint.
pub(crate) async fn idle_memory(server: &Server, plan: &Plan) -> Vec<f64> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_kib();
    let mut sockets = Vec::new();
    let mut per_session = Vec::new();
    for &checkpoint in &plan.idle_checkpoints {
        while sockets.len() < checkpoint {
            sockets.push(open_idle(server, sockets.len()).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = server.rss_kib();
        per_session.push(after.saturating_sub(before) as f64 / checkpoint as f64);
    }
    close_idle(sockets).await;
    per_session
}

/// The client side of an upgrade over a bare socket: the stream, and what
/// came after the response head.
pub(crate) async fn raw_upgrade(server: &Server, i: usize) -> (TcpStream, Vec<u8>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source_ip(i), 0)).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let buf = raw_ws::upgrade(&mut stream, &server.path, server.kind.name()).await;
    (stream, buf)
}

/// An idle session as cheap for the client as it can be: a raw socket that
/// did the handshake and read the welcome frame (wstrace), nothing more.
pub(crate) async fn open_idle(server: &Server, i: usize) -> TcpStream {
    use tokio::io::AsyncReadExt;
    let (mut stream, mut buf) = raw_upgrade(server, i).await;
    let mut chunk = [0u8; 512];
    if server.kind.is_wstrace() {
        // The welcome frame: a short unmasked text frame.
        loop {
            let frame = &buf[..];
            let complete = match frame.get(1).map(|b| b & 0x7f) {
                Some(len @ 0..=125) => frame.len() >= 2 + len as usize,
                Some(126) if frame.len() >= 4 => {
                    frame.len() >= 4 + u16::from_be_bytes([frame[2], frame[3]]) as usize
                }
                _ => false,
            };
            if complete {
                break;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the welcome frame");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    stream
}

/// Closes idle sessions with a masked Close (1000) and waits for each
/// server to end the connection.
pub(crate) async fn close_idle(sockets: Vec<TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mask = [1u8, 2, 3, 4];
    let code = 1000u16.to_be_bytes();
    let close = [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        code[0] ^ mask[0],
        code[1] ^ mask[1],
    ];
    let mut tasks = Vec::new();
    let mut sockets = sockets;
    while !sockets.is_empty() {
        let batch: Vec<TcpStream> = sockets.drain(..sockets.len().min(500)).collect();
        tasks.push(tokio::spawn(async move {
            for mut stream in batch {
                if stream.write_all(&close).await.is_err() {
                    continue;
                }
                let mut sink = [0u8; 256];
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Ok(n) = stream.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Log bytes for a session that only opens and closes.
pub(crate) async fn lifecycle_log_bytes(server: &Server, plan: &Plan) -> f64 {
    let before = server.log_bytes();
    for i in 0..plan.lifecycle_sessions {
        let mut ws = connect(server, i).await;
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let closed = plan.lifecycle_sessions;
    // Lines are written by a background thread: wait until they are there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = server.log_bytes();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = server.log_bytes();
        if now == last {
            break;
        }
        last = now;
    }
    last.saturating_sub(before) as f64 / closed as f64
}

pub(crate) async fn scrape(server: &Server) -> std::collections::HashMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /metrics HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
                server.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}
