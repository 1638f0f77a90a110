//! `wstrace load URL`: a bounded load generator with three scenarios.
//!
//! - `storm`: N connections opened as fast as possible (a bounded number of
//!   handshakes in flight), each closed again.
//! - `throughput`: C connections × M messages, pipelined.
//! - `sustained`: C connections for T seconds at R messages/s in total,
//!   open loop: latency counts from when a message was due, so a slow
//!   server cannot hide behind a slowed-down client.
//!
//! Messages are protocol `ping`s with an id; the `pong` carries the id
//! back, so every round trip is matched exactly. Connections are spread
//! over several 127.0.0.x source addresses (`--source-ips`) to get past one
//! address's ephemeral ports. Every run is bounded by `--max-duration`.

use super::tls::Trust;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open --connections as fast as possible (--concurrency handshakes at
    /// once), close each: handshake latency.
    Storm,
    /// --connections each send --messages echoes, --window in flight:
    /// round-trip latency at full speed.
    Throughput,
    /// --connections send --rate messages/s in all for --duration:
    /// round-trip latency at a steady rate.
    Sustained,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// WebSocket URL of the server (ws:// or wss://).
    pub url: String,
    /// A PEM file of CA certificates to trust for wss://, beside the
    /// system's.
    #[arg(long, env = "WSTRACE_LOAD_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Extra upgrade header `Name: value` (repeatable), e.g. the
    /// `X-Forwarded-For` a proxy would add.
    #[arg(long = "header", env = "WSTRACE_LOAD_HEADER", value_delimiter = '\n')]
    pub headers: Vec<String>,
    /// What to measure: storm (handshakes), throughput (echoes at full
    /// speed) or sustained (echoes at --rate for --duration).
    #[arg(long, env = "WSTRACE_LOAD_SCENARIO", default_value = "throughput")]
    pub scenario: Scenario,
    /// Connections (storm: how many to open in all), at least 1.
    #[arg(
        long,
        short = 'c',
        env = "WSTRACE_LOAD_CONNECTIONS",
        default_value_t = 10,
        value_parser = at_least_one
    )]
    pub connections: usize,
    /// throughput: messages per connection.
    #[arg(
        long,
        short = 'm',
        env = "WSTRACE_LOAD_MESSAGES",
        default_value_t = 100
    )]
    pub messages: usize,
    /// sustained: how long to send.
    #[arg(long, env = "WSTRACE_LOAD_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// sustained: messages per second over all connections.
    #[arg(long, env = "WSTRACE_LOAD_RATE", default_value_t = 100.0)]
    pub rate: f64,
    /// Requests in flight per connection (throughput).
    #[arg(long, env = "WSTRACE_LOAD_WINDOW", default_value_t = 8)]
    pub window: usize,
    /// Handshakes in flight at once (storm).
    #[arg(long, env = "WSTRACE_LOAD_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Spread connections over this many source addresses 127.0.0.2… (0:
    /// let the OS choose). Only for loopback targets.
    #[arg(long, env = "WSTRACE_LOAD_SOURCE_IPS", default_value_t = 8)]
    pub source_ips: u8,
    /// Hard cap on the whole run.
    #[arg(long, env = "WSTRACE_LOAD_MAX_DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    pub max_duration: Duration,
    /// Also write the report as JSON to this file.
    #[arg(long, env = "WSTRACE_LOAD_JSON")]
    pub json: Option<std::path::PathBuf>,
}

fn at_least_one(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A run this large gets a warning first: it takes a while, and says so.
const LARGE_RUN_CONNECTIONS: usize = 50_000;
/// A connection that gets no reply for this long has stalled (its requests
/// were refused, say): it stops instead of waiting for --max-duration.
const STALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: Option<Scenario>,
    pub url: String,
    pub connections: Connections,
    pub messages: Messages,
    pub duration_s: f64,
    pub msgs_per_s: f64,
    pub latency_us: Latency,
    pub close_codes: BTreeMap<u16, u64>,
    /// `error` frames the server sent, by error code (`rate_limited`, …).
    pub error_frames: BTreeMap<String, u64>,
    /// Connections that stopped because nothing came back for 5 s.
    pub stalled: u64,
    pub timed_out: bool,
}

