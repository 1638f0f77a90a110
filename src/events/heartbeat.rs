//! The heartbeat: pings and idle sessions.

use super::target::*;
use super::*;

/// A heartbeat ping went into the outbound queue.
#[derive(Debug)]
pub struct PingSent;

impl PingSent {
    pub const MESSAGE: &'static str = "ping sent";
}

impl InternalEvent for PingSent {
    fn emit(self) {
        tracing::debug!(target: HEARTBEAT, message = Self::MESSAGE);
    }
}

/// Nothing heard from the client within the idle timeout.
#[derive(Debug)]
pub struct IdleSessionClosing {
    pub silent_ms: u64,
    pub idle_timeout_ms: u64,
}

impl IdleSessionClosing {
    pub const MESSAGE: &'static str = "closing idle session";
}

impl InternalEvent for IdleSessionClosing {
    fn emit(self) {
        tracing::info!(
            target: HEARTBEAT,
            message = Self::MESSAGE,
            silent_ms = self.silent_ms,
            idle_timeout_ms = self.idle_timeout_ms
        );
    }
}
