//! Typed telemetry events: one type per documented log line, in one file
//! per part of the server that writes it.
//!
//! In the manner of Vector's `internal_events`: a line's message string
//! exists once, as its type's `MESSAGE`, and its one method,
//! [`InternalEvent::emit`], writes the line and bumps the metric that counts
//! the same thing, so the two never disagree. An event that counts carries
//! the server's `&Metrics` as a field.
//! The docs, `vector.toml`'s tests, `wstrace logs` and the test suites
//! refer to these constants instead of repeating the strings.
//!
//! Each line's `target` names the task that writes it (`wstrace::session`,
//! `…::reader`, `…::writer`, `…::heartbeat`), whatever module the code
//! lives in: "which task wrote this line" is part of the log format.
//!
//! Debug-level lines that only help while developing stay plain `tracing`
//! calls where they happen.

mod cluster;
mod heartbeat;
mod http;
mod reader;
mod routing;
mod server;
mod session;
mod writer;

pub use cluster::*;
pub use heartbeat::*;
pub use http::*;
pub use reader::*;
pub use routing::*;
pub use server::*;
pub use session::*;
pub use writer::*;

use std::fmt::Display;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::limits::{PROCESS_LINE_INTERVAL, PROCESS_LINES_PER_INTERVAL};
use crate::metrics::Metrics;
use crate::sampling::DebugReason;
use crate::sync::lock;

/// One documented log line: `emit` writes it (when its budget, if any,
/// admits it) and counts it in its metric.
pub trait InternalEvent: Sized {
    fn emit(self);
}

/// At most `max` lines per `interval`; the rest are not written but
/// counted, and the next line written says how many were left out
/// (`lines_suppressed`), so a flood costs bounded disk and nothing is
/// silently lost.
#[derive(Debug)]
pub struct LineBudget {
    max: u32,
    /// Milliseconds (a `Duration` is 16 bytes, and every session keeps a
    /// budget).
    interval_ms: u32,
    window_start: Instant,
    used: u32,
    suppressed: u64,
    suppressed_total: u64,
}

impl LineBudget {
    pub fn new(max: u32, interval: Duration) -> Self {
        Self {
            max,
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            window_start: Instant::now(),
            used: 0,
            suppressed: 0,
            suppressed_total: 0,
        }
    }

    /// `Some(suppressed since the last written line)` when this line may be
    /// written, `None` when it is suppressed (and counted).
    pub fn admit(&mut self) -> Option<u64> {
        if self.window_start.elapsed() >= Duration::from_millis(u64::from(self.interval_ms)) {
            self.window_start = Instant::now();
            self.used = 0;
        }
        if self.used < self.max {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            self.suppressed_total += 1;
            None
        }
    }

    /// Lines suppressed over the budget's whole life.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }
}

/// One process-wide budget per kind of line that any client can cause
/// without a session (refused requests and upgrades).
fn process_budget(kind: &'static LazyLock<Mutex<LineBudget>>) -> Option<u64> {
    lock(kind).admit()
}

macro_rules! process_budgets {
    ($($name:ident),*) => {
        $(static $name: LazyLock<Mutex<LineBudget>> = LazyLock::new(|| {
            Mutex::new(LineBudget::new(PROCESS_LINES_PER_INTERVAL, PROCESS_LINE_INTERVAL))
        });)*
    };
}

process_budgets!(
    HTTP_REFUSALS,
    UPGRADE_REFUSALS,
    HOST_REFUSALS,
    CONNECTION_REFUSALS,
    TRACEPARENT_REFUSALS,
    CLIENT_ADDRESS_ERRORS,
    TLS_REFUSALS,
    ADMIN_REFUSALS
);

/// The `target` of each line: the task or part of the server that wrote it.
pub mod target {
    pub const SERVER: &str = "wstrace::app";
    pub const HTTP: &str = "wstrace::http";
    pub const ADMIN: &str = "wstrace::http::api";
    pub const SESSION: &str = "wstrace::session";
    pub const READER: &str = "wstrace::session::reader";
    pub const WRITER: &str = "wstrace::session::writer";
    pub const HEARTBEAT: &str = "wstrace::session::heartbeat";
    pub const ROUTING: &str = "wstrace::routing";
    pub const CLUSTER: &str = "wstrace::cluster";
    pub const TELEMETRY: &str = "wstrace::telemetry";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_budget_writes_its_share_and_counts_the_rest() {
        let mut budget = LineBudget::new(3, Duration::from_millis(50));
        let first: Vec<_> = (0..10).map(|_| budget.admit()).collect();
        assert_eq!(&first[..3], [Some(0), Some(0), Some(0)]);
        assert!(first[3..].iter().all(Option::is_none));
        assert_eq!(budget.suppressed_total(), 7);
        std::thread::sleep(Duration::from_millis(60));
        // The next line written says how many were left out before it.
        assert_eq!(budget.admit(), Some(7));
        assert_eq!(budget.admit(), Some(0));
        assert_eq!(budget.suppressed_total(), 7);
    }
}