impl Report {
    /// What went wrong, if anything: the run then exits non-zero.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.connections.failed > 0 {
            problems.push(format!(
                "{} of {} connections failed",
                self.connections.failed, self.connections.attempted
            ));
        }
        let refused: u64 = self.error_frames.values().sum();
        if refused > 0 {
            problems.push(format!(
                "the server refused {refused} message(s) with error frames"
            ));
        }
        if self.stalled > 0 {
            problems.push(format!("{} connection(s) stalled", self.stalled));
        }
        if self.timed_out {
            problems.push("the run was stopped at --max-duration".into());
        }
        problems
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Connections {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Messages {
    pub sent: u64,
    pub received: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    /// The mean, as k6's `avg`.
    pub avg: f64,
    pub p50: u64,
    pub p90: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad URL {0}: expected ws://host:port/path or wss://host:port/path")]
    Url(String),
    #[error("{0}")]
    Tls(String),
    #[error("bad --header {0:?}: expected Name: value")]
    Header(String),
    #[error(
        "{needed} file descriptors needed but the soft limit is {soft} (hard {hard}); {}",
        if needed <= hard { format!("raise it with `ulimit -n {needed}`") } else { format!("that is over the hard limit: use at most {} connections", hard.saturating_sub(64)) }
    )]
    FdLimit { needed: u64, soft: u64, hard: u64 },
    #[error("cannot write the report: {0}")]
    Report(std::io::Error),
}

/// Shared tallies of a run.
#[derive(Default)]
struct Tally {
    report: Report,
    histogram: Option<Histogram<u64>>,
}

impl Tally {
    fn failure(&mut self, reason: String) {
        self.report.connections.failed += 1;
        *self.report.connections.failures.entry(reason).or_default() += 1;
    }
    fn latency(&mut self, us: u64) {
        if let Some(h) = &mut self.histogram {
            let _ = h.record(us.max(1));
        }
    }
}

type Shared = Arc<Mutex<Tally>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// (soft, hard) open-file limits of this process.
fn fd_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line.split_whitespace().filter_map(|w| {
        w.parse::<u64>()
            .ok()
            .or((w == "unlimited").then_some(u64::MAX))
    });
    Some((numbers.next()?, numbers.next()?))
}

impl LoadError {
    /// 64 for bad usage (as every subcommand), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadError::Url(_) | LoadError::Tls(_) | LoadError::Header(_) => {
                super::client::EXIT_USAGE
            }
            LoadError::FdLimit { .. } | LoadError::Report(_) => 1,
        }
    }
}

/// `Name: value`, as `--header` takes it.
fn parse_header(header: &str) -> Option<(http::HeaderName, http::HeaderValue)> {
    let (name, value) = header.split_once(':')?;
    Some((name.trim().parse().ok()?, value.trim().parse().ok()?))
}

fn target(url: &str) -> Result<SocketAddr, LoadError> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| LoadError::Url(url.to_owned()))?;
    let authority = rest.split('/').next().unwrap_or("");
    use std::net::ToSocketAddrs;
    authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| LoadError::Url(url.to_owned()))
}

pub async fn run(args: LoadArgs) -> Result<Report, LoadError> {
    let addr = target(&args.url)?;
    let trust = Trust::new(args.ca_cert.as_deref()).map_err(LoadError::Tls)?;
    if let Some(bad) = args.headers.iter().find(|h| parse_header(h).is_none()) {
        return Err(LoadError::Header(bad.clone()));
    }
    let open_at_once = match args.scenario {
        Scenario::Storm => args.concurrency.min(args.connections),
        _ => args.connections,
    } as u64;
    if let Some((soft, hard)) = fd_limits() {
        let needed = open_at_once + 64;
        if needed > soft {
            return Err(LoadError::FdLimit { needed, soft, hard });
        }
    }
    if args.connections >= LARGE_RUN_CONNECTIONS {
        eprintln!(
            "wstrace load: {} connections is a large run; it stops at --max-duration ({})",
            args.connections,
            humantime::format_duration(args.max_duration)
        );
    }
    let shared: Shared = Arc::new(Mutex::new(Tally {
        report: Report {
            scenario: Some(args.scenario),
            url: args.url.clone(),
            ..Report::default()
        },
        histogram: Histogram::new_with_bounds(1, 60_000_000, 3).ok(),
    }));
    let started = Instant::now();
    let progress = Progress::start(shared.clone(), &args);
    let work = async {
        match args.scenario {
            Scenario::Storm => storm(&args, addr, &shared, &trust).await,
            Scenario::Throughput | Scenario::Sustained => {
                let tasks: Vec<_> = (0..args.connections)
                    .map(|i| {
                        let (args, shared, trust) = (args.clone(), shared.clone(), trust.clone());
                        tokio::spawn(connection(args, addr, i, shared, trust))
                    })
                    .collect();
                for task in tasks {
                    let _ = task.await;
                }
            }
        }
    };
    let timed_out = tokio::time::timeout(args.max_duration, work).await.is_err();
    progress.stop();
    let elapsed = started.elapsed().as_secs_f64();
    let mut tally = lock(&shared);
    let histogram = tally.histogram.take();
    let report = &mut tally.report;
    report.timed_out = timed_out;
    report.duration_s = elapsed;
    report.msgs_per_s = report.messages.received as f64 / elapsed.max(1e-9);
    if let Some(h) = histogram {
        report.latency_us = Latency {
            count: h.len(),
            avg: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        };
    }
    let report = std::mem::take(report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("report serializes");
        std::fs::write(path, text).map_err(LoadError::Report)?;
    }
    Ok(report)
}

