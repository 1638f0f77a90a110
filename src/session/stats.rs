//! What a session counts and records while it runs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::flight::FlightRecorder;
use crate::sampling::DebugSwitch;

/// What a session's tasks share: counters (each written by one task,
/// reader or writer or heartbeat, so relaxed atomics are enough), whether
/// it is a debug session, and its flight recorder.
#[derive(Debug)]
pub struct SessionStats {
    /// Debug session: every message gets spans and lines.
    pub debug: DebugSwitch,
    pub flight: FlightRecorder,
    started: Instant,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
    pub pings_sent: AtomicU64,
    /// Warning lines the session's budget left out.
    pub warnings_suppressed: AtomicU64,
    pongs_received: AtomicU64,
    rtt_last_us: AtomicU64,
    rtt_total_us: AtomicU64,
    /// Microseconds after `started` at which the peer last sent anything.
    last_seen_us: AtomicU64,
}

impl SessionStats {
    pub fn new() -> Self {
        Self::with_recorder(crate::limits::DEFAULT_FLIGHT_RECORDER_MESSAGES)
    }

    /// With a flight recorder of `messages` entries (0: none).
    pub fn with_recorder(messages: usize) -> Self {
        Self {
            debug: DebugSwitch::default(),
            flight: FlightRecorder::new(messages),
            started: Instant::now(),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pings_sent: AtomicU64::new(0),
            warnings_suppressed: AtomicU64::new(0),
            pongs_received: AtomicU64::new(0),
            rtt_last_us: AtomicU64::new(0),
            rtt_total_us: AtomicU64::new(0),
            last_seen_us: AtomicU64::new(0),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn micros_since_start(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The peer sent something: it is alive. Returns the time, for the
    /// flight recorder.
    pub fn touch(&self) -> u64 {
        let now = self.micros_since_start();
        self.last_seen_us.store(now, Relaxed);
        now
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

#[cfg(test)]
mod tests {
    use super::*;

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
