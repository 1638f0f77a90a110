//! The seam where cluster mode plugs into routing: a [`Forwarder`] takes
//! what routing delivered here and hands it to the other instances, and
//! keeps the cross-instance session registry.

use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::{Audience, Delivery, SessionView, SharedRecipient};
use crate::protocol::{ErrorCode, ServerFrame};

/// Why other instances were not reached (cluster mode, Redis trouble).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ForwardError(pub String);

impl ForwardError {
    /// What the publishing session is told: the message reached this
    /// instance's sessions only.
    pub fn to_frame(&self) -> ServerFrame {
        ServerFrame::Error {
            code: ErrorCode::ClusterUnavailable,
            message: format!(
                "other instances were not reached: {self}; sessions on this instance got the message"
            ),
        }
    }
}

impl From<ForwardError> for crate::error::HttpError {
    fn from(error: ForwardError) -> Self {
        crate::error::HttpError::ClusterUnavailable(error.0)
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
