//! What a session counts while it runs, and how it ended.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Counters shared by a session's tasks. Each is written by one task (reader
/// or writer or heartbeat), so relaxed atomics are enough.
#[derive(Debug)]
pub struct SessionStats {
    started: Instant,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
    pub pings_sent: AtomicU64,
    pongs_received: AtomicU64,
    rtt_last_us: AtomicU64,
    rtt_total_us: AtomicU64,
    /// Microseconds after `started` at which the peer last sent anything.
    last_seen_us: AtomicU64,
}

impl SessionStats {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pings_sent: AtomicU64::new(0),
            pongs_received: AtomicU64::new(0),
            rtt_last_us: AtomicU64::new(0),
            rtt_total_us: AtomicU64::new(0),
            last_seen_us: AtomicU64::new(0),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn micros_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The peer sent something: it is alive.
    pub fn touch(&self) {
        self.last_seen_us.store(self.micros_since_start(), Relaxed);
    }

    /// When the peer was last heard from.
    pub fn last_seen(&self) -> Instant {
        self.started + Duration::from_micros(self.last_seen_us.load(Relaxed))
    }

    pub fn message_in(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub fn message_out(&self, bytes: usize) {
        self.messages_out.fetch_add(1, Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    /// The payload of our next ping: when it was sent, so the pong alone
    /// tells the round-trip time and no table of outstanding pings is kept.
    pub fn ping_payload(&self) -> [u8; 8] {
        self.pings_sent.fetch_add(1, Relaxed);
        self.micros_since_start().to_be_bytes()
    }

    /// Records the round trip of one of our pings. Pongs that do not carry
    /// one of our payloads (unsolicited pongs are allowed) are ignored.
    pub fn pong(&self, payload: &[u8]) -> Option<Duration> {
        let sent_us = u64::from_be_bytes(payload.try_into().ok()?);
        let rtt_us = self.micros_since_start().checked_sub(sent_us)?;
        self.pongs_received.fetch_add(1, Relaxed);
        self.rtt_last_us.store(rtt_us, Relaxed);
        self.rtt_total_us.fetch_add(rtt_us, Relaxed);
        Some(Duration::from_micros(rtt_us))
    }

    /// (last, mean) ping round trip in milliseconds, if any pong came back.
    pub fn ping_rtt_ms(&self) -> Option<(f64, f64)> {
        let n = self.pongs_received.load(Relaxed);
        (n > 0).then(|| {
            let last = self.rtt_last_us.load(Relaxed) as f64 / 1000.0;
            let mean = self.rtt_total_us.load(Relaxed) as f64 / n as f64 / 1000.0;
            (last, mean)
        })
    }
}

impl Default for SessionStats {
    fn default() -> Self {
        Self::new()
    }
}

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
        self.by != ClosedBy::Client && self.code != crate::error::close_code::ABNORMAL
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
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((code, reason));
    }
    pub fn get(&self) -> Option<(u16, String)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

    #[test]
    fn pong_payload_gives_round_trip() {
        let stats = SessionStats::new();
        let payload = stats.ping_payload();
        std::thread::sleep(Duration::from_millis(2));
        let rtt = stats.pong(&payload).unwrap();
        assert!(rtt >= Duration::from_millis(2));
        assert!(stats.pong(b"other").is_none());
        let (last, mean) = stats.ping_rtt_ms().unwrap();
        assert_eq!(last, mean);
    }
}
