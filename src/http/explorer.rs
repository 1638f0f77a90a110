//! The session explorer page at `GET /`: one self-contained HTML file (no
//! CDN, compiled into the binary) that lists live sessions through the
//! admin API, and `GET /api/logs`, the search of the local log files by
//! trace or session ID behind it.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

use crate::error::HttpError;
use crate::limits::{LOG_SEARCH_MAX_BYTES, LOG_SEARCH_MAX_LINES};
use crate::state::ServerState;
use crate::telemetry::logfile::{SearchLimits, id_matches, search_for};

const PAGE: &str = include_str!("explorer/index.html");
const SCRIPT: &str = include_str!("explorer/app.js");
/// Everything is same-origin and nothing inline runs: an injected
/// `<script>` or `onclick=` would not execute, and no other site may frame
/// the page (clickjacking).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        PAGE,
    )
        .into_response()
}

/// The page's script, from the same origin (the CSP allows nothing else).
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
        ],
        SCRIPT,
    )
        .into_response()
}

/// What the page needs to know; nothing secret.
pub async fn config(State(state): State<Arc<ServerState>>) -> Json<serde_json::Value> {
    Json(json!({
        "grafana_url": state.config.grafana_url,
        "admin_api": state.config.admin_token.is_some(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    /// A trace ID or a session ID.
    q: String,
}

/// `GET /api/logs?q=<trace or session id>` (admin token): the matching
/// lines of the server's own log files, oldest first.
pub async fn logs(
    State(state): State<Arc<ServerState>>,
    Query(query): Query<LogQuery>,
) -> Result<Json<serde_json::Value>, HttpError> {
    let q = query.q.trim().to_owned();
    let valid =
        !q.is_empty() && q.len() <= 64 && q.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !valid {
        return Err(HttpError::BadRequest(
            "q must be a trace ID or a session ID".into(),
        ));
    }
    let Some(dir) = state.config.log_dir.clone() else {
        return Err(HttpError::NotFound("the server writes no log files".into()));
    };
    // One search at a time: each reads the whole log directory.
    let Ok(_searching) = state.log_search.try_acquire() else {
        return Err(HttpError::Busy(
            "a log search is already running; retry in a moment".into(),
        ));
    };
    let limits = SearchLimits {
        max_bytes: LOG_SEARCH_MAX_BYTES,
        max_lines: LOG_SEARCH_MAX_LINES,
    };
    let found = tokio::task::spawn_blocking(move || {
        // A short id (what the page and `wstrace logs` print) works too.
        let names = |field: &str, v: &serde_json::Value| {
            v[field].as_str().is_some_and(|have| id_matches(have, &q))
        };
        let keep = |v: &serde_json::Value| names("trace_id", v) || names("session_id", v);
        search_for(&[dir], &q, keep, limits)
    })
    .await
    .map_err(|e| HttpError::BadRequest(e.to_string()))?
    .map_err(|e| HttpError::NotFound(format!("cannot read the log files: {e}")))?;
    Ok(Json(json!({
        "lines": found.lines,
        "corrupt": found.corrupt,
        // More lines matched than one answer holds.
        "truncated": found.lines_capped,
        // The search stopped before reading every file.
        "scan_capped": found.bytes_capped,
        "bytes_scanned": found.bytes_scanned,
    })))
}
