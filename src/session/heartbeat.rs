//! The heartbeat: when to ping the peer, when its silence has lasted the
//! idle timeout, and (in cluster mode) keeping the session's registry entry
//! alive.
//!
//! It is not a task of its own: the writer, which owns the socket, runs it
//! on one timer in its `select!` and writes the pings itself. A task per
//! session costs its future, a span and a queue sender for as long as the
//! session lives (BENCHMARKS.md, memory per idle session).

use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

use super::close::{CloseDecision, ClosedBy};
use super::handle::SessionHandle;
use super::stats::SessionStats;
use crate::error::close_code;
use crate::events::{IdleSessionClosing, InternalEvent, PingSent};
use crate::routing::Router;

/// What the writer should do when the heartbeat timer fires.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    /// Send this ping payload.
    Ping([u8; 8]),
    /// The peer has been silent for the idle timeout: close with this.
    Idle(CloseDecision),
    /// Nothing yet (the peer spoke since the timer was set).
    Wait,
}

/// A session's heartbeat schedule.
pub struct Heartbeat {
    interval: Duration,
    idle_timeout: Duration,
    next_ping: Instant,
    /// Cluster mode: each ping also renews the registry entry. Weak, so the
    /// writer never keeps the session's handle (and its queue) alive.
    renew: Option<(Arc<Router>, Weak<SessionHandle>)>,
}

impl Heartbeat {
    pub fn new(
        interval: Duration,
        idle_timeout: Duration,
        renew: Option<(Arc<Router>, Weak<SessionHandle>)>,
    ) -> Self {
        Self {
            interval,
            idle_timeout,
            next_ping: Instant::now() + interval,
            renew,
        }
    }

    /// When the timer should next fire: the next ping, or the moment the
    /// peer's silence reaches the idle timeout, whichever comes first.
    pub fn next_wake(&self, stats: &SessionStats) -> Instant {
        let idle_deadline = Instant::from_std(stats.last_seen()) + self.idle_timeout;
        self.next_ping.min(idle_deadline)
    }

    /// The timer fired at `now`.
    pub fn on_timer(&mut self, stats: &SessionStats, now: Instant) -> Beat {
        let silent_for = now.saturating_duration_since(Instant::from_std(stats.last_seen()));
        if silent_for >= self.idle_timeout {
            IdleSessionClosing {
                silent_ms: silent_for.as_millis() as u64,
                idle_timeout_ms: self.idle_timeout.as_millis() as u64,
            }
            .emit();
            return Beat::Idle(CloseDecision::new(
                close_code::NORMAL,
                "idle timeout",
                ClosedBy::IdleTimeout,
            ));
        }
        if now < self.next_ping {
            return Beat::Wait;
        }
        // A late tick is not caught up: the next ping is one interval on.
        self.next_ping = now + self.interval;
        self.renew_registry_entry();
        Beat::Ping(stats.ping_payload())
    }

    /// The ping was written.
    pub fn sent(&self) {
        PingSent.emit();
    }

    fn renew_registry_entry(&self) {
        let Some((router, session)) = &self.renew else {
            return;
        };
        let Some(session) = session.upgrade() else {
            return;
        };
        let router = router.clone();
        // Its own short task: a slow Redis must not hold up the writer.
        // Failures are counted and reported by the upkeep task.
        tokio::spawn(
            async move {
                let _ = router.renew(&*session).await;
            }
            .in_current_span(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test]
    async fn pings_on_the_interval_and_closes_after_the_idle_timeout() {
        // Explicit instants, seconds apart: no sleeping, no race with the
        // clock however loaded the machine is.
        const S: Duration = Duration::from_secs(1);
        let start = Instant::now();
        let stats = SessionStats::new();
        let mut heartbeat = Heartbeat::new(10 * S, 25 * S, None);
        assert!(heartbeat.next_wake(&stats) >= start + 10 * S);
        assert_eq!(heartbeat.on_timer(&stats, start + 5 * S), Beat::Wait);
        assert!(matches!(
            heartbeat.on_timer(&stats, start + 11 * S),
            Beat::Ping(_)
        ));
        assert_eq!(
            u64::from(stats.pings_sent.load(std::sync::atomic::Ordering::Relaxed)),
            1
        );
        // The next ping is an interval after the late one.
        assert!(heartbeat.next_wake(&stats) >= start + 21 * S);
        match heartbeat.on_timer(&stats, start + 30 * S) {
            Beat::Idle(decision) => assert_eq!(decision.by, ClosedBy::IdleTimeout),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_peer_that_speaks_is_not_idle() {
        let stats = SessionStats::new();
        let mut heartbeat = Heartbeat::new(100 * MS, 150 * MS, None);
        tokio::time::sleep(120 * MS).await;
        stats.touch();
        let now = Instant::now();
        assert!(matches!(heartbeat.on_timer(&stats, now), Beat::Ping(_)));
        // Silence is counted from the last frame, not from the start.
        assert!(heartbeat.next_wake(&stats) >= now + 100 * MS);
    }
}