fn source(args: &LoadArgs, addr: SocketAddr, i: usize) -> Option<IpAddr> {
    (args.source_ips > 0 && addr.ip().is_loopback() && addr.is_ipv4()).then(|| {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % args.source_ips as usize) as u8,
        ))
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(args: &LoadArgs, addr: SocketAddr, i: usize, trust: &Trust) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {}", e.kind()))?;
    if let Some(ip) = source(args, addr, i) {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind: {}", e.kind()))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let mut request = args
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    // Checked in `run`: every header parses.
    for (name, value) in args.headers.iter().filter_map(|h| parse_header(h)) {
        request.headers_mut().append(name, value);
    }
    // TLS for wss:// only; the connector is what the run trusts.
    let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(
        request,
        stream,
        None,
        Some(trust.websocket()),
    )
    .await
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            format!("http {}", r.status().as_u16())
        }
        other => format!("handshake: {other}"),
    })?;
    match ws.next().await {
        Some(Ok(Message::Text(_))) => Ok(ws),
        _ => Err("no welcome frame".into()),
    }
}

async fn close(mut ws: Ws, shared: &Shared) {
    let _ = ws.close(Some(super::normal_close(""))).await;
    while let Some(Ok(message)) = ws.next().await {
        if let Message::Close(frame) = message {
            // No code in the frame is recorded as 1005, "no status received".
            let code = frame.map_or(1005, |f| f.code.into());
            *lock(shared).report.close_codes.entry(code).or_default() += 1;
        }
    }
}

