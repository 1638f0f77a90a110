//! Who is connected and who listens where: the session registry, the user
//! index and the channels.
//!
//! Fan-out never waits: a delivery goes into the receiver's bounded
//! outbound queue with `try_send`. A receiver whose queue is full is too
//! slow to keep up; it is closed with 1013, and the drop is counted and
//! logged in its own session, so a slow subscriber can never block a
//! publisher and no message disappears without a trace.

use opentelemetry::trace::SpanContext;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::error::close_code;
use crate::metrics::{HubGauges, Metrics};
use crate::session::outbound::{Delivery, Outbound};
use crate::session::stats::{CloseDecision, CloseSignal, ClosedBy, SessionStats};

/// What the rest of the server may know about, and do to, a live session.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: Uuid,
    pub trace_id: String,
    pub user: Option<String>,
    pub peer: SocketAddr,
    pub connected_at: SystemTime,
    /// The `ws.session` span: the explicit parent of lines logged on the
    /// session's behalf by other tasks (deliveries, admin actions).
    pub span: tracing::Span,
    /// The `ws.session` span's context, for links and `traceparent`s.
    pub span_context: SpanContext,
    pub stats: Arc<SessionStats>,
    pub close: CloseSignal,
    outbound: mpsc::Sender<Outbound>,
    channels: Mutex<BTreeSet<String>>,
}

/// A session as the admin API shows it, and as the cluster registry stores
/// it (there, the counters are as of the last heartbeat).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionView {
    pub session_id: String,
    pub instance_id: String,
    pub trace_id: String,
    pub user: Option<String>,
    pub peer: String,
    pub connected_at_ms: u64,
    pub idle_ms: u64,
    pub channels: Vec<String>,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: u64,
}

/// Why a delivery did not reach a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryError {
    /// The receiver's queue was full; it is being closed with 1013.
    Overflow,
    /// The receiver is already closing.
    Gone,
}

impl SessionHandle {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Uuid,
        trace_id: String,
        user: Option<String>,
        peer: SocketAddr,
        span: tracing::Span,
        span_context: SpanContext,
        stats: Arc<SessionStats>,
        close: CloseSignal,
        outbound: mpsc::Sender<Outbound>,
    ) -> Self {
        Self {
            id,
            trace_id,
            user,
            peer,
            connected_at: SystemTime::now(),
            span,
            span_context,
            stats,
            close,
            outbound,
            channels: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn channels(&self) -> Vec<String> {
        lock(&self.channels).iter().cloned().collect()
    }

    pub fn view(&self, instance_id: &str) -> SessionView {
        let stats = &self.stats;
        SessionView {
            session_id: self.id.to_string(),
            instance_id: instance_id.to_string(),
            trace_id: self.trace_id.clone(),
            user: self.user.clone(),
            peer: self.peer.to_string(),
            connected_at_ms: crate::protocol::unix_ms(self.connected_at),
            idle_ms: stats.last_seen().elapsed().as_millis() as u64,
            channels: self.channels(),
            messages_in: stats.messages_in.load(Relaxed),
            messages_out: stats.messages_out.load(Relaxed),
            bytes_in: stats.bytes_in.load(Relaxed),
            bytes_out: stats.bytes_out.load(Relaxed),
            errors: stats.errors.load(Relaxed),
        }
    }

    /// Queues a message from another session or the admin API, never
    /// waiting.
    pub fn deliver(&self, delivery: Arc<Delivery>, metrics: &Metrics) -> Result<(), DeliveryError> {
        match self.outbound.try_send(Outbound::Delivery(delivery)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics.outbound_queue_drops.fetch_add(1, Relaxed);
                if self.close.decide(CloseDecision::new(
                    close_code::TRY_AGAIN_LATER,
                    "outbound queue full",
                    ClosedBy::Policy,
                )) {
                    tracing::warn!(
                        parent: &self.span,
                        queue_frames = self.outbound.max_capacity(),
                        "outbound queue full: client is not reading; closing with 1013"
                    );
                }
                Err(DeliveryError::Overflow)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DeliveryError::Gone),
        }
    }
}

/// Counts of one fan-out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    pub delivered: usize,
    pub dropped: usize,
}

