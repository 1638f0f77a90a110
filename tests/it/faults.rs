//! Faults from outside the server, on the real binary: each has a defined
//! outcome, and none stops serving or loses a line silently.

use crate::common::hostile_collector::{Answer, HostileCollector};
use crate::common::*;
use std::time::{Duration, Instant};

/// One `wstrace client` session with a fresh trace id.
fn one_session(url: &str) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(["client", url, "--send", "x", "--expect", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn exporting_to(collector: &HostileCollector) -> Wstrace {
    Wstrace::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        ("OTEL_BSP_SCHEDULE_DELAY", "20"),
        ("WSTRACE_TELEMETRY_REPORT_INTERVAL", "1s"),
    ])
}

/// A collector that refuses every export (500, or 429 with its retries):
/// at most one warning per `--telemetry-report-interval`, naming the
/// endpoint and the reason, and no line of the SDK's own.
#[test]
fn a_collector_refusing_every_export_is_reported_once_per_interval() {
    for status in [500, 429] {
        let collector = HostileCollector::start(Answer::Status(status));
        let server = exporting_to(&collector);
        let url = server.url();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            one_session(&url);
        }
        eventually("exports refused", Duration::from_secs(10), || {
            collector
                .requests
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 10
        });
        server.sigterm();
        let (code, _, log_dir) = server.wait();
        assert_eq!(code, Some(0));
        let lines = read_log_lines(log_dir.path());
        for line in &lines {
            let target = line["target"].as_str().unwrap_or("");
            assert!(target.starts_with("wstrace"), "{status}: {line}");
            assert!(!line["msg"].as_str().unwrap_or("").is_empty(), "{line}");
        }
        let warnings: Vec<_> = lines
            .iter()
            .filter(|l| l["level"].as_u64() >= Some(40))
            .collect();
        let reports = with_msg(&lines, wstrace::events::SpansDropped::MESSAGE);
        assert!(!reports.is_empty(), "{status}: the drops were reported");
        // ~3 s of sessions, a report a second, and shutdown's own.
        assert!(warnings.len() <= 6, "{status}: {} warnings", warnings.len());
        for report in reports {
            let reason = report["reason"].as_str().unwrap();
            assert!(reason.contains(&format!("HTTP {status}")), "{reason}");
            assert!(reason.contains(&collector.endpoint()), "{reason}");
        }
    }
}

/// A collector answering 200 with an endless body: the exporter reads at
/// most `OTLP_RESPONSE_MAX_BYTES` of it, so memory stays flat and the
/// collector cannot push more than the sockets' buffers hold.
#[test]
fn a_collector_streaming_an_endless_answer_cannot_grow_memory() {
    let collector = HostileCollector::start(Answer::EndlessBody);
    let server = exporting_to(&collector);
    let before = server_rss_kib(server.child.id());
    for _ in 0..5 {
        one_session(&server.url());
    }
    eventually("an export answered", Duration::from_secs(10), || {
        collector
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    });
    std::thread::sleep(Duration::from_secs(2));
    let sent = collector
        .bytes_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    let after = server_rss_kib(server.child.id());
    eprintln!("endless body: exporter took {sent} bytes; RSS {before} → {after} KiB");
    // Loopback moves GiBs in 2 s: only the cap keeps this small.
    assert!(sent < 64 * 1024 * 1024, "the exporter took {sent} bytes");
    assert!(after < before + 64 * 1024, "RSS {before} → {after} KiB");
    // Still serving, and the spans counted as exported (the status said so).
    one_session(&server.url());
    assert!(scrape(&server.addr)["wstrace_spans_exported_total"] > 0.0);
    server.sigterm();
    assert_eq!(server.wait().0, Some(0));
}

/// SIGTERM, then the exit (off the async threads), which must be 0;
/// returns the server's own log directory.
async fn stopped(server: Wstrace) -> tempfile::TempDir {
    server.sigterm();
    let (code, _, log_dir) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    log_dir
}

/// Opens `count` sessions one after another, each echoing once.
async fn sessions(addr: &str, count: usize) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    for i in 0..count {
        let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        client.next().await.unwrap().unwrap(); // welcome
        let echo = format!(
            r#"{{"type":"echo","content":"line {i} {}"}}"#,
            "p".repeat(200)
        );
        client.send(Message::text(echo)).await.unwrap();
        client.next().await.unwrap().unwrap();
        client.close(None).await.unwrap();
        while let Some(Ok(_)) = client.next().await {}
    }
}

