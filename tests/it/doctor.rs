//! `wstrace doctor` against a real server exporting to a real OTLP
//! collector (rotel), with STAND-INS for what cannot be installed here:
//! Vector and Loki (the real remap program, `pipeline/vector/wstrace.vrl`
//! in the `vrl` crate, over the server's files, answered in Loki's
//! `query_range` JSON), Tempo's trace API (answered from the spans rotel
//! received) and Grafana's health endpoint.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use vrl::value::Value;

/// What the stand-ins serve, and how the test breaks them.
struct StandIn {
    log_dir: PathBuf,
    rotel_output: PathBuf,
    /// Vector "loses" lines with this message.
    lose_message: Mutex<Option<String>>,
    tempo_up: AtomicBool,
    grafana_up: AtomicBool,
}

/// One line as the Loki stand-in holds it.
struct Entry {
    at_ns: i64,
    metadata: serde_json::Map<String, Json>,
    line: String,
}

impl StandIn {
    /// STAND-IN for Vector: every line of the files through the real remap
    /// program, encoded as the loki sink would (`pipeline::loki_line`).
    fn shipped(&self) -> Vec<Entry> {
        let (_, program) = crate::pipeline::remap_program();
        let lose = self.lose_message.lock().unwrap().clone();
        let mut entries = Vec::new();
        for file in
            wstrace::telemetry::logfile::log_files(std::slice::from_ref(&self.log_dir)).unwrap()
        {
            for raw in std::fs::read_to_string(file).unwrap().lines() {
                let event =
                    crate::pipeline::run(&program, crate::pipeline::file_event(raw)).unwrap();
                let object = event.as_object().unwrap();
                let message = object.get("message").and_then(Value::as_str);
                if lose.is_some() && message.as_deref() == lose.as_deref() {
                    continue;
                }
                let Some(Value::Timestamp(at)) = object.get("timestamp") else {
                    continue;
                };
                let metadata: Json =
                    serde_json::to_value(object.get("loki_metadata").unwrap()).unwrap();
                entries.push(Entry {
                    at_ns: at.timestamp_nanos_opt().unwrap(),
                    metadata: metadata.as_object().unwrap().clone(),
                    line: crate::pipeline::loki_line(&event),
                });
            }
        }
        entries.sort_by_key(|e| e.at_ns);
        entries
    }

