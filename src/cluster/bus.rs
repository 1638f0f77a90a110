//! The receiving side of cluster mode, and the instance's upkeep.
//!
//! [`run_bus`] owns the pub/sub connection: it delivers what other
//! instances publish, pings Redis to notice a silent loss, and when the
//! connection goes it marks the cluster down (cross-instance calls then
//! fail at once), retries with capped exponential backoff, and on return
//! re-registers every local session (Redis may have restarted empty).
//!
//! [`run_upkeep`] renews this instance's stats key and reports
//! cross-instance failures: one warning per interval, with counts, however
//! many messages failed.

use futures_util::StreamExt;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::envelope::{Action, Answer, Audience, Envelope, Question};
use super::{Cluster, ClusterContext, interest};
use crate::events::{
    AdminClosedSession, ClusterDeliveryFailing, ClusterEnvelopeDropped, ClusterMessageDelivered,
    InternalEvent, RedisLost, RedisReconnected, RemoteActionForGoneSession, RemoteDebugRefused,
};
use crate::routing::{Delivery, SharedRecipient};
use crate::sampling::DebugChange;
use crate::trace_context::span_context;
use redis::aio::PubSub;

const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Capped exponential backoff with jitter, so instances that lost Redis
/// together do not reconnect in lockstep.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let jitter = (uuid::Uuid::new_v4().as_u128() % 100) as u32;
        delay.mul_f64(1.0 - f64::from(jitter) / 400.0)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// One Redis node's bus: hears the shared and the subscribed channels on
/// `subscription` (made at connect), and resubscribes after a loss.
pub async fn run_bus(
    context: Arc<ClusterContext>,
    cluster: Arc<Cluster>,
    mut subscription: Option<PubSub>,
) {
    let mut backoff = Backoff::new();
    let mut lost_at: Option<Instant> = None;
    let ping_every = (cluster.session_ttl() / 3).max(Duration::from_millis(200));
    loop {
        let pubsub = match subscription.take() {
            Some(pubsub) => pubsub,
            None => {
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = context.shutdown.cancelled() => return,
                }
                match cluster.subscribe().await {
                    Ok(pubsub) => pubsub,
                    Err(error) => {
                        tracing::debug!(%error, retry_in_ms = delay.as_millis() as u64, "Redis still unreachable");
                        continue;
                    }
                }
            }
        };
        let (mut sink, mut messages) = pubsub.split();
        // A new connection hears no channel yet: it joins every channel
        // with subscribers here before Redis counts as up again, so a
        // publish made once it is up reaches them.
        if let Err(cause) = sync_interest(&context, &cluster, &mut sink).await {
            tracing::debug!(
                cause,
                "Redis pub/sub is back but its subscriptions are not yet; retrying"
            );
            cluster.set_up(false);
            cluster.interest.lost();
            lost_at.get_or_insert_with(Instant::now);
            continue;
        }
        if let Some(lost) = lost_at.take() {
            if !cluster.await_commands().await {
                tracing::debug!("Redis pub/sub is back but commands are not yet; retrying");
                cluster.interest.lost();
                lost_at = Some(lost);
                continue;
            }
            cluster.set_up(true);
            cluster.counters.reconnects.fetch_add(1, Relaxed);
            backoff = Backoff::new();
            let sessions = reregister(&context, &cluster).await;
            RedisReconnected {
                redis: cluster.redis_url(),
                down_ms: lost.elapsed().as_millis() as u64,
                sessions_reregistered: sessions,
            }
            .emit();
        }
        let mut pings = tokio::time::interval(ping_every);
        pings.tick().await;
        let cause = loop {
            tokio::select! {
                _ = cluster.interest.sync_due() => {
                    if let Err(cause) = sync_interest(&context, &cluster, &mut sink).await {
                        break cause;
                    }
                }
                message = messages.next() => match message {
                    Some(message) => {
                        deliver(&context, &cluster, message.get_payload_bytes());
                        // A burst from Redis must not starve the writers
                        // that drain what was just queued.
                        tokio::task::yield_now().await;
                    }
                    None => break "connection closed",
                },
                _ = cluster.stalled() => break "a command got no answer within --redis-timeout",
                _ = pings.tick() => {
                    let ping = tokio::time::timeout(cluster.timeout, sink.ping::<redis::Value>());
                    if !matches!(ping.await, Ok(Ok(_))) {
                        break "no answer to ping";
                    }
                }
                _ = context.shutdown.cancelled() => return,
            }
        };
        cluster.set_up(false);
        cluster.interest.lost();
        lost_at = Some(Instant::now());
        RedisLost {
            redis: cluster.redis_url(),
            cause,
        }
        .emit();
    }
}

