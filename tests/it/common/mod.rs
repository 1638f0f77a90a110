//! Test harness: the real server in-process on 127.0.0.1:0, its real
//! telemetry stack writing real JSON files into a temporary directory, and
//! real WebSocket clients.
//!
//! Each test runs on a current-thread runtime, so the subscriber installed
//! with `set_default` sees every task the server spawns. Logs are silent
//! unless `TEST_LOG` is set (then they also go to stdout).

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Response;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wstrace::http::Server;
use wstrace::limits::Limits;
use wstrace::state::{ServerConfig, ServerState};
use wstrace::telemetry::{TelemetryConfig, TelemetryGuard, get_subscriber};

pub mod child;
pub mod hostile_collector;
pub mod raw_ws;
#[allow(unused_imports)]
pub use child::*;

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The checkout under test, read when the test runs (cargo sets it), not when
/// it was compiled: CI shares one target dir between clones, and a binary
/// built in a clone that is gone would otherwise read files that are gone.
pub fn repo_root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run under cargo test"))
}

pub struct TestServer {
    pub addr: SocketAddr,
    log_dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    telemetry: Option<TelemetryGuard>,
    pub state: std::sync::Arc<ServerState>,
    _subscriber: tracing::subscriber::DefaultGuard,
}

pub fn test_limits() -> Limits {
    Limits {
        close_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(5),
        ..Limits::default()
    }
}

/// No per-message sampling unless a test asks: line counts stay exact.
pub fn test_config() -> ServerConfig {
    ServerConfig {
        limits: test_limits(),
        message_sample_ratio: 0.0,
        ..ServerConfig::default()
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(test_limits()).await
    }

    pub async fn start_with(limits: Limits) -> Self {
        Self::start_with_config(ServerConfig {
            limits,
            ..test_config()
        })
        .await
    }

    pub async fn start_with_config(server_config: ServerConfig) -> Self {
        Self::start_rotating(server_config, wstrace::telemetry::LogRotation::Daily).await
    }

    pub async fn start_rotating(
        mut server_config: ServerConfig,
        log_rotation: wstrace::telemetry::LogRotation,
    ) -> Self {
        let log_dir = tempfile::tempdir().unwrap();
        let config = TelemetryConfig {
            service_name: "wstrace".into(),
            log_dir: Some(log_dir.path().to_path_buf()),
            log_file_prefix: "wstrace".into(),
            log_rotation,
            log_max_files: None,
            log_stdout: std::env::var_os("TEST_LOG").is_some(),
            log_buffer_bytes: wstrace::limits::DEFAULT_LOG_BUFFER_BYTES,
            filter: "info,wstrace=debug".into(),
            instance_id: server_config.instance_id.clone(),
            otlp: None,
        };
        let (subscriber, guard) = get_subscriber(&config).unwrap();
        let default = tracing::subscriber::set_default(subscriber);
        server_config.telemetry = Some(guard.counters());
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), server_config)
            .await
            .unwrap();
        let state = server.state();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            log_dir,
            stop: Some(stop),
            task: Some(task),
            telemetry: Some(guard),
            state,
            _subscriber: default,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    pub async fn connect(&self) -> (Client, Response<Option<Vec<u8>>>) {
        self.connect_with(&self.url("/ws"), &[]).await
    }

    /// A session with its welcome read: the client and its session id.
    pub async fn open_session(&self) -> (Client, String) {
        let (mut client, _) = self.connect().await;
        let welcome = next_json(&mut client).await;
        let session_id = welcome["session_id"].as_str().unwrap().to_owned();
        (client, session_id)
    }

    pub async fn connect_with(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (Client, Response<Option<Vec<u8>>>) {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = name.parse().unwrap();
            request.headers_mut().insert(name, value.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request).await.unwrap()
    }

    /// Graceful shutdown, as on SIGTERM; then every log line is flushed.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        if let Some(mut guard) = self.telemetry.take() {
            guard.shutdown();
        }
    }

    pub fn log_dir(&self) -> &Path {
        self.log_dir.path()
    }

    /// Every line in every log file, each parsed as one JSON object.
    pub fn log_lines(&self) -> Vec<Value> {
        read_log_lines(self.log_dir.path())
    }

    /// Polls the log files until `predicate` holds for some line.
    pub async fn wait_for_line(&self, what: &str, predicate: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log_lines().into_iter().find(|l| predicate(l)) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub fn read_log_lines(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new(); // not made yet (or deleted)
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut lines = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // A line the server is writing right now is not complete yet.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        for line in complete.lines() {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line in {}: {e}: {line}", file.display()));
            assert!(value.is_object(), "{line}");
            lines.push(value);
        }
    }
    lines
}