impl FanOut {
    fn add(&mut self, result: Result<(), DeliveryError>) {
        match result {
            Ok(()) => self.delivered += 1,
            Err(DeliveryError::Overflow) => self.dropped += 1,
            Err(DeliveryError::Gone) => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeError {
    TooMany { limit: usize },
}

#[derive(Debug, Default)]
pub struct Hub {
    sessions: RwLock<HashMap<Uuid, Arc<SessionHandle>>>,
    users: RwLock<HashMap<String, Vec<Uuid>>>,
    /// A channel exists while it has subscribers.
    channels: RwLock<HashMap<String, Vec<Arc<SessionHandle>>>>,
}

impl Hub {
    pub fn register(&self, session: Arc<SessionHandle>) {
        if let Some(user) = &session.user {
            write(&self.users)
                .entry(user.clone())
                .or_default()
                .push(session.id);
        }
        write(&self.sessions).insert(session.id, session);
    }

    /// Forgets a session and its subscriptions; channels left empty go.
    pub fn remove(&self, id: Uuid) {
        let Some(session) = write(&self.sessions).remove(&id) else {
            return;
        };
        for channel in session.channels() {
            self.unsubscribe(&session, &channel);
        }
        if let Some(user) = &session.user {
            let mut users = write(&self.users);
            if let Some(ids) = users.get_mut(user) {
                ids.retain(|s| *s != id);
                if ids.is_empty() {
                    users.remove(user);
                }
            }
        }
    }

    pub fn get(&self, id: Uuid) -> Option<Arc<SessionHandle>> {
        read(&self.sessions).get(&id).cloned()
    }

    pub fn sessions(&self) -> Vec<Arc<SessionHandle>> {
        let mut all: Vec<_> = read(&self.sessions).values().cloned().collect();
        all.sort_by_key(|s| s.id);
        all
    }

    pub fn sessions_of_user(&self, user: &str) -> Vec<Arc<SessionHandle>> {
        let ids = read(&self.users).get(user).cloned().unwrap_or_default();
        let sessions = read(&self.sessions);
        ids.iter()
            .filter_map(|id| sessions.get(id).cloned())
            .collect()
    }

    pub fn len(&self) -> usize {
        read(&self.sessions).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns false if the session was already subscribed.
    pub fn subscribe(
        &self,
        session: &Arc<SessionHandle>,
        channel: &str,
        limit: usize,
    ) -> Result<bool, SubscribeError> {
        {
            let mut mine = lock(&session.channels);
            if mine.contains(channel) {
                return Ok(false);
            }
            if mine.len() >= limit {
                return Err(SubscribeError::TooMany { limit });
            }
            mine.insert(channel.to_owned());
        }
        write(&self.channels)
            .entry(channel.to_owned())
            .or_default()
            .push(session.clone());
        Ok(true)
    }

    /// Returns false if the session was not subscribed.
    pub fn unsubscribe(&self, session: &SessionHandle, channel: &str) -> bool {
        if !lock(&session.channels).remove(channel) {
            return false;
        }
        let mut channels = write(&self.channels);
        if let Some(subscribers) = channels.get_mut(channel) {
            subscribers.retain(|s| s.id != session.id);
            if subscribers.is_empty() {
                channels.remove(channel);
            }
        }
        true
    }

    pub fn subscribers(&self, channel: &str) -> Vec<Arc<SessionHandle>> {
        read(&self.channels)
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// Delivers to every subscriber of `channel`.
    pub fn publish(&self, channel: &str, delivery: Arc<Delivery>, metrics: &Metrics) -> FanOut {
        self.fan_out(self.subscribers(channel), delivery, metrics)
    }

    /// Delivers to every connected session.
    pub fn broadcast(&self, delivery: Arc<Delivery>, metrics: &Metrics) -> FanOut {
        self.fan_out(self.sessions(), delivery, metrics)
    }

    pub fn fan_out(
        &self,
        receivers: Vec<Arc<SessionHandle>>,
        delivery: Arc<Delivery>,
        metrics: &Metrics,
    ) -> FanOut {
        let mut report = FanOut::default();
        for receiver in receivers {
            report.add(receiver.deliver(delivery.clone(), metrics));
        }
        report
    }

    /// (channel, subscriber count), sorted by name.
    pub fn channel_list(&self) -> Vec<(String, usize)> {
        let mut list: Vec<_> = read(&self.channels)
            .iter()
            .map(|(name, subs)| (name.clone(), subs.len()))
            .collect();
        list.sort();
        list
    }

    pub fn gauges(&self) -> HubGauges {
        let channels = read(&self.channels);
        HubGauges {
            channels: channels.len(),
            subscriptions: channels.values().map(Vec::len).sum(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
