//! The close protocol: who may end a session, how the first decision wins,
//! and what the peer said.
//!
//! Any task may propose a close ([`CloseSignal::decide`]); the first
//! proposal sticks, and the writer and the supervisor wait for it. The
//! writer sends the Close frame (the server's own, or the answer to the
//! client's); the supervisor in `session::run_session` waits a bounded
//! time for the handshake to finish.

use futures_util::task::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use crate::error::close_code;
use crate::sync::lock;
use crate::websocket::{CloseFrame, Utf8Bytes};

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
    /// Every value, for the docs' tests.
    pub const ALL: [ClosedBy; 7] = [
        ClosedBy::Client,
        ClosedBy::Server,
        ClosedBy::Admin,
        ClosedBy::Policy,
        ClosedBy::IdleTimeout,
        ClosedBy::Error,
        ClosedBy::Shutdown,
    ];

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

    /// The Close frame the writer sends for this decision: the server's
    /// own, with its code and reason, or the answer to the client's, which
    /// echoes its code (RFC 6455 5.5.1). None when the connection is gone
    /// (1006): nothing can be sent.
    pub fn close_frame(&self) -> Option<Option<CloseFrame>> {
        match (self.code, self.by) {
            (close_code::ABNORMAL, _) => None,
            (close_code::NO_STATUS, ClosedBy::Client) => Some(None),
            (code, ClosedBy::Client) => Some(Some(CloseFrame {
                code,
                reason: Utf8Bytes::default(),
            })),
            (code, _) => Some(Some(CloseFrame {
                code,
                reason: self.reason.as_str().into(),
            })),
        }
    }
}

/// The one place a session's ending is decided. Any task may propose; the
/// first proposal sticks, and the two that act on it (the writer, which
/// sends the Close frame, and the supervisor, which ends the session) wait
/// for it.
///
/// A `OnceLock` and one waker per waiter rather than a `watch` channel or
/// a `Notify`: the decision is written once; a watch costs an idle session
/// ~350 bytes of notifier slots, and both take a mutex each time a waiting
/// task is polled, which the writer and the supervisor are on every
/// message (BENCHMARKS.md).
#[derive(Debug, Clone, Default)]
pub struct CloseSignal(Arc<CloseState>);

#[derive(Debug, Default)]
struct CloseState {
    decision: OnceLock<CloseDecision>,
    writer: AtomicWaker,
    supervisor: AtomicWaker,
}

/// Who waits for a close decision. Each has one waker slot: two futures
/// waiting as the same waiter at once would take each other's wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    Writer,
    Supervisor,
}

impl CloseSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns whether this decision is the one that counts.
    pub fn decide(&self, decision: CloseDecision) -> bool {
        let counts = self.0.decision.set(decision).is_ok();
        if counts {
            self.0.writer.wake();
            self.0.supervisor.wake();
        }
        counts
    }

    pub fn decision(&self) -> Option<CloseDecision> {
        self.0.decision.get().cloned()
    }

    pub fn is_decided(&self) -> bool {
        self.0.decision.get().is_some()
    }

    /// Resolves once a decision exists, including one made before the call.
    pub fn decided(&self, waiter: Waiter) -> Decided<'_> {
        Decided {
            signal: self,
            waiter,
        }
    }
}

/// The future of [`CloseSignal::decided`].
#[derive(Debug)]
pub struct Decided<'a> {
    signal: &'a CloseSignal,
    waiter: Waiter,
}

impl Future for Decided<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_decided() {
            return Poll::Ready(());
        }
        let state = &self.signal.0;
        let waker = match self.waiter {
            Waiter::Writer => &state.writer,
            Waiter::Supervisor => &state.supervisor,
        };
        waker.register(cx.waker());
        // Checked again after registering: a decision made in between
        // woke the previous waker, not this one.
        if self.signal.is_decided() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decision_wakes_both_waiters_before_and_after_it() {
        for _ in 0..200 {
            let signal = CloseSignal::new();
            let waiters: Vec<_> = [Waiter::Writer, Waiter::Supervisor]
                .into_iter()
                .map(|waiter| {
                    let signal = signal.clone();
                    tokio::spawn(async move { signal.decided(waiter).await })
                })
                .collect();
            tokio::task::yield_now().await;
            signal.decide(CloseDecision::new(1000, "done", ClosedBy::Server));
            for waiter in waiters {
                tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
                    .await
                    .expect("a waiter missed the decision")
                    .unwrap();
            }
            // Made before the wait: resolves at once.
            signal.decided(Waiter::Writer).await;
        }
    }
}
