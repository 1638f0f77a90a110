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
}

/// Hands messages to other instances. Futures are boxed: they sit in
/// session tasks, which should stay small.
pub trait Forwarder: Send + Sync + std::fmt::Debug {
    /// Forwards `delivery` to `audience` on the other instances.
    /// `local_found` is how many recipients this instance had (a session
    /// found here is nowhere else); `reply_to` gets an error frame if a
    /// queued forward fails later.
    fn forward<'a>(
        &'a self,
        audience: Audience<'a>,
        delivery: &'a Delivery,
        local_found: usize,
        reply_to: Option<SharedRecipient>,
    ) -> BoxFuture<'a, Result<Forwarded, ForwardError>>;

    /// Puts a session in the registry (`first`: only if it is not there).
    fn register(&self, view: SessionView, first: bool) -> BoxFuture<'_, Result<(), ForwardError>>;

    /// Takes a session out of the registry.
    fn unregister<'a>(
        &'a self,
        id: Uuid,
        user: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), ForwardError>>;
}