/// Subscribes the channels that gained their first subscriber here and
/// unsubscribes those that lost their last (see [`super::interest`]).
async fn sync_interest(
    context: &ClusterContext,
    cluster: &Cluster,
    sink: &mut redis::aio::PubSubSink,
) -> Result<(), &'static str> {
    /// Channels per SUBSCRIBE: a reconnect with thousands of channels
    /// sends several commands, not one huge one.
    const PER_COMMAND: usize = 1000;
    let difference = cluster
        .interest
        .difference(&context.router.hub().channel_names());
    let redis_channels = |names: &[String]| {
        names
            .iter()
            .map(|c| interest::redis_channel(c))
            .collect::<Vec<_>>()
    };
    for names in difference.join.chunks(PER_COMMAND) {
        let subscribe = sink.subscribe(redis_channels(names));
        if !matches!(
            tokio::time::timeout(cluster.timeout, subscribe).await,
            Ok(Ok(()))
        ) {
            return Err("a channel subscription got no answer");
        }
    }
    for names in difference.leave.chunks(PER_COMMAND) {
        let unsubscribe = sink.unsubscribe(redis_channels(names));
        if !matches!(
            tokio::time::timeout(cluster.timeout, unsubscribe).await,
            Ok(Ok(()))
        ) {
            return Err("a channel unsubscription got no answer");
        }
    }
    cluster.interest.confirm(&difference);
    Ok(())
}

/// Writes every local session back into the registry.
async fn reregister(context: &ClusterContext, cluster: &Cluster) -> usize {
    let mut count = 0;
    for session in context.router.hub().sessions() {
        if cluster
            .register(&context.router.view(&*session), false)
            .await
            .is_ok()
        {
            count += 1;
        }
    }
    count
}

/// Acts on one envelope from another instance.
pub(super) fn deliver(context: &Arc<ClusterContext>, cluster: &Arc<Cluster>, payload: &[u8]) {
    let Some(mut envelope) = open_envelope(context, cluster, payload) else {
        return;
    };
    cluster.counters.received.fetch_add(1, Relaxed);
    let origin = span_context(&envelope.origin).unwrap_or_else(SpanContext::empty_context);
    let span = deliver_span(cluster, &envelope);
    let _entered = span.enter();
    // What the answers below need of the envelope; the action is moved out.
    let action = std::mem::replace(
        &mut envelope.action,
        Action::Answer {
            request_id: uuid::Uuid::nil(),
            answer: Answer::Failed {
                error: String::new(),
            },
        },
    );
    match action {
        Action::Deliver {
            to,
            message_id,
            frame,
            channel,
            from_session,
            ack,
        } => {
            let delivery = Arc::new(Delivery {
                id: uuid::Uuid::parse_str(&message_id).ok(),
                message_id,
                frame: frame.into(),
                channel,
                from_session,
                origin,
                sampled: envelope.sampled,
                deflated: Default::default(),
            });
            let report = fan_out(context, &to, &delivery);
            if let Some(request_id) = ack {
                let answer = Answer::Delivered {
                    delivered: report.delivered,
                    dropped: report.dropped,
                };
                cluster.answer(&envelope, request_id, answer);
            }
        }
        Action::Ask {
            request_id,
            question: Question::Logs { q },
        } => {
            let (context, cluster) = (context.clone(), cluster.clone());
            tokio::spawn(async move {
                let answer = search_logs_here(&context, &q).await;
                cluster.answer(&envelope, request_id, answer);
            });
        }
        Action::Answer { request_id, answer } => {
            let answered = super::ask::Answered {
                instance_id: envelope.from_instance,
                answer,
            };
            cluster.pending.answered(request_id, answered);
        }
        Action::Kick {
            session_id,
            code,
            reason,
        } => kick(context, session_id, code, reason, &origin),
        Action::Debug {
            session_id,
            minutes,
            requested_by,
        } => switch_debug(context, session_id, minutes, &requested_by, &origin),
    }
}

/// The envelope, if it is sealed with this cluster's key, from another
/// instance, and within what an admin request or a publish may carry; a
/// bad one is counted and logged, never acted on.
fn open_envelope(context: &ClusterContext, cluster: &Cluster, payload: &[u8]) -> Option<Envelope> {
    let opened = cluster
        .sealer
        .open(payload)
        .and_then(|json| Envelope::decode_from_others(json, cluster.instance_id()))
        .and_then(|envelope| match envelope {
            Some(envelope) => envelope
                .action
                .validate(context.max_frame_bytes)
                .map(|()| Some(envelope)),
            None => Ok(None),
        });
    opened.unwrap_or_else(|error| {
        cluster.counters.malformed.fetch_add(1, Relaxed);
        ClusterEnvelopeDropped {
            error: &error,
            bytes: payload.len(),
        }
        .emit();
        None
    })
}

/// A sampled envelope's `redis.deliver` span, the child of the publishing
/// instance's `redis.publish` (its `hop`); none for the others.
fn deliver_span(cluster: &Cluster, envelope: &Envelope) -> tracing::Span {
    if !envelope.sampled {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "redis.deliver",
        otel.kind = "consumer",
        messaging.system = "redis",
        messaging.operation = "receive",
        cluster.instance_id = cluster.instance_id(),
        cluster.from_instance = envelope.from_instance.as_str(),
    );
    if let Some(hop) = envelope.hop.as_deref().and_then(span_context) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(hop));
    }
    span
}

