//! The seam where cluster mode plugs into routing: a [`Forwarder`] takes
//! what routing delivered here and hands it to the other instances, and
//! keeps the cross-instance session registry.

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::{Audience, Delivery, SessionView, SharedRecipient};
use crate::protocol::{ErrorCode, ServerFrame};

/// Why other instances were not reached (cluster mode, Redis trouble).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct ForwardError {
    pub reason: String,
    /// Sent, but Redis did not answer in time: the other instances may
    /// still get it (a frozen Redis runs what it already read when it
    /// resumes). Otherwise it was not sent.
    pub outcome_unknown: bool,
}

impl ForwardError {
    /// Not sent: Redis was known to be down, or the queue full.
    pub fn not_sent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            outcome_unknown: false,
        }
    }

    /// What the publishing session is told: the message reached this
    /// instance's sessions, and the other instances did not get it
    /// (`cluster_unavailable`, safe to resend) or may have
    /// (`cluster_delivery_unknown`, resending may duplicate).
    pub fn to_frame(&self) -> ServerFrame {
        let (code, what) = match self.outcome_unknown {
            false => (
                ErrorCode::ClusterUnavailable,
                "other instances were not reached",
            ),
            true => (
                ErrorCode::ClusterDeliveryUnknown,
                "other instances may or may not have got the message",
            ),
        };
        ServerFrame::Error {
            code,
            message: format!("{what}: {self}; sessions on this instance got the message"),
        }
    }
}

impl ForwardError {
    /// What a subscriber is told when its channel's publishes from other
    /// instances do not reach this one yet.
    pub fn to_listen_frame(&self) -> ServerFrame {
        ServerFrame::Error {
            code: ErrorCode::ClusterUnavailable,
            message: format!(
                "subscribed on this instance; publishes from other instances arrive once Redis \
                 answers: {self}"
            ),
        }
    }
}

impl From<ForwardError> for crate::error::HttpError {
    fn from(error: ForwardError) -> Self {
        crate::error::HttpError::ClusterUnavailable(error.reason)
    }
}

/// What a forward reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// Sessions on other instances a direct message was handed to.
    pub remote_sessions: usize,
    /// Queued for every other instance (channel publishes, broadcasts).
    pub queued_for_all: bool,
    /// Other instances that got it (Redis's count; admin requests).
    pub instances: usize,
    /// What they delivered, summed over those that answered in time
    /// (admin requests).
    pub elsewhere: super::FanOut,
    /// Instances that got it but did not say what they delivered in time.
    pub unconfirmed: usize,
}

/// Who routes a message, and so how its forward is reported.
#[derive(Debug, Clone)]
pub enum Requester {
    /// A session: the forward is queued and never waited for; a failure
    /// later is told to the session as an error frame.
    Session(SharedRecipient),
    /// An admin request: it waits for the other instances to say what they
    /// delivered, and reports it.
    Admin,
}

/// Hands messages to other instances. Futures are boxed: they sit in
/// session tasks, which should stay small.
pub trait Forwarder: Send + Sync + std::fmt::Debug {
    /// Forwards `delivery` to `audience` on the other instances.
    /// `local_found` is how many recipients this instance had (a session
    /// found here is nowhere else).
    fn forward<'a>(
        &'a self,
        audience: Audience<'a>,
        delivery: &'a Delivery,
        local_found: usize,
        requester: Requester,
    ) -> BoxFuture<'a, Result<Forwarded, ForwardError>>;

    /// Puts a session in the registry (`first`: only if it is not there).
    fn register(&self, view: SessionView, first: bool) -> BoxFuture<'_, Result<(), ForwardError>>;

    /// Hears `channel`'s publishes from other instances from now on: returns
    /// once Redis has confirmed it (or at once, with the reason, when it
    /// cannot yet; it will once Redis is back). Called when a session here
    /// joins a channel.
    fn listen<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), ForwardError>>;

    /// A channel may have lost its last subscriber here: stop hearing it.
    fn interest_changed(&self);

    /// Takes a session out of the registry.
    fn unregister<'a>(
        &'a self,
        id: Uuid,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), ForwardError>>;
}