pub fn lines_of_session<'a>(lines: &'a [Value], session_id: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["session_id"] == session_id)
        .collect()
}

pub fn with_msg<'a>(lines: &'a [Value], msg: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["msg"] == msg).collect()
}

/// Reads the next text frame as JSON, skipping pings.
pub async fn next_json(client: &mut Client) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("read error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server's Close frame; returns (code, reason).
pub async fn next_close(client: &mut Client) -> (u16, String) {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("timed out waiting for close")
            .expect("stream ended before a close frame")
            .expect("read error");
        if let Message::Close(frame) = message {
            let frame = frame.expect("close frame without code");
            // Keep reading so the client's automatic Close reply is sent.
            while let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_secs(5), client.next()).await
            {}
            return (frame.code.into(), frame.reason.to_string());
        }
    }
}

/// Closes with 1000 and drains until the server's reply ends the stream.
pub async fn close_politely(client: &mut Client) {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    while let Some(Ok(_)) = client.next().await {}
}

pub async fn send_json(client: &mut Client, value: Value) {
    client
        .send(Message::Text(value.to_string().into()))
        .await
        .unwrap();
}

pub fn is_trace_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) && s != "0".repeat(32)
}

/// An HTTP/1.1 response as a test sees it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A plain HTTP/1.1 request over a fresh TCP connection (`Connection:
/// close`), enough for the admin API and /metrics.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> HttpResponse {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("content-type: application/json\r\n");
    }
    request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    raw_http(addr, &request).await
}

/// Sends `request` as written (it should ask for `connection: close`) and
/// reads the whole answer.
pub async fn raw_http(addr: SocketAddr, request: &str) -> HttpResponse {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("http response timed out")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("http head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Parses Prometheus text exposition: `name{labels} value` lines, checking
/// every sample has a `# TYPE` and a numeric value.
pub fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.contains(*f))
            .unwrap_or(name);
        assert!(typed.contains(family), "no # TYPE for {name}");
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

/// The path of a program on PATH. Under `scripts/test.sh`
/// (`WSTRACE_REQUIRE_TOOLS=1`) a missing tool fails the test instead of
/// skipping the check.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|path| path.is_file())
    });
    if found.is_none() && std::env::var_os("WSTRACE_REQUIRE_TOOLS").is_some() {
        panic!("{program} is required (scripts/test.sh installs it)");
    }
    found
}

/// Runs a command with the given stdin, returning its output.
pub trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output;
}

impl OutputWithStdin for std::process::Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

/// A WebSocket client that writes frames byte by byte as a test wants them
/// (fragments, invalid UTF-8, anything), after a real upgrade.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    pub async fn upgrade(addr: SocketAddr, path: &str) -> Self {
        Self::upgrade_over(TcpStream::connect(addr).await.unwrap(), path).await
    }

    /// The upgrade over a connection the test set up itself (small
    /// buffers, say).
    pub async fn upgrade_over(mut stream: TcpStream, path: &str) -> Self {
        let buf = raw_ws::upgrade(&mut stream, path, "server").await;
        Self { stream, buf }
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let frame = raw_ws::masked_frame(fin, opcode, payload, [0x12, 0x34, 0x56, 0x78]);
        // The server may close mid-write (that is what some tests expect).
        let _ = self.stream.write_all(&frame).await;
    }

    /// The next frame from the server: (opcode, payload); None at EOF.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 2 {
                let (len, header) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= header + len {
                    let opcode = self.buf[0] & 0x0f;
                    let payload = self.buf[header..header + len].to_vec();
                    self.buf.drain(..header + len);
                    return Some((opcode, payload));
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("no frame in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until the server's Close frame; returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((opcode, payload)) = self.read_frame().await {
            if opcode == 8 {
                return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            }
        }
        None
    }
}

/// A message over the limit sent as three 40 KiB fragments (each under
/// it); returns the server's close code.
pub async fn send_fragmented_oversize(addr: SocketAddr) -> Option<u16> {
    let part = vec![b'x'; 40 * 1024];
    let mut raw = RawClient::upgrade(addr, "/ws").await;
    raw.read_frame().await?;
    raw.send_frame(false, 1, &part).await;
    raw.send_frame(false, 0, &part).await;
    raw.send_frame(true, 0, &part).await;
    raw.close_code().await
}

/// The word after `key` in a line like `connected session_id=… trace_id=…`.
pub fn word_after<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(key)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}
