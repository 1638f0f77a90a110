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
