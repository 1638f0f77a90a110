//! `wstrace doctor`: follows one session through the whole pipeline and
//! names the first link that is broken.
//!
//! The self-test (no `--trace`):
//! 1. wstrace: open a session with a known `traceparent`; the welcome
//!    frame must carry that trace ID; close it with 1000.
//! 2. Vector → Loki: the session's `session opened` and `session closed`
//!    lines, with that `trace_id`, must become searchable in Loki.
//! 3. wstrace → Tempo: the trace must hold its `GET /ws` and `ws.session`
//!    spans.
//! 4. Grafana: reachable (a warning, not a failure, when it is not); print
//!    the Explore link for the trace.
//!
//! `--trace ID` proves a session that already happened instead: see
//! [`trace`].

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::http_client::{self, encode_component};
use super::tls::Trust;

mod trace;

#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// The wstrace WebSocket URL.
    #[arg(
        long,
        env = "WSTRACE_DOCTOR_URL",
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    pub url: String,
    /// Loki base URL.
    #[arg(
        long,
        env = "WSTRACE_DOCTOR_LOKI",
        default_value = "http://127.0.0.1:3100"
    )]
    pub loki: String,
    /// Tempo base URL (HTTP API).
    #[arg(
        long,
        env = "WSTRACE_DOCTOR_TEMPO",
        default_value = "http://127.0.0.1:3200"
    )]
    pub tempo: String,
    /// Grafana base URL.
    #[arg(
        long,
        env = "WSTRACE_DOCTOR_GRAFANA",
        default_value = "http://127.0.0.1:3000"
    )]
    pub grafana: String,
    /// A PEM file of CA certificates to trust for wss:// and https://,
    /// beside the system's.
    #[arg(long, env = "WSTRACE_DOCTOR_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// How long to wait for the log lines and the trace to arrive.
    #[arg(long, env = "WSTRACE_DOCTOR_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Prove a trace that already happened, instead of a fresh session:
    /// its id in full, as Tempo shows it (without leading zeros), or 8 or
    /// more characters from its start or end. Its lines are counted in
    /// --log-dir, then in Loki; its spans in Tempo.
    #[arg(long = "trace", env = "WSTRACE_DOCTOR_TRACE")]
    pub trace: Option<String>,
    /// Where the server wrote its log files (with --trace).
    #[arg(long, env = "WSTRACE_LOG_DIR", default_value = "logs")]
    pub log_dir: std::path::PathBuf,
}

/// The first broken link, said so a person knows where to look.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("step 1 (wstrace at {url}): cannot open a session: {why}")]
    Wstrace { url: String, why: String },
    #[error("step 2 (Vector → Loki at {url}): {why}")]
    Loki { url: String, why: String },
    #[error("step 3 (wstrace → Tempo at {url}): {why}")]
    Tempo { url: String, why: String },
    #[error("the log files: {0}")]
    Files(String),
    #[error("{0}")]
    Usage(String),
}

impl DoctorError {
    /// 64 for bad usage (as every subcommand), 1 for a broken link.
    pub fn exit_code(&self) -> u8 {
        match self {
            DoctorError::Usage(_) => super::client::EXIT_USAGE,
            _ => 1,
        }
    }
}

const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_secs(1);

pub async fn run(args: DoctorArgs) -> Result<(), DoctorError> {
    let trust = Trust::new(args.ca_cert.as_deref()).map_err(DoctorError::Usage)?;
    if let Some(id) = &args.trace {
        return trace::prove(&args, id, &trust).await;
    }
    let trust = &trust;
    let trace_id = random_hex(16);
    let traceparent = format!("00-{trace_id}-{}-01", random_hex(8));
    println!("trace ID for this check: {trace_id}");

    open_session(&args.url, &traceparent, &trace_id, trust)
        .await
        .map_err(|why| DoctorError::Wstrace {
            url: args.url.clone(),
            why,
        })?;
    println!("ok   1. wstrace answered with trace {trace_id}");

    let deadline = Instant::now() + args.timeout;
    find_in_loki(&args.loki, &trace_id, deadline, trust)
        .await
        .map_err(|why| DoctorError::Loki {
            url: args.loki.clone(),
            why,
        })?;
    println!("ok   2. Loki has the session's lines, from `session opened` to `session closed`");

    find_in_tempo(&args.tempo, &trace_id, deadline, trust)
        .await
        .map_err(|why| DoctorError::Tempo {
            url: args.tempo.clone(),
            why,
        })?;
    println!("ok   3. Tempo has the trace, with its GET /ws and ws.session spans");

    check_grafana(&args.grafana, trust).await;
    println!("\n{}", explore_link(&args.grafana, &trace_id));
    Ok(())
}

/// Grafana only shows what Loki and Tempo hold: when they are fine and it
/// is not, the data is safe, so this warns instead of failing.
async fn check_grafana(grafana: &str, trust: &Trust) {
    let health = format!("{}/api/health", grafana.trim_end_matches('/'));
    match http_client::get(&health, HTTP_TIMEOUT, trust).await {
        Ok(r) if r.status == 200 => println!("ok   4. Grafana is up"),
        Ok(r) => println!(
            "warn 4. Grafana at {grafana}: /api/health answered {} (Loki and Tempo hold the data)",
            r.status
        ),
        Err(e) => println!(
            "warn 4. Grafana at {grafana} is unreachable: {e} (Loki and Tempo hold the data)"
        ),
    }
}

