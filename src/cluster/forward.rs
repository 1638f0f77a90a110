//! Cluster mode as routing's [`Forwarder`]: what routing delivered on this
//! instance goes to the others through Redis. Channel publishes and
//! broadcasts are queued for the publisher task (never waiting on Redis);
//! direct messages and kicks look the recipient up in the registry and
//! wait for Redis's answer, since the sender needs to know who got them.

use futures_util::future::BoxFuture;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use std::collections::BTreeMap;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::envelope::{self, Action, Answer, ENVELOPE_VERSION, Envelope};
use super::publisher::PublishJob;
use super::{Cluster, ClusterError};
use crate::routing::{
    Audience, Delivery, ForwardError, Forwarded, Forwarder, Requester, SessionView, SharedRecipient,
};
use crate::sampling::DebugChange;
use crate::trace_context::format_traceparent;

impl Forwarder for Cluster {
    fn forward<'a>(
        &'a self,
        audience: Audience<'a>,
        delivery: &'a Delivery,
        local_found: usize,
        requester: Requester,
    ) -> BoxFuture<'a, Result<Forwarded, ForwardError>> {
        Box::pin(async move {
            let mut forwarded = Forwarded::default();
            forward(
                self,
                audience,
                delivery,
                local_found,
                &mut forwarded,
                requester,
            )
            .await?;
            Ok(forwarded)
        })
    }

    fn listen<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), ForwardError>> {
        Box::pin(async move {
            let up = || self.is_up();
            Ok(self.interest.wait_for(channel, self.timeout, up).await?)
        })
    }

    fn interest_changed(&self) {
        self.interest.changed();
    }

    fn register(&self, view: SessionView, first: bool) -> BoxFuture<'_, Result<(), ForwardError>> {
        Box::pin(async move { Ok(Cluster::register(self, &view, first).await?) })
    }

    fn unregister<'a>(
        &'a self,
        id: Uuid,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), ForwardError>> {
        Box::pin(async move { Ok(Cluster::unregister(self, id, user).await?) })
    }
}

async fn forward(
    cluster: &Cluster,
    audience: Audience<'_>,
    delivery: &Delivery,
    local_found: usize,
    routed: &mut Forwarded,
    requester: Requester,
) -> Result<(), ClusterError> {
    let admin = matches!(requester, Requester::Admin);
    match audience {
        Audience::Channel(channel) => {
            let to = envelope::Audience::Channel {
                channel: channel.to_string(),
            };
            let redis_channel = super::interest::redis_channel(channel);
            // This instance hears the channel while it has subscribers.
            let hears_itself = cluster.interest.is_confirmed(channel);
            to_all(
                cluster,
                redis_channel,
                to,
                delivery,
                hears_itself,
                routed,
                requester,
            )
            .await?;
        }
        Audience::All => {
            let to = envelope::Audience::All;
            let bus = Cluster::bus_channel();
            to_all(cluster, bus, to, delivery, true, routed, requester).await?;
        }
        // Session ids are unique: found here, it is nowhere else.
        Audience::Session(_) if local_found > 0 => {}
        Audience::Session(id) => {
            if let Some(view) = cluster.lookup(id).await?
                && view.instance_id != cluster.instance_id()
            {
                let ids = vec![id];
                send_to_sessions(cluster, &view.instance_id, ids, delivery, routed, admin).await?;
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
                send_to_sessions(cluster, &instance, ids, delivery, routed, admin).await?;
            }
        }
    }
    Ok(())
}

/// A channel publish or a broadcast: a session's is queued; an admin's is
/// published at once and the instances that heard it say what they
/// delivered.
async fn to_all(
    cluster: &Cluster,
    channel: String,
    to: envelope::Audience,
    delivery: &Delivery,
    hears_itself: bool,
    routed: &mut Forwarded,
    requester: Requester,
) -> Result<(), ClusterError> {
    match requester {
        Requester::Session(reply_to) => {
            enqueue(cluster, channel, to, delivery, reply_to)?;
            routed.queued_for_all = true;
        }
        Requester::Admin => {
            let action = |id| deliver_action(to, delivery, Some(id));
            confirmed(cluster, &channel, action, hears_itself, delivery, routed).await?;
        }
    }
    Ok(())
}

