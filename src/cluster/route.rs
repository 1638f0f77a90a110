//! Hands a message to its audience on every instance: the sessions here
//! first, without waiting on Redis, then the other instances through it.

use opentelemetry::trace::TraceContextExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::envelope::{self, Action, ENVELOPE_VERSION, Envelope};
use super::{Cluster, ClusterError};
use crate::hub::{FanOut, SessionHandle};
use crate::session::outbound::Delivery;
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
    /// Other instances that received it.
    pub remote_instances: u64,
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
/// each local recipient before its delivery is queued.
pub async fn route(
    state: &ServerState,
    audience: Audience<'_>,
    delivery: &Arc<Delivery>,
    on_local: impl Fn(&SessionHandle),
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
    if let Err(error) = forward(cluster, audience, delivery, &mut routed).await {
        routed.cluster_error = Some(error);
    }
    routed
}

async fn forward(
    cluster: &Cluster,
    audience: Audience<'_>,
    delivery: &Delivery,
    routed: &mut Routed,
) -> Result<(), ClusterError> {
    let bus = Cluster::bus_channel();
    match audience {
        Audience::Channel(channel) => {
            let to = envelope::Audience::Channel {
                channel: channel.to_string(),
            };
            routed.remote_instances = others(publish(cluster, &bus, to, delivery).await?);
        }
        Audience::All => {
            let to = envelope::Audience::All;
            routed.remote_instances = others(publish(cluster, &bus, to, delivery).await?);
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

/// Bus receivers other than this instance, which is subscribed too.
fn others(bus_receivers: u64) -> u64 {
    bus_receivers.saturating_sub(1)
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
        routed.remote_instances += receivers;
    }
    Ok(())
}

async fn publish(
    cluster: &Cluster,
    channel: &str,
    to: envelope::Audience,
    delivery: &Delivery,
) -> Result<u64, ClusterError> {
    let action = Action::Deliver {
        to,
        message_id: delivery.message_id.clone(),
        frame: delivery.frame.to_string(),
        channel: delivery.channel.clone(),
        from_session: delivery.from_session,
    };
    send(cluster, channel, action, delivery.sampled, &delivery.origin).await
}

/// Publishes one envelope, in a `redis.publish` span when sampled; that
/// span becomes the parent of the receiving instance's `redis.deliver`.
pub async fn send(
    cluster: &Cluster,
    channel: &str,
    action: Action,
    sampled: bool,
    origin: &opentelemetry::trace::SpanContext,
) -> Result<u64, ClusterError> {
    let span = if sampled {
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
    } else {
        tracing::Span::none()
    };
    let hop = sampled.then(|| format_traceparent(span.context().span().span_context()));
    let envelope = Envelope {
        v: ENVELOPE_VERSION,
        from_instance: cluster.instance_id().to_string(),
        origin: format_traceparent(origin),
        hop,
        sampled,
        action,
    };
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
    origin: &opentelemetry::trace::SpanContext,
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
