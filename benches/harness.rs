//! What tracing costs, side by side: four echo servers, one client, one run.
//!
//! ```text
//! cargo bench --bench harness            # full run (BENCHMARKS.md)
//! cargo test --bench harness             # smoke run: tiny counts, seconds
//! WSTRACE_BENCH_ONLY=cluster cargo bench --bench harness   # fan-out via Redis
//! WSTRACE_BENCH_ONLY=sweep cargo bench --bench harness     # sample ratios, debug sessions
//! WSTRACE_BENCH_ONLY=sweep WSTRACE_BENCH_BASELINE=/tmp/wstrace-before \
//!     cargo bench --bench harness                          # ...and another build beside it
//! WSTRACE_BENCH_ONLY=lifecycle cargo bench --bench harness # session lifecycle only, more rounds
//! ```
//!
//! Servers (each its own process, pinned to core 0 when `taskset` exists;
//! the client pins itself to core 1):
//! - `tt-plain`: a plain tokio-tungstenite echo server, the same shape and
//!   socket options as `axum-bare` without axum (no `split()`, Nagle on);
//! - `fastwebsockets`: a fastwebsockets echo server on a hyper upgrade, the
//!   floor for memory and upgrade cost;
//! - `axum-bare`: an axum echo server, no tracing (axum's example shape);
//! - `wstrace-off`: wstrace with `RUST_LOG=off`: what it costs without
//!   telemetry;
//! - `wstrace-session`: wstrace, session spans and lifecycle logs only
//!   (message sample ratio 0), spans exported to a real collector (rotel);
//! - `wstrace-full`: wstrace at the default message sample ratio, JSON
//!   logs to files, spans exported over OTLP to rotel.
//!
//! Every measurement runs for every server in the same round, rounds are
//! interleaved (the order rotates; the session lifecycle is measured four
//! times per round), and results are medians over rounds,
//! reported as ratios to `axum-bare` and `tt-plain`. Nothing here asserts a
//! timing; a run fails only if a log line or span was dropped.

#[path = "../tests/it/common/raw_ws.rs"]
mod raw_ws;

use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::{WebSocketStream, client_async};

type Ws = WebSocketStream<TcpStream>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve-tt") => return serve(tt_plain(args[1].parse().unwrap())),
        Some("serve-axum") => return serve(axum_bare(args[1].parse().unwrap())),
        Some("serve-fastws") => return serve(fastws(args[1].parse().unwrap())),
        _ => {}
    }
    // `cargo bench` passes --bench; `cargo test` runs us without it.
    let full = args.iter().any(|a| a == "--bench");
    raise_fd_limit();
    let plan = if full { Plan::full() } else { Plan::smoke() };
    let out = std::env::var_os("WSTRACE_BENCH_OUT").map(PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    pin_self(1);
    let mut report = runtime.block_on(run(plan.clone()));
    if !full && std::env::var_os("WSTRACE_BENCH_ONLY").is_none() {
        // The smoke run covers the cluster fan-out too.
        report.push('\n');
        report.push_str(&runtime.block_on(cluster(&plan)));
    }
    println!("{report}");
    if let Some(out) = out {
        std::fs::write(&out, &report).unwrap();
        eprintln!("report written to {}", out.display());
    }
    println!("1 passed, 0 failed");
}

#[derive(Debug, Clone)]
struct Plan {
    rounds: usize,
    connections: usize,
    window: usize,
    saturation: Duration,
    latency: Duration,
    latency_connections: usize,
    upgrades: usize,
    /// Idle sessions held open, measured at each count.
    idle_checkpoints: Vec<usize>,
    lifecycle_sessions: usize,
    payload: usize,
    /// Cluster fan-out: receivers per publish, and the latency test's rate.
    fanout_subscribers: usize,
    fanout_rate: f64,
}

impl Plan {
    fn full() -> Self {
        Self {
            rounds: 3,
            connections: 32,
            window: 16,
            saturation: Duration::from_secs(3),
            latency: Duration::from_secs(3),
            latency_connections: 32,
            upgrades: 5000,
            idle_checkpoints: vec![1_000, 5_000, 10_000, 15_000],
            lifecycle_sessions: 500,
            payload: 64,
            fanout_subscribers: 8,
            fanout_rate: 1000.0,
        }
    }

    fn smoke() -> Self {
        Self {
            rounds: 1,
            connections: 4,
            window: 4,
            saturation: Duration::from_millis(300),
            latency: Duration::from_millis(300),
            latency_connections: 4,
            upgrades: 40,
            idle_checkpoints: vec![20, 60, 100],
            lifecycle_sessions: 20,
            payload: 64,
            fanout_subscribers: 2,
            fanout_rate: 200.0,
        }
    }
}

// ---------------------------------------------------------------- servers

fn serve<F: Future<Output = ()>>(server: F) {
    tokio::runtime::Runtime::new().unwrap().block_on(server);
}