    /// STAND-IN for Loki's `query_range`, for the one query shape the
    /// doctor sends: `{service="wstrace"} | trace_id="<id>"`, forward, with
    /// start, end and limit; structured metadata among the stream labels.
    fn query_range(&self, query: &std::collections::HashMap<String, String>) -> Json {
        let expr = &query["query"];
        assert!(
            expr.starts_with(r#"{service="wstrace"} | trace_id=""#),
            "{expr}"
        );
        let trace = expr.split('"').nth(3).unwrap();
        let (start, end) = (
            query["start"].parse::<i64>().unwrap(),
            query["end"].parse::<i64>().unwrap(),
        );
        let limit: usize = query["limit"].parse().unwrap();
        assert_eq!(query["direction"], "forward");
        let mut streams: Vec<(Json, Vec<Json>)> = Vec::new();
        let picked = self
            .shipped()
            .into_iter()
            .filter(|e| e.metadata.get("trace_id").and_then(Json::as_str) == Some(trace))
            .filter(|e| (start..=end).contains(&e.at_ns))
            .take(limit);
        for entry in picked {
            let mut labels = entry.metadata.clone();
            labels.insert("service".into(), "wstrace".into());
            let labels = Json::Object(labels);
            let value = json!([entry.at_ns.to_string(), entry.line]);
            match streams.iter_mut().find(|(l, _)| *l == labels) {
                Some((_, values)) => values.push(value),
                None => streams.push((labels, vec![value])),
            }
        }
        let result: Vec<Json> = streams
            .into_iter()
            .map(|(stream, values)| json!({"stream": stream, "values": values}))
            .collect();
        json!({"status": "success", "data": {"resultType": "streams", "result": result}})
    }

    /// STAND-IN for Tempo's `GET /api/traces/{id}`: the spans the real
    /// collector received for that trace, in Tempo's JSON shape.
    fn trace(&self, id: &str) -> Option<Json> {
        if !self.tempo_up.load(Relaxed) {
            return None;
        }
        let text = std::fs::read_to_string(&self.rotel_output).unwrap_or_default();
        let spans: Vec<Json> = parse_spans(&text)
            .into_iter()
            .filter(|s| s.trace_id == id)
            .enumerate()
            .map(|(i, s)| json!({"traceId": s.trace_id, "spanId": format!("{i:016x}"), "name": s.name}))
            .collect();
        (!spans.is_empty()).then(|| json!({"batches": [{"scopeSpans": [{"spans": spans}]}]}))
    }
}

/// Serves the stand-ins on a free loopback port; their base URL.
async fn serve(stand_in: Arc<StandIn>) -> String {
    use axum::extract::{Path, Query, State};
    use axum::http::StatusCode;
    use axum::routing::get;
    type Shared = State<Arc<StandIn>>;
    let app = axum::Router::new()
        .route(
            "/loki/api/v1/query_range",
            get(|State(s): Shared, Query(q): Query<std::collections::HashMap<String, String>>| async move {
                axum::Json(tokio::task::spawn_blocking(move || s.query_range(&q)).await.unwrap())
            }),
        )
        .route(
            "/api/traces/{id}",
            get(|State(s): Shared, Path(id): Path<String>| async move {
                match s.trace(&id) {
                    Some(trace) => (StatusCode::OK, trace.to_string()),
                    None => (StatusCode::NOT_FOUND, "trace not found".to_owned()),
                }
            }),
        )
        .route(
            "/api/health",
            get(|State(s): Shared| async move {
                match s.grafana_up.load(Relaxed) {
                    true => StatusCode::OK,
                    false => StatusCode::SERVICE_UNAVAILABLE,
                }
            }),
        )
        .with_state(stand_in);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// A traced server, the collector it exports to, and the stand-ins.
async fn pipeline() -> (Wstrace, Collector, Arc<StandIn>, String) {
    let collector = Collector::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.grpc);
    let server = Wstrace::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("WSTRACE_MESSAGE_SAMPLE_RATIO", "1"),
    ]);
    let stand_in = Arc::new(StandIn {
        log_dir: server.log_dir.path().to_path_buf(),
        rotel_output: collector.output.clone(),
        lose_message: Mutex::new(None),
        tempo_up: AtomicBool::new(true),
        grafana_up: AtomicBool::new(true),
    });
    let base = serve(stand_in.clone()).await;
    (server, collector, stand_in, base)
}

/// Runs `wstrace doctor` with Loki, Tempo and Grafana at `base` (Grafana
/// at `grafana` when given); (exit code, stdout, stderr).
async fn doctor(
    server: &Wstrace,
    base: &str,
    grafana: Option<&str>,
    extra: &[&str],
) -> (Option<i32>, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wstrace"));
    command
        .args(["doctor", "--url", &server.url()])
        .args(if extra.contains(&"--timeout") {
            &[][..]
        } else {
            &["--timeout", "20s"]
        })
        .args([
            "--loki",
            base,
            "--tempo",
            base,
            "--grafana",
            grafana.unwrap_or(base),
        ])
        .args(extra);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_content_closes_with_1000_and_only_warns_about_grafana() {
    let (server, _collector, stand_in, base) = pipeline().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (code, stdout, stderr) = doctor(&server, &base, Some(&dead), &[]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("ok   2. Loki has the session's lines"),
        "{stdout}"
    );
    assert!(stdout.contains("ok   3. Tempo has the trace, with its GET /ws and ws.session spans"));
    assert!(
        stdout.contains(&format!("warn 4. Grafana at {dead} is unreachable")),
        "{stdout}"
    );
    let trace = stdout
        .lines()
        .find_map(|l| l.strip_prefix("trace ID for this check: "))
        .unwrap()
        .to_owned();
    // Its session closed normally: 1000, cleanly, not 1005.
    let closed = read_log_lines(server.log_dir.path())
        .into_iter()
        .find(|l| {
            l["trace_id"] == trace.as_str() && l["msg"] == wstrace::events::SessionClosed::MESSAGE
        })
        .unwrap();
    assert_eq!(
        (
            closed["close_code"].as_u64(),
            closed["close_clean"].as_bool()
        ),
        (Some(1000), Some(true)),
        "{closed}"
    );

    // A line of any session is not proof: Loki without the `session
    // closed` line fails step 2, and says what it has.
    *stand_in.lose_message.lock().unwrap() = Some(wstrace::events::SessionClosed::MESSAGE.into());
    let (code, _, stderr) = doctor(&server, &base, None, &["--timeout", "3s"]).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("step 2 (Vector → Loki at") && stderr.contains("but not both"),
        "{stderr}"
    );
}

