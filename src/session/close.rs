//! The close protocol: who may end a session, how the first decision wins,
//! and what the peer said.
//!
//! Any task may propose a close ([`CloseSignal::decide`]); the first
//! proposal sticks, and every task watches for it. The writer sends the
//! Close frame for the server's own decisions; the supervisor in
//! `session::run_session` waits a bounded time for the handshake to finish.

use std::sync::Mutex;
use tokio::sync::watch;

use crate::error::close_code;
use crate::sync::lock;

/// Who ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    /// The client sent Close, or dropped the connection.
    Client,
    /// The server decided, for no reason below.
    Server,
    /// An operator, through the admin API.
    Admin,
    /// A policy: message rate, outbound queue overflow.
    Policy,
    /// Nothing heard from the client within the idle timeout.
    IdleTimeout,
    /// A protocol or transport error.
    Error,
    /// The server is shutting down.
    Shutdown,
}

impl ClosedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Client => "client",
            ClosedBy::Server => "server",
            ClosedBy::Admin => "admin",
            ClosedBy::Policy => "policy",
            ClosedBy::IdleTimeout => "idle_timeout",
            ClosedBy::Error => "error",
            ClosedBy::Shutdown => "shutdown",
        }
    }
}

/// How a session ended; the first decision wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseDecision {
    pub code: u16,
    pub reason: String,
    pub by: ClosedBy,
}

impl CloseDecision {
    pub fn new(code: u16, reason: impl Into<String>, by: ClosedBy) -> Self {
        Self {
            code,
            reason: reason.into(),
            by,
        }
    }

    /// The server sends a Close frame for its own decisions; a client's
    /// Close is answered by the WebSocket layer itself.
    pub fn server_sends_close(&self) -> bool {
        self.by != ClosedBy::Client && self.code != close_code::ABNORMAL
    }
}

/// The one place a session's ending is decided. Any task may propose; the
/// first proposal sticks and every task can watch for it.
#[derive(Debug, Clone)]
pub struct CloseSignal(watch::Sender<Option<CloseDecision>>);

impl CloseSignal {
    pub fn new() -> Self {
        Self(watch::Sender::new(None))
    }

    /// Returns whether this decision is the one that counts.
    pub fn decide(&self, decision: CloseDecision) -> bool {
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(decision);
                true
            } else {
                false
            }
        })
    }

    pub fn decision(&self) -> Option<CloseDecision> {
        self.0.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<CloseDecision>> {
        self.0.subscribe()
    }
}

impl Default for CloseSignal {
    fn default() -> Self {
        Self::new()
    }
}

/// The Close frame the peer sent, if any (kept beside the decision: when we
/// initiated, the peer's Close is only its acknowledgement).
#[derive(Debug, Default)]
pub struct PeerClose(Mutex<Option<(u16, String)>>);

impl PeerClose {
    pub fn set(&self, code: u16, reason: String) {
        *lock(&self.0) = Some((code, reason));
    }
    pub fn get(&self) -> Option<(u16, String)> {
        lock(&self.0).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_close_decision_wins() {
        let signal = CloseSignal::new();
        assert!(signal.decide(CloseDecision::new(1000, "idle", ClosedBy::IdleTimeout)));
        assert!(!signal.decide(CloseDecision::new(1001, "bye", ClosedBy::Shutdown)));
        assert_eq!(signal.decision().unwrap().by, ClosedBy::IdleTimeout);
    }
}
