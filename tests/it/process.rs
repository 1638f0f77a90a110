//! The real `wstrace` binary as a child process: real SIGTERM, real stdout,
//! and spans exported over OTLP to a real collector (rotel, from PyPI;
//! `scripts/test.sh` installs it and sets `ROTEL_AGENT`).

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use wstrace::auth::{JwtVerifier, Secret};

const JWT_SECRET: &str = "process-jwt-secret-5d1c";
const ADMIN_TOKEN: &str = "process-admin-token-9e77";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_1001_and_flushes_every_line() {
    let server = Wstrace::start(&[]);
    let mut sessions = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..200 {
        let (mut client, _) = tokio_tungstenite::connect_async(server.url())
            .await
            .unwrap();
        let welcome = next_json(&mut client).await;
        sessions.push(welcome["session_id"].as_str().unwrap().to_owned());
        send_json(&mut client, json!({"type": "echo", "content": "x"})).await;
        assert_eq!(next_json(&mut client).await["type"], "echo");
        readers.push(tokio::spawn(async move { next_close(&mut client).await }));
    }
    server.sigterm();
    for reader in readers {
        assert_eq!(
            reader.await.unwrap(),
            (1001, "server shutting down".to_owned())
        );
    }
    let (code, stdout, log_dir) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "exit code");

    let file_lines = read_log_lines(log_dir.path());
    // stdout carries the same JSON lines as the file.
    let stdout_lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(stdout_lines.len(), file_lines.len());
    for session in &sessions {
        let closed: Vec<_> = lines_of_session(&file_lines, session)
            .into_iter()
            .filter(|l| l["msg"] == wstrace::events::SessionClosed::MESSAGE)
            .collect();
        assert_eq!(closed.len(), 1, "{session}");
        assert_eq!(closed[0]["closed_by"], "shutdown");
        assert_eq!(closed[0]["close_code"], 1001);
        assert_eq!(closed[0]["messages_in"], 1);
    }
    let msgs: Vec<&str> = file_lines
        .iter()
        .map(|l| l["msg"].as_str().unwrap())
        .collect();
    let signal = msgs
        .iter()
        .position(|m| *m == "shutdown requested")
        .unwrap();
    let last_closed = msgs
        .iter()
        .rposition(|m| *m == wstrace::events::SessionClosed::MESSAGE)
        .unwrap();
    assert!(signal < last_closed);
    assert_eq!(
        msgs.last(),
        Some(&wstrace::events::TelemetryFlushing::MESSAGE)
    );
    // The last line counts the lines before it: all of them are in the file.
    let last = file_lines.last().unwrap();
    assert_eq!(
        last["log_lines_before"].as_u64(),
        Some(file_lines.len() as u64 - 1)
    );
}

