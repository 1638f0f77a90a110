//! The servers compared: tt-plain, fastwebsockets, axum-bare as
//! processes of this binary, and wstrace as a child process, with the
//! `/proc` readings (CPU, RSS, page faults) taken of each.

use crate::*;

pub(crate) fn serve<F: Future<Output = ()>>(server: F) {
    tokio::runtime::Runtime::new().unwrap().block_on(server);
}

/// tokio-tungstenite alone: accept, echo, nothing else. The same loop and
/// socket options as `axum-bare` (no `split()`, no `TCP_NODELAY`), so the
/// two differ only by axum.
pub(crate) async fn tt_plain(addr: SocketAddr) {
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
pub(crate) async fn accept_loop<F, Fut>(addr: SocketAddr, serve: F)
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
pub(crate) async fn fastws(addr: SocketAddr) {
    use fastwebsockets::{FragmentCollector, OpCode, upgrade};
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    pub(crate) async fn echo(
        upgrade: upgrade::UpgradeFut,
    ) -> Result<(), fastwebsockets::WebSocketError> {
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
    pub(crate) async fn handle(
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
pub(crate) async fn axum_bare(addr: SocketAddr) {
    use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
    pub(crate) async fn echo(mut socket: WebSocket) {
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
pub(crate) enum Kind {
    TtPlain,
    FastWs,
    AxumBare,
    WstraceOff,
    WstraceSession,
    WstraceFull,
}

impl Kind {
    pub(crate) const ALL: [Kind; 6] = [
        Kind::TtPlain,
        Kind::FastWs,
        Kind::AxumBare,
        Kind::WstraceOff,
        Kind::WstraceSession,
        Kind::WstraceFull,
    ];
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::TtPlain => "tt-plain",
            Kind::FastWs => "fastwebsockets",
            Kind::AxumBare => "axum-bare",
            Kind::WstraceOff => "wstrace RUST_LOG=off",
            Kind::WstraceSession => "wstrace-session",
            Kind::WstraceFull => "wstrace-full",
        }
    }
    pub(crate) fn is_wstrace(self) -> bool {
        matches!(
            self,
            Kind::WstraceOff | Kind::WstraceSession | Kind::WstraceFull
        )
    }
    /// Writes log lines (and so has lines to count and lose).
    pub(crate) fn logs(self) -> bool {
        matches!(self, Kind::WstraceSession | Kind::WstraceFull)
    }
    pub(crate) fn row(self) -> usize {
        Kind::ALL.iter().position(|k| *k == self).unwrap()
    }
}

/// wstrace's traced configuration: the message sample ratio, spans over
/// OTLP/gRPC to the collector, and room for the idle-memory sessions.
pub(crate) fn traced<'c>(
    command: &'c mut Command,
    otlp_endpoint: &str,
    ratio: f64,
) -> &'c mut Command {
    command
        .args(["--max-connections", "20000"])
        .args(["--message-sample-ratio", &ratio.to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
}

pub(crate) struct Server {
    pub(crate) kind: Kind,
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) log_dir: Option<tempfile::TempDir>,
    /// The upgrade's path and query.
    pub(crate) path: String,
}

impl Server {
    pub(crate) fn start(kind: Kind, otlp_endpoint: &str, sample_ratio: f64) -> Self {
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
    pub(crate) fn wstrace(kind: Kind, configure: impl FnOnce(&mut Command)) -> Self {
        Self::wstrace_binary(kind, Path::new(env!("CARGO_BIN_EXE_wstrace")), configure)
    }

    /// wstrace-full, every session a debug session (a JWT with
    /// `"wstrace_debug": true`) at message sample ratio 0: what a fully
    /// traced session costs.
    pub(crate) fn wstrace_debug(otlp_endpoint: &str) -> Self {
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
    pub(crate) fn wstrace_baseline(binary: &Path, otlp_endpoint: &str, ratio: f64) -> Self {
        Self::wstrace_binary(Kind::WstraceFull, binary, |command| {
            traced(command, otlp_endpoint, ratio);
        })
    }

    pub(crate) fn wstrace_binary(
        kind: Kind,
        binary: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> Self {
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

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn cpu(&self) -> Duration {
        cpu_time(self.pid())
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub(crate) fn log_bytes(&self) -> u64 {
        self.log_dir.as_ref().map_or(0, |d| dir_bytes(d.path()))
    }

    pub(crate) fn log_lines(&self) -> u64 {
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

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// SIGTERM, wait for exit.
    pub(crate) fn stop(&mut self) {
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

pub(crate) fn pinned(core: usize) -> Command {
    if Path::new("/usr/bin/taskset").exists() && num_cores() >= 2 {
        let mut c = Command::new("taskset");
        c.args(["-c", &core.to_string()]);
        c
    } else {
        // `env` runs its argument: the same command shape without pinning.
        Command::new("env")
    }
}

pub(crate) fn pin_self(core: usize) {
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

pub(crate) fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) fn wait_for_port(addr: SocketAddr) -> Option<SocketAddr> {
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
pub(crate) fn raise_fd_limit() {
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

pub(crate) fn wait_for_listen_line(dir: &Path) -> Option<SocketAddr> {
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
pub(crate) fn cpu_time(pid: u32) -> Duration {
    let stat = ProcStat::read(pid);
    stat.user + stat.system
}

/// TCP segments this machine has sent so far (`OutSegs` in
/// /proc/net/snmp): both ends of a loopback connection, client and server.
pub(crate) fn tcp_segments_sent() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let at = names.split(' ').position(|n| n == "OutSegs").unwrap();
    values.split(' ').nth(at).unwrap().parse().unwrap()
}

/// A process's counters (all its threads together), from one read of
/// `/proc/<pid>/stat`.
pub(crate) struct ProcStat {
    pub(crate) user: Duration,
    pub(crate) system: Duration,
    pub(crate) minor_faults: u64,
}

impl ProcStat {
    pub(crate) fn read(pid: u32) -> Self {
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

pub(crate) fn rss_kib(pid: u32) -> u64 {
    wstrace::metrics::resident_kib(pid).expect("/proc is readable")
}

pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}
