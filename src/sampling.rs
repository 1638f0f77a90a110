//! Which messages get spans and `message …` lines: the three tiers.
//!
//! 1. Ordinary traffic is head-sampled per message at
//!    `--message-sample-ratio` (1% by default).
//! 2. A session's errors are always recorded: the failing message gets its
//!    spans (status Error), and the session's flight recorder writes the
//!    messages that led there (`session::flight`).
//! 3. A *debug session* records every message, for as long as it is one.
//!    An operator switches it on for a live session (admin API), or it is
//!    one from its upgrade: a JWT claim, a user listed in `--debug-user`,
//!    or, only with `--allow-client-debug`, the caller's trace context.
//!
//! Debug sessions are capped server-wide (`--max-debug-sessions`): a
//! mistake (a debug claim in every token, say) must not turn the logs into
//! a copy of all traffic.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::time::SystemTime;

/// The JWT claim that makes a session a debug session.
pub const DEBUG_CLAIM: &str = "wstrace_debug";
/// The `tracestate` member a caller sets (with the sampled flag) to ask
/// for a debug session, honoured only with `--allow-client-debug`.
pub const TRACESTATE_KEY: &str = "wstrace";
pub const TRACESTATE_DEBUG: &str = "debug";

/// Why a session records every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DebugReason {
    /// `POST /api/sessions/{id}/debug`.
    Admin,
    /// The session's JWT carries `"wstrace_debug": true`.
    Claim,
    /// The session's user is listed in `--debug-user`.
    User,
    /// The caller's `tracestate` asked (`wstrace=debug`, sampled).
    TraceState,
}

impl DebugReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            DebugReason::Admin => "admin",
            DebugReason::Claim => "jwt_claim",
            DebugReason::User => "debug_user",
            DebugReason::TraceState => "tracestate",
        }
    }
}

/// The server-wide cap on debug sessions.
#[derive(Debug)]
pub struct DebugSlots {
    open: AtomicUsize,
    max: usize,
}

/// One debug session's place under the cap; given back on drop.
#[derive(Debug)]
pub struct DebugSlot(Arc<DebugSlots>);

impl DebugSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn open(&self) -> usize {
        self.open.load(Relaxed)
    }

    /// A slot, or `None` when `max` debug sessions are already open.
    pub fn try_take(self: &Arc<Self>) -> Option<DebugSlot> {
        self.open
            .fetch_update(AcqRel, Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .ok()
            .map(|_| DebugSlot(self.clone()))
    }
}

impl Drop for DebugSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, AcqRel);
    }
}

/// The cap was reached: the session stays as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this instance has reached its limit of {max} debug sessions (--max-debug-sessions)")]
pub struct DebugRefused {
    pub max: usize,
}

/// What an operator asks of a session's debug mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebugChange {
    /// Record every message for this long (then stop by itself).
    On {
        minutes: u32,
    },
    Off,
}

/// A session's debug mode, as the admin API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugStatus {
    pub on: bool,
    pub reason: Option<DebugReason>,
    /// When it ends by itself; `None` while on: for the whole session.
    pub until: Option<SystemTime>,
    /// Bumped by every change, so an expiry timer set for an earlier grant
    /// does not end a later one.
    pub generation: u64,
}

/// A session's debug grant: its place under the cap, why, and until when.
/// The session keeps it behind a lock, and a flag beside it that every
/// message reads (`session::stats`).
#[derive(Debug, Default)]
pub struct DebugGrant {
    slot: Option<DebugSlot>,
    reason: Option<DebugReason>,
    until: Option<SystemTime>,
    generation: u64,
}

impl DebugGrant {
    pub fn status(&self) -> DebugStatus {
        DebugStatus {
            on: self.slot.is_some(),
            reason: self.reason,
            until: self.until,
            generation: self.generation,
        }
    }

    /// Turns debug mode on (or extends it), taking a slot under the cap if
    /// the session has none. `until: None` is for the whole session.
    pub fn turn_on(
        &mut self,
        slots: &Arc<DebugSlots>,
        reason: DebugReason,
        until: Option<SystemTime>,
    ) -> Result<DebugStatus, DebugRefused> {
        if self.slot.is_some() && self.until.is_none() {
            // On for the whole session already: a timed grant would end it.
            return Ok(self.status());
        }
        if self.slot.is_none() {
            self.slot = Some(slots.try_take().ok_or(DebugRefused { max: slots.max() })?);
        }
        self.reason = Some(reason);
        self.until = until;
        self.generation += 1;
        Ok(self.status())
    }