/// A stdout nobody reads fills its pipe and its buffer; after its stall
/// bound its lines are dropped and counted, while serving goes on and the
/// file keeps every line, and the loss is reported in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdout_nobody_reads_stops_neither_serving_nor_the_file() {
    let server = Wstrace::start_with_stuck_stdout(&[
        ("WSTRACE_LOG_BUFFER_BYTES", "65536"),
        ("WSTRACE_TELEMETRY_REPORT_INTERVAL", "300ms"),
    ]);
    let addr = server.addr.clone();
    // ~1 KiB of lines a session: well past the 64 KiB pipe and the 64 KiB
    // buffer.
    for _ in 0..4 {
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(60), sessions(&addr, 150))
            .await
            .expect("sessions stalled");
        let health = http(addr.parse().unwrap(), "GET", "/healthz", &[], None).await;
        assert_eq!(health.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }
    let metrics = metrics_of(&addr).await;
    assert!(metrics[r#"wstrace_log_lines_dropped_total{output="stdout"}"#] > 0.0);
    assert_eq!(metrics[DROPPED_TO_FILE], 0.0);
    tokio::time::sleep(Duration::from_millis(700)).await; // one report
    // Exit 0: shutdown does not wait on the stuck stdout.
    let log_dir = stopped(server).await;
    let lines = read_log_lines(log_dir.path());
    assert_eq!(
        with_msg(&lines, wstrace::events::SessionClosed::MESSAGE).len(),
        600
    );
    let reports = with_msg(&lines, wstrace::events::LogLinesDropped::MESSAGE);
    assert!(
        !reports.is_empty(),
        "the stdout loss is reported in the file"
    );
    for report in reports {
        assert_eq!(report["output"], "stdout");
        assert!(report["cause"].as_str().unwrap().contains("took nothing"));
    }
    let last = lines.last().unwrap();
    assert_eq!(last["msg"], wstrace::events::TelemetryFlushing::MESSAGE);
    assert_eq!(
        last["log_lines_before"].as_u64(),
        Some(lines.len() as u64 - 1)
    );
    assert_eq!(last["log_lines_dropped"], 0);
}

/// A tmpfs of `size` mounted on `dir` for the test's life (root only).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted && std::env::var_os("WSTRACE_REQUIRE_TOOLS").is_some() {
            panic!("cannot mount a tmpfs (the test needs root)");
        }
        mounted.then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

async fn metrics_of(addr: &str) -> std::collections::HashMap<String, f64> {
    parse_prometheus(
        &http(addr.parse().unwrap(), "GET", "/metrics", &[], None)
            .await
            .body,
    )
}

const DROPPED_TO_FILE: &str = r#"wstrace_log_lines_dropped_total{output="file"}"#;

/// A full disk, then room again: no torn line (every line in the file is
/// whole JSON), the lines the disk refused are counted exactly (what the
/// file holds is what was counted written), and the cause is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_leaves_no_torn_line_and_counts_exactly() {
    let base = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&base.path().join("disk"), "1m") else {
        eprintln!("skipped: no tmpfs");
        return;
    };
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![b'x'; 900 * 1024]).unwrap();
    let log_dir = disk.0.join("logs");
    let server = Wstrace::start(&[
        ("WSTRACE_LOG_DIR", log_dir.to_str().unwrap()),
        ("WSTRACE_TELEMETRY_REPORT_INTERVAL", "300ms"),
    ]);
    let addr = server.addr.clone();
    let mut rounds = 0;
    while metrics_of(&addr).await[DROPPED_TO_FILE] == 0.0 {
        rounds += 1;
        assert!(rounds < 50, "the disk never filled");
        sessions(&addr, 20).await;
    }
    std::fs::remove_file(&filler).unwrap();
    sessions(&addr, 20).await;
    tokio::time::sleep(Duration::from_millis(700)).await; // one report
    let dropped = metrics_of(&addr).await[DROPPED_TO_FILE];
    stopped(server).await;
    // read_log_lines fails on any line that is not one JSON object.
    let lines = read_log_lines(&log_dir);
    let last = lines.last().unwrap();
    assert_eq!(last["msg"], wstrace::events::TelemetryFlushing::MESSAGE);
    assert_eq!(
        last["log_lines_before"].as_u64(),
        Some(lines.len() as u64 - 1)
    );
    let lost = last["log_lines_dropped"].as_u64().unwrap();
    assert!(
        lost as f64 >= dropped && dropped > 0.0,
        "{lost} vs {dropped}"
    );
    let reports = with_msg(&lines, wstrace::events::LogLinesDropped::MESSAGE);
    assert!(
        !reports.is_empty(),
        "the loss is reported once there is room"
    );
    assert_eq!(reports[0]["output"], "file");
    assert!(reports[0]["cause"].as_str().unwrap().contains("ENOSPC"));
    drop(disk);
}

