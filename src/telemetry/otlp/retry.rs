//! Retries of one export, as the OTLP specification asks for retryable
//! answers (HTTP 429, 502, 503, 504; gRPC UNAVAILABLE, RESOURCE_EXHAUSTED
//! and the other transient codes from a collector that answered; a
//! collector that cannot be reached fails the batch at once): exponential
//! backoff with full jitter, or the server's `Retry-After`, every attempt
//! within the export timeout. A batch that still fails is dropped, counted
//! and warned about as before.

use bytes::Bytes;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use super::transport::{SendError, Transport};

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A retry is made only with at least this much of the timeout left: a
/// retry given a sliver (the sleep woke just before the deadline) would
/// fail as "no answer" and hide why the export really failed.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);

/// Sends `body`, retrying what may succeed later until `timeout` is spent.
pub(super) async fn send(
    transport: &Transport,
    runtime: &tokio::runtime::Handle,
    body: Bytes,
    timeout: Duration,
) -> Result<Bytes, String> {
    let deadline = Instant::now() + timeout;
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1.. {
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match transport.send(body.clone(), left).await {
            Ok(response) => return Ok(response),
            Err(SendError {
                retryable: false,
                reason,
                ..
            }) => return Err(reason),
            Err(error) => error,
        };
        let wait = error.retry_after.unwrap_or_else(|| jittered(backoff));
        let no_time_left = || {
            format!(
                "{} (attempt {attempt}; no time left to retry)",
                error.reason
            )
        };
        if Instant::now() + wait + MIN_ATTEMPT >= deadline {
            return Err(no_time_left());
        }
        // The batch thread has no timer of its own: the sleep is made and
        // awaited on the runtime (even `Sleep::new` needs its context).
        let _ = runtime
            .spawn(async move { tokio::time::sleep(wait).await })
            .await;
        // A late wake-up (a busy runtime) may leave less than it planned.
        if deadline.saturating_duration_since(Instant::now()) < MIN_ATTEMPT {
            return Err(no_time_left());
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    unreachable!("the loop returns")
}

/// Full jitter: a uniform wait in [0, backoff], so that instances that
/// failed together do not retry together.
fn jittered(backoff: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    backoff.mul_f64((random % 1_000_001) as f64 / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_backoff() {
        for _ in 0..100 {
            assert!(jittered(Duration::from_secs(1)) <= Duration::from_secs(1));
        }
        let waits: std::collections::HashSet<_> =
            (0..20).map(|_| jittered(Duration::from_secs(1))).collect();
        assert!(waits.len() > 1, "not random");
    }
}
