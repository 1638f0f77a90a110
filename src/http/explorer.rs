//! The session explorer page at `GET /`: one self-contained HTML file (no
//! CDN, compiled into the binary) that lists live sessions through the
//! admin API, and `GET /api/logs`, the search of the local log files by
//! trace or session ID behind it.

use axum::Json;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use opentelemetry::trace::TraceContextExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::cluster::ask::Gathered;
use crate::cluster::envelope::{Action, Answer, Question};
use crate::cluster::{Cluster, ClusterError};
use crate::error::HttpError;
use crate::limits::{CLUSTER_LOG_SEARCH_TIMEOUT, LOG_SEARCH_MAX_LINES};
use crate::state::ServerState;
use crate::telemetry::log_search::LogSearchError;
use crate::telemetry::logfile::valid_search_id;

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
/// lines, oldest first: from Loki with `--loki-url`; else this instance's
/// files, and in cluster mode every instance's (asked over Redis;
/// `partial` names those that did not answer in time).
pub async fn logs(
    State(state): State<Arc<ServerState>>,
    Query(query): Query<LogQuery>,
) -> Result<Json<Value>, HttpError> {
    let q = query.q.trim();
    if !valid_search_id(q) {
        return Err(LogSearchError::NotAnId.into());
    }
    if let Some(loki) = &state.config.loki_url {
        return Ok(Json(super::loki::search(loki, q).await?));
    }
    let here = state.log_search.search(q).await;
    let Some(cluster) = state.cluster() else {
        let mut found = here?;
        found["scope"] = "instance".into();
        return Ok(Json(found));
    };
    let origin = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone();
    let asked = cluster
        .ask(
            &Cluster::bus_channel(),
            |request_id| Action::Ask {
                request_id,
                question: Question::Logs { q: q.to_owned() },
            },
            true,
            &origin,
            CLUSTER_LOG_SEARCH_TIMEOUT,
        )
        .await;
    // The instances Redis knows are alive, to name those that were silent.
    let live: Vec<String> = match cluster.instance_stats().await {
        Ok(stats) => stats
            .iter()
            .filter_map(|s| s["instance_id"].as_str().map(str::to_owned))
            .collect(),
        Err(_) => Vec::new(),
    };
    let answers = Searched {
        here: (cluster.instance_id().to_owned(), here),
        asked,
        live,
    };
    Ok(Json(answers.merge()))
}

/// One cluster-wide search: this instance's result, the others' answers,
/// and the instances that should have answered.
struct Searched {
    here: (String, Result<Value, LogSearchError>),
    asked: Result<Gathered, ClusterError>,
    live: Vec<String>,
}

impl Searched {
    /// One body: every line, oldest first, and per instance what it found.
    fn merge(self) -> Value {
        let mut instances = vec![instance_entry(&self.here.0, &self.here.1)];
        let mut results = vec![self.here.1];
        let mut cluster_error = None;
        let mut unanswered = 0;
        match self.asked {
            Ok(gathered) => {
                unanswered = gathered.unanswered();
                for answered in gathered.answers {
                    let result = match answered.answer {
                        Answer::Logs { found } => Ok(found),
                        Answer::Failed { error } => Err(LogSearchError::Unreadable(error)),
                        Answer::Delivered { .. } => continue,
                    };
                    instances.push(instance_entry(&answered.instance_id, &result));
                    results.push(result);
                }
            }
            Err(error) => cluster_error = Some(error.to_string()),
        }
        let answered: Vec<&str> = instances
            .iter()
            .filter_map(|i| i["instance_id"].as_str())
            .collect();
        let mut partial: Vec<Value> = self
            .live
            .iter()
            .filter(|id| !answered.contains(&id.as_str()))
            .map(|id| json!({ "instance_id": id, "reason": "no answer in time" }))
            .collect();
        // Heard the question, but not among the instances Redis lists.
        if unanswered > partial.len() {
            let more = unanswered - partial.len();
            partial.push(json!({ "instances": more, "reason": "no answer in time" }));
        }
        for entry in &instances {
            if let Some(error) = entry["error"].as_str() {
                partial.push(json!({ "instance_id": entry["instance_id"], "reason": error }));
            }
        }
        let mut lines: Vec<Value> = Vec::new();
        let (mut corrupt, mut truncated, mut scan_capped) = (0, false, false);
        for found in results.into_iter().flatten() {
            corrupt += found["corrupt"].as_u64().unwrap_or(0);
            truncated |= found["truncated"].as_bool().unwrap_or(false);
            scan_capped |= found["scan_capped"].as_bool().unwrap_or(false);
            if let Value::Array(found_lines) = &found["lines"] {
                lines.extend(found_lines.iter().cloned());
            }
        }
        // Bunyan's `time` is RFC 3339 in UTC: it sorts as text.
        lines.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
        if lines.len() > LOG_SEARCH_MAX_LINES {
            lines.truncate(LOG_SEARCH_MAX_LINES);
            truncated = true;
        }
        let mut body = json!({
            "scope": "cluster",
            "lines": lines,
            "corrupt": corrupt,
            "truncated": truncated,
            "scan_capped": scan_capped,
            "instances": instances,
            "partial": if partial.is_empty() { Value::Bool(false) } else { Value::Array(partial) },
        });
        if let Some(error) = cluster_error {
            body["cluster_error"] = error.into();
        }
        body
    }
}

fn instance_entry(instance_id: &str, result: &Result<Value, LogSearchError>) -> Value {
    match result {
        Ok(found) => json!({
            "instance_id": instance_id,
            "lines": found["lines"].as_array().map_or(0, Vec::len),
            "truncated": found["truncated"],
        }),
        Err(error) => json!({ "instance_id": instance_id, "error": error.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ask::Answered;

    fn found(times: &[&str]) -> Value {
        let lines: Vec<Value> = times.iter().map(|t| json!({ "time": t })).collect();
        json!({ "lines": lines, "corrupt": 0, "truncated": false, "scan_capped": false })
    }

    #[test]
    fn a_cluster_search_merges_in_time_order_and_names_the_silent() {
        let searched = Searched {
            here: ("a".into(), Ok(found(&["2026-01-01T00:00:02Z"]))),
            asked: Ok(Gathered {
                heard_by: 3,
                answers: vec![
                    Answered {
                        instance_id: "b".into(),
                        answer: Answer::Logs {
                            found: found(&["2026-01-01T00:00:01Z", "2026-01-01T00:00:03Z"]),
                        },
                    },
                    Answered {
                        instance_id: "c".into(),
                        answer: Answer::Failed {
                            error: "the server writes no log files".into(),
                        },
                    },
                ],
            }),
            live: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        };
        let body = searched.merge();
        let times: Vec<&str> = body["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["time"].as_str().unwrap())
            .collect();
        assert_eq!(
            times,
            [
                "2026-01-01T00:00:01Z",
                "2026-01-01T00:00:02Z",
                "2026-01-01T00:00:03Z"
            ]
        );
        let partial = body["partial"].as_array().unwrap();
        assert_eq!(partial[0]["instance_id"], "d");
        assert_eq!(partial[1]["instance_id"], "c");
        assert_eq!(partial.len(), 2);
        assert_eq!(body["instances"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn a_search_without_redis_is_this_instances_and_says_why() {
        let searched = Searched {
            here: ("a".into(), Ok(found(&["t"]))),
            asked: Err(ClusterError::Down),
            live: vec![],
        };
        let body = searched.merge();
        assert_eq!(body["lines"].as_array().unwrap().len(), 1);
        assert!(body["cluster_error"].is_string());
    }
}
