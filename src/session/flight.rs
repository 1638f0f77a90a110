//! The flight recorder: a session's last few messages, kept so that when
//! it fails, its log says what led there even though those messages were
//! not sampled.
//!
//! Each entry is a message's shape, never its content: direction, frame
//! type, size, when (since the session opened), the message id of routed
//! messages, and the span id when the message was sampled. Data messages
//! only (not the welcome, not pings), and the ring is allocated on the
//! first one, so an idle session pays one pointer.
//!
//! It is written once per session (`flight recorder`, level warn, in the
//! session's trace) at its first failure: an error frame, a rate-limit
//! refusal, or a close with 1006/1007/1008/1009/1011/1013.

use opentelemetry::trace::SpanId;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use uuid::Uuid;

use crate::events::{FlightRecorded, InternalEvent};
use crate::metrics::Metrics;
use crate::protocol::FrameKind;
use crate::sync::lock;

/// A session's tier bit (beside the debug bit the stats own): its flight
/// recorder has been written.
pub(super) const RECORDER_WRITTEN: u8 = 2;

/// Where a session keeps its ring: allocated on first use, with the rest
/// of the state an idle session does not pay for (the stats' `Extras`).
/// The recorder sees only this, so it does not depend on the stats.
pub(super) trait RingSlot: Sync {
    /// The ring's cell, allocating the session's lazy state if need be.
    fn ring(&self) -> &Mutex<Option<Ring>>;
    /// The ring's cell if it was ever allocated.
    fn ring_if_made(&self) -> Option<&Mutex<Option<Ring>>>;
}

/// The trigger a failing close writes the recorder with.
pub fn close_trigger(code: u16) -> String {
    format!("close {code}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// One message, as the recorder keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The message's number in the session (both directions, from 1).
    pub seq: u64,
    pub direction: Direction,
    pub kind: FrameKind,
    pub size: u32,
    /// Microseconds after the session opened.
    pub at_us: u64,
    pub message_id: Option<Uuid>,
    /// The message's `ws.receive`/`ws.send` span, when it has one.
    pub span_id: Option<SpanId>,
}

impl Entry {
    /// A message of `size` bytes (saturated at 4 GiB), with no ids yet;
    /// its `seq` is given when it is recorded.
    pub fn new(direction: Direction, kind: FrameKind, size: usize, at_us: u64) -> Self {
        Self {
            seq: 0,
            direction,
            kind,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            at_us,
            message_id: None,
            span_id: None,
        }
    }
}

#[derive(Debug)]
pub(super) struct Ring {
    entries: VecDeque<Entry>,
    recorded: u64,
}

/// A session's recorder, shared by its reader and writer (a view of its
/// stats: their tier bits and the slot of the ring).
pub struct FlightRecorder<'a> {
    capacity: u16,
    tiers: &'a AtomicU8,
    slot: &'a dyn RingSlot,
}

impl<'a> FlightRecorder<'a> {
    pub(super) fn new(capacity: u16, tiers: &'a AtomicU8, slot: &'a dyn RingSlot) -> Self {
        Self {
            capacity,
            tiers,
            slot,
        }
    }

    fn capacity(&self) -> usize {
        usize::from(self.capacity)
    }

    /// Records one message, numbered in order; the oldest goes when the
    /// ring is full.
    pub fn record(&self, mut entry: Entry) {
        let capacity = self.capacity();
        if capacity == 0 {
            return;
        }
        let mut ring = lock(self.slot.ring());
        let ring = ring.get_or_insert_with(|| Ring {
            entries: VecDeque::with_capacity(capacity),
            recorded: 0,
        });
        if ring.entries.len() == capacity {
            ring.entries.pop_front();
        }
        ring.recorded += 1;
        entry.seq = ring.recorded;
        ring.entries.push_back(entry);
    }

    /// Adds the message id routing gave to the message being handled: the
    /// last inbound one (only the reader records those, one at a time).
    pub fn identify_last_inbound(&self, id: Uuid) {
        let Some(cell) = self.slot.ring_if_made() else {
            return;
        };
        if let Some(ring) = &mut *lock(cell)
            && let Some(entry) = ring
                .entries
                .iter_mut()
                .rev()
                .find(|e| e.direction == Direction::In)
        {
            entry.message_id = Some(id);
        }
    }