/// tokio-tungstenite alone: accept, echo, nothing else. The same loop and
/// socket options as `axum-bare` (no `split()`, no `TCP_NODELAY`), so the
/// two differ only by axum.
async fn tt_plain(addr: SocketAddr) {
    accept_loop(addr, |stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// Binds, prints the address for the harness, and serves each connection
/// in a task of its own.
async fn accept_loop<F, Fut>(addr: SocketAddr, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    }
}

/// fastwebsockets' echo example: hyper's HTTP/1 upgrade, then frames read
/// and written with its own codec (pings and closes answered by it).
async fn fastws(addr: SocketAddr) {
    use fastwebsockets::{FragmentCollector, OpCode, upgrade};
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    async fn echo(upgrade: upgrade::UpgradeFut) -> Result<(), fastwebsockets::WebSocketError> {
        let mut ws = FragmentCollector::new(upgrade.await?);
        loop {
            let frame = ws.read_frame().await?;
            match frame.opcode {
                OpCode::Close => break,
                OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
                _ => {}
            }
        }
        Ok(())
    }
    async fn handle(
        mut request: Request<Incoming>,
    ) -> Result<Response<http_body_util::Empty<hyper::body::Bytes>>, fastwebsockets::WebSocketError>
    {
        let (response, upgrade) = upgrade::upgrade(&mut request)?;
        tokio::spawn(async move {
            let _ = echo(upgrade).await;
        });
        Ok(response)
    }
    accept_loop(addr, |stream| async move {
        let io = hyper_util::rt::TokioIo::new(stream);
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, hyper::service::service_fn(handle))
            .with_upgrades()
            .await;
    })
    .await
}

/// axum's websocket example shape: split, echo, no tracing.
async fn axum_bare(addr: SocketAddr) {
    use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
    async fn echo(mut socket: WebSocket) {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, AxMessage::Text(_) | AxMessage::Binary(_))
                && socket.send(message).await.is_err()
            {
                break;
            }
        }
    }
    let app = axum::Router::new().route(
        "/ws",
        axum::routing::get(|upgrade: WebSocketUpgrade| async move { upgrade.on_upgrade(echo) }),
    );
    let listener = TcpListener::bind(addr).await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    TtPlain,
    FastWs,
    AxumBare,
    WstraceOff,
    WstraceSession,
    WstraceFull,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::TtPlain,
        Kind::FastWs,
        Kind::AxumBare,
        Kind::WstraceOff,
        Kind::WstraceSession,
        Kind::WstraceFull,
    ];
    fn name(self) -> &'static str {
        match self {
            Kind::TtPlain => "tt-plain",
            Kind::FastWs => "fastwebsockets",
            Kind::AxumBare => "axum-bare",
            Kind::WstraceOff => "wstrace RUST_LOG=off",
            Kind::WstraceSession => "wstrace-session",
            Kind::WstraceFull => "wstrace-full",
        }
    }
    fn is_wstrace(self) -> bool {
        matches!(
            self,
            Kind::WstraceOff | Kind::WstraceSession | Kind::WstraceFull
        )
    }
    /// Writes log lines (and so has lines to count and lose).
    fn logs(self) -> bool {
        matches!(self, Kind::WstraceSession | Kind::WstraceFull)
    }
    fn row(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap()
    }
}