    /// Turns debug mode off and gives its slot back. With `generation`,
    /// only if no change came after it (an expiry timer's check). Returns
    /// the status before, if it was on.
    pub fn turn_off(&mut self, generation: Option<u64>) -> Option<DebugStatus> {
        if self.slot.is_none() || generation.is_some_and(|g| g != self.generation) {
            return None;
        }
        let before = self.status();
        self.slot = None;
        self.reason = None;
        self.until = None;
        self.generation += 1;
        Some(before)
    }
}

/// Who the server makes a debug session from its upgrade, by rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DebugRules {
    /// `--debug-user`: these users' sessions record every message.
    pub users: Vec<String>,
    /// `--allow-client-debug`: honour `tracestate: wstrace=debug` from
    /// callers. Off by default, since otherwise any client could make the
    /// server log all its traffic.
    pub allow_client_debug: bool,
}

impl DebugRules {
    /// Why a new session is a debug session, if it is: its JWT claim, its
    /// user, or (when allowed) its caller's trace context.
    pub fn reason(
        &self,
        user: Option<&str>,
        claim: bool,
        client_asked: bool,
    ) -> Option<DebugReason> {
        if claim {
            Some(DebugReason::Claim)
        } else if user.is_some_and(|u| self.users.iter().any(|d| d == u)) {
            Some(DebugReason::User)
        } else if client_asked && self.allow_client_debug {
            Some(DebugReason::TraceState)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_and_slots_come_back() {
        let slots = DebugSlots::new(2);
        let mut a = DebugGrant::default();
        let mut b = DebugGrant::default();
        let mut c = DebugGrant::default();
        a.turn_on(&slots, DebugReason::Admin, None).unwrap();
        // Extending a session already on takes no second slot.
        a.turn_on(&slots, DebugReason::Admin, None).unwrap();
        b.turn_on(&slots, DebugReason::User, None).unwrap();
        assert_eq!(slots.open(), 2);
        assert_eq!(
            c.turn_on(&slots, DebugReason::Claim, None),
            Err(DebugRefused { max: 2 })
        );
        assert!(!c.status().on);
        assert!(a.turn_off(None).is_some());
        assert!(!a.status().on);
        assert_eq!(slots.open(), 1);
        assert!(c.turn_on(&slots, DebugReason::Claim, None).is_ok());
        drop(c);
        assert_eq!(slots.open(), 1, "a dropped grant gives its slot back");
    }

    #[test]
    fn a_stale_expiry_does_not_end_a_later_grant() {
        let slots = DebugSlots::new(1);
        let mut switch = DebugGrant::default();
        let soon = Some(SystemTime::now() + std::time::Duration::from_secs(60));
        let first = switch.turn_on(&slots, DebugReason::Admin, soon).unwrap();
        let second = switch.turn_on(&slots, DebugReason::Admin, soon).unwrap();
        assert!(switch.turn_off(Some(first.generation)).is_none());
        assert!(switch.status().on);
        assert!(switch.turn_off(Some(second.generation)).is_some());
        assert!(!switch.status().on);
        assert!(switch.turn_off(None).is_none(), "already off");
    }

    #[test]
    fn a_timed_grant_does_not_shorten_a_whole_session_one() {
        let slots = DebugSlots::new(1);
        let mut switch = DebugGrant::default();
        switch.turn_on(&slots, DebugReason::Claim, None).unwrap();
        let soon = Some(SystemTime::now());
        let status = switch.turn_on(&slots, DebugReason::Admin, soon).unwrap();
        assert_eq!(status.until, None);
        assert_eq!(status.reason, Some(DebugReason::Claim));
    }

    #[test]
    fn client_debug_only_when_allowed() {
        let strict = DebugRules {
            users: vec!["ann".into()],
            allow_client_debug: false,
        };
        assert_eq!(strict.reason(None, false, true), None);
        assert_eq!(
            strict.reason(Some("ann"), false, false),
            Some(DebugReason::User)
        );
        assert_eq!(
            strict.reason(Some("bob"), true, false),
            Some(DebugReason::Claim)
        );
        assert_eq!(strict.reason(Some("bob"), false, false), None);
        let open = DebugRules {
            allow_client_debug: true,
            ..strict
        };
        assert_eq!(
            open.reason(None, false, true),
            Some(DebugReason::TraceState)
        );
    }
}
