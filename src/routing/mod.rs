//! Who gets a message: one [`Audience`], one [`Delivery`], local fan-out
//! through the [`Hub`], and, in cluster mode, a [`Forwarder`] for the other
//! instances.
//!
//! - [`hub`]: the sessions here, their users and channels.
//! - [`delivery`]: a message serialized once for all its receivers, built
//!   from a session or from an admin request.
//! - [`recipient`]: what routing knows about a session.
//! - [`forward`]: the seam cluster mode plugs into.
//!
//! Local receivers are served first and never wait for the forwarder, so a
//! single instance, or one whose Redis is gone, delivers as before.

pub mod delivery;
pub mod forward;
pub mod hub;
pub mod recipient;

pub use delivery::{Delivery, Sender};
pub use forward::{ForwardError, Forwarded, Forwarder, Requester};
pub use hub::{FanOut, Hub, SubscribeError};
pub use recipient::{DeliveryError, Recipient, SessionView, SharedRecipient};

use std::sync::Arc;
use uuid::Uuid;

use crate::metrics::Metrics;

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
    /// Admin requests: other instances that got it, what they delivered
    /// (those that answered in time), and how many did not answer.
    pub instances: usize,
    pub elsewhere: FanOut,
    pub unconfirmed: usize,
    /// Why it may not have reached the other instances.
    pub cluster_error: Option<ForwardError>,
}

impl Routed {
    /// No recipient anywhere (meaningful for direct messages).
    pub fn reached_nobody(&self) -> bool {
        self.local_found == 0 && self.remote_sessions == 0
    }
}

/// The hub, and the way to other instances when there are any.
#[derive(Debug)]
pub struct Router {
    hub: Hub,
    metrics: Arc<Metrics>,
    instance_id: String,
    forwarder: Option<Arc<dyn Forwarder>>,
}

impl Router {
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn new(
        instance_id: String,
        metrics: Arc<Metrics>,
        forwarder: Option<Arc<dyn Forwarder>>,
    ) -> Self {
        Self {
            hub: Hub::default(),
            metrics,
            instance_id,
            forwarder,
        }
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// A session's view, with its channels.
    pub fn view(&self, session: &dyn Recipient) -> SessionView {
        self.hub.view(session, &self.instance_id)
    }

    /// A new session: in the hub at once; in the cluster registry before
    /// this returns, so once the client knows its session id any instance
    /// can reach it.
    pub async fn join(&self, session: SharedRecipient) -> Result<(), ForwardError> {
        self.hub.register(session.clone());
        match &self.forwarder {
            Some(forwarder) => forwarder.register(self.view(&*session), true).await,
            None => Ok(()),
        }
    }

    /// Renews a session's registry entry (cluster mode; each heartbeat).
    pub async fn renew(&self, session: &dyn Recipient) -> Result<(), ForwardError> {
        match &self.forwarder {
            Some(forwarder) => forwarder.register(self.view(session), false).await,
            None => Ok(()),
        }
    }

    /// Joins a channel here and, in cluster mode, returns once this
    /// instance hears the channel's publishes from the others. `Ok(Err(_))`:
    /// joined here, but other instances' publishes do not arrive yet.
    pub async fn subscribe(
        &self,
        id: Uuid,
        channel: &str,
        limit: usize,
    ) -> Result<Result<(), ForwardError>, SubscribeError> {
        self.hub.subscribe(id, channel, limit)?;
        Ok(match &self.forwarder {
            Some(forwarder) => forwarder.listen(channel).await,
            None => Ok(()),
        })
    }

    /// Leaves a channel; false if the session was not subscribed.
    pub fn unsubscribe(&self, id: Uuid, channel: &str) -> bool {
        let left = self.hub.unsubscribe(id, channel);
        if left && let Some(forwarder) = &self.forwarder {
            forwarder.interest_changed();
        }
        left
    }

    /// A session that stops taking deliveries. On a registry failure its
    /// entry expires within one TTL.
    pub async fn leave(&self, id: Uuid, user: Option<&str>) {
        self.hub.remove(id);
        if let Some(forwarder) = &self.forwarder {
            forwarder.interest_changed();
            let _ = forwarder.unregister(id, user).await;
        }
    }

    /// The sessions of this instance in `audience`.
    pub fn local(&self, audience: Audience<'_>) -> Vec<SharedRecipient> {
        match audience {
            Audience::Channel(channel) => self.hub.subscribers(channel),
            Audience::All => self.hub.sessions(),
            Audience::Session(id) => self.hub.get(id).into_iter().collect(),
            Audience::User(user) => self.hub.sessions_of_user(user),
        }
    }

    /// Queues `delivery` for `receivers` on this instance.
    pub fn fan_out(&self, receivers: &[SharedRecipient], delivery: &Arc<Delivery>) -> FanOut {
        self.hub.fan_out(receivers, delivery, &self.metrics)
    }

    /// Delivers on this instance, then forwards to the others. `on_local`
    /// sees each local recipient before its delivery is queued; see
    /// [`Requester`] for what the forward waits for.
    pub async fn route(
        &self,
        audience: Audience<'_>,
        delivery: &Arc<Delivery>,
        on_local: impl Fn(&dyn Recipient),
        requester: Requester,
    ) -> Routed {
        let local = self.local(audience);
        local.iter().for_each(|session| on_local(&**session));
        let mut routed = Routed {
            local_found: local.len(),
            local: self.fan_out(&local, delivery),
            ..Routed::default()
        };
        drop(local);
        let Some(forwarder) = &self.forwarder else {
            return routed;
        };
        match forwarder
            .forward(audience, delivery, routed.local_found, requester)
            .await
        {
            Ok(forwarded) => {
                routed.remote_sessions = forwarded.remote_sessions;
                routed.queued_for_cluster = forwarded.queued_for_all;
                routed.instances = forwarded.instances;
                routed.elsewhere = forwarded.elsewhere;
                routed.unconfirmed = forwarded.unconfirmed;
            }
            Err(error) => routed.cluster_error = Some(error),
        }
        routed
    }
}