/// wstrace's traced configuration: the message sample ratio, spans over
/// OTLP/gRPC to the collector, and room for the idle-memory sessions.
fn traced<'c>(command: &'c mut Command, otlp_endpoint: &str, ratio: f64) -> &'c mut Command {
    command
        .args(["--max-connections", "20000"])
        .args(["--message-sample-ratio", &ratio.to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
}

struct Server {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    log_dir: Option<tempfile::TempDir>,
    /// The upgrade's path and query.
    path: String,
}

impl Server {
    fn start(kind: Kind, otlp_endpoint: &str, sample_ratio: f64) -> Self {
        let serve = match kind {
            Kind::TtPlain => "serve-tt",
            Kind::FastWs => "serve-fastws",
            Kind::AxumBare => "serve-axum",
            Kind::WstraceOff => {
                return Self::wstrace(kind, |command| {
                    command
                        .args(["--max-connections", "20000"])
                        .env("RUST_LOG", "off");
                });
            }
            Kind::WstraceSession | Kind::WstraceFull => {
                let ratio = if kind == Kind::WstraceFull {
                    sample_ratio
                } else {
                    0.0
                };
                return Self::wstrace(kind, |command| {
                    traced(command, otlp_endpoint, ratio);
                });
            }
        };
        let mut child = pinned(0)
            .arg(std::env::current_exe().unwrap())
            .args([serve, "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server");
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap()
            .parse()
            .unwrap();
        Self {
            kind,
            child,
            addr,
            log_dir: None,
            path: "/ws".to_owned(),
        }
    }

    /// The wstrace binary, pinned to core 0, JSON logs to a temporary
    /// directory only, no rate limit, no OTLP unless `configure` adds it;
    /// `configure` adds the rest.
    fn wstrace(kind: Kind, configure: impl FnOnce(&mut Command)) -> Self {
        Self::wstrace_binary(kind, Path::new(env!("CARGO_BIN_EXE_wstrace")), configure)
    }

    /// wstrace-full, every session a debug session (a JWT with
    /// `"wstrace_debug": true`) at message sample ratio 0: what a fully
    /// traced session costs.
    fn wstrace_debug(otlp_endpoint: &str) -> Self {
        const SECRET: &str = "bench-jwt-secret";
        let mut server = Self::wstrace(Kind::WstraceFull, |command| {
            traced(command, otlp_endpoint, 0.0)
                .args(["--max-debug-sessions", "20000"])
                .env("WSTRACE_JWT_SECRET", SECRET);
        });
        let token = wstrace::auth::JwtVerifier::new(wstrace::auth::Secret::new(SECRET))
            .sign(&serde_json::json!({"sub": "bench", "wstrace_debug": true}));
        server.path = format!("/ws?token={token}");
        server
    }

    /// wstrace-full at `ratio`, from another build of wstrace
    /// (`WSTRACE_BENCH_BASELINE`): the code before a change, side by side
    /// with the code after it.
    fn wstrace_baseline(binary: &Path, otlp_endpoint: &str, ratio: f64) -> Self {
        Self::wstrace_binary(Kind::WstraceFull, binary, |command| {
            traced(command, otlp_endpoint, ratio);
        })
    }

    fn wstrace_binary(kind: Kind, binary: &Path, configure: impl FnOnce(&mut Command)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // With RUST_LOG=off there is no `listening` line to read the port
        // from: choose it here.
        let listen = if kind == Kind::WstraceOff {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
        } else {
            "127.0.0.1:0".parse().unwrap()
        };
        let mut command = pinned(0);
        command
            .arg(binary)
            .args([
                "serve",
                "--listen",
                &listen.to_string(),
                "--log-stdout",
                "false",
            ])
            .args(["--messages-per-second", "0"])
            .arg("--log-dir")
            .arg(dir.path())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        configure(&mut command);
        let mut child = command.spawn().expect("start wstrace");
        let addr = if kind == Kind::WstraceOff {
            wait_for_port(listen)
        } else {
            wait_for_listen_line(dir.path())
        };
        let Some(addr) = addr else {
            let _ = child.kill();
            panic!("{} did not start", kind.name());
        };
        Self {
            kind,
            child,
            addr,
            log_dir: Some(dir),
            path: "/ws".to_owned(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu(&self) -> Duration {
        cpu_time(self.pid())
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    fn log_bytes(&self) -> u64 {
        self.log_dir.as_ref().map_or(0, |d| dir_bytes(d.path()))
    }

    fn log_lines(&self) -> u64 {
        self.log_dir.as_ref().map_or(0, |d| {
            std::fs::read_dir(d.path())
                .unwrap()
                .map(|f| {
                    std::fs::read_to_string(f.unwrap().path())
                        .unwrap()
                        .lines()
                        .count() as u64
                })
                .sum()
        })
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// SIGTERM, wait for exit.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned(core: usize) -> Command {
    if Path::new("/usr/bin/taskset").exists() && num_cores() >= 2 {
        let mut c = Command::new("taskset");
        c.args(["-c", &core.to_string()]);
        c
    } else {
        // `env` runs its argument: the same command shape without pinning.
        Command::new("env")
    }
}

fn pin_self(core: usize) {
    if Path::new("/usr/bin/taskset").exists() && num_cores() >= 2 {
        let _ = Command::new("taskset")
            .args([
                "-a",
                "-cp",
                &core.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(Stdio::null())
            .status();
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn wait_for_port(addr: SocketAddr) -> Option<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(addr)
}

/// The client holds up to 15,000 idle connections; the servers started
/// from this binary as many.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn wait_for_listen_line(dir: &Path) -> Option<SocketAddr> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                if v["msg"] == wstrace::events::Listening::MESSAGE {
                    return v["listen"].as_str()?.parse().ok();
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// utime + stime of a process (and all its threads).
fn cpu_time(pid: u32) -> Duration {
    let stat = ProcStat::read(pid);
    stat.user + stat.system
}

/// TCP segments this machine has sent so far (`OutSegs` in
/// /proc/net/snmp): both ends of a loopback connection, client and server.
fn tcp_segments_sent() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let at = names.split(' ').position(|n| n == "OutSegs").unwrap();
    values.split(' ').nth(at).unwrap().parse().unwrap()
}

/// A process's counters (all its threads together), from one read of
/// `/proc/<pid>/stat`.
struct ProcStat {
    user: Duration,
    system: Duration,
    minor_faults: u64,
}

impl ProcStat {
    fn read(pid: u32) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_comm.split(' ').collect();
        // Fields 10, 14 and 15 of stat; after the comm they are at 7, 11
        // and 12.
        let field = |i: usize| fields[i].parse::<u64>().unwrap();
        let hz = 100; // USER_HZ is 100 on every Linux we run on.
        let time = |t: u64| Duration::from_micros(t * 1_000_000 / hz);
        Self {
            user: time(field(11)),
            system: time(field(12)),
            minor_faults: field(7),
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    wstrace::metrics::resident_kib(pid).expect("/proc is readable")
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

// ----------------------------------------------------------------- client

/// Source addresses to spread connections over, past one address's
/// ephemeral port range.
fn source_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 16) as u8))
}

async fn connect(server: &Server, i: usize) -> Ws {
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
struct RawWs;

/// The read side: counts complete data frames.
struct RawReader {
    reader: tokio::net::tcp::OwnedReadHalf,
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

impl RawWs {
    async fn connect(server: &Server, i: usize) -> (RawReader, tokio::net::tcp::OwnedWriteHalf) {
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
    async fn read_frames(&mut self) -> usize {
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
    fn parse(&mut self) -> usize {
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
fn masked_frame(payload: &[u8]) -> Vec<u8> {
    raw_ws::masked_frame(true, 0x1, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// The message every server gets: wstrace speaks its protocol, the plain
/// servers echo anything, so the same bytes go to all of them.
fn echo_payload(content_bytes: usize) -> String {
    serde_json::json!({"type": "echo", "content": "x".repeat(content_bytes)}).to_string()
}

struct Saturation {
    messages: u64,
    elapsed: Duration,
    cpu: Duration,
}

/// Closed loop with a window of requests in flight per connection.
async fn saturate(server: &Server, plan: &Plan) -> Saturation {
    saturate_with(server, plan, plan.window, plan.saturation).await
}

async fn saturate_with(
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
async fn latency(server: &Server, plan: &Plan, rate: f64) -> Vec<u64> {
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

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i]
}

/// Sessions opened (upgrade + welcome) and closed, 16 at a time.
async fn upgrades(server: &Server, plan: &Plan) -> (f64, Duration) {
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
async fn idle_memory(server: &Server, plan: &Plan) -> Vec<f64> {
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
async fn raw_upgrade(server: &Server, i: usize) -> (TcpStream, Vec<u8>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source_ip(i), 0)).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let buf = raw_ws::upgrade(&mut stream, &server.path, server.kind.name()).await;
    (stream, buf)
}

/// An idle session as cheap for the client as it can be: a raw socket that
/// did the handshake and read the welcome frame (wstrace), nothing more.
async fn open_idle(server: &Server, i: usize) -> TcpStream {
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
async fn close_idle(sockets: Vec<TcpStream>) {
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
async fn lifecycle_log_bytes(server: &Server, plan: &Plan) -> f64 {
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

async fn scrape(server: &Server) -> std::collections::HashMap<String, f64> {
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

// ----------------------------------------------------------------- report

#[derive(Debug, Default, Clone)]
struct Row {
    cpu_us_per_msg: Vec<f64>,
    server_busy: Vec<f64>,
    msgs_per_s: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    p999_us: Vec<f64>,
    upgrades_per_s: Vec<f64>,
    cpu_us_per_upgrade: Vec<f64>,
    /// KiB resident per idle session at each of `Plan::idle_checkpoints`.
    idle_kib_per_session: Vec<f64>,
    log_bytes_per_session: f64,
    log_bytes_per_msg: f64,
    log_lines: u64,
    lines_dropped: u64,
    spans_exported: u64,
}

/// KiB per idle session at each checkpoint, the least-squares line through
/// (sessions, KiB above the empty server), and what it predicts at 100,000.
fn idle_table(plan: &Plan, rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut table = String::new();
    let counts = &plan.idle_checkpoints;
    let _ = write!(table, "| server |");
    for n in counts {
        let _ = write!(table, " KiB/session at {n} |");
    }
    let _ = writeln!(
        table,
        " fit: KiB/session | ×fastwebsockets | fit: MiB at 100,000 sessions |"
    );
    let _ = writeln!(table, "|---|{}---|---|---|", "---|".repeat(counts.len()));
    let fits: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| {
            let totals: Vec<f64> = r
                .idle_kib_per_session
                .iter()
                .zip(counts)
                .map(|(per, n)| per * *n as f64)
                .collect();
            linear_fit(
                &counts.iter().map(|n| *n as f64).collect::<Vec<_>>(),
                &totals,
            )
        })
        .collect();
    let floor = fits[Kind::FastWs.row()].0;
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let _ = write!(table, "| {} |", kind.name());
        for per in &rows[i].idle_kib_per_session {
            let _ = write!(table, " {per:.1} |");
        }
        let (slope, intercept) = fits[i];
        let _ = writeln!(
            table,
            " {slope:.2} | {:.2} | {:.0} |",
            slope / floor,
            (intercept + slope * 100_000.0) / 1024.0
        );
    }
    table
}

/// Least squares: (slope, intercept) of y against x.
fn linear_fit(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (slope, my - slope * mx)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// A real OTLP collector for the wstrace servers (rotel, from PyPI).
fn start_collector(dir: &Path) -> (Child, String, PathBuf) {
    let agent = std::env::var("ROTEL_AGENT").unwrap_or_else(|_| {
        let out = Command::new("python3")
            .args(["-c", "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
            .output()
            .expect("python3");
        assert!(out.status.success(), "rotel is not installed: pip install rotel");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = dir.join("rotel.out");
    let child = pinned(1)
        .arg(agent)
        .args([
            "start",
            "--exporter",
            "blackhole",
            "--debug-log",
            "traces",
            "--log-format",
            "json",
        ])
        .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{port}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rotel");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "rotel did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("http://127.0.0.1:{port}"), output)
}

/// Spans the collector says it received (its JSON "Received traces." lines).
fn spans_received(output: &Path) -> u64 {
    std::fs::read_to_string(output)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["msg"] == "Received traces.")
        .filter_map(|v| v["spans"].as_u64())
        .sum()
}

/// `WSTRACE_BENCH_ONLY=sweep`: CPU per message at saturation for several
/// message sample ratios, next to axum-bare, to choose the default ratio;
/// and a debug session (every message traced whatever the ratio). With
/// `WSTRACE_BENCH_BASELINE=<another wstrace binary>`, that build at ratios
/// 0 and 0.01 too, for a before/after in the same run.
async fn sweep(plan: &Plan) -> String {
    let work = tempfile::tempdir().unwrap();
    let (mut collector, endpoint, _) = start_collector(work.path());
    let ratios = [0.0, 0.001, 0.01, 0.1, 1.0];
    let bare = Server::start(Kind::AxumBare, &endpoint, 0.0);
    let mut rows: Vec<(String, Server)> = ratios
        .iter()
        .map(|&r| {
            (
                r.to_string(),
                Server::start(Kind::WstraceFull, &endpoint, r),
            )
        })
        .collect();
    rows.push((
        "0, every session a debug session".to_owned(),
        Server::wstrace_debug(&endpoint),
    ));
    if let Some(baseline) = std::env::var_os("WSTRACE_BENCH_BASELINE") {
        let baseline = PathBuf::from(baseline);
        for ratio in [0.0, 0.01] {
            rows.push((
                format!("{ratio}, baseline build"),
                Server::wstrace_baseline(&baseline, &endpoint, ratio),
            ));
        }
    }
    let mut bare_cpu = Vec::new();
    let mut cpu = vec![Vec::new(); rows.len()];
    let mut log = vec![Vec::new(); rows.len()];
    for round in 0..plan.rounds {
        let s = saturate(&bare, plan).await;
        bare_cpu.push(s.cpu.as_secs_f64() * 1e6 / s.messages.max(1) as f64);
        // Rotated, as in the main run: no row always goes first.
        for k in 0..rows.len() {
            let i = (k + round) % rows.len();
            let server = &rows[i].1;
            let before = server.log_bytes();
            let s = saturate(server, plan).await;
            cpu[i].push(s.cpu.as_secs_f64() * 1e6 / s.messages.max(1) as f64);
            log[i].push((server.log_bytes() - before) as f64 / s.messages.max(1) as f64);
        }
    }
    let _ = collector.kill();
    let _ = collector.wait();
    use std::fmt::Write;
    let mut report = String::new();
    let bare = median(&bare_cpu);
    let _ = writeln!(
        report,
        "| message sample ratio | CPU µs/msg | ×axum-bare | log B/msg |"
    );
    let _ = writeln!(report, "|---|---|---|---|");
    let _ = writeln!(report, "| axum-bare | {bare:.2} | 1.00 | - |");
    for (i, (label, _)) in rows.iter().enumerate() {
        let c = median(&cpu[i]);
        let _ = writeln!(
            report,
            "| {label} | {c:.2} | {:.2} | {:.2} |",
            c / bare,
            median(&log[i])
        );
    }
    report
}

/// `WSTRACE_BENCH_ONLY=lifecycle`: CPU per session lifecycle alone, in
/// user and system time apart, over more rounds than the main run (a
/// storm's kernel time here moves by half from one second to the next).
/// Each round measures every server once, in rotated order; a ratio is
/// also taken within each round, so the machine's slow drift cancels.
/// With `WSTRACE_BENCH_BASELINE=<another wstrace binary>`, that build's
/// `wstrace-full` beside this one's.
async fn lifecycle(plan: &Plan) -> String {
    let work = tempfile::tempdir().unwrap();
    let (mut collector, endpoint, _) = start_collector(work.path());
    let ratio = wstrace::state::DEFAULT_MESSAGE_SAMPLE_RATIO;
    let mut rows: Vec<(String, Server)> = [
        Kind::AxumBare,
        Kind::FastWs,
        Kind::WstraceOff,
        Kind::WstraceFull,
    ]
    .iter()
    .map(|&k| (k.name().to_owned(), Server::start(k, &endpoint, ratio)))
    .collect();
    if let Some(baseline) = std::env::var_os("WSTRACE_BENCH_BASELINE") {
        let baseline = PathBuf::from(baseline);
        rows.push((
            "wstrace-full, baseline build".to_owned(),
            Server::wstrace_baseline(&baseline, &endpoint, ratio),
        ));
    }
    let rounds = plan.rounds * 4;
    // What `upgrades` opens: 16 workers, the same number each.
    let sessions = (plan.upgrades / 16 * 16) as f64;
    // Per row: (user µs, system µs) per lifecycle, one per round.
    let mut samples = vec![Vec::new(); rows.len()];
    let mut faults_per = vec![Vec::new(); rows.len()];
    let mut segments_per = vec![Vec::new(); rows.len()];
    // WSTRACE_BENCH_WARM=1: every round starts with each server's message
    // saturation test, as in the main run, where the lifecycle storms
    // follow it.
    let warm = std::env::var_os("WSTRACE_BENCH_WARM").is_some();
    for round in 0..rounds {
        if warm {
            for (_, server) in &rows {
                saturate(server, plan).await;
            }
        }
        for k in 0..rows.len() {
            let i = (k + round) % rows.len();
            let pid = rows[i].1.pid();
            let (before, segments) = (ProcStat::read(pid), tcp_segments_sent());
            let (_, _) = upgrades(&rows[i].1, plan).await;
            let (after, segments) = (ProcStat::read(pid), tcp_segments_sent() - segments);
            let per_session = |d: Duration| d.as_secs_f64() * 1e6 / sessions;
            samples[i].push((
                per_session(after.user - before.user),
                per_session(after.system - before.system),
            ));
            faults_per[i].push((after.minor_faults - before.minor_faults) as f64 / sessions);
            segments_per[i].push(segments as f64 / sessions);
        }
    }
    let _ = collector.kill();
    let _ = collector.wait();
    use std::fmt::Write;
    let total = |row: &[(f64, f64)]| row.iter().map(|(u, s)| u + s).collect::<Vec<_>>();
    let bare = total(&samples[0]);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "| server | user µs/lifecycle | system µs | total µs | ×axum-bare (medians) | ×axum-bare (median of per-round ratios) | total µs, min–max | page faults/lifecycle | TCP segments/lifecycle (both ends), min–max |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|");
    for (i, (label, _)) in rows.iter().enumerate() {
        let t = total(&samples[i]);
        // A round where axum-bare used less than one clock tick (a smoke
        // run's few sessions) has no ratio.
        let per_round: Vec<f64> = t
            .iter()
            .zip(&bare)
            .map(|(a, b)| a / b)
            .filter(|r| r.is_finite())
            .collect();
        let user: Vec<f64> = samples[i].iter().map(|(u, _)| *u).collect();
        let system: Vec<f64> = samples[i].iter().map(|(_, s)| *s).collect();
        let (lo, hi) = t
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let _ = writeln!(
            report,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {lo:.0}–{hi:.0} | {:.2} | {:.1}–{:.1} |",
            median(&user),
            median(&system),
            median(&t),
            median(&t) / median(&bare),
            median(&per_round),
            median(&faults_per[i]),
            segments_per[i].iter().copied().fold(f64::MAX, f64::min),
            segments_per[i].iter().copied().fold(f64::MIN, f64::max),
        );
    }
    let _ = writeln!(
        report,
        "\n{rounds} rounds of {sessions} sessions per server (16 at a time){}.",
        if warm {
            ", each round after every server's message saturation test"
        } else {
            ""
        }
    );
    report
}

async fn run(plan: Plan) -> String {
    match std::env::var("WSTRACE_BENCH_ONLY").as_deref() {
        Ok("sweep") => return sweep(&plan).await,
        Ok("lifecycle") => return lifecycle(&plan).await,
        Ok("cluster") => return cluster(&plan).await,
        _ => {}
    }
    let work = tempfile::tempdir().unwrap();
    let (mut collector, endpoint, collector_out) = start_collector(work.path());
    let sample_ratio = wstrace::state::DEFAULT_MESSAGE_SAMPLE_RATIO;
    let mut servers: Vec<Server> = Kind::ALL
        .iter()
        .map(|&k| Server::start(k, &endpoint, sample_ratio))
        .collect();
    let mut rows = vec![Row::default(); servers.len()];
    let mut latency_rates = Vec::new();

    // WSTRACE_BENCH_ONLY=idle measures idle memory alone (for profiling).
    let only_idle = std::env::var("WSTRACE_BENCH_ONLY").is_ok_and(|v| v == "idle");
    for round in 0..if only_idle { 0 } else { plan.rounds } {
        // Rotate the order so no server always runs first (warm caches) or last.
        let order: Vec<usize> = (0..servers.len())
            .map(|i| (i + round) % servers.len())
            .collect();
        for &i in &order {
            let server = &servers[i];
            let log_before = server.log_bytes();
            let s = saturate(server, &plan).await;
            let messages = s.messages.max(1) as f64;
            rows[i]
                .cpu_us_per_msg
                .push(s.cpu.as_secs_f64() * 1e6 / messages);
            rows[i].msgs_per_s.push(messages / s.elapsed.as_secs_f64());
            rows[i]
                .server_busy
                .push(s.cpu.as_secs_f64() / s.elapsed.as_secs_f64());
            if server.kind.logs() {
                rows[i].log_bytes_per_msg = (server.log_bytes() - log_before) as f64 / messages;
            }
        }
        // The latency test sends one frame at a time, so the bare rate it
        // takes half of is measured the same way: one request in flight per
        // connection (pipelined saturation lets servers batch, which the
        // latency traffic does not).
        let unbatched =
            saturate_with(&servers[Kind::AxumBare.row()], &plan, 1, plan.saturation).await;
        let rate = unbatched.messages as f64 / unbatched.elapsed.as_secs_f64() * 0.5;
        latency_rates.push(rate);
        for &i in &order {
            let samples = latency(&servers[i], &plan, rate).await;
            rows[i].p50_us.push(percentile(&samples, 50.0) as f64);
            rows[i].p99_us.push(percentile(&samples, 99.0) as f64);
            rows[i].p999_us.push(percentile(&samples, 99.9) as f64);
        }
        // Four times per round: a storm takes about a second, and this
        // machine's noise over one second (the kernel's share of a
        // server's CPU time jumps by half in some) is as large as the
        // differences; the median of twelve leaves those out.
        for _ in 0..4 {
            for &i in &order {
                let (per_s, cpu) = upgrades(&servers[i], &plan).await;
                rows[i].upgrades_per_s.push(per_s);
                rows[i].cpu_us_per_upgrade.push(cpu.as_secs_f64() * 1e6);
            }
        }
        eprintln!("round {} of {} done", round + 1, plan.rounds);
    }
    for (i, server) in servers.iter().enumerate() {
        if server.kind.logs() && !only_idle {
            rows[i].log_bytes_per_session = lifecycle_log_bytes(server, &plan).await;
        }
        rows[i].idle_kib_per_session = idle_memory(server, &plan).await;
    }
    // Nothing lost: what was written is on disk, what was exported arrived.
    let mut failures = Vec::new();
    for (i, server) in servers.iter_mut().enumerate() {
        if !server.kind.logs() {
            continue;
        }
        let metrics = scrape(server).await;
        let written = metrics["wstrace_log_lines_written_total"] as u64;
        rows[i].lines_dropped = metrics["wstrace_log_lines_dropped_total"] as u64;
        rows[i].spans_exported = metrics["wstrace_spans_exported_total"] as u64;
        let spans_dropped = metrics["wstrace_spans_dropped_total"] as u64;
        if spans_dropped > 0 {
            failures.push(format!(
                "{}: {spans_dropped} spans dropped",
                server.kind.name()
            ));
        }
        server.stop();
        let on_disk = server.log_lines();
        rows[i].log_lines = on_disk;
        if on_disk < written {
            failures.push(format!(
                "{}: {written} lines written, {on_disk} on disk",
                server.kind.name()
            ));
        }
        if rows[i].lines_dropped > 0 {
            failures.push(format!(
                "{}: {} log lines dropped",
                server.kind.name(),
                rows[i].lines_dropped
            ));
        }
    }
    // Both wstrace servers exported to the one collector, and have exited
    // (flushing their spans): compare what they sent with what it got.
    std::thread::sleep(Duration::from_millis(500));
    let received = spans_received(&collector_out);
    let exported: u64 = rows.iter().map(|r| r.spans_exported).sum();
    if received < exported {
        failures.push(format!(
            "servers exported {exported} spans, the collector got {received}"
        ));
    }
    let _ = collector.kill();
    let _ = collector.wait();

    let mut report = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        report,
        "| server | CPU µs/msg | ×axum-bare | ×tt-plain | msgs/s | server busy | p50 µs | p99 µs | p99.9 µs | p99 ×axum-bare | sessions/s | CPU µs/session lifecycle | lifecycle ×axum-bare | log B/session | log B/msg |"
    );
    let _ = writeln!(
        report,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let cpu = |k: Kind| median(&rows[k.row()].cpu_us_per_msg);
    let p99 = |k: Kind| median(&rows[k.row()].p99_us);
    let lifecycle = |k: Kind| median(&rows[k.row()].cpu_us_per_upgrade);
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let r = &rows[i];
        let c = median(&r.cpu_us_per_msg);
        let _ = writeln!(
            report,
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0}% | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {} | {} |",
            kind.name(),
            c,
            c / cpu(Kind::AxumBare),
            c / cpu(Kind::TtPlain),
            median(&r.msgs_per_s),
            median(&r.server_busy) * 100.0,
            median(&r.p50_us),
            median(&r.p99_us),
            median(&r.p999_us),
            median(&r.p99_us) / p99(Kind::AxumBare),
            median(&r.upgrades_per_s),
            lifecycle(*kind),
            lifecycle(*kind) / lifecycle(Kind::AxumBare),
            if kind.logs() {
                format!("{:.0}", r.log_bytes_per_session)
            } else {
                "-".into()
            },
            if kind.logs() {
                format!("{:.2}", r.log_bytes_per_msg)
            } else {
                "-".into()
            },
        );
    }
    let _ = writeln!(report);
    report.push_str(&idle_table(&plan, &rows));
    let _ = writeln!(report);
    let lines: u64 = rows.iter().map(|r| r.log_lines).sum();
    let dropped: u64 = rows.iter().map(|r| r.lines_dropped).sum();
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "log lines on disk: {lines}; log lines dropped: {dropped}; spans exported (before shutdown): {exported}; spans received by the collector (after shutdown): {received}; spans dropped: 0"
    );
    let _ = writeln!(
        report,
        "latency test rate (50% of axum-bare with one request in flight per connection): {:.0} msgs/s",
        median(&latency_rates)
    );
    let _ = writeln!(
        report,
        "plan: {plan:?}; message sample ratio (wstrace-full): {sample_ratio}"
    );
    if !failures.is_empty() {
        panic!("telemetry was lost:\n{}\n{report}", failures.join("\n"));
    }
    report
}

// ---------------------------------------------------------------- cluster

/// A wstrace instance for the fan-out benchmark: cluster mode when
/// `redis_url` is given, default message sample ratio.
fn start_node(redis_url: Option<&str>, instance_id: &str) -> Server {
    Server::wstrace(Kind::WstraceFull, |command| {
        command.args(["--instance-id", instance_id]);
        if let Some(url) = redis_url {
            command.args(["--redis-url", url]);
        }
    })
}

/// A real redis-server on a free port, pinned with the servers.
fn start_redis(program: &Path) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = pinned(0)
        .arg(program)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

fn since_start_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

async fn protocol_client(server: &Server) -> Ws {
    let stream = TcpStream::connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = client_async(server.url(), stream).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws
}

const STOP: &str = "stop";

/// Reads `message` frames until the stop message; returns one latency
/// sample (µs, from the content's send time) per message, and, when
/// `acks` is given, returns a permit per message to the publisher.
async fn subscriber(mut ws: Ws, acks: Option<Arc<tokio::sync::Semaphore>>) -> Vec<u64> {
    use tokio_tungstenite::tungstenite::Message;
    let mut samples = Vec::new();
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let now = since_start_ns();
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame["type"] != "message" {
            continue;
        }
        let content = frame["content"].as_str().unwrap();
        if content == STOP {
            break;
        }
        let sent: u64 = content.parse().unwrap();
        samples.push(now.saturating_sub(sent) / 1000);
        if let Some(acks) = &acks {
            acks.add_permits(1);
        }
    }
    samples
}

struct FanOutResult {
    latency_us: Vec<u64>,
    deliveries_per_s: f64,
}

/// One publisher on `publisher_at`, `subscribers` receivers on
/// `subscribers_at`, all on a channel of their own. Latency: an open-loop
/// publish rate. Throughput: as fast as the slowest path allows, with at
/// most `plan.window` messages not yet received by the first subscriber.
async fn fan_out(
    publisher_at: &Server,
    subscribers_at: &Server,
    channel: &str,
    plan: &Plan,
    rate: f64,
) -> FanOutResult {
    use tokio_tungstenite::tungstenite::Message;
    let publish = |content: String| {
        Message::Text(
            serde_json::json!({"type": "publish", "channel": channel, "content": content})
                .to_string()
                .into(),
        )
    };
    let mut phases = Vec::new();
    for phase in ["latency", "throughput"] {
        let acks =
            (phase == "throughput").then(|| Arc::new(tokio::sync::Semaphore::new(plan.window)));
        let mut readers = Vec::new();
        for i in 0..plan.fanout_subscribers {
            let mut ws = protocol_client(subscribers_at).await;
            let subscribe = serde_json::json!({"type": "subscribe", "channel": channel});
            ws.send(Message::Text(subscribe.to_string().into()))
                .await
                .unwrap();
            ws.next().await.unwrap().unwrap();
            let acks = if i == 0 { acks.clone() } else { None };
            readers.push(tokio::spawn(subscriber(ws, acks)));
        }
        let mut publisher = protocol_client(publisher_at).await;
        let started = Instant::now();
        let mut sent = 0u64;
        match &acks {
            None => {
                let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                while started.elapsed() < plan.latency {
                    ticks.tick().await;
                    publisher
                        .send(publish(since_start_ns().to_string()))
                        .await
                        .unwrap();
                    sent += 1;
                }
            }
            Some(acks) => {
                while started.elapsed() < plan.saturation {
                    acks.acquire().await.unwrap().forget();
                    publisher
                        .send(publish(since_start_ns().to_string()))
                        .await
                        .unwrap();
                    sent += 1;
                }
            }
        }
        publisher.send(publish(STOP.into())).await.unwrap();
        let mut latency_us = Vec::new();
        let mut received = 0;
        for reader in readers {
            let samples = tokio::time::timeout(Duration::from_secs(30), reader)
                .await
                .expect("subscribers finish")
                .unwrap();
            received += samples.len() as u64;
            latency_us.extend(samples);
        }
        let elapsed = started.elapsed();
        assert_eq!(
            received,
            sent * plan.fanout_subscribers as u64,
            "every subscriber got every message"
        );
        latency_us.sort_unstable();
        phases.push((latency_us, received as f64 / elapsed.as_secs_f64()));
        let _ = publisher.close(None).await;
    }
    let (throughput, latency) = (phases.pop().unwrap(), phases.pop().unwrap());
    FanOutResult {
        latency_us: latency.0,
        deliveries_per_s: throughput.1,
    }
}

/// `WSTRACE_BENCH_ONLY=cluster`: fan-out latency and throughput through
/// Redis between two instances, next to the same fan-out on one instance
/// without cluster mode (and within one instance with it on).
async fn cluster(plan: &Plan) -> String {
    let Some(redis_program) = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        return "cluster benchmark skipped: redis-server is not installed".into();
    };
    let (mut redis, port) = start_redis(&redis_program);
    let url = format!("redis://127.0.0.1:{port}");
    let single = start_node(None, "bench-single");
    let a = start_node(Some(&url), "bench-a");
    let b = start_node(Some(&url), "bench-b");
    let paths: [(&str, &Server, &Server); 3] = [
        ("one instance, no cluster mode", &single, &single),
        ("cluster mode, same instance", &a, &a),
        ("cluster mode, across instances (via Redis)", &a, &b),
    ];
    let mut p50 = vec![Vec::new(); paths.len()];
    let mut p99 = vec![Vec::new(); paths.len()];
    let mut rate = vec![Vec::new(); paths.len()];
    for round in 0..plan.rounds {
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            let (_, publisher_at, subscribers_at) = paths[i];
            let channel = format!("bench-{round}-{i}");
            let result = fan_out(
                publisher_at,
                subscribers_at,
                &channel,
                plan,
                plan.fanout_rate,
            )
            .await;
            p50[i].push(percentile(&result.latency_us, 50.0) as f64);
            p99[i].push(percentile(&result.latency_us, 99.0) as f64);
            rate[i].push(result.deliveries_per_s);
        }
        eprintln!("cluster round {} of {} done", round + 1, plan.rounds);
    }
    let _ = redis.kill();
    let _ = redis.wait();
    use std::fmt::Write;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "| fan-out path | p50 µs | p99 µs | p99 ×one instance | deliveries/s | ×one instance |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|");
    let (base_p99, base_rate) = (median(&p99[0]), median(&rate[0]));
    for (i, (name, _, _)) in paths.iter().enumerate() {
        let _ = writeln!(
            report,
            "| {name} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
            median(&p50[i]),
            median(&p99[i]),
            median(&p99[i]) / base_p99,
            median(&rate[i]),
            median(&rate[i]) / base_rate,
        );
    }
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "{} subscribers per publish; latency at {} publishes/s; throughput with at most {} messages in flight; plan: {plan:?}",
        plan.fanout_subscribers, plan.fanout_rate, plan.window
    );
    report
}
