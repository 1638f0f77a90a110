//! What goes into a session's outbound queue, and which messages are traced.

use axum::extract::ws::Message;

use crate::protocol::FrameKind;
use crate::routing::Delivery;

/// One entry of a session's bounded outbound queue.
#[derive(Debug)]
pub enum Outbound {
    /// A frame of the session's own (reply, welcome, ping).
    Frame {
        kind: FrameKind,
        message: Message,
        /// Whether the message that caused it was sampled: its `ws.send`
        /// span and log line follow the same decision.
        sampled: bool,
    },
    /// A message from another session or the admin API.
    Delivery(std::sync::Arc<Delivery>),
}

impl Outbound {
    pub fn frame(kind: FrameKind, message: Message, sampled: bool) -> Self {
        Outbound::Frame {
            kind,
            message,
            sampled,
        }
    }
}

/// Decides which messages get spans and log lines. Errors, closes and the
/// session lifecycle are recorded whatever it says.
#[derive(Debug, Clone)]
pub struct MessageSampler {
    threshold: u64,
    state: u64,
}

impl MessageSampler {
    /// `ratio` in [0, 1]; `seed` makes sessions independent.
    pub fn new(ratio: f64, seed: u64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        let threshold = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio * u64::MAX as f64) as u64
        };
        Self {
            threshold,
            state: seed | 1,
        }
    }

    pub fn sample(&mut self) -> bool {
        match self.threshold {
            0 => false,
            u64::MAX => true,
            threshold => {
                // xorshift64: a few instructions, good enough to pick 1 in N.
                let mut x = self.state;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                self.state = x;
                x < threshold
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_honours_the_ratio() {
        let mut all = MessageSampler::new(1.0, 7);
        let mut none = MessageSampler::new(0.0, 7);
        assert!((0..1000).all(|_| all.sample()));
        assert!((0..1000).all(|_| !none.sample()));
        let mut tenth = MessageSampler::new(0.1, 12345);
        let hits = (0..100_000).filter(|_| tenth.sample()).count();
        assert!((8_000..12_000).contains(&hits), "{hits}");
        assert!(!MessageSampler::new(f64::NAN, 1).sample());
    }
}