/// Opens a session continuing `traceparent`, echoes once, closes with 1000.
async fn past_session(server: &Wstrace, traceparent: &str) -> String {
    let mut request = server.url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let welcome = next_json(&mut ws).await;
    send_json(
        &mut ws,
        json!({"type": "echo", "content": "for the record"}),
    )
    .await;
    next_json(&mut ws).await;
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    ws.send(Message::Close(Some(close))).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    welcome["session_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_trace_proves_a_past_trace_with_leading_zeros_or_names_what_is_missing() {
    let (server, collector, stand_in, base) = pipeline().await;
    // About one trace in 16 starts with zeros, which Tempo trims.
    let trace = "0000c2a1916cd43dd8448eb211c80319";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let sessions = [
        past_session(&server, &traceparent).await,
        past_session(&server, &traceparent).await,
    ];
    wait_for(
        Duration::from_secs(20),
        "both sessions' spans at the collector",
        || {
            let spans = collector.spans();
            let count = |name: &str| {
                spans
                    .iter()
                    .filter(|s| s.trace_id == trace && s.name == name)
                    .count()
            };
            (count("ws.session") == 2 && count("GET /ws") == 2).then_some(())
        },
    );
    let dir = server.log_dir.path().to_str().unwrap().to_owned();
    let trimmed = trace.trim_start_matches('0');
    let prove = |id: &str| {
        [
            "--trace".to_owned(),
            id.to_owned(),
            "--log-dir".into(),
            dir.clone(),
        ]
    };

    for id in [trace, trimmed, &trace[..12]] {
        let args = prove(id);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stdout, stderr) = doctor(&server, &base, None, &args).await;
        assert_eq!(code, Some(0), "{id}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("trace {trace} in {dir}")),
            "{stdout}"
        );
        for session in &sessions {
            let row = stdout
                .lines()
                .find(|l| l.starts_with(session.as_str()))
                .unwrap();
            let counts: Vec<&str> = row.split_whitespace().skip(1).collect();
            assert_eq!(counts.len(), 2, "{row}");
            assert_eq!(counts[0], counts[1], "files and Loki agree: {row}");
        }
        assert!(stdout.contains("ok   Loki holds every line the files hold"));
        assert!(
            stdout.contains("ok   Tempo has the trace: 2 GET /ws, 2 ws.session"),
            "{stdout}"
        );
    }

    let args = prove(trimmed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Loki lost a line of each session: exit 1, and the rows say where.
    *stand_in.lose_message.lock().unwrap() = Some(wstrace::events::SessionOpened::MESSAGE.into());
    let (code, stdout, stderr) = doctor(&server, &base, None, &args).await;
    assert_eq!(code, Some(1), "{stdout}");
    assert_eq!(stdout.matches("<- missing").count(), 2, "{stdout}");
    assert!(
        stderr.contains("step 2 (Vector → Loki at")
            && stderr.contains("Loki lacks lines the files hold"),
        "{stderr}"
    );
    *stand_in.lose_message.lock().unwrap() = None;

    // Tempo does not have the trace.
    stand_in.tempo_up.store(false, Relaxed);
    let (code, _, stderr) = doctor(&server, &base, None, &args).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("step 3 (wstrace → Tempo at") && stderr.contains("0 GET /ws"),
        "{stderr}"
    );

    // An id no file holds, and a directory without log files.
    let (code, _, stderr) = doctor(
        &server,
        &base,
        None,
        &["--trace", "ffffffffffff", "--log-dir", &dir],
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("no line of trace ffffffffffff in {dir}")),
        "{stderr}"
    );
    let empty = tempfile::tempdir().unwrap();
    let empty = empty.path().to_str().unwrap();
    let (code, _, stderr) = doctor(
        &server,
        &base,
        None,
        &["--trace", trace, "--log-dir", empty],
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("no log files in {empty}")),
        "{stderr}"
    );
}