async fn storm(args: &LoadArgs, addr: SocketAddr, shared: &Shared, trust: &Trust) {
    let gate = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let permit = gate.clone().acquire_owned().await.expect("never closed");
        let (args, shared, trust) = (args.clone(), shared.clone(), trust.clone());
        tasks.push(tokio::spawn(async move {
            lock(&shared).report.connections.attempted += 1;
            let start = Instant::now();
            match open(&args, addr, i, &trust).await {
                Ok(ws) => {
                    {
                        let mut t = lock(&shared);
                        t.report.connections.ok += 1;
                        t.latency(start.elapsed().as_micros() as u64);
                    }
                    close(ws, &shared).await;
                }
                Err(reason) => lock(&shared).failure(reason),
            }
            drop(permit);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// One connection of the throughput or sustained scenario.
async fn connection(args: LoadArgs, addr: SocketAddr, i: usize, shared: Shared, trust: Trust) {
    lock(&shared).report.connections.attempted += 1;
    let ws = match open(&args, addr, i, &trust).await {
        Ok(ws) => ws,
        Err(reason) => return lock(&shared).failure(reason),
    };
    lock(&shared).report.connections.ok += 1;
    let (tx, rx) = ws.split();
    let flow = Flow {
        due: Arc::default(),
        window: Arc::new(tokio::sync::Semaphore::new(args.window.max(1))),
        refused: Arc::default(),
        stop: Arc::default(),
        shared,
    };
    let receiver = tokio::spawn(read_replies(rx, flow.clone()));
    let (tx, stalled) = watch_for_stalls(send_pings(tx, args, flow.clone()), &flow).await;
    // Wait (bounded) for the outstanding replies, then close. Refused
    // requests stay in `due`: they will not be answered.
    let drain_until = Instant::now() + Duration::from_secs(5);
    let unanswered = || (lock_due(&flow).len() as u64).saturating_sub(flow.refused.load(Relaxed));
    while !stalled && unanswered() > 0 && Instant::now() < drain_until && !receiver.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    flow.stop.notify_one();
    if let Ok(rx) = receiver.await
        && let Ok(ws) = tx.reunite(rx)
    {
        close(ws, &flow.shared).await;
    }
}

/// What one connection's sender and receiver share.
#[derive(Clone)]
struct Flow {
    /// When each unanswered ping was due (sustained) or sent (throughput).
    due: Arc<Mutex<HashMap<u64, Instant>>>,
    /// Room for pings in flight (`--window`); closed when the connection
    /// stalls, which stops the sender.
    window: Arc<tokio::sync::Semaphore>,
    /// Pings the server refused with an error frame: never answered.
    refused: Arc<AtomicU64>,
    /// Tells the receiver to stop reading.
    stop: Arc<tokio::sync::Notify>,
    shared: Shared,
}

fn lock_due(flow: &Flow) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
    flow.due.lock().unwrap_or_else(|e| e.into_inner())
}

type Sender = futures_util::stream::SplitSink<Ws, Message>;
type Receiver = futures_util::stream::SplitStream<Ws>;

/// Sends pings: `-m` of them within the window (throughput), or at the
/// connection's share of `--rate` for `--duration` (sustained, open loop).
async fn send_pings(mut tx: Sender, args: LoadArgs, flow: Flow) -> Sender {
    let total = match args.scenario {
        Scenario::Throughput => args.messages as u64,
        _ => u64::MAX,
    };
    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate.max(0.001));
    let end = Instant::now() + args.duration;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut id = 0u64;
    while id < total {
        let when = match args.scenario {
            Scenario::Sustained => {
                let tick = ticks.tick().await.into_std();
                if tick >= end {
                    break;
                }
                tick
            }
            _ => {
                // Closed when the connection stalls: stop sending.
                let Ok(permit) = flow.window.acquire().await else {
                    break;
                };
                permit.forget();
                Instant::now()
            }
        };
        lock_due(&flow).insert(id, when);
        let frame = format!(r#"{{"type":"ping","id":"{id}"}}"#);
        if tx.send(Message::Text(frame.into())).await.is_err() {
            break;
        }
        lock(&flow.shared).report.messages.sent += 1;
        id += 1;
    }
    tx
}

/// Reads replies until the server closes or `stop`: pongs are latencies,
/// error frames are counted by code.
async fn read_replies(mut rx: Receiver, flow: Flow) -> Receiver {
    loop {
        let message = tokio::select! {
            message = rx.next() => message,
            _ = flow.stop.notified() => break,
        };
        let Some(Ok(message)) = message else { break };
        match message {
            Message::Text(text) => on_reply(&text, &flow),
            Message::Close(frame) => {
                let code = frame.map_or(1005, |f| f.code.into());
                *lock(&flow.shared)
                    .report
                    .close_codes
                    .entry(code)
                    .or_default() += 1;
                break;
            }
            _ => {}
        }
    }
    rx
}

fn on_reply(text: &str, flow: &Flow) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    if v["type"] == "error" {
        // A refused request is never answered: count it, and let the next
        // one go.
        let code = v["code"].as_str().unwrap_or("unknown").to_owned();
        *lock(&flow.shared)
            .report
            .error_frames
            .entry(code)
            .or_default() += 1;
        flow.refused.fetch_add(1, Relaxed);
        flow.window.add_permits(1);
        return;
    }
    let Some(id) = v["id"].as_str().and_then(|s| s.parse::<u64>().ok()) else {
        return;
    };
    if let Some(sent) = lock_due(flow).remove(&id) {
        let mut t = lock(&flow.shared);
        t.report.messages.received += 1;
        t.latency(sent.elapsed().as_micros() as u64);
        flow.window.add_permits(1);
    }
}

/// Runs the sender; one waiting on replies that never come (its requests
/// refused, the server stuck) is stopped after STALL_TIMEOUT without
/// progress. Returns the sender's half and whether it stalled.
async fn watch_for_stalls(
    sender: impl std::future::Future<Output = Sender>,
    flow: &Flow,
) -> (Sender, bool) {
    let progress = |shared: &Shared| {
        let t = lock(shared);
        t.report.messages.received + t.report.error_frames.values().sum::<u64>()
    };
    let mut sender = std::pin::pin!(sender);
    let mut last = (progress(&flow.shared), Instant::now());
    let mut stalled = false;
    loop {
        tokio::select! {
            tx = &mut sender => return (tx, stalled),
            () = tokio::time::sleep(Duration::from_millis(250)), if !stalled => {
                let now = progress(&flow.shared);
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() >= STALL_TIMEOUT {
                    lock(&flow.shared).report.stalled += 1;
                    // The sender stops at its next wait for room.
                    stalled = true;
                    flow.window.close();
                }
            }
        }
    }
}

/// A one-line progress bar on stderr, when stderr is a terminal; drawn a
/// last time when the run ends, so it finishes at what was done (100% for
/// a run that completed).
struct Progress(Option<(tokio::task::JoinHandle<()>, Draw)>);

/// Draws the progress bar once.
type Draw = std::sync::Arc<dyn Fn() + Send + Sync>;

impl Progress {
    fn start(shared: Shared, args: &LoadArgs) -> Self {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let (scenario, connections, messages, duration) = (
            args.scenario,
            args.connections,
            args.messages,
            args.duration,
        );
        let started = Instant::now();
        let draw = move || {
            let (ok, failed, received) = {
                let t = lock(&shared);
                (
                    t.report.connections.ok,
                    t.report.connections.failed,
                    t.report.messages.received,
                )
            };
            let done = match scenario {
                Scenario::Storm => (ok + failed) as f64 / connections.max(1) as f64,
                Scenario::Throughput => received as f64 / (connections * messages).max(1) as f64,
                Scenario::Sustained => {
                    started.elapsed().as_secs_f64() / duration.as_secs_f64().max(1e-9)
                }
            };
            let done = done.clamp(0.0, 1.0);
            let filled = (done * 30.0).round() as usize;
            eprint!(
                "\r[{}{}] {:>3.0}%  conns ok {ok} failed {failed}  msgs {received}",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                done * 100.0
            );
        };
        let draw: Draw = std::sync::Arc::new(draw);
        let ticking = draw.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                ticking();
            }
        });
        Self(Some((task, draw)))
    }

    fn stop(self) {
        if let Some((task, draw)) = self.0 {
            task.abort();
            draw();
            eprintln!();
        }
    }
}

