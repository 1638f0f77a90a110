//! Per-session message rate limit: a token bucket.

use std::time::Instant;

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
    last: Instant,
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
            last: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    pub fn check(&mut self) -> RateDecision {
        self.check_at(Instant::now())
    }

    pub fn check_at(&mut self, now: Instant) -> RateDecision {
        if self.per_second == 0.0 {
            return RateDecision::Allow;
        }
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.per_second).min(self.burst);
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
    use std::time::Duration;

    #[test]
    fn burst_then_refuse_then_abuse() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, 5);
        for _ in 0..5 {
            assert_eq!(limiter.check_at(start), RateDecision::Allow);
        }
        assert_eq!(
            limiter.check_at(start),
            RateDecision::Refuse { first: true }
        );
        for _ in 0..4 {
            assert_eq!(
                limiter.check_at(start),
                RateDecision::Refuse { first: false }
            );
        }
        assert_eq!(limiter.check_at(start), RateDecision::Abuse);
    }

    #[test]
    fn tokens_refill_over_time() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, 1);
        assert_eq!(limiter.check_at(start), RateDecision::Allow);
        assert_eq!(
            limiter.check_at(start),
            RateDecision::Refuse { first: true }
        );
        let later = start + Duration::from_millis(150);
        assert_eq!(limiter.check_at(later), RateDecision::Allow);
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let mut limiter = RateLimiter::new(0, 1);
        assert!((0..10_000).all(|_| limiter.check() == RateDecision::Allow));
    }
}
