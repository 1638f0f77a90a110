//! `WSTRACE_BENCH_ONLY=scale`: many traced chat sessions on several
//! instances behind one real redis-server, spans exported to a real
//! collector (rotel, blackhole exporter), and the same per-instance load on
//! one instance beside it.
//!
//! Each process may hold 20,000 descriptors, so the clients run in worker
//! processes (this binary, `scale-client`), at most `PER_WORKER` sessions
//! each, from 127.0.0.x source addresses. Session `i` lives on instance
//! `i % N` and joins channel `(i / N) % channels`, so every channel has
//! subscribers on every instance: each publish crosses instances. Latency
//! is end to end, from the publisher's send (wall clock, in the content)
//! to each subscriber's read.
//!
//! Size: `WSTRACE_SCALE_SESSIONS` (100000), `WSTRACE_SCALE_INSTANCES` (6),
//! `WSTRACE_SCALE_RATE` publishes/s in all (200), `WSTRACE_SCALE_SECONDS`
//! (20); 100 subscribers per channel. `WSTRACE_SCALE_REDIS_SHARDS=3`: a
//! real Redis Cluster of that many masters instead of one node (sharded
//! pub/sub), for both runs.

use crate::*;
use std::io::{BufRead, Write};

const PER_CHANNEL: usize = 100;
const PER_WORKER: usize = 15_000;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// What one worker is told (as its argument, JSON).
#[derive(serde::Serialize, serde::Deserialize)]
struct WorkerPlan {
    index: usize,
    instances: Vec<SocketAddr>,
    sessions: std::ops::Range<usize>,
    channels: usize,
    rate: f64,
    seconds: u64,
}

/// What one worker reports (one JSON line on stdout).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct WorkerReport {
    opened: usize,
    published: Vec<usize>,
    received: u64,
    latency_us: Vec<u64>,
}

/// `harness scale-client <plan>`: opens its sessions, says `ready`, waits
/// for a line on stdin, publishes for the plan's seconds, waits for the
/// deliveries to drain, and prints its report.
pub(crate) fn scale_client(plan: &str) {
    let plan: WorkerPlan = serde_json::from_str(plan).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run_worker(plan));
}

async fn run_worker(plan: WorkerPlan) {
    use tokio_tungstenite::tungstenite::Message;
    let latency = Arc::new(std::sync::Mutex::new(Vec::new()));
    let received = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    let mut opened = 0;
    for (k, i) in plan.sessions.clone().enumerate() {
        let addr = plan.instances[i % plan.instances.len()];
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(source_ip(plan.index * 7 + k), 0))
            .unwrap();
        let Ok(stream) = socket.connect(addr).await else {
            continue;
        };
        let Ok((mut ws, _)) = client_async(format!("ws://{addr}/ws"), stream).await else {
            continue;
        };
        ws.next().await.unwrap().unwrap(); // welcome
        let channel = (i / plan.instances.len()) % plan.channels;
        let subscribe = serde_json::json!({"type": "subscribe", "channel": format!("c{channel}")});
        ws.send(Message::Text(subscribe.to_string().into()))
            .await
            .unwrap();
        ws.next().await.unwrap().unwrap(); // subscribed
        let (writer, mut reader) = ws.split();
        let (latency, received) = (latency.clone(), received.clone());
        tokio::spawn(async move {
            while let Some(Ok(message)) = reader.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["type"] != "message" {
                    continue;
                }
                let sent: u64 = frame["content"].as_str().unwrap().parse().unwrap();
                received.fetch_add(1, Ordering::Relaxed);
                latency
                    .lock()
                    .unwrap()
                    .push(unix_ns().saturating_sub(sent) / 1000);
            }
        });
        writers.push((writer, channel));
        opened += 1;
    }
    println!("ready {opened}");
    let mut go = String::new();
    tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut go))
        .await
        .unwrap()
        .unwrap();
    let mut published = vec![0usize; plan.channels];
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate));
    let started = Instant::now();
    let mut next = 0;
    while started.elapsed() < Duration::from_secs(plan.seconds) && !writers.is_empty() {
        ticks.tick().await;
        let at = next % writers.len();
        let (writer, channel) = &mut writers[at];
        next += 1;
        let publish = serde_json::json!({"type": "publish", "channel": format!("c{channel}"), "content": unix_ns().to_string()});
        if writer
            .send(Message::Text(publish.to_string().into()))
            .await
            .is_ok()
        {
            published[*channel] += 1;
        }
    }
    // Deliveries still in flight belong to the window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut latency_us = std::mem::take(&mut *latency.lock().unwrap());
    latency_us.sort_unstable();
    let report = WorkerReport {
        opened,
        published,
        received: received.load(Ordering::Relaxed),
        latency_us,
    };
    println!("{}", serde_json::to_string(&report).unwrap());
    std::io::stdout().flush().unwrap();
}