async fn open_session(
    url: &str,
    traceparent: &str,
    trace_id: &str,
    trust: &Trust,
) -> Result<(), String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "traceparent",
        traceparent.parse().map_err(|_| "bad traceparent")?,
    );
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(trust.websocket()),
    );
    let (mut ws, _) = tokio::time::timeout(HTTP_TIMEOUT, connect)
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let welcome = tokio::time::timeout(HTTP_TIMEOUT, ws.next())
        .await
        .map_err(|_| "no welcome frame in time".to_owned())?
        .ok_or("connection closed before the welcome frame")?
        .map_err(|e| e.to_string())?;
    let welcome: serde_json::Value = match welcome {
        Message::Text(text) => serde_json::from_str(&text).map_err(|e| e.to_string())?,
        other => return Err(format!("expected the welcome frame, got {other:?}")),
    };
    if welcome["trace_id"] != trace_id {
        return Err(format!(
            "the session did not continue the traceparent (welcome trace_id {})",
            welcome["trace_id"]
        ));
    }
    let echo = serde_json::json!({"type": "echo", "content": "wstrace doctor"});
    ws.send(Message::Text(echo.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    let _ = tokio::time::timeout(HTTP_TIMEOUT, ws.next()).await;
    // 1000, not a Close without a code (1005): a check is not a failed
    // session, and must not match "sessions that failed" queries.
    ws.close(Some(super::normal_close("wstrace doctor done")))
        .await
        .map_err(|e| e.to_string())?;
    // Until the server's Close: the session is then closed cleanly.
    let _ = tokio::time::timeout(HTTP_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

/// The LogQL for one trace's lines: the stream by its low-cardinality
/// label, the trace by structured metadata.
pub fn loki_query(trace_id: &str) -> String {
    format!(r#"{{service="wstrace"}} | trace_id="{trace_id}""#)
}

/// Lines a Loki query answers per page; later pages start after the last.
const LOKI_PAGE: usize = 5000;

/// One line as Loki holds it: its session (structured metadata, which
/// Loki returns among the stream's labels) and its message.
#[derive(Debug)]
struct LokiLine {
    session_id: Option<String>,
    message: String,
}

/// Every line of `trace_id` in Loki between two times (ns since the
/// epoch), oldest first, page by page.
async fn loki_lines(
    base: &str,
    trace_id: &str,
    (start_ns, end_ns): (u128, u128),
    trust: &Trust,
) -> Result<Vec<LokiLine>, Fatal> {
    let query = encode_component(&loki_query(trace_id));
    let mut lines = Vec::new();
    let mut from = start_ns;
    loop {
        let url = format!(
            "{}/loki/api/v1/query_range?query={query}&start={from}&end={end_ns}&limit={LOKI_PAGE}&direction=forward",
            base.trim_end_matches('/'),
        );
        let response = http_client::get(&url, HTTP_TIMEOUT, trust)
            .await
            .map_err(|e| Fatal(format!("cannot query Loki: {e}")))?;
        if response.status != 200 {
            return Err(Fatal(format!(
                "Loki answered {}: {}",
                response.status,
                response.body.chars().take(200).collect::<String>()
            )));
        }
        let body: serde_json::Value =
            serde_json::from_str(&response.body).map_err(|e| Fatal(e.to_string()))?;
        let (page, last) = loki_page(&body);
        let full = page.len() >= LOKI_PAGE;
        lines.extend(page);
        match last {
            Some(last) if full => from = last + 1,
            _ => return Ok(lines),
        }
    }
}

/// A `query_range` answer's lines, and the newest timestamp among them.
fn loki_page(body: &serde_json::Value) -> (Vec<LokiLine>, Option<u128>) {
    let mut lines = Vec::new();
    let mut last = None;
    for stream in body["data"]["result"].as_array().into_iter().flatten() {
        let session_id = stream["stream"]["session_id"].as_str().map(str::to_owned);
        for entry in stream["values"].as_array().into_iter().flatten() {
            let at = entry[0].as_str().and_then(|t| t.parse::<u128>().ok());
            last = last.max(at);
            let text = entry[1].as_str().unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|line| line["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| text.to_owned());
            lines.push(LokiLine {
                session_id: session_id.clone(),
                message,
            });
        }
    }
    (lines, last)
}

fn unix_ns(at: std::time::SystemTime) -> u128 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn find_in_loki(
    base: &str,
    trace_id: &str,
    deadline: Instant,
    trust: &Trust,
) -> Result<(), String> {
    let now = std::time::SystemTime::now();
    let window = (
        unix_ns(now - Duration::from_secs(600)),
        unix_ns(now + Duration::from_secs(600)),
    );
    let wanted = [
        crate::events::SessionOpened::MESSAGE,
        crate::events::SessionClosed::MESSAGE,
    ];
    let has_all = |seen: &Vec<String>| wanted.iter().all(|w| seen.iter().any(|m| m == w));
    let probe = || async {
        let lines = loki_lines(base, trace_id, window, trust).await?;
        Ok(lines.into_iter().map(|l| l.message).collect::<Vec<_>>())
    };
    let seen = poll(deadline, probe, has_all)
        .await
        .map_err(|Fatal(why)| why)?;
    if has_all(&seen) {
        return Ok(());
    }
    if seen.is_empty() {
        return Err(format!(
            "no log line with trace_id {trace_id} after waiting; is Vector tailing the \
             server's log directory, and is its Loki sink healthy (Vector API :8686/health)?"
        ));
    }
    Err(format!(
        "Loki has {} line(s) of trace {trace_id} but not both `{}` and `{}` after waiting \
         (it has: {})",
        seen.len(),
        wanted[0],
        wanted[1],
        seen.join(", ")
    ))
}

/// The names of a trace's spans in Tempo; `None` while Tempo does not
/// know the trace.
async fn tempo_span_names(
    base: &str,
    trace_id: &str,
    trust: &Trust,
) -> Result<Option<Vec<String>>, Fatal> {
    let url = format!("{}/api/traces/{trace_id}", base.trim_end_matches('/'));
    let response = http_client::get(&url, HTTP_TIMEOUT, trust)
        .await
        .map_err(|e| Fatal(format!("cannot query Tempo: {e}")))?;
    match response.status {
        200 => {}
        404 => return Ok(None),
        other => return Err(Fatal(format!("Tempo answered {other}"))),
    }
    let body: serde_json::Value = serde_json::from_str(&response.body)
        .map_err(|e| Fatal(format!("Tempo's answer is not JSON: {e}")))?;
    let mut names = Vec::new();
    span_names(&body, &mut names);
    Ok(Some(names))
}

/// Every span's name in Tempo's trace JSON (OTLP JSON: `batches` or
/// `resourceSpans`, then `scopeSpans`, then `spans`): objects with a
/// `spanId` and a `name`.
fn span_names(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let (Some(_), Some(name)) =
                (map.get("spanId"), map.get("name").and_then(|n| n.as_str()))
            {
                out.push(name.to_owned());
            }
            map.values().for_each(|v| span_names(v, out));
        }
        serde_json::Value::Array(list) => list.iter().for_each(|v| span_names(v, out)),
        _ => {}
    }
}

/// The spans every session's trace holds: the upgrade and the session.
const SESSION_SPANS: [&str; 2] = ["GET /ws", "ws.session"];

async fn find_in_tempo(
    base: &str,
    trace_id: &str,
    deadline: Instant,
    trust: &Trust,
) -> Result<(), String> {
    let has_all = |names: &Option<Vec<String>>| {
        names
            .as_ref()
            .is_some_and(|n| SESSION_SPANS.iter().all(|s| n.iter().any(|m| m == s)))
    };
    let names = poll(
        deadline,
        || tempo_span_names(base, trace_id, trust),
        has_all,
    )
    .await
    .map_err(|Fatal(why)| why)?;
    match names {
        _ if has_all(&names) => Ok(()),
        None => Err(format!(
            "trace {trace_id} not found after waiting; is OTEL_EXPORTER_OTLP_ENDPOINT set on \
             the server and pointing at Tempo's OTLP receiver?"
        )),
        Some(names) => Err(format!(
            "trace {trace_id} lacks {} after waiting (it has: {})",
            SESSION_SPANS.join(" or "),
            names.join(", ")
        )),
    }
}

/// An error that retrying will not fix.
struct Fatal(String);

/// Probes until `done` holds for what it found or the deadline passes,
/// then returns the last finding; a fatal error ends it at once.
async fn poll<T, F, Fut>(
    deadline: Instant,
    mut probe: F,
    done: impl Fn(&T) -> bool,
) -> Result<T, Fatal>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Fatal>>,
{
    loop {
        let found = probe().await?;
        if done(&found) || Instant::now() >= deadline {
            return Ok(found);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Grafana Explore with the Loki search and the Tempo trace side by side.
pub fn explore_link(grafana: &str, trace_id: &str) -> String {
    let panes = serde_json::json!({
        "logs": {
            "datasource": "loki",
            "queries": [{"refId": "A", "datasource": {"type": "loki", "uid": "loki"},
                         "expr": loki_query(trace_id)}],
            "range": {"from": "now-1h", "to": "now"}
        },
        "trace": {
            "datasource": "tempo",
            "queries": [{"refId": "A", "datasource": {"type": "tempo", "uid": "tempo"},
                         "queryType": "traceql", "query": trace_id}],
            "range": {"from": "now-1h", "to": "now"}
        }
    });
    format!(
        "{}/explore?schemaVersion=1&panes={}",
        grafana.trim_end_matches('/'),
        encode_component(&panes.to_string())
    )
}

fn random_hex(bytes: usize) -> String {
    // UUID v4 randomness is enough for a one-off trace ID.
    let mut out = String::new();
    while out.len() < bytes * 2 {
        out.push_str(&uuid::Uuid::new_v4().simple().to_string());
    }
    out.truncate(bytes * 2);
    out
}
