//! The search behind `GET /api/logs` and the explorer: one trace's or
//! session's lines in this instance's log files, bounded in bytes read and
//! lines kept, one search at a time. In cluster mode the other instances
//! run the same search when asked over Redis (`cluster::ask`).

use serde_json::{Value, json};
use std::path::PathBuf;
use tokio::sync::Semaphore;

use super::logfile::{SearchLimits, id_matches, search_for, valid_search_id};
use crate::limits::{LOG_SEARCH_MAX_BYTES, LOG_SEARCH_MAX_LINES};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LogSearchError {
    #[error("q must be a trace ID or a session ID")]
    NotAnId,
    #[error("the server writes no log files")]
    NoFiles,
    #[error("a log search is already running; retry in a moment")]
    Busy,
    #[error("cannot read the log files: {0}")]
    Unreadable(String),
}

impl From<LogSearchError> for crate::error::HttpError {
    fn from(error: LogSearchError) -> Self {
        use crate::error::HttpError;
        match error {
            LogSearchError::NotAnId => HttpError::BadRequest(error.to_string()),
            LogSearchError::Busy => HttpError::Busy(error.to_string()),
            LogSearchError::NoFiles | LogSearchError::Unreadable(_) => {
                HttpError::NotFound(error.to_string())
            }
        }
    }
}

#[derive(Debug)]
pub struct LogSearch {
    dir: Option<PathBuf>,
    /// Each search reads the whole log directory: one at a time.
    running: Semaphore,
}

impl LogSearch {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            running: Semaphore::new(1),
        }
    }

    /// The matching lines, oldest first, with what bounded the search:
    /// the body of `GET /api/logs` for this instance.
    pub async fn search(&self, q: &str) -> Result<Value, LogSearchError> {
        let q = q.trim().to_owned();
        if !valid_search_id(&q) {
            return Err(LogSearchError::NotAnId);
        }
        let dir = self.dir.clone().ok_or(LogSearchError::NoFiles)?;
        let _searching = self
            .running
            .try_acquire()
            .map_err(|_| LogSearchError::Busy)?;
        let limits = SearchLimits {
            max_bytes: LOG_SEARCH_MAX_BYTES,
            max_lines: LOG_SEARCH_MAX_LINES,
        };
        let found = tokio::task::spawn_blocking(move || {
            // A short id (what the page and `wstrace logs` print) works too.
            let names =
                |field: &str, v: &Value| v[field].as_str().is_some_and(|have| id_matches(have, &q));
            let keep = |v: &Value| names("trace_id", v) || names("session_id", v);
            search_for(&[dir], &q, keep, limits)
        })
        .await
        .map_err(|e| LogSearchError::Unreadable(e.to_string()))?
        .map_err(|e| LogSearchError::Unreadable(e.to_string()))?;
        Ok(json!({
            "lines": found.lines,
            "corrupt": found.corrupt,
            // More lines matched than one answer holds.
            "truncated": found.lines_capped,
            // The search stopped before reading every file.
            "scan_capped": found.bytes_capped,
            "bytes_scanned": found.bytes_scanned,
        }))
    }
}

/// The LogQL for one id's lines in Loki: the stream by its low-cardinality
/// label, the id by structured metadata, anchored at the start (a short id
/// is a prefix, never a match in the middle of another id).
pub fn loki_query(q: &str) -> String {
    format!(r#"{{service="wstrace"}} | trace_id=~"^{q}.*" or session_id=~"^{q}.*""#)
}

/// How far back a Loki search looks: the shipped `loki.yaml`'s retention.
const LOKI_WINDOW: std::time::Duration = std::time::Duration::from_secs(168 * 3600);
const LOKI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `--loki-url`: the id's lines as Loki holds them (every instance's, as
/// Vector shipped them), oldest first, at most `LOG_SEARCH_MAX_LINES`.
pub async fn search_loki(base: &str, q: &str) -> Result<Value, crate::error::HttpError> {
    use crate::error::HttpError;
    use crate::tools::{http_client, tls::Trust};
    let q = q.trim();
    if !valid_search_id(q) {
        return Err(LogSearchError::NotAnId.into());
    }
    let now = std::time::SystemTime::now();
    let nanos = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    };
    let url = format!(
        "{}/loki/api/v1/query_range?query={}&start={}&end={}&limit={LOG_SEARCH_MAX_LINES}&direction=forward",
        base.trim_end_matches('/'),
        http_client::encode_component(&loki_query(q)),
        nanos(now - LOKI_WINDOW),
        nanos(now),
    );
    let unavailable =
        |why: String| HttpError::LogStoreUnavailable(format!("Loki at {base}: {why}"));
    let trust = Trust::new(None).map_err(unavailable)?;
    let response = http_client::get(&url, LOKI_TIMEOUT, &trust)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if response.status != 200 {
        let said: String = response.body.chars().take(200).collect();
        return Err(unavailable(format!("answered {}: {said}", response.status)));
    }
    let body: Value =
        serde_json::from_str(&response.body).map_err(|e| unavailable(e.to_string()))?;
    let mut entries: Vec<(String, Value)> = Vec::new();
    for stream in body["data"]["result"].as_array().into_iter().flatten() {
        for entry in stream["values"].as_array().into_iter().flatten() {
            let (Some(ts), Some(line)) = (entry[0].as_str(), entry[1].as_str()) else {
                continue;
            };
            let line = serde_json::from_str(line).unwrap_or_else(|_| json!({ "msg": line }));
            // Nanosecond timestamps of equal length sort as text.
            entries.push((format!("{ts:0>20}"), line));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let truncated = entries.len() >= LOG_SEARCH_MAX_LINES;
    let lines: Vec<Value> = entries.into_iter().map(|(_, line)| line).collect();
    Ok(json!({
        "scope": "loki",
        "source": "loki",
        "lines": lines,
        "corrupt": 0,
        "truncated": truncated,
        "scan_capped": false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loki_query_anchors_the_id() {
        assert_eq!(
            loki_query("4bf92f35"),
            r#"{service="wstrace"} | trace_id=~"^4bf92f35.*" or session_id=~"^4bf92f35.*""#
        );
    }
}