/// This instance's log search, for another instance, within what one
/// answer may hold (lines dropped from the end, and marked truncated).
async fn search_logs_here(context: &ClusterContext, q: &str) -> Answer {
    let mut found = match context.log_search.search(q).await {
        Ok(found) => found,
        Err(error) => {
            return Answer::Failed {
                error: error.to_string(),
            };
        }
    };
    while found.to_string().len() > crate::limits::CLUSTER_ANSWER_MAX_BYTES {
        let Some(lines) = found["lines"].as_array_mut() else {
            break;
        };
        let keep = lines.len() / 2;
        lines.truncate(keep);
        found["truncated"] = true.into();
    }
    Answer::Logs { found }
}

/// A message from another instance, to this instance's receivers.
fn fan_out(
    context: &ClusterContext,
    to: &Audience,
    delivery: &Arc<Delivery>,
) -> crate::routing::FanOut {
    let router = &context.router;
    let receivers: Vec<SharedRecipient> = match to {
        Audience::Channel { channel } => router.local(crate::routing::Audience::Channel(channel)),
        Audience::All => router.local(crate::routing::Audience::All),
        Audience::Sessions { session_ids } => session_ids
            .iter()
            .filter_map(|id| router.hub().get(*id))
            .collect(),
    };
    let report = router.fan_out(&receivers, delivery);
    if delivery.sampled {
        ClusterMessageDelivered {
            message_id: &delivery.message_id,
            delivered: report.delivered,
            dropped: report.dropped,
            link: &delivery.origin,
        }
        .emit();
    }
    report
}

/// An admin close from another instance, for a session here.
fn kick(
    context: &ClusterContext,
    session_id: uuid::Uuid,
    code: u16,
    reason: String,
    origin: &SpanContext,
) {
    let Some(session) = context.router.hub().get(session_id) else {
        RemoteActionForGoneSession {
            session_id,
            action: "kick",
        }
        .emit();
        return;
    };
    session.admin_touched("close", origin);
    session.close_by_admin(code, reason);
    AdminClosedSession {
        session_id,
        code,
        forwarded_to: None,
        from_elsewhere: true,
    }
    .emit();
}

/// An admin debug switch from another instance, for a session here.
fn switch_debug(
    context: &ClusterContext,
    session_id: uuid::Uuid,
    minutes: Option<u32>,
    requested_by: &str,
    origin: &SpanContext,
) {
    let Some(session) = context.router.hub().get(session_id) else {
        RemoteActionForGoneSession {
            session_id,
            action: "debug",
        }
        .emit();
        return;
    };
    let change = match minutes {
        Some(minutes) => DebugChange::On { minutes },
        None => DebugChange::Off,
    };
    // The requester answered already; the refusal is told here.
    if let Err(refused) = session.set_debug(change, requested_by, origin, &context.debug_slots) {
        RemoteDebugRefused {
            session_id,
            error: &refused,
            metrics: context.router.metrics(),
        }
        .emit();
    }
}

/// Renews this instance's stats key; reports cross-instance failures at
/// most once per `report_every`.
pub async fn run_upkeep(context: Arc<ClusterContext>, cluster: Arc<Cluster>) {
    let report_every = context.report_every;
    let mut renew =
        tokio::time::interval((cluster.session_ttl() / 3).max(Duration::from_millis(100)));
    let mut report =
        tokio::time::interval_at(tokio::time::Instant::now() + report_every, report_every);
    let (mut publish_before, mut registry_before) = (0, 0);
    loop {
        tokio::select! {
            _ = renew.tick() => {
                let _ = cluster.publish_stats(&(context.stats)()).await;
            }
            _ = report.tick() => {
                let publish = cluster.counters.publish_failures.load(Relaxed);
                let registry = cluster.counters.registry_failures.load(Relaxed);
                if publish > publish_before || registry > registry_before {
                    ClusterDeliveryFailing {
                        redis: cluster.redis_url(),
                        redis_up: cluster.is_up(),
                        publish_failures: publish - publish_before,
                        registry_failures: registry - registry_before,
                        publish_failures_total: publish,
                        interval_ms: report_every.as_millis() as u64,
                    }
                    .emit();
                }
                (publish_before, registry_before) = (publish, registry);
            }
            _ = context.shutdown.cancelled() => {
                let _ = cluster.forget_instance().await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        let mut backoff = Backoff::new();
        let delays: Vec<_> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] <= BACKOFF_FIRST && delays[0] >= BACKOFF_FIRST * 3 / 4);
        assert!(delays[3] > delays[0] * 4);
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
        assert!(delays[9] >= BACKOFF_MAX * 3 / 4);
    }
}
