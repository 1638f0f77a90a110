//! The heartbeat task: pings the peer, closes the session when it has been
//! silent for longer than the idle timeout, and in cluster mode keeps the
//! session's registry entry alive.

use axum::extract::ws::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};

use super::outbound::Outbound;
use super::stats::{CloseDecision, CloseSignal, ClosedBy, SessionStats};
use crate::cluster::Cluster;
use crate::error::close_code;
use crate::hub::SessionHandle;
use crate::metrics::FrameKind;

pub async fn run_heartbeat(
    outbound: mpsc::Sender<Outbound>,
    stats: Arc<SessionStats>,
    close: CloseSignal,
    interval: Duration,
    idle_timeout: Duration,
    // Cluster mode: each ping also renews the session's registry entry.
    registry: Option<(Arc<Cluster>, Arc<SessionHandle>)>,
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
                    Ok(()) => tracing::debug!("ping sent"),
                    Err(_) => tracing::debug!("ping skipped: outbound queue full"),
                }
                if let Some((cluster, session)) = &registry {
                    let view = session.view(cluster.instance_id());
                    // Failures are counted and reported by the upkeep task.
                    let _ = Box::pin(cluster.register(&view, false)).await;
                }
            }
            _ = sleep_until(idle_deadline) => {
                let silent_for = stats.last_seen().elapsed();
                if silent_for >= idle_timeout {
                    tracing::info!(
                        silent_ms = silent_for.as_millis() as u64,
                        idle_timeout_ms = idle_timeout.as_millis() as u64,
                        "closing idle session"
                    );
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
