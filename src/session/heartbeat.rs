//! The heartbeat task: pings the peer, closes the session when it has been
//! silent for longer than the idle timeout, and in cluster mode keeps the
//! session's registry entry alive.

use axum::extract::ws::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};

use super::close::{CloseDecision, CloseSignal, ClosedBy};
use super::handle::SessionHandle;
use super::outbound::{Outbound, OutboundQueue};
use super::stats::SessionStats;
use crate::error::close_code;
use crate::events::{IdleSessionClosing, PingSent};
use crate::protocol::FrameKind;
use crate::routing::Router;

/// Pings on `interval`; closes the session after `idle_timeout` of silence.
/// In cluster mode (`renew`), each ping also renews the session's registry
/// entry.
pub async fn run_heartbeat(
    outbound: OutboundQueue,
    stats: Arc<SessionStats>,
    close: CloseSignal,
    interval: Duration,
    idle_timeout: Duration,
    renew: Option<(Arc<Router>, Arc<SessionHandle>)>,
) {
    let mut pings = interval_at(Instant::now() + interval, interval);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let idle_deadline = Instant::from_std(stats.last_seen()) + idle_timeout;
        tokio::select! {
            _ = pings.tick() => {
                let payload = stats.ping_payload();
                let ping = Outbound::frame(FrameKind::Ping, Message::Ping(payload.to_vec().into()), false);
                // A full queue means the peer is not reading; the idle
                // check, not a blocked ping, decides what happens then.
                match outbound.try_send(ping) {
                    Ok(()) => PingSent.emit(),
                    Err(_) => tracing::debug!("ping skipped: outbound queue full"),
                }
                if let Some((router, session)) = &renew {
                    // Failures are counted and reported by the upkeep task.
                    let _ = Box::pin(router.renew(&**session)).await;
                }
            }
            _ = sleep_until(idle_deadline) => {
                let silent_for = stats.last_seen().elapsed();
                if silent_for >= idle_timeout {
                    IdleSessionClosing {
                        silent_ms: silent_for.as_millis() as u64,
                        idle_timeout_ms: idle_timeout.as_millis() as u64,
                    }
                    .emit();
                    close.decide(CloseDecision::new(
                        close_code::NORMAL,
                        "idle timeout",
                        ClosedBy::IdleTimeout,
                    ));
                    return;
                }
            }
        }
    }
}