/// The human report.
pub fn render(report: &Report) -> String {
    let c = &report.connections;
    let l = &report.latency_us;
    let mut out = format!(
        "scenario      {:?}\nconnections   attempted {}  ok {}  failed {}\n",
        report.scenario.unwrap_or(Scenario::Throughput),
        c.attempted,
        c.ok,
        c.failed
    );
    for (reason, n) in &c.failures {
        out.push_str(&format!("  failed: {reason}: {n}\n"));
    }
    out.push_str(&format!(
        "messages      sent {}  received {}  ({:.0} msgs/s over {:.2} s)\n",
        report.messages.sent, report.messages.received, report.msgs_per_s, report.duration_s
    ));
    // Storm times the upgrade handshake; the others a message's round trip.
    let what = match report.scenario {
        Some(Scenario::Storm) => "handshake (µs)",
        _ => "round trip (µs)",
    };
    if l.count == 0 {
        out.push_str(&format!("{what}  -  (n=0)\n"));
    } else {
        out.push_str(&format!(
            "{what}  avg {:.0}  p50 {}  p90 {}  p95 {}  p99 {}  p99.9 {}  max {}  (n={})\n",
            l.avg, l.p50, l.p90, l.p95, l.p99, l.p999, l.max, l.count
        ));
    }
    let codes: Vec<String> = report
        .close_codes
        .iter()
        .map(|(c, n)| format!("{c}×{n}"))
        .collect();
    out.push_str(&format!(
        "close codes   {}\n",
        if codes.is_empty() {
            "-".into()
        } else {
            codes.join(" ")
        }
    ));
    if !report.error_frames.is_empty() {
        let errors: Vec<String> = report
            .error_frames
            .iter()
            .map(|(code, n)| format!("{code}×{n}"))
            .collect();
        out.push_str(&format!("error frames  {}\n", errors.join(" ")));
    }
    if let Some(limited) = report.error_frames.get("rate_limited") {
        out.push_str(&format!(
            "hint          the server refused {limited} message(s) as rate_limited: each connection \
             sent faster than the server's --messages-per-second allows; send slower \
             (--scenario sustained --rate N) or raise the server's --messages-per-second\n"
        ));
    }
    if report.stalled > 0 {
        out.push_str(&format!(
            "stalled       {} connection(s): no reply for {} s\n",
            report.stalled,
            STALL_TIMEOUT.as_secs()
        ));
    }
    if report.timed_out {
        out.push_str("(stopped at --max-duration)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(target("ws://127.0.0.1:8080/ws").unwrap().port(), 8080);
        assert!(target("http://x/ws").is_err());
    }

    #[test]
    fn fd_limits_are_read() {
        let (soft, hard) = fd_limits().unwrap();
        assert!(soft <= hard);
    }
}