/// Polls until `f` is true, with a deadline.
fn traced_client(url: &str, trace: &str) {
    let parent = format!("00-{trace}-b7ad6b7169203331-01");
    let out = wstrace(&[
        "client",
        url,
        "--traceparent",
        &parent,
        "--send",
        "x",
        "--expect",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn collector_down_then_up_then_killed_never_stops_the_server_over_http() {
    collector_down_then_up_then_killed("http/protobuf");
}

/// The gRPC exporter is wstrace's own (telemetry/otlp): the same outcomes.
#[test]
fn collector_down_then_up_then_killed_never_stops_the_server_over_grpc() {
    collector_down_then_up_then_killed("grpc");
}

fn collector_down_then_up_then_killed(protocol: &str) {
    // The collector's ports, with nothing on them yet.
    let (grpc_port, http_port) = (free_port(), free_port());
    let port = if protocol == "grpc" {
        grpc_port
    } else {
        http_port
    };
    let server = Wstrace::start(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("WSTRACE_TELEMETRY_REPORT_INTERVAL", "300ms"),
    ]);
    let url = server.url();
    // 1. Down at start: sessions work, spans are counted as dropped.
    for i in 0..5 {
        traced_client(&url, &format!("{:032x}", 0xa000 + i));
    }
    eventually("dropped spans counted", Duration::from_secs(20), || {
        scrape(&server.addr)["wstrace_spans_dropped_total"] > 0.0
    });
    // 2. The collector comes up on that port: export resumes.
    let collector = Collector::start_on(grpc_port, http_port);
    let resumed = "b0000000000000000000000000000001";
    eventually("export resumed", Duration::from_secs(30), || {
        traced_client(&url, resumed);
        collector.spans().iter().any(|s| s.trace_id == resumed)
    });
    // 3. Killed mid-run: still serving, drops counted again.
    let dropped_before = scrape(&server.addr)["wstrace_spans_dropped_total"];
    drop(collector);
    for i in 0..5 {
        traced_client(&url, &format!("{:032x}", 0xc000 + i));
    }
    eventually("drops after the kill", Duration::from_secs(20), || {
        scrape(&server.addr)["wstrace_spans_dropped_total"] > dropped_before
    });
    let queued = scrape(&server.addr)["wstrace_spans_queued"];
    assert!(
        queued < 16.0 * 1024.0,
        "the export queue is bounded: {queued}"
    );

    server.sigterm();
    let (code, _, log_dir) = server.wait();
    assert_eq!(code, Some(0));
    let lines = read_log_lines(log_dir.path());
    let warnings: Vec<_> = lines
        .iter()
        .filter(|l| l["msg"] == wstrace::events::SpansDropped::MESSAGE)
        .collect();
    assert!(!warnings.is_empty(), "the drops were logged");
    // At most one warning per interval (300 ms) over the run.
    let times: Vec<std::time::SystemTime> = warnings
        .iter()
        .map(|w| {
            humantime::parse_rfc3339_weak(w["time"].as_str().unwrap().trim_end_matches('Z'))
                .unwrap()
        })
        .collect();
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap();
        assert!(
            gap >= Duration::from_millis(250),
            "two warnings {gap:?} apart"
        );
    }
}

async fn traced_session_reaches_collector(protocol: &str) {
    let collector = Collector::start();
    let endpoint = match protocol {
        "grpc" => format!("http://127.0.0.1:{}", collector.grpc),
        _ => format!("http://127.0.0.1:{}", collector.http),
    };
    let server = Wstrace::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_SERVICE_NAME", "wstrace-under-test"),
        ("WSTRACE_JWT_SECRET", JWT_SECRET),
        ("WSTRACE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("WSTRACE_MESSAGE_SAMPLE_RATIO", "1.0"),
    ]);
    let token = JwtVerifier::new(Secret::new(JWT_SECRET)).sign(&json!({"sub": "dave"}));
    let url = format!("{}?token={token}", server.url());
    let (mut client, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    let trace_id = response.headers()["x-trace-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let welcome = next_json(&mut client).await;
    assert_eq!(welcome["trace_id"], trace_id);
    let session_id = welcome["session_id"].as_str().unwrap().to_owned();
    send_json(&mut client, json!({"type": "echo", "content": "traced"})).await;
    next_json(&mut client).await;
    client.send(Message::Text("oops".into())).await.unwrap();
    next_json(&mut client).await;
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let listed = http(
        addr,
        "GET",
        "/api/sessions",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(listed.status, 200);
    let refused =
        tokio_tungstenite::connect_async(format!("{}?token=forged.{token}", server.url())).await;
    assert!(refused.is_err());
    client.close(None).await.unwrap();
    while let Some(Ok(_)) = client.next().await {}

    server.sigterm();
    let (code, _, log_dir) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert_eq!(code, Some(0));

    // The guard flushed spans before exit, so they are there (or arriving).
    let expected: HashSet<&str> = ["GET /ws", "ws.session", "ws.receive", "ws.send"].into();
    let spans = wait_for(Duration::from_secs(20), "spans at the collector", || {
        let spans: Vec<_> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        let names: HashSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        expected.is_subset(&names).then_some(spans)
    });
    let session_span = spans.iter().find(|s| s.name == "ws.session").unwrap();
    assert!(
        session_span.body.contains(&session_id),
        "{}",
        session_span.body
    );
    // These attributes are added at the end, not declared up front.
    for attribute in [
        "ws.connection.id",
        "ws.protocol",
        "ws.close.code",
        "ws.closed_by",
        "ws.messages.received",
        "ws.messages.sent",
    ] {
        assert!(
            session_span.body.contains(attribute),
            "{attribute} missing: {}",
            session_span.body
        );
    }
    // Sizes are OpenTelemetry integers, as every count is (a `usize`
    // field would reach Tempo as a string).
    for name in ["ws.receive", "ws.send"] {
        let span = spans.iter().find(|s| s.name == name).unwrap();
        assert!(span.body.contains("ws.message.size: Int("), "{}", span.body);
    }
    assert!(
        session_span.body.contains("ws.messages.received: Int("),
        "{}",
        session_span.body
    );
    // The upgrade's server span, with the attributes the README lists.
    let http_span = spans.iter().find(|s| s.name == "GET /ws").unwrap();
    for attribute in [
        "http.request.method",
        "http.route",
        "url.path",
        "client.address",
        "http.response.status_code",
    ] {
        assert!(
            http_span.body.contains(attribute),
            "{attribute} missing: {}",
            http_span.body
        );
    }
    let output = std::fs::read_to_string(&collector.output).unwrap();
    assert!(
        output.contains("wstrace-under-test"),
        "service.name from OTEL_SERVICE_NAME"
    );
    assert!(
        output.contains("ws.receive"),
        "sampled message spans are exported"
    );
    // No secret reaches a span: not the JWT (sent in the query), its key,
    // nor the admin token.
    let signature = token.rsplit('.').next().unwrap();
    for secret in [signature, JWT_SECRET, ADMIN_TOKEN] {
        assert!(!output.contains(secret), "{secret} reached the collector");
    }
    let logs: String = std::fs::read_dir(log_dir.path())
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    for secret in [signature, JWT_SECRET, ADMIN_TOKEN] {
        assert!(!logs.contains(secret), "{secret} reached the logs");
    }

    // The same trace id is on every one of the session's log lines.
    let lines = read_log_lines(log_dir.path());
    let session_lines = lines_of_session(&lines, &session_id);
    assert!(session_lines.len() >= 3, "{session_lines:?}");
    for line in session_lines {
        assert_eq!(line["trace_id"], trace_id);
    }
    // And each logged span id is a span the collector received.
    let logged_span_ids: HashSet<&str> = lines
        .iter()
        .filter(|l| l["trace_id"] == trace_id.as_str())
        .map(|l| l["span_id"].as_str().unwrap())
        .collect();
    for span_id in logged_span_ids {
        assert!(
            spans
                .iter()
                .any(|s| s.body.contains(&format!("ID             : {span_id}"))),
            "span {span_id} of a log line never reached the collector"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_real_collector_over_otlp_http() {
    traced_session_reaches_collector("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_real_collector_over_otlp_grpc() {
    traced_session_reaches_collector("grpc").await;
}

#[test]
fn help_documents_every_flag_and_its_env_var() {
    let output = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--listen",
        "--log-dir",
        "--log-file",
        "--log-stdout",
        "--heartbeat-interval",
        "--idle-timeout",
        "--close-timeout",
        "--shutdown-timeout",
        "--max-message-bytes",
        "--max-connections",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("WSTRACE_LISTEN"));
    assert!(help.contains("OTEL_EXPORTER_OTLP_ENDPOINT"));
}

#[test]
fn unusable_log_dir_is_a_clear_startup_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-dir"])
        .arg(file.path().join("sub"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("cannot create log directory"), "{stderr}");
}

#[test]
fn an_otlp_setting_this_build_cannot_honour_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    for (setting, value, says) in [
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "gzip or none"),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "/nonexistent/client.pem",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/ca.pem",
            "/nonexistent/ca.pem",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_wstrace"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-dir"])
            .arg(dir.path())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env(setting, value)
            .output()
            .unwrap();
        // A setting that cannot work: a usage error, as for a bad flag.
        assert_eq!(output.status.code(), Some(64), "{setting}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.contains("cannot build the OTLP span exporter"),
            "{stderr}"
        );
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// Runs the doctor against `url`, with Loki, Tempo and Grafana all at an
/// address nothing listens on.
fn doctor(url: &str, dead: &str) -> (Option<i32>, String, String) {
    let backend = format!("http://{dead}");
    let output = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(["doctor", "--url", url])
        .args([
            "--loki",
            &backend,
            "--tempo",
            &backend,
            "--grafana",
            &backend,
        ])
        .args(["--timeout", "2s"])
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn doctor_names_an_unreachable_server_as_the_broken_link() {
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, _, stderr) = doctor(&format!("ws://{dead}/ws"), &dead);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!(
            "step 1 (wstrace at ws://{dead}/ws): cannot open a session"
        )),
        "{stderr}"
    );
}

#[test]
fn doctor_names_loki_when_the_server_works_but_loki_is_down() {
    let server = Wstrace::start(&[]);
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, stdout, stderr) = doctor(&server.url(), &dead);
    assert_eq!(code, Some(1));
    assert!(
        stdout.contains("ok   1. wstrace answered with trace"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!(
            "step 2 (Vector → Loki at http://{dead}): cannot query Loki"
        )),
        "{stderr}"
    );
    // The doctor's session continued its traceparent: its trace id is in the
    // server's log lines.
    let trace = stdout
        .lines()
        .find_map(|l| l.strip_prefix("trace ID for this check: "))
        .unwrap()
        .to_owned();
    server.sigterm();
    let (_, _, log_dir) = server.wait();
    let lines = read_log_lines(log_dir.path());
    assert!(
        lines.iter().any(|l| l["trace_id"] == trace.as_str()
            && l["msg"] == wstrace::events::SessionClosed::MESSAGE)
    );
}

#[test]
fn health_command_checks_healthz() {
    let server = Wstrace::start(&[]);
    let ok = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args([
            "health",
            "--url",
            &format!("http://{}/healthz", server.addr),
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    let dead = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args([
            "health",
            "--url",
            &format!("http://127.0.0.1:{}/healthz", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(dead.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dead.stderr).contains("cannot connect"));
}

fn wstrace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn client_prints_the_trace_id_the_server_logs_and_honours_traceparent() {
    let server = Wstrace::start(&[]);
    let url = server.url();
    let plain = wstrace(&[
        "client",
        &url,
        "--send",
        "hello",
        "--send",
        "/ping",
        "--expect",
        "2",
        "--timeout",
        "5s",
    ]);
    assert_eq!(
        plain.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let stdout = String::from_utf8(plain.stdout).unwrap();
    let first = stdout.lines().next().unwrap();
    let session = word_after(first, "session_id=").to_owned();
    let trace = word_after(first, "trace_id=").to_owned();
    assert!(
        stdout.contains(r#"{"type":"echo","content":"hello"}"#),
        "{stdout}"
    );
    assert!(stdout.contains("rtt="), "{stdout}");

    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let continued = wstrace(&[
        "client",
        &url,
        "--traceparent",
        parent,
        "--send",
        "x",
        "--expect",
        "1",
    ]);
    assert_eq!(continued.status.code(), Some(0));
    let continued = String::from_utf8(continued.stdout).unwrap();
    assert!(
        continued.contains("trace_id=0af7651916cd43dd8448eb211c80319c"),
        "{continued}"
    );

    // Exit codes say what went wrong.
    let timeout = wstrace(&[
        "client",
        &url,
        "--send",
        "x",
        "--expect",
        "3",
        "--timeout",
        "500ms",
    ]);
    assert_eq!(timeout.status.code(), Some(3));
    let dead = wstrace(&[
        "client",
        &format!("ws://127.0.0.1:{}/ws", free_port()),
        "--send",
        "x",
    ]);
    assert_eq!(dead.status.code(), Some(2));
    let usage = wstrace(&["client", &url, "--send", "/pub only-a-channel"]);
    assert_eq!(usage.status.code(), Some(64));

    server.sigterm();
    let (_, _, log_dir) = server.wait();
    let lines = read_log_lines(log_dir.path());
    let logged = lines_of_session(&lines, &session);
    assert!(logged.len() >= 2);
    assert!(logged.iter().all(|l| l["trace_id"] == trace.as_str()));
    assert!(
        lines
            .iter()
            .any(|l| l["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
                && l["msg"] == wstrace::events::SessionClosed::MESSAGE)
    );
}

#[test]
fn load_reports_are_consistent_with_the_server() {
    let server = Wstrace::start(&[]);
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let runs: [&[&str]; 3] = [
        &["--scenario", "storm", "-c", "40"],
        &["--scenario", "throughput", "-c", "4", "-m", "50"],
        &[
            "--scenario",
            "sustained",
            "-c",
            "4",
            "--rate",
            "80",
            "--duration",
            "1s",
        ],
    ];
    let mut opened = 0;
    for (i, run) in runs.iter().enumerate() {
        let json = dir.path().join(format!("{i}.json"));
        let mut args = vec!["load", url.as_str()];
        args.extend_from_slice(run);
        args.extend_from_slice(&["--max-duration", "30s", "--json", json.to_str().unwrap()]);
        let output = wstrace(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let human = String::from_utf8(output.stdout).unwrap();
        // Storm times handshakes; the others round trips, with avg and p95.
        let what = match run[1] {
            "storm" => "handshake (µs)  avg ",
            _ => "round trip (µs)  avg ",
        };
        assert!(human.contains(what), "{human}");
        assert!(human.contains("  p95 "), "{human}");
        let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let c = &report["connections"];
        assert_eq!(
            c["attempted"],
            c["ok"].as_u64().unwrap() + c["failed"].as_u64().unwrap()
        );
        assert_eq!(c["failed"], 0, "{report}");
        let m = &report["messages"];
        assert!(m["received"].as_u64() <= m["sent"].as_u64());
        let l = &report["latency_us"];
        let order: Vec<u64> = ["p50", "p90", "p95", "p99", "p999", "max"]
            .iter()
            .map(|k| l[k].as_u64().unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] <= w[1]), "{l}");
        let avg = l["avg"].as_f64().unwrap();
        assert!(avg > 0.0 && avg <= l["max"].as_f64().unwrap(), "{l}");
        assert!(l["count"].as_u64().unwrap() > 0);
        assert_eq!(report["timed_out"], false);
        if run[1] != "storm" {
            assert_eq!(m["received"], m["sent"], "every ping answered: {report}");
            assert!(m["sent"].as_u64().unwrap() > 0);
        }
        opened += c["ok"].as_u64().unwrap();
    }
    server.sigterm();
    let (_, _, log_dir) = server.wait();
    let lines = read_log_lines(log_dir.path());
    let closed = lines
        .iter()
        .filter(|l| l["msg"] == wstrace::events::SessionClosed::MESSAGE)
        .count() as u64;
    assert_eq!(
        closed, opened,
        "one session closed line per connection the load tool opened"
    );
}

#[test]
fn load_refuses_more_connections_than_the_fd_limit_with_a_clear_message() {
    let output = wstrace(&["load", "ws://127.0.0.1:9/ws", "-c", "100000000"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("file descriptors needed"), "{stderr}");
}

#[test]
fn logs_finds_exactly_one_session_across_rotated_files_and_reports_corrupt_lines() {
    let server = Wstrace::start(&[]);
    let url = server.url();
    let parent = "00-11112222333344445555666677778888-b7ad6b7169203331-01";
    for traceparent in [Some(parent), None] {
        let mut args = vec![
            "client",
            url.as_str(),
            "--send",
            r#"/json {"type":"nope"}"#,
            "--send",
            "hi",
            "--expect",
            "2",
        ];
        if let Some(tp) = traceparent {
            args.extend_from_slice(&["--traceparent", tp]);
        }
        // Both answered; the unknown type with an `error` frame, so the
        // client says so in its exit code (5).
        assert_eq!(wstrace(&args).status.code(), Some(5));
    }
    server.sigterm();
    let (_, _, log_dir) = server.wait();
    // Rotate: the same lines over two daily files, with a torn line.
    let file = std::fs::read_dir(log_dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let half = lines.len() / 2;
    std::fs::remove_file(&file).unwrap();
    let day1 = log_dir.path().join("wstrace.2026-11-22.log");
    let day2 = log_dir.path().join("wstrace.2026-11-23.log");
    std::fs::write(
        &day1,
        format!("{}\n{{\"torn\": \n", lines[..half].join("\n")),
    )
    .unwrap();
    std::fs::write(&day2, format!("{}\n", lines[half..].join("\n"))).unwrap();
    let trace = "11112222333344445555666677778888";
    let expected = lines.iter().filter(|l| l.contains(trace)).count();
    assert!(expected >= 3);

    let dir = log_dir.path().to_str().unwrap();
    let json = wstrace(&["logs", "--trace", trace, "--json", dir]);
    assert!(json.status.success());
    let out = String::from_utf8(json.stdout).unwrap();
    let found: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(found.len(), expected);
    assert!(found.iter().all(|l| l["trace_id"] == trace));
    let times: Vec<&str> = found.iter().map(|l| l["time"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in time order across files"
    );
    assert!(
        String::from_utf8_lossy(&json.stderr).contains("CORRUPT"),
        "corrupt line reported"
    );

    let human = wstrace(&[
        "logs",
        "--trace",
        trace,
        "--color",
        "never",
        "--log-dir",
        dir,
    ]);
    let human = String::from_utf8(human.stdout).unwrap();
    // One session here: its header, then its story.
    assert_eq!(
        human
            .lines()
            .filter(|l| l.starts_with("── session"))
            .count(),
        1,
        "{human}"
    );
    // The flight recorder's messages are listed under its line, indented.
    let recorded: Vec<&str> = human.lines().filter(|l| l.starts_with("    #")).collect();
    assert_eq!(recorded.len(), 1, "the refused frame: {human}");
    assert!(recorded[0].contains("→ in   invalid"), "{human}");
    let story: Vec<&str> = human
        .lines()
        .filter(|l| !l.starts_with("CORRUPT") && !l.starts_with("── ") && !l.starts_with("    #"))
        .collect();
    assert_eq!(story.len(), expected);
    assert!(story[0].contains("session opened"), "{human}");
    assert!(story.last().unwrap().contains("session closed"), "{human}");
    assert!(human.contains("CORRUPT"), "{human}");
    let warn_only = wstrace(&["logs", "--trace", trace, "--level", "warn", "--json", dir]);
    let warn_lines = String::from_utf8(warn_only.stdout).unwrap();
    assert!(warn_lines.lines().count() >= 1);
    assert!(
        warn_lines
            .lines()
            .all(|l| l.contains("\"level\":40") || l.contains("\"level\":50"))
    );
}

/// Headless Chromium, the way the machines here can run it.
fn chromium(args: &[&str]) -> Option<std::process::Output> {
    let browser = ["chromium", "chromium-browser"]
        .iter()
        .find_map(|b| which(b))?;
    let profile = tempfile::tempdir().unwrap();
    Some(
        Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=8000",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .output()
            .unwrap(),
    )
}

#[test]
fn explorer_page_finds_a_session_in_a_real_browser() {
    if which("chromium").is_none() && which("chromium-browser").is_none() {
        return;
    }
    let server = Wstrace::start(&[
        ("WSTRACE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("WSTRACE_GRAFANA_URL", "http://grafana.example:3000"),
        // Every message has its span, for the waterfall's message bars.
        ("WSTRACE_MESSAGE_SAMPLE_RATIO", "1"),
    ]);
    let url = server.url();
    let trace = "22223333444455556666777788889999";
    let parent = format!("00-{trace}-b7ad6b7169203331-01");
    // Both answered; the bad channel name with an `error` frame (exit 5).
    let subscribed = wstrace(&[
        "client",
        &url,
        "--traceparent",
        &parent,
        "--send",
        "/sub lobby",
        "--send",
        "/sub not a channel!",
        "--expect",
        "2",
    ]);
    assert_eq!(subscribed.status.code(), Some(5), "{subscribed:?}");
    // A session that stays open while the page loads: an interactive
    // client whose stdin we hold.
    let mut live = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(["client", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(live.stdout.as_mut().unwrap()),
        &mut first,
    )
    .unwrap();
    let live_session = word_after(&first, "session_id=").to_owned();
    let live_trace = word_after(&first, "trace_id=").to_owned();
    let page = format!("http://{}/#token={ADMIN_TOKEN}&q={trace}", server.addr);
    let dom = chromium(&["--dump-dom", &page]).expect("chromium");
    let html = String::from_utf8_lossy(&dom.stdout);
    let console = String::from_utf8_lossy(&dom.stderr);
    assert!(html.contains("wstrace · session explorer"), "{html}");
    assert!(html.contains(r#"data-msg="session opened""#), "{html}");
    // The trace's lines come grouped by session, each under its header.
    assert!(html.contains("data-session-group="), "{html}");
    // This session continued the client's traceparent, and says so; alone
    // in its trace, it is not said to share it with another client.
    assert!(html.contains("continued the caller's trace"), "{html}");
    assert!(!html.contains("not necessarily the same client"), "{html}");
    assert!(html.contains(r#"data-msg="session closed""#), "{html}");
    // The refused subscription wrote the flight recorder: its messages
    // are a table, not a JSON blob.
    assert!(html.contains(r#"data-msg="flight recorder""#), "{html}");
    assert!(html.contains(r#"class="flight-recording""#), "{html}");
    assert!(html.contains(r#"<tr class="flight-in">"#), "{html}");
    assert!(html.contains("subscribe"), "{html}");
    // A session view: its summary (age, how it closed, its rate), copy
    // buttons for its ids, and each line placed on a time axis.
    assert!(html.contains(r#"class="session-summary""#), "{html}");
    assert!(html.contains("lived "), "{html}");
    // It lived well under a second: no rate (it would say nothing).
    assert!(!html.contains("msg/s"), "{html}");
    assert!(html.contains("copy session id"), "{html}");
    assert!(html.contains("copy trace id"), "{html}");
    // The waterfall: a lane per task, the session's span as a bar, each
    // sampled message's `ws.receive` span as a bar with its duration, and
    // each line as a mark on its lane.
    assert!(html.contains("data-waterfall"), "{html}");
    for lane in ["session", "reader", "writer", "heartbeat", "message"] {
        assert!(html.contains(&format!(r#"data-lane="{lane}""#)), "{html}");
    }
    assert!(html.contains(r#"class="wf-bar span-session""#), "{html}");
    let message_bars = html.matches(r#"class="wf-bar span-message""#).count();
    assert_eq!(message_bars, 2, "one per message sent: {html}");
    assert!(html.contains(r#"title="ws.receive subscribe "#), "{html}");
    assert!(html.contains(r#"class="wf-mark lvl-40""#), "{html}");
    // The server's stats above it all.
    assert!(html.contains("active sessions"), "{html}");
    assert!(html.contains("closed by code"), "{html}");
    assert!(
        html.contains(&format!("Open trace {trace} in Grafana")),
        "{html}"
    );
    assert!(html.contains("http://grafana.example:3000/explore"));
    assert!(
        html.contains(&format!(r#"data-session="{live_session}""#)),
        "live session listed: {html}"
    );
    for line in console.lines() {
        let lower = line.to_lowercase();
        assert!(
            !(lower.contains("console") && (lower.contains("error") || lower.contains("uncaught"))),
            "console error: {line}"
        );
        assert!(!lower.contains("refused to"), "CSP violation: {line}");
    }
    // A live session's view: its age so far, and its span still open.
    let live_page = format!("http://{}/#token={ADMIN_TOKEN}&q={live_trace}", server.addr);
    let live_dom = chromium(&["--dump-dom", &live_page]).expect("chromium");
    let live_html = String::from_utf8_lossy(&live_dom.stdout);
    assert!(live_html.contains("open for "), "{live_html}");
    assert!(live_html.contains("since its last line"), "{live_html}");
    assert!(
        live_html.contains(r#"class="wf-bar span-session live""#),
        "{live_html}"
    );
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("explorer.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&[&format!("--screenshot={}", shot.display()), &page]).unwrap();
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG"));
    assert!(png.len() > 10_000, "the screenshot is not blank");

    // A second client continues the same trace: now each session that
    // continued it says another client may share it.
    assert_eq!(
        wstrace(&[
            "client",
            &url,
            "--traceparent",
            &parent,
            "--send",
            "hi",
            "--expect",
            "1"
        ])
        .status
        .code(),
        Some(0)
    );
    let dom = chromium(&["--dump-dom", &page]).expect("chromium");
    let html = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(
        html.matches("not necessarily the same client").count(),
        2,
        "{html}"
    );

    // In a browser driven over DevTools: the token leaves the address
    // bar, and the debug button switches the live session's tracing on
    // and off.
    let button = format!("document.querySelector('[data-debug-toggle=\"{live_session}\"]')");
    let label_becomes = |want: &str| {
        format!(
            "new Promise((ok, fail) => {{ const t0 = Date.now(); const i = setInterval(() => {{ \
             const b = {button}; if (b && b.textContent === '{want}') {{ clearInterval(i); ok(b.textContent); }} \
             else if (Date.now() - t0 > 10000) {{ clearInterval(i); fail('the button never said {want}'); }} }}, 100); }})"
        )
    };
    let click = format!("{button}.click(), true");
    // Ids stay on one line in the session list.
    let id_cell =
        format!("getComputedStyle({button}.closest('tr').querySelector('td.mono')).whiteSpace");
    let results = drive_browser(
        &[
            &label_becomes("debug on"),
            "location.href",
            &id_cell,
            &click,
            &label_becomes("debug off"),
            &click,
            &label_becomes("debug on"),
        ],
        &page,
    )
    .expect("chromium");
    let href = results[1].as_str().unwrap();
    assert!(
        !href.contains(ADMIN_TOKEN) && !href.contains("token="),
        "{href}"
    );
    assert!(href.ends_with(&format!("#q={trace}")), "{href}");
    assert_eq!(results[2], "nowrap");
    let _ = live.kill();
    let _ = live.wait();
    server.sigterm();
    let (_, _, log_dir) = server.wait();
    let switched: Vec<Value> = read_log_lines(log_dir.path())
        .into_iter()
        .filter(|l| l["session_id"] == live_session.as_str())
        .filter(|l| {
            [
                wstrace::events::DebugSwitched::ON,
                wstrace::events::DebugSwitched::OFF,
            ]
            .contains(&l["msg"].as_str().unwrap_or(""))
        })
        .collect();
    let messages: Vec<&str> = switched
        .iter()
        .map(|l| l["msg"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            wstrace::events::DebugSwitched::ON,
            wstrace::events::DebugSwitched::OFF
        ]
    );
    assert_eq!(
        switched[0]["requested_by"], "session explorer",
        "{}",
        switched[0]
    );
}

/// Runs `steps` (JavaScript, promises awaited) in `url` in a real headless
/// Chromium driven over the DevTools protocol (`tests/browser/drive.py`,
/// with Python's `websockets`); their values.
fn drive_browser(steps: &[&str], url: &str) -> Option<Vec<Value>> {
    let browser = ["chromium", "chromium-browser"]
        .iter()
        .find_map(|b| which(b))?;
    let output = Command::new("python3")
        .arg(crate::common::repo_root().join("tests/browser/drive.py"))
        .arg(browser)
        .arg(url)
        .args(steps)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_messages_leave_server_memory_flat() {
    let server = Wstrace::start(&[("WSTRACE_MAX_MESSAGE_BYTES", "65536")]);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let whole = vec![b'x'; 1024 * 1024];
    let attempt = async || {
        // One 1 MiB frame, then a message in three 40 KiB fragments.
        let mut raw = RawClient::upgrade(addr, "/ws").await;
        raw.read_frame().await.unwrap();
        raw.send_frame(true, 1, &whole).await;
        assert_eq!(raw.close_code().await, Some(1009));
        assert_eq!(send_fragmented_oversize(addr).await, Some(1009));
    };
    for _ in 0..5 {
        attempt().await;
    }
    let before = server_rss_kib(server.child.id());
    for _ in 0..40 {
        attempt().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = server_rss_kib(server.child.id()).saturating_sub(before);
    // 45 MiB were sent at it; what it keeps must not scale with that.
    assert!(grown < 4 * 1024, "server RSS grew by {grown} KiB");
}

/// A shell's soft limit of 256 open files would refuse sessions long
/// before `--max-connections`: the server raises it to the hard limit, says
/// so, and warns when `--max-connections` is still above it.
#[tokio::test]
async fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let server = Wstrace::start_with_open_files(&[("WSTRACE_MAX_CONNECTIONS", "1000")], 256, 2048);
    let lines = read_log_lines(server.log_dir.path());
    let limit = lines
        .iter()
        .find(|l| l["msg"] == wstrace::events::OpenFileLimit::MESSAGE)
        .expect("an open-file limit line");
    assert_eq!(limit["soft_limit_before"], 256);
    assert_eq!(limit["soft_limit"], 2048);
    // More sessions than the old soft limit allowed all open.
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let mut clients = Vec::new();
    for _ in 0..300 {
        let mut raw = RawClient::upgrade(addr, "/ws").await;
        assert!(raw.read_frame().await.is_some(), "no welcome");
        clients.push(raw);
    }
    let metrics_addr = server.addr.clone();
    let metrics = tokio::task::spawn_blocking(move || scrape(&metrics_addr))
        .await
        .unwrap();
    assert_eq!(metrics["wstrace_sessions_active"], 300.0);

    // The default --max-connections (10,000) does not fit in 2048.
    let short = Wstrace::start_with_open_files(&[], 256, 2048);
    let lines = read_log_lines(short.log_dir.path());
    let warning = lines
        .iter()
        .find(|l| l["msg"] == wstrace::events::OpenFileLimit::TOO_LOW_MESSAGE)
        .expect("a warning");
    assert_eq!(warning["level"], 40);
    assert_eq!(warning["soft_limit"], 2048);
    assert_eq!(warning["max_connections"], 10_000);
}

/// `/api/logs` reads the log directory line by line: 40 MB of other
/// sessions' lines cost the server a few MiB, not hundreds, and only one
/// search runs at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_search_streams_the_files_in_bounded_memory() {
    use std::io::Write;
    let server = Wstrace::start(&[("WSTRACE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let wanted = "5bf92f3577b34da6a3ce929d0e0e4736";
    {
        let path = server.log_dir.path().join("wstrace.2026-01-01.log");
        let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        let noise = format!(
            r#"{{"v":0,"name":"wstrace","msg":"message handled","level":30,"trace_id":"{}","session_id":"01a208dc-d33f-715b-ba73-6c598ce9d41c","pad":"{}"}}"#,
            "0".repeat(32),
            "x".repeat(300)
        );
        for i in 0..110_000 {
            writeln!(file, "{noise}").unwrap();
            if i % 10_000 == 0 {
                writeln!(
                    file,
                    r#"{{"v":0,"msg":"session opened","level":30,"trace_id":"{wanted}"}}"#
                )
                .unwrap();
            }
        }
    }
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let path = format!("/api/logs?q={wanted}");
    let before = server_rss_kib(server.child.id());
    let found = http(addr, "GET", &path, &[("authorization", &bearer)], None).await;
    let grown = server_rss_kib(server.child.id()).saturating_sub(before);
    assert_eq!(found.status, 200, "{}", found.body);
    let body = found.json();
    assert_eq!(body["lines"].as_array().unwrap().len(), 11);
    assert_eq!(body["truncated"], false);
    assert_eq!(body["scan_capped"], false);
    assert!(body["bytes_scanned"].as_u64().unwrap() > 40_000_000);
    assert!(grown < 16 * 1024, "server RSS grew by {grown} KiB");

    // Searches at once: each one either runs or is told to retry.
    let headers = [("authorization", bearer.as_str())];
    let searches = (0..3).map(|_| http(addr, "GET", &path, &headers, None));
    for response in futures_util::future::join_all(searches).await {
        match response.status {
            200 => assert_eq!(response.json()["lines"].as_array().unwrap().len(), 11),
            429 => {
                assert_eq!(response.json()["error"]["code"], "busy");
                assert_eq!(response.header("retry-after"), Some("1"));
            }
            other => panic!("status {other}: {}", response.body),
        }
    }
}

/// A client that stops reading pins at most its session's outbound queue
/// (256 KiB, or one larger frame), not 64 frames of any size; the write
/// timeout closes it; and once such clients are gone the server gives
/// their memory back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_pin_bounded_memory() {
    use tokio::io::AsyncWriteExt;
    let server = Wstrace::start(&[
        ("WSTRACE_MAX_MESSAGE_BYTES", "1048576"),
        ("WSTRACE_MESSAGES_PER_SECOND", "0"),
        ("WSTRACE_WRITE_TIMEOUT", "5s"),
        ("WSTRACE_TELEMETRY_REPORT_INTERVAL", "500ms"),
    ]);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server_rss_kib(pid);
    // Binary frames are echoed as they are: 512 KiB each.
    let payload = vec![7u8; 512 * 1024];
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&payload);
    let clients = 10u32;
    let mut stalled = Vec::new();
    for _ in 0..clients {
        let frame = frame.clone();
        stalled.push(tokio::spawn(async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.set_recv_buffer_size(4096).unwrap();
            let stream = socket.connect(addr).await.unwrap();
            let mut raw = RawClient::upgrade_over(stream, "/ws").await;
            // Echo requests, never reading a reply, until the server stops
            // taking them: the kernel's buffers fill, then the queue, then
            // the reader waits.
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                for _ in 0..120 {
                    raw.stream.write_all(&frame).await.unwrap();
                }
            })
            .await;
            raw
        }));
    }
    let mut sockets = Vec::new();
    for client in stalled {
        sockets.push(client.await.unwrap());
    }
    let peak = server_rss_kib(pid).saturating_sub(before);
    // Without the byte bound: 64 × 512 KiB = 32 MiB per client.
    assert!(
        peak < 64 * 1024,
        "{clients} stalled clients pinned {peak} KiB"
    );

    // The write timeout closes every one of them.
    let scrape_addr = server.addr.clone();
    tokio::task::spawn_blocking(move || {
        eventually("stalled sessions closed", Duration::from_secs(20), || {
            let metrics = scrape(&scrape_addr);
            metrics["wstrace_write_timeouts_total"] == f64::from(clients)
                && metrics["wstrace_sessions_active"] == 0.0
        })
    })
    .await
    .unwrap();
    drop(sockets);
    // And their memory goes back to the system.
    let settled = tokio::task::spawn_blocking(move || {
        let mut grown = u64::MAX;
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(250));
            grown = server_rss_kib(pid).saturating_sub(before);
            if grown < 16 * 1024 {
                break;
            }
        }
        grown
    })
    .await
    .unwrap();
    assert!(
        settled < 16 * 1024,
        "still {settled} KiB above the start after they left"
    );
    // Each one's story says why it ended (the log writer is asynchronous:
    // wait for the lines).
    let log_dir = server.log_dir.path().to_path_buf();
    let count = move |msg: &str| {
        read_log_lines(&log_dir)
            .iter()
            .filter(|l| l["msg"] == msg && l["session_id"].is_string())
            .count()
    };
    tokio::task::spawn_blocking(move || {
        eventually("a line per stalled session", Duration::from_secs(5), || {
            count(wstrace::events::WriterBlocked::MESSAGE) == clients as usize
                && count(wstrace::events::SessionClosed::MESSAGE) == clients as usize
        })
    })
    .await
    .unwrap();
    let lines = read_log_lines(server.log_dir.path());
    let blocked = lines
        .iter()
        .filter(|l| l["msg"] == wstrace::events::WriterBlocked::MESSAGE)
        .count();
    assert_eq!(blocked, clients as usize);
    let closed: Vec<_> = lines
        .iter()
        .filter(|l| l["msg"] == wstrace::events::SessionClosed::MESSAGE)
        .collect();
    assert_eq!(closed.len(), clients as usize);
    assert!(
        closed
            .iter()
            .all(|l| l["close_code"] == 1008 && l["closed_by"] == "policy")
    );
}

/// Settings that cannot work stop `serve` before it listens, with exit 64
/// and a message that names what to fix; a Redis password never shows in
/// the message, whatever characters it holds.
#[test]
fn unusable_settings_are_refused_at_start_with_exit_64() {
    let serve = |envs: &[(&str, &str)], args: &[&str]| {
        let log_dir = tempfile::tempdir().unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_wstrace"))
            .args(["serve", "--listen", "127.0.0.1:0", "--log-stdout", "false"])
            .arg("--log-dir")
            .arg(log_dir.path())
            .args(args)
            .env_remove("RUST_LOG")
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = serve(&[("RUST_LOG", "verbose")], &[]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("RUST_LOG=\"verbose\""), "{stderr}");
    let (code, stderr) = serve(
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:43l7")],
        &[],
    );
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && stderr.contains("43l7"),
        "{stderr}"
    );
    let (code, stderr) = serve(&[], &["--proxy-protocol"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--trusted-proxy"), "{stderr}");
    let (code, stderr) = serve(&[], &["--trusted-proxy", "10.0.0.0/33"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("10.0.0.0/33"), "{stderr}");
    // A password with URL metacharacters: a URL parser would read part of
    // it as the host. Refused with the fix, and none of it printed.
    let port = free_port();
    let url = format!("redis://:p@ss/w#rd@127.0.0.1:{port}/0");
    let (code, stderr) = serve(&[], &["--redis-url", &url]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("percent-encode"), "{stderr}");
    // Encoded, but nothing listens on the port: cluster mode cannot start
    // (exit 1: the environment, not the settings), without the password.
    let url = format!("redis://:p%40ss%2Fw%23rd@127.0.0.1:{port}/0");
    let (code, stderr2) = serve(
        &[("WSTRACE_REDIS_TIMEOUT", "200ms")],
        &["--redis-url", &url],
    );
    assert_eq!(code, Some(1), "{stderr2}");
    assert!(
        stderr2.contains("cannot reach Redis at redis://:***@127.0.0.1:"),
        "{stderr2}"
    );
    for part in ["p@ss", "ss/w", "w#rd", "p%40ss", "%2Fw"] {
        assert!(
            !stderr.contains(part) && !stderr2.contains(part),
            "{part} in {stderr} / {stderr2}"
        );
    }
}