    /// The messages recorded so far, oldest first, and how many earlier
    /// ones the ring no longer holds.
    pub fn snapshot(&self) -> (Vec<Entry>, u64) {
        let Some(cell) = self.slot.ring_if_made() else {
            return (Vec::new(), 0);
        };
        match &*lock(cell) {
            None => (Vec::new(), 0),
            Some(ring) => (
                ring.entries.iter().copied().collect(),
                ring.recorded - ring.entries.len() as u64,
            ),
        }
    }

    /// Writes the `flight recorder` line, once per session, in the current
    /// span (the session's or a message's, both in the session's trace).
    /// A session that has not sent or received a message has nothing to
    /// write.
    pub fn write(&self, trigger: &str, metrics: &Metrics) {
        let tiers = self.tiers;
        if self.capacity() == 0 || tiers.load(Relaxed) & RECORDER_WRITTEN != 0 {
            return;
        }
        let (entries, skipped) = self.snapshot();
        if entries.is_empty() || tiers.fetch_or(RECORDER_WRITTEN, Relaxed) & RECORDER_WRITTEN != 0 {
            return;
        }
        FlightRecorded {
            trigger,
            messages: entries.len(),
            skipped,
            recording: &to_json(&entries),
            metrics,
        }
        .emit();
    }
}

/// The entries as a JSON array, written into the line as is.
fn to_json(entries: &[Entry]) -> String {
    let mut json = String::with_capacity(entries.len() * 96);
    json.push('[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(
            json,
            "{{\"seq\":{},\"dir\":\"{}\",\"type\":\"{}\",\"size\":{},\"at_ms\":{}.{:03}",
            e.seq,
            e.direction.as_str(),
            e.kind.as_str(),
            e.size,
            e.at_us / 1000,
            e.at_us % 1000
        );
        if let Some(id) = e.message_id {
            let _ = write!(json, ",\"message_id\":\"{id}\"");
        }
        if let Some(span_id) = e.span_id {
            let _ = write!(json, ",\"span_id\":\"{span_id}\"");
        }
        json.push('}');
    }
    json.push(']');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(direction: Direction, size: usize) -> Entry {
        Entry::new(direction, FrameKind::Echo, size, 1_234_567)
    }

    /// A ring made at once, for the recorder alone (a session's is made
    /// lazily: `stats.rs`).
    impl RingSlot for Mutex<Option<Ring>> {
        fn ring(&self) -> &Mutex<Option<Ring>> {
            self
        }

        fn ring_if_made(&self) -> Option<&Mutex<Option<Ring>>> {
            Some(self)
        }
    }

    #[test]
    fn keeps_the_last_n_in_order() {
        let (tiers, slot) = (AtomicU8::new(0), Mutex::new(None));
        let recorder = FlightRecorder::new(4, &tiers, &slot);
        for size in 1..=10 {
            recorder.record(entry(Direction::In, size));
        }
        recorder.record(entry(Direction::Out, 11));
        recorder.identify_last_inbound(Uuid::nil());
        let (entries, skipped) = recorder.snapshot();
        assert_eq!(skipped, 7);
        assert_eq!(entries[2].message_id, Some(Uuid::nil()), "the last inbound");
        assert_eq!(entries[3].message_id, None);
        let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [8, 9, 10, 11]);
        let sizes: Vec<u32> = entries.iter().map(|e| e.size).collect();
        assert_eq!(sizes, [8, 9, 10, 11]);
    }

    #[test]
    fn serializes_to_json() {
        let mut e = entry(Direction::Out, 27);
        e.seq = 3;
        e.message_id = Some(Uuid::nil());
        e.span_id = Some(SpanId::from_bytes([1; 8]));
        let json: serde_json::Value = serde_json::from_str(&to_json(&[e])).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "seq": 3, "dir": "out", "type": "echo", "size": 27, "at_ms": 1234.567,
                "message_id": Uuid::nil().to_string(), "span_id": "0101010101010101"
            }])
        );
    }
}
