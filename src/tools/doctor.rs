//! `wstrace doctor`: follows one session through the whole pipeline and
//! names the first link that is broken.
//!
//! 1. wstrace: open a session with a known `traceparent`; the welcome
//!    frame must carry that trace ID.
//! 2. Vector → Loki: a log line with that `trace_id` must become
//!    searchable in Loki.
//! 3. wstrace → Tempo: the trace must be retrievable from Tempo.
//! 4. Grafana: reachable; print the Explore link for the trace.

use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::http_client::{self, encode_component};
use super::tls::Trust;

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
    /// How long to wait for the log line and the trace to arrive.
    #[arg(long, env = "WSTRACE_DOCTOR_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
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
    #[error("step 4 (Grafana at {url}): {why}")]
    Grafana { url: String, why: String },
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
    println!("ok   2. Loki has the session's log lines");

    find_in_tempo(&args.tempo, &trace_id, deadline, trust)
        .await
        .map_err(|why| DoctorError::Tempo {
            url: args.tempo.clone(),
            why,
        })?;
    println!("ok   3. Tempo has the trace");

    let health = format!("{}/api/health", args.grafana.trim_end_matches('/'));
    match http_client::get(&health, HTTP_TIMEOUT, trust).await {
        Ok(r) if r.status == 200 => {}
        Ok(r) => {
            return Err(DoctorError::Grafana {
                url: args.grafana,
                why: format!("/api/health answered {}", r.status),
            });
        }
        Err(e) => {
            return Err(DoctorError::Grafana {
                url: args.grafana,
                why: e.to_string(),
            });
        }
    }
    println!("ok   4. Grafana is up");
    println!("\n{}", explore_link(&args.grafana, &trace_id));
    Ok(())
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
    let _ = ws.close(None).await;
    Ok(())
}

/// The LogQL for one trace's lines: the stream by its low-cardinality
/// label, the trace by structured metadata.
pub fn loki_query(trace_id: &str) -> String {
    format!(r#"{{service="wstrace"}} | trace_id="{trace_id}""#)
}

async fn find_in_loki(
    base: &str,
    trace_id: &str,
    deadline: Instant,
    trust: &Trust,
) -> Result<(), String> {
    let query = loki_query(trace_id);
    let start_ns = (std::time::SystemTime::now() - Duration::from_secs(600))
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let url = format!(
        "{}/loki/api/v1/query_range?query={}&start={start_ns}&limit=10",
        base.trim_end_matches('/'),
        encode_component(&query)
    );
    poll(deadline, || async {
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
        let found = body["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty());
        Ok(found)
    })
    .await
    .map_err(|Fatal(why)| why)?
    .then_some(())
    .ok_or_else(|| {
        format!(
            "no log line with trace_id {trace_id} after waiting; is Vector tailing the \
             server's log directory, and is its Loki sink healthy (Vector API :8686/health)?"
        )
    })
}

async fn find_in_tempo(
    base: &str,
    trace_id: &str,
    deadline: Instant,
    trust: &Trust,
) -> Result<(), String> {
    let url = format!("{}/api/traces/{trace_id}", base.trim_end_matches('/'));
    poll(deadline, || async {
        let response = http_client::get(&url, HTTP_TIMEOUT, trust)
            .await
            .map_err(|e| Fatal(format!("cannot query Tempo: {e}")))?;
        match response.status {
            200 => Ok(true),
            404 => Ok(false),
            other => Err(Fatal(format!("Tempo answered {other}"))),
        }
    })
    .await
    .map_err(|Fatal(why)| why)?
    .then_some(())
    .ok_or_else(|| {
        format!(
            "trace {trace_id} not found after waiting; is OTEL_EXPORTER_OTLP_ENDPOINT set on \
             the server and pointing at Tempo's OTLP receiver?"
        )
    })
}

/// An error that retrying will not fix.
struct Fatal(String);

/// Polls until found (`Ok(true)`), the deadline passes (`Ok(false)`), or a
/// fatal error.
async fn poll<F, Fut>(deadline: Instant, mut probe: F) -> Result<bool, Fatal>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Fatal>>,
{
    loop {
        if probe().await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
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
