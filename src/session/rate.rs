//! Per-session message rate limit: a token bucket.
//!
//! Time is the session's own clock (microseconds since it opened), which
//! the reader has already read for the frame: checking the limit costs no
//! clock read of its own.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allow,
    /// Over the rate; `first` is true for the first refusal of a streak
    /// (the one worth an error frame and a log line).
    Refuse {
        first: bool,
    },
    /// Still sending after a whole burst's worth of refusals: close 1008.
    Abuse,
}

#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    tokens: f64,
    /// Microseconds after the session opened, at the last check.
    last_us: u64,
    refused_in_a_row: u64,
}

impl RateLimiter {
    /// `per_second == 0` disables the limit.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: f64::from(per_second),
            burst,
            tokens: burst,
            last_us: 0,
            refused_in_a_row: 0,
        }
    }

    /// A message read `now_us` microseconds after the session opened.
    pub fn check(&mut self, now_us: u64) -> RateDecision {
        if self.per_second == 0.0 {
            return RateDecision::Allow;
        }
        let elapsed_us = now_us.saturating_sub(self.last_us);
        self.last_us = self.last_us.max(now_us);
        self.tokens = (self.tokens + elapsed_us as f64 * self.per_second / 1e6).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            return RateDecision::Allow;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row as f64 > self.burst {
            RateDecision::Abuse
        } else {
            RateDecision::Refuse {
                first: self.refused_in_a_row == 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_then_abuse() {
        let start = 7_000;
        let mut limiter = RateLimiter::new(10, 5);
        for _ in 0..5 {
            assert_eq!(limiter.check(start), RateDecision::Allow);
        }
        assert_eq!(limiter.check(start), RateDecision::Refuse { first: true });
        for _ in 0..4 {
            assert_eq!(limiter.check(start), RateDecision::Refuse { first: false });
        }
        assert_eq!(limiter.check(start), RateDecision::Abuse);
    }

    #[test]
    fn tokens_refill_over_time() {
        let start = 7_000;
        let mut limiter = RateLimiter::new(10, 1);
        assert_eq!(limiter.check(start), RateDecision::Allow);
        assert_eq!(limiter.check(start), RateDecision::Refuse { first: true });
        assert_eq!(limiter.check(start + 150_000), RateDecision::Allow);
    }

    #[test]
    fn a_time_earlier_than_the_last_refills_nothing() {
        let mut limiter = RateLimiter::new(10, 1);
        assert_eq!(limiter.check(500_000), RateDecision::Allow);
        assert_eq!(limiter.check(400_000), RateDecision::Refuse { first: true });
        assert_eq!(limiter.check(600_000), RateDecision::Allow);
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let mut limiter = RateLimiter::new(0, 1);
        assert!((0..10_000).all(|i| limiter.check(i) == RateDecision::Allow));
    }
}