/// A GET of `/metrics`, parsed to name → value (label sets summed).
fn metrics_of(addr: SocketAddr) -> std::collections::HashMap<String, f64> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let mut values = std::collections::HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("wstrace_")) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap().to_owned();
        *values.entry(name).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    values
}

struct ScaleRun {
    instances: usize,
    sessions: usize,
    opened: usize,
    deliveries: u64,
    expected: u64,
    deliveries_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_delivery: f64,
    rss_mib: f64,
    rss_kib_per_session: f64,
    log_lines: (f64, f64),
    spans: (f64, f64),
}

/// One redis-server, or a Redis Cluster of `shards` masters.
struct Broker {
    nodes: Vec<Child>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Broker {
    fn start(program: &Path, shards: usize) -> Self {
        if shards == 0 {
            let (node, port) = start_redis(program);
            return Self {
                nodes: vec![node],
                url: format!("redis://127.0.0.1:{port}"),
                _dir: None,
            };
        }
        let (nodes, url, dir) = start_redis_cluster(program, shards);
        Self {
            nodes,
            url,
            _dir: Some(dir),
        }
    }

    fn stop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

fn run_scale(redis_program: &Path, sessions: usize, instances: usize, rate: f64) -> ScaleRun {
    let seconds = env_or("WSTRACE_SCALE_SECONDS", 20) as u64;
    let channels = (sessions / PER_CHANNEL).max(1);
    let work = tempfile::tempdir().unwrap();
    let (mut collector, endpoint, _) = start_collector_quiet(work.path());
    let mut redis = Broker::start(redis_program, env_or("WSTRACE_SCALE_REDIS_SHARDS", 0));
    let url = redis.url.clone();
    let servers: Vec<Server> = (0..instances)
        .map(|i| {
            Server::wstrace(Kind::WstraceFull, |command| {
                traced(
                    command,
                    &endpoint,
                    wstrace::state::DEFAULT_MESSAGE_SAMPLE_RATIO,
                )
                .args(["--instance-id", &format!("scale-{i}")])
                .args(["--redis-url", &url])
                .args(["--max-sessions-per-ip", "0"]);
            })
        })
        .collect();
    let idle_rss: u64 = servers.iter().map(Server::rss_kib).sum();
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let workers_needed = sessions.div_ceil(PER_WORKER);
    let mut workers: Vec<Child> = (0..workers_needed)
        .map(|w| {
            let start = w * sessions / workers_needed;
            let end = (w + 1) * sessions / workers_needed;
            let plan = WorkerPlan {
                index: w,
                instances: addrs.clone(),
                sessions: start..end,
                channels,
                rate: rate / workers_needed as f64,
                seconds,
            };
            pinned(1)
                .arg(std::env::current_exe().unwrap())
                .args(["scale-client", &serde_json::to_string(&plan).unwrap()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a scale client")
        })
        .collect();
    let mut outputs: Vec<_> = workers
        .iter_mut()
        .map(|w| std::io::BufReader::new(w.stdout.take().unwrap()))
        .collect();
    let mut opened = 0;
    for output in &mut outputs {
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        opened += line
            .trim()
            .strip_prefix("ready ")
            .unwrap()
            .parse::<usize>()
            .unwrap();
    }
    eprintln!("scale: {opened} of {sessions} sessions open on {instances} instance(s)");
    let rss: u64 = servers.iter().map(Server::rss_kib).sum();
    let cpu_before: Duration = servers.iter().map(Server::cpu).sum();
    for worker in &mut workers {
        writeln!(worker.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut reports = Vec::new();
    for output in &mut outputs {
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        reports.push(serde_json::from_str::<WorkerReport>(&line).unwrap());
    }
    let cpu = servers.iter().map(Server::cpu).sum::<Duration>() - cpu_before;
    // Every publish reaches every subscriber of its channel.
    let mut published = vec![0u64; channels];
    for report in &reports {
        for (c, n) in report.published.iter().enumerate() {
            published[c] += *n as u64;
        }
    }
    let subscribers_of = |c: usize| {
        (0..sessions)
            .filter(|i| (i / instances) % channels == c)
            .count() as u64
    };
    let expected: u64 = published
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| n * subscribers_of(c))
        .sum();
    let deliveries: u64 = reports.iter().map(|r| r.received).sum();
    let mut latency: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.latency_us.iter().copied())
        .collect();
    latency.sort_unstable();
    // Telemetry is flushed at SIGTERM: read its counters after a stop.
    let mut servers = servers;
    let (mut lines, mut spans) = ((0.0, 0.0), (0.0, 0.0));
    for server in &servers {
        let m = metrics_of(server.addr);
        lines.0 += m
            .get("wstrace_log_lines_written_total")
            .copied()
            .unwrap_or(0.0);
        lines.1 += m
            .get("wstrace_log_lines_dropped_total")
            .copied()
            .unwrap_or(0.0);
        spans.0 += m
            .get("wstrace_spans_exported_total")
            .copied()
            .unwrap_or(0.0);
        spans.1 += m.get("wstrace_spans_dropped_total").copied().unwrap_or(0.0);
    }
    for worker in &mut workers {
        let _ = worker.wait();
    }
    for server in &mut servers {
        server.stop();
    }
    redis.stop();
    let _ = collector.kill();
    ScaleRun {
        instances,
        sessions,
        opened,
        deliveries,
        expected,
        // Over the publishing window (the drain after it is not traffic).
        deliveries_per_s: deliveries as f64 / seconds as f64,
        p50_ms: percentile(&latency, 50.0) as f64 / 1000.0,
        p99_ms: percentile(&latency, 99.0) as f64 / 1000.0,
        cpu_us_per_delivery: cpu.as_secs_f64() * 1e6 / deliveries.max(1) as f64,
        rss_mib: rss as f64 / 1024.0,
        rss_kib_per_session: (rss.saturating_sub(idle_rss)) as f64 / opened.max(1) as f64,
        log_lines: lines,
        spans,
    }
}

/// rotel with the blackhole exporter and no debug log: it takes every span
/// and keeps none, so the collector is not what limits the run.
fn start_collector_quiet(dir: &Path) -> (Child, String, PathBuf) {
    start_collector_with(dir, false)
}

pub(crate) async fn scale(_plan: &Plan) -> String {
    let Some(redis_program) = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        return "scale benchmark skipped: redis-server is not installed".into();
    };
    let sessions = env_or("WSTRACE_SCALE_SESSIONS", 100_000);
    let instances = env_or("WSTRACE_SCALE_INSTANCES", 6);
    let rate = env_or("WSTRACE_SCALE_RATE", 200) as f64;
    let (program, per) = (redis_program.clone(), sessions / instances);
    let runs = tokio::task::spawn_blocking(move || {
        // One instance with one instance's share of the sessions and of
        // the publishes, then the whole cluster.
        vec![
            run_scale(&program, per, 1, rate / instances as f64),
            run_scale(&program, sessions, instances, rate),
        ]
    })
    .await
    .unwrap();
    use std::fmt::Write;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "| instances | sessions open | deliveries (of expected) | deliveries/s | p50 ms | p99 ms | server CPU µs per delivery | server RSS MiB | KiB per session | log lines written / dropped | spans exported / dropped |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let _ = writeln!(
            report,
            "| {} | {} of {} | {} ({}) | {:.0} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} / {:.0} | {:.0} / {:.0} |",
            r.instances,
            r.opened,
            r.sessions,
            r.deliveries,
            r.expected,
            r.deliveries_per_s,
            r.p50_ms,
            r.p99_ms,
            r.cpu_us_per_delivery,
            r.rss_mib,
            r.rss_kib_per_session,
            r.log_lines.0,
            r.log_lines.1,
            r.spans.0,
            r.spans.1,
        );
    }
    let _ = writeln!(
        report,
        "\n{PER_CHANNEL} subscribers per channel, {rate} publishes/s in all for {} s, default message sample ratio, spans to rotel; clients in processes of at most {PER_WORKER} sessions; Redis: {}",
        env_or("WSTRACE_SCALE_SECONDS", 20),
        match env_or("WSTRACE_SCALE_REDIS_SHARDS", 0) {
            0 => "one node".to_string(),
            shards => format!("a Redis Cluster of {shards} masters (sharded pub/sub)"),
        }
    );
    report
}
