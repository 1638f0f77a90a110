//! What routing knows about a session: the [`Recipient`] trait a session
//! implements, and the [`SessionView`] the admin API and the cluster
//! registry show.

use opentelemetry::trace::SpanContext;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use super::Delivery;
use crate::metrics::Metrics;
use crate::protocol::ServerFrame;
use crate::sampling::{DebugChange, DebugRefused, DebugSlots, DebugStatus};

/// A live session as routing, the admin API and the cluster see it.
/// Implemented by `session::SessionHandle`; routing never needs more.
pub trait Recipient: Send + Sync + std::fmt::Debug {
    fn id(&self) -> Uuid;
    fn user(&self) -> Option<&str>;
    /// Queues a message from another session or the admin API, never
    /// waiting: a receiver too slow to take it is closed (1013).
    fn deliver(&self, delivery: Arc<Delivery>, metrics: &Metrics) -> Result<(), DeliveryError>;
    /// Queues a frame of the session's own (an error frame for something
    /// that failed after its request returned) without waiting; dropped if
    /// the queue is full, since the client is then not reading anyway.
    fn notify(&self, frame: &ServerFrame, sampled: bool);
    fn view(&self, instance_id: &str) -> SessionView;
    /// How long since the client last sent anything.
    fn idle_for(&self) -> Duration;
    /// An admin request (made here or on another instance) acts on this
    /// session: a line in the session's own trace, linked to the request.
    fn admin_touched(&self, action: &'static str, origin: &SpanContext);
    /// Switches the session's debug mode on an operator's request (made
    /// here or on another instance): on for `minutes` (then off by
    /// itself), or off. The change is a line in the session's own trace,
    /// with who asked, linked to the request.
    fn set_debug(
        self: Arc<Self>,
        change: DebugChange,
        requested_by: &str,
        origin: &SpanContext,
        slots: &Arc<DebugSlots>,
    ) -> Result<DebugStatus, DebugRefused>;
    /// Closes the session on an operator's request; false if it was
    /// already closing.
    fn close_by_admin(&self, code: u16, reason: String) -> bool;
    /// Closes the session because the server is stopping (1001); false if
    /// it was already closing.
    fn shut_down(&self) -> bool;
}

/// A shared, type-erased recipient.
pub type SharedRecipient = Arc<dyn Recipient>;

/// A session as the admin API shows it, and as the cluster registry stores
/// it (there, the counters are as of the last heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub session_id: String,
    pub instance_id: String,
    pub trace_id: String,
    pub user: Option<String>,
    /// The TCP peer, `ip:port` (behind a proxy, the proxy).
    pub peer: String,
    /// The client's address: the peer's, or whom a trusted proxy named.
    /// (Default: an entry from an instance that predates it.)
    #[serde(default)]
    pub client: String,
    pub connected_at_ms: u64,
    pub idle_ms: u64,
    pub channels: Vec<String>,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: u64,
    /// A debug session: every message is traced.
    #[serde(default)]
    pub debug: bool,
}

/// Why a delivery did not reach a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryError {
    /// The receiver's queue was full; it is being closed with 1013.
    Overflow,
    /// The receiver is already closing.
    Gone,
}