/// The log directory deleted under a running server: the next batch sees
/// the open file's link count at 0, starts a new directory and file, and
/// says so there; no line is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_log_directory_is_recreated_and_loses_nothing() {
    let base = tempfile::tempdir().unwrap();
    let log_dir = base.path().join("logs");
    let server = Wstrace::start(&[
        ("WSTRACE_LOG_DIR", log_dir.to_str().unwrap()),
        ("WSTRACE_TELEMETRY_REPORT_INTERVAL", "300ms"),
    ]);
    let addr = server.addr.clone();
    sessions(&addr, 5).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    std::fs::remove_dir_all(&log_dir).unwrap();
    sessions(&addr, 10).await;
    tokio::time::sleep(Duration::from_millis(700)).await; // one report
    stopped(server).await;
    let lines = read_log_lines(&log_dir);
    assert_eq!(
        with_msg(&lines, wstrace::events::SessionClosed::MESSAGE).len(),
        10
    );
    assert_eq!(
        with_msg(&lines, wstrace::events::LogFileRecreated::MESSAGE).len(),
        1
    );
    let last = lines.last().unwrap();
    assert_eq!(last["log_lines_dropped"], 0);
}

/// Connections pipelining requests with a tiny receive buffer and never
/// reading: each is cut once a response write makes no progress for
/// `--write-timeout`, and their slots under the per-address cap come back.
#[tokio::test]
async fn http_connections_that_never_read_are_cut_at_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let mut server = TestServer::start_with_config(wstrace::state::ServerConfig {
        limits: wstrace::limits::Limits {
            write_timeout: Duration::from_secs(1),
            ..test_limits()
        },
        ..test_config()
    })
    .await;
    let request = format!(
        "GET /explorer/app.js HTTP/1.1\r\nhost: {}\r\n\r\n",
        server.addr
    )
    .repeat(200);
    let mut held = Vec::new();
    for _ in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(2048).unwrap();
        let mut stream = socket.connect(server.addr).await.unwrap();
        // The requests fit the server's buffers; the answers do not fit ours.
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(request.as_bytes()))
            .await;
        held.push(stream);
    }
    let caps = &server.state.caps.connections_per_ip;
    let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert!(caps.open(&local) >= 20, "{}", caps.open(&local));
    let deadline = Instant::now() + Duration::from_secs(10);
    while caps.open(&local) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} never-reading connections still open",
            caps.open(&local)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    let health = http(server.addr, "GET", "/healthz", &[], None).await;
    assert_eq!(health.status, 200);
    server.stop().await;
}

/// Connections of any kind count toward the per-address cap: past it, a
/// new connection gets a 429 in the JSON error shape at once, and one
/// more is allowed as soon as one closes.
#[tokio::test]
async fn connections_past_the_per_address_cap_get_429_at_accept() {
    let mut server = TestServer::start_with_config(wstrace::state::ServerConfig {
        limits: wstrace::limits::Limits {
            max_sessions_per_ip: 5,
            ..test_limits()
        },
        ..test_config()
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..5 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let caps = server.state.caps.connections_per_ip.clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while caps.open(&local) < 5 {
        assert!(Instant::now() < deadline, "accepted {}", caps.open(&local));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = http(server.addr, "GET", "/healthz", &[], None).await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "too_many_connections");
    idle.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while caps.open(&local) >= 5 {
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        http(server.addr, "GET", "/healthz", &[], None).await.status,
        200
    );
    drop(idle);
    server.stop().await;
    let m = parse_prometheus(&wstrace::http::metrics_text(&server.state));
    assert_eq!(
        m[r#"wstrace_upgrades_rejected_total{reason="per_ip_connections"}"#],
        1.0
    );
}
