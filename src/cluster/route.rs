//! Hands a message to its audience on every instance: the sessions here
//! first, without waiting on Redis, then the other instances through it.

use opentelemetry::trace::{SpanContext, TraceContextExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::envelope::{self, Action, ENVELOPE_VERSION, Envelope};
use super::publisher::PublishJob;
use super::{Cluster, ClusterError};
use crate::hub::{FanOut, SessionHandle};
use crate::session::outbound::{Delivery, Outbound};
use crate::state::ServerState;
use crate::trace_context::format_traceparent;

/// Who a message is for.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    Channel(&'a str),
    All,
    Session(Uuid),
    User(&'a str),
}

/// Where a message went.
#[derive(Debug, Default)]
pub struct Routed {
    /// Sessions on this instance.
    pub local: FanOut,
    pub local_found: usize,
    /// Sessions on other instances it was forwarded to (direct messages).
    pub remote_sessions: usize,
    /// Queued for every other instance (channel publishes, broadcasts).
    pub queued_for_cluster: bool,
    /// Why it may not have reached the other instances.
    pub cluster_error: Option<ClusterError>,
}

impl Routed {
    /// No recipient anywhere (meaningful for direct messages).
    pub fn reached_nobody(&self) -> bool {
        self.local_found == 0 && self.remote_sessions == 0
    }
}

/// Delivers on this instance, then forwards to the others. `on_local` sees
/// each local recipient before its delivery is queued; `reply_to` (the
/// publishing session's queue) gets an error frame if a queued publish
/// fails later.
pub async fn route(
    state: &ServerState,
    audience: Audience<'_>,
    delivery: &Arc<Delivery>,
    on_local: impl Fn(&SessionHandle),
    reply_to: Option<&mpsc::Sender<Outbound>>,
) -> Routed {
    let hub = &state.hub;
    let local = match audience {
        Audience::Channel(channel) => hub.subscribers(channel),
        Audience::All => hub.sessions(),
        Audience::Session(id) => hub.get(id).into_iter().collect(),
        Audience::User(user) => hub.sessions_of_user(user),
    };
    local.iter().for_each(|session| on_local(session));
    let mut routed = Routed {
        local_found: local.len(),
        local: hub.fan_out(local, delivery.clone(), &state.metrics),
        ..Routed::default()
    };
    let Some(cluster) = &state.cluster else {
        return routed;
    };
    if let Err(error) = forward(cluster, audience, delivery, &mut routed, reply_to).await {
        routed.cluster_error = Some(error);
    }
    routed
}

async fn forward(
    cluster: &Cluster,
    audience: Audience<'_>,
    delivery: &Delivery,
    routed: &mut Routed,
    reply_to: Option<&mpsc::Sender<Outbound>>,
) -> Result<(), ClusterError> {
    match audience {
        Audience::Channel(channel) => {
            let to = envelope::Audience::Channel {
                channel: channel.to_string(),
            };
            enqueue(cluster, to, delivery, reply_to)?;
            routed.queued_for_cluster = true;
        }
        Audience::All => {
            enqueue(cluster, envelope::Audience::All, delivery, reply_to)?;
            routed.queued_for_cluster = true;
        }
        // Session ids are unique: found here, it is nowhere else.
        Audience::Session(_) if routed.local_found > 0 => {}
        Audience::Session(id) => {
            if let Some(view) = cluster.lookup(id).await?
                && view.instance_id != cluster.instance_id()
            {
                send_to_sessions(cluster, &view.instance_id, vec![id], delivery, routed).await?;
            }
        }
        Audience::User(user) => {
            let mut by_instance: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
            for view in cluster.sessions_of_user(user).await? {
                if view.instance_id == cluster.instance_id() {
                    continue;
                }
                if let Ok(id) = Uuid::parse_str(&view.session_id) {
                    by_instance.entry(view.instance_id).or_default().push(id);
                }
            }
            for (instance, ids) in by_instance {
                send_to_sessions(cluster, &instance, ids, delivery, routed).await?;
            }
        }
    }
    Ok(())
}

/// Hands a delivery for every instance to the publisher task.
fn enqueue(
    cluster: &Cluster,
    to: envelope::Audience,
    delivery: &Delivery,
    reply_to: Option<&mpsc::Sender<Outbound>>,
) -> Result<(), ClusterError> {
    let channel = Cluster::bus_channel();
    let span = publish_span(cluster, &channel, delivery.sampled);
    let envelope = envelope(
        cluster,
        &span,
        deliver_action(to, delivery),
        delivery.sampled,
        &delivery.origin,
    );
    cluster.enqueue(PublishJob {
        channel,
        envelope,
        span,
        reply_to: reply_to.cloned(),
    })
}

async fn send_to_sessions(
    cluster: &Cluster,
    instance: &str,
    session_ids: Vec<Uuid>,
    delivery: &Delivery,
    routed: &mut Routed,
) -> Result<(), ClusterError> {
    let count = session_ids.len();
    let to = envelope::Audience::Sessions { session_ids };
    let receivers = publish(cluster, &Cluster::instance_channel(instance), to, delivery).await?;
    // Nobody listening: the instance died and its registry entries have
    // not expired yet.
    if receivers > 0 {
        routed.remote_sessions += count;
    }
    Ok(())
}

fn deliver_action(to: envelope::Audience, delivery: &Delivery) -> Action {
    Action::Deliver {
        to,
        message_id: delivery.message_id.clone(),
        frame: delivery.frame.to_string(),
        channel: delivery.channel.clone(),
        from_session: delivery.from_session,
    }
}

async fn publish(
    cluster: &Cluster,
    channel: &str,
    to: envelope::Audience,
    delivery: &Delivery,
) -> Result<u64, ClusterError> {
    let action = deliver_action(to, delivery);
    send(cluster, channel, action, delivery.sampled, &delivery.origin).await
}

/// The `redis.publish` span, when sampled; the parent of the receiving
/// instance's `redis.deliver`.
fn publish_span(cluster: &Cluster, channel: &str, sampled: bool) -> tracing::Span {
    if !sampled {
        return tracing::Span::none();
    }
    tracing::info_span!(
        "redis.publish",
        otel.kind = "producer",
        messaging.system = "redis",
        messaging.operation = "publish",
        messaging.destination.name = channel,
        cluster.instance_id = cluster.instance_id(),
        cluster.receivers = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

fn envelope(
    cluster: &Cluster,
    span: &tracing::Span,
    action: Action,
    sampled: bool,
    origin: &SpanContext,
) -> Envelope {
    Envelope {
        v: ENVELOPE_VERSION,
        from_instance: cluster.instance_id().to_string(),
        origin: format_traceparent(origin),
        hop: sampled.then(|| format_traceparent(span.context().span().span_context())),
        sampled,
        action,
    }
}

/// Publishes one envelope and waits for Redis's answer (direct messages
/// and kicks, whose sender needs to know whether anyone got them).
pub async fn send(
    cluster: &Cluster,
    channel: &str,
    action: Action,
    sampled: bool,
    origin: &SpanContext,
) -> Result<u64, ClusterError> {
    let span = publish_span(cluster, channel, sampled);
    let envelope = envelope(cluster, &span, action, sampled, origin);
    let result = cluster
        .publish(channel, &envelope)
        .instrument(span.clone())
        .await;
    match &result {
        Ok(receivers) => span.record("cluster.receivers", receivers),
        Err(_) => span.record("otel.status_code", "error"),
    };
    result
}

/// Closes a session that lives on another instance. `Ok(Some(instance))`
/// when the kick was handed to it, `Ok(None)` when no live instance holds
/// that session.
pub async fn kick(
    cluster: &Cluster,
    session_id: Uuid,
    code: u16,
    reason: &str,
    origin: &SpanContext,
) -> Result<Option<String>, ClusterError> {
    let Some(view) = cluster.lookup(session_id).await? else {
        return Ok(None);
    };
    let action = Action::Kick {
        session_id,
        code,
        reason: reason.to_string(),
    };
    let channel = Cluster::instance_channel(&view.instance_id);
    let receivers = send(cluster, &channel, action, true, origin).await?;
    Ok((receivers > 0).then_some(view.instance_id))
}
