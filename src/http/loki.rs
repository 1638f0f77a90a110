//! `--loki-url`: the explorer's log search asks Loki, where Vector shipped
//! every instance's lines, instead of the local files.

use serde_json::{Value, json};

use crate::error::HttpError;
use crate::limits::LOG_SEARCH_MAX_LINES;
use crate::telemetry::log_search::LogSearchError;
use crate::telemetry::logfile::valid_search_id;
use crate::tools::http_client;
use crate::tools::tls::Trust;

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
pub async fn search(base: &str, q: &str) -> Result<Value, HttpError> {
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
