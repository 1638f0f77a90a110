//! What a session counts and records while it runs.

use once_cell::race::OnceBox;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::flight::{FlightRecorder, Ring, RingSlot};
use crate::sampling::{DebugGrant, DebugReason, DebugRefused, DebugSlots, DebugStatus};
use crate::sync::lock;

/// [`SessionStats::tiers`]: the session is a debug session.
pub(super) const DEBUG_ON: u8 = 1;

/// What a session's tasks share: counters (each written by one task,
/// reader or writer or heartbeat, so relaxed atomics are enough), whether
/// it is a debug session ([`SessionStats::debug`]), and its flight recorder
/// ([`SessionStats::flight`]).
///
/// An idle session pays for the last two with one pointer and a few bytes:
/// their state is allocated by the first message or the first debug switch.
#[derive(Debug)]
pub struct SessionStats {
    /// [`DEBUG_ON`] and the flight recorder's `RECORDER_WRITTEN`: read on every message.
    pub(super) tiers: AtomicU8,
    /// Messages the flight recorder keeps.
    pub(super) recorder_capacity: u16,
    pub(super) extras: OnceBox<Extras>,
    started: Instant,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub errors: AtomicU64,
    // Counts that fit 32 bits: the stats stay in one small allocation.
    pub pings_sent: AtomicU32,
    /// Warning lines the session's budget left out.
    pub warnings_suppressed: AtomicU32,
    pongs_received: AtomicU32,
    /// Saturates at ~71 minutes, far past any ping timeout.
    rtt_last_us: AtomicU32,
    rtt_total_us: AtomicU64,
    /// Microseconds after `started` at which the peer last sent anything.
    last_seen_us: AtomicU64,
    /// The connection's compression and bytes on the wire (kept here, on
    /// the heap, not in the session's futures).
    pub wire: std::sync::Arc<crate::websocket::Wire>,
}

impl SessionStats {
    pub fn new() -> Self {
        Self::with_recorder(crate::limits::DEFAULT_FLIGHT_RECORDER_MESSAGES)
    }

    /// With a flight recorder of `messages` entries (0: none).
    pub fn with_recorder(messages: usize) -> Self {
        Self {
            tiers: AtomicU8::new(0),
            recorder_capacity: u16::try_from(messages).unwrap_or(u16::MAX),
            extras: OnceBox::new(),
            started: Instant::now(),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            pings_sent: AtomicU32::new(0),
            warnings_suppressed: AtomicU32::new(0),
            pongs_received: AtomicU32::new(0),
            rtt_last_us: AtomicU32::new(0),
            rtt_total_us: AtomicU64::new(0),
            last_seen_us: AtomicU64::new(0),
            wire: Default::default(),
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
        self.rtt_last_us
            .store(u32::try_from(rtt_us).unwrap_or(u32::MAX), Relaxed);
        self.rtt_total_us.fetch_add(rtt_us, Relaxed);
        Some(Duration::from_micros(rtt_us))
    }

    /// (last, mean) ping round trip in milliseconds, if any pong came back.
    pub fn ping_rtt_ms(&self) -> Option<(f64, f64)> {
        let n = u64::from(self.pongs_received.load(Relaxed));
        (n > 0).then(|| {
            let last = self.rtt_last_us.load(Relaxed) as f64 / 1000.0;
            let mean = self.rtt_total_us.load(Relaxed) as f64 / n as f64 / 1000.0;
            (last, mean)
        })
    }
}

/// What a session allocates when it first needs it.
#[derive(Debug, Default)]
pub(super) struct Extras {
    pub(super) grant: Mutex<DebugGrant>,
    pub(super) ring: Mutex<Option<Ring>>,
}

impl SessionStats {
    pub(super) fn extras(&self) -> &Extras {
        self.extras.get_or_init(Box::default)
    }

    /// Whether it is a debug session, and switching it.
    pub fn debug(&self) -> DebugSwitch<'_> {
        DebugSwitch { stats: self }
    }

    /// Its last messages, kept to be written at its first failure.
    pub fn flight(&self) -> FlightRecorder<'_> {
        FlightRecorder::new(self.recorder_capacity, &self.tiers, &self.extras)
    }
}

impl RingSlot for OnceBox<Extras> {
    fn ring(&self) -> &Mutex<Option<Ring>> {
        &self.get_or_init(Box::default).ring
    }

    fn ring_if_made(&self) -> Option<&Mutex<Option<Ring>>> {
        self.get().map(|extras| &extras.ring)
    }
}

/// A session's debug mode: one relaxed load per message when off.
pub struct DebugSwitch<'a> {
    stats: &'a SessionStats,
}

impl DebugSwitch<'_> {
    #[inline]
    pub fn is_on(&self) -> bool {
        self.stats.tiers.load(Relaxed) & DEBUG_ON != 0
    }

    pub fn status(&self) -> DebugStatus {
        match self.stats.extras.get() {
            Some(extras) => lock(&extras.grant).status(),
            None => DebugGrant::default().status(),
        }
    }

    /// On (or extended), under the server's cap; `until: None` is for the
    /// whole session.
    pub fn turn_on(
        &self,
        slots: &Arc<DebugSlots>,
        reason: DebugReason,
        until: Option<SystemTime>,
    ) -> Result<DebugStatus, DebugRefused> {
        let mut grant = lock(&self.stats.extras().grant);
        let status = grant.turn_on(slots, reason, until)?;
        self.stats.tiers.fetch_or(DEBUG_ON, Relaxed);
        Ok(status)
    }

    /// Off, and its slot given back; with `generation`, only if no change
    /// came after it. The status before, if it was on.
    pub fn turn_off(&self, generation: Option<u64>) -> Option<DebugStatus> {
        let extras = self.stats.extras.get()?;
        let mut grant = lock(&extras.grant);
        let before = grant.turn_off(generation)?;
        self.stats.tiers.fetch_and(!DEBUG_ON, Relaxed);
        Some(before)
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
    use crate::protocol::FrameKind;
    use crate::session::flight::{Direction, Entry};

    fn entry(direction: Direction, size: usize) -> Entry {
        Entry::new(direction, FrameKind::Echo, size, 1_234_567)
    }

    #[test]
    fn allocates_nothing_until_the_first_message() {
        let stats = SessionStats::with_recorder(32);
        assert_eq!(stats.flight().snapshot(), (Vec::new(), 0));
        assert!(stats.debug().status().reason.is_none());
        assert!(stats.extras.get().is_none());
        stats.flight().record(entry(Direction::Out, 3));
        assert!(lock(&stats.extras.get().unwrap().ring).is_some());
    }

    #[test]
    fn off_at_capacity_zero() {
        let stats = SessionStats::with_recorder(0);
        stats.flight().record(entry(Direction::In, 1));
        assert!(stats.extras.get().is_none());
        assert_eq!(stats.flight().snapshot(), (Vec::new(), 0));
    }

    #[test]
    fn an_idle_session_pays_a_pointer_for_both_tiers() {
        // Counters, a start time, one pointer and a few bytes: the size the
        // stats had before debug sessions and the recorder (BENCHMARKS.md,
        // issue 17), and the pointer to the connection's wire (issue 33).
        assert!(
            size_of::<SessionStats>() <= 112,
            "{}",
            size_of::<SessionStats>()
        );
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