/// Publishes an acknowledged delivery and adds up the answers.
async fn confirmed(
    cluster: &Cluster,
    channel: &str,
    action: impl FnOnce(Uuid) -> Action,
    hears_itself: bool,
    delivery: &Delivery,
    routed: &mut Forwarded,
) -> Result<usize, ClusterError> {
    let timeout = crate::limits::CLUSTER_ANSWER_TIMEOUT;
    let gathered = cluster
        .ask(channel, action, hears_itself, &delivery.origin, timeout)
        .await?;
    routed.instances += gathered.heard_by;
    routed.unconfirmed += gathered.unanswered();
    for answered in &gathered.answers {
        if let Answer::Delivered { delivered, dropped } = answered.answer {
            routed.elsewhere.delivered += delivered;
            routed.elsewhere.dropped += dropped;
        }
    }
    Ok(gathered.heard_by)
}

/// Hands a delivery for the instances that hear `channel` to the
/// publisher task.
fn enqueue(
    cluster: &Cluster,
    channel: String,
    to: envelope::Audience,
    delivery: &Delivery,
    reply_to: SharedRecipient,
) -> Result<(), ClusterError> {
    let span = publish_span(cluster, &channel, delivery.sampled);
    let envelope = envelope(
        cluster,
        &span,
        deliver_action(to, delivery, None),
        delivery.sampled,
        &delivery.origin,
    );
    cluster.enqueue(PublishJob {
        channel,
        wire: cluster.seal(&envelope),
        sampled: envelope.sampled,
        span,
        reply_to: Some(reply_to),
    })
}

/// A direct message to sessions on `instance`; an admin's waits for that
/// instance to say what it delivered.
async fn send_to_sessions(
    cluster: &Cluster,
    instance: &str,
    session_ids: Vec<Uuid>,
    delivery: &Delivery,
    routed: &mut Forwarded,
    admin: bool,
) -> Result<(), ClusterError> {
    let count = session_ids.len();
    let to = envelope::Audience::Sessions { session_ids };
    let channel = Cluster::instance_channel(instance);
    let receivers = if admin {
        let action = |id| deliver_action(to, delivery, Some(id));
        confirmed(cluster, &channel, action, false, delivery, routed).await? as u64
    } else {
        let action = deliver_action(to, delivery, None);
        send(
            cluster,
            &channel,
            action,
            delivery.sampled,
            &delivery.origin,
        )
        .await?
    };
    // Nobody listening: the instance died and its registry entries have
    // not expired yet.
    if receivers > 0 {
        routed.remote_sessions += count;
    }
    Ok(())
}

fn deliver_action(to: envelope::Audience, delivery: &Delivery, ack: Option<Uuid>) -> Action {
    Action::Deliver {
        to,
        message_id: delivery.message_id.clone(),
        frame: delivery.frame.to_string(),
        channel: delivery.channel.clone(),
        from_session: delivery.from_session,
        ack,
    }
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

/// An unsampled envelope of this instance that continues `origin` (a
/// `traceparent`): answers to other instances' requests.
pub fn envelope_for(cluster: &Cluster, action: Action, origin: &str) -> Envelope {
    Envelope {
        v: ENVELOPE_VERSION,
        from_instance: cluster.instance_id().to_string(),
        origin: origin.to_string(),
        hop: None,
        sampled: false,
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
        // An OpenTelemetry integer: u64 would reach Tempo as a string.
        Ok(receivers) => span.record("cluster.receivers", *receivers as i64),
        Err(_) => span.record("otel.status_code", "error"),
    };
    result
}

/// Switches the debug mode of a session that lives on another instance.
/// `Ok(Some(instance))` when the change was handed to it (that instance
/// applies it, or logs why not), `Ok(None)` when no live instance holds
/// that session.
pub async fn forward_debug(
    cluster: &Cluster,
    session_id: Uuid,
    change: &DebugChange,
    requested_by: &str,
    origin: &SpanContext,
) -> Result<Option<String>, ClusterError> {
    let action = Action::Debug {
        session_id,
        minutes: match change {
            DebugChange::On { minutes } => Some(*minutes),
            DebugChange::Off => None,
        },
        requested_by: requested_by.to_string(),
    };
    to_the_sessions_instance(cluster, session_id, action, origin).await
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
    let action = Action::Kick {
        session_id,
        code,
        reason: reason.to_string(),
    };
    to_the_sessions_instance(cluster, session_id, action, origin).await
}

/// Sends `action` to the instance the registry says holds the session:
/// that instance's id when one heard it, `None` when no instance holds it.
async fn to_the_sessions_instance(
    cluster: &Cluster,
    session_id: Uuid,
    action: Action,
    origin: &SpanContext,
) -> Result<Option<String>, ClusterError> {
    let Some(view) = cluster.lookup(session_id).await? else {
        return Ok(None);
    };
    let channel = Cluster::instance_channel(&view.instance_id);
    let receivers = send(cluster, &channel, action, true, origin).await?;
    Ok((receivers > 0).then_some(view.instance_id))
}
