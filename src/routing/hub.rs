//! Who is connected and who listens where: the sessions of this instance,
//! the user index and the channels.
//!
//! Fan-out never waits: a delivery goes into the receiver's bounded
//! outbound queue without blocking (see [`Recipient::deliver`]). A receiver
//! whose queue is full is too slow to keep up; it is closed with 1013, and
//! the drop is counted and logged in its own session, so a slow subscriber
//! can never block a publisher and no message disappears without a trace.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use uuid::Uuid;

use super::{Delivery, DeliveryError, Recipient, SessionView, SharedRecipient};
use crate::metrics::{HubGauges, Metrics};
use crate::sync::{lock, read, write};

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
    TooMany {
        limit: usize,
    },
    /// The session has already left the hub (it is closing).
    NotConnected,
}

#[derive(Debug)]
struct Member {
    recipient: SharedRecipient,
    channels: Mutex<BTreeSet<String>>,
}

/// The sessions connected to this instance, by id, by user and by channel.
#[derive(Debug, Default)]
pub struct Hub {
    sessions: RwLock<HashMap<Uuid, Arc<Member>>>,
    users: RwLock<HashMap<String, Vec<Uuid>>>,
    /// A channel exists while it has subscribers.
    channels: RwLock<HashMap<String, Vec<SharedRecipient>>>,
}

impl Hub {
    pub fn register(&self, session: SharedRecipient) {
        let id = session.id();
        if let Some(user) = session.user() {
            write(&self.users)
                .entry(user.to_owned())
                .or_default()
                .push(id);
        }
        let member = Arc::new(Member {
            recipient: session,
            channels: Mutex::new(BTreeSet::new()),
        });
        write(&self.sessions).insert(id, member);
    }

    /// Forgets a session and its subscriptions; channels left empty go.
    pub fn remove(&self, id: Uuid) {
        let Some(member) = write(&self.sessions).remove(&id) else {
            return;
        };
        let channels = std::mem::take(&mut *lock(&member.channels));
        for channel in channels {
            self.leave_channel(id, &channel);
        }
        if let Some(user) = member.recipient.user() {
            let mut users = write(&self.users);
            if let Some(ids) = users.get_mut(user) {
                ids.retain(|s| *s != id);
                if ids.is_empty() {
                    users.remove(user);
                }
            }
        }
    }

    pub fn get(&self, id: Uuid) -> Option<SharedRecipient> {
        read(&self.sessions).get(&id).map(|m| m.recipient.clone())
    }

    /// Every session, ordered by id.
    pub fn sessions(&self) -> Vec<SharedRecipient> {
        let mut all: Vec<_> = read(&self.sessions)
            .values()
            .map(|m| m.recipient.clone())
            .collect();
        all.sort_by_key(|s| s.id());
        all
    }

    pub fn sessions_of_user(&self, user: &str) -> Vec<SharedRecipient> {
        let ids = read(&self.users).get(user).cloned().unwrap_or_default();
        let sessions = read(&self.sessions);
        ids.iter()
            .filter_map(|id| sessions.get(id).map(|m| m.recipient.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        read(&self.sessions).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The channels a session is subscribed to, sorted.
    pub fn channels_of(&self, id: Uuid) -> Vec<String> {
        let member = read(&self.sessions).get(&id).cloned();
        member.map_or_else(Vec::new, |m| lock(&m.channels).iter().cloned().collect())
    }

    /// The session's view, with its channels.
    pub fn view(&self, session: &dyn Recipient, instance_id: &str) -> SessionView {
        let mut view = session.view(instance_id);
        view.channels = self.channels_of(session.id());
        view
    }

    /// Returns false if the session was already subscribed.
    pub fn subscribe(&self, id: Uuid, channel: &str, limit: usize) -> Result<bool, SubscribeError> {
        let member = read(&self.sessions)
            .get(&id)
            .cloned()
            .ok_or(SubscribeError::NotConnected)?;
        {
            let mut mine = lock(&member.channels);
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
            .push(member.recipient.clone());
        Ok(true)
    }

    /// Returns false if the session was not subscribed.
    pub fn unsubscribe(&self, id: Uuid, channel: &str) -> bool {
        let Some(member) = read(&self.sessions).get(&id).cloned() else {
            return false;
        };
        if !lock(&member.channels).remove(channel) {
            return false;
        }
        self.leave_channel(id, channel);
        true
    }

    fn leave_channel(&self, id: Uuid, channel: &str) {
        let mut channels = write(&self.channels);
        if let Some(subscribers) = channels.get_mut(channel) {
            subscribers.retain(|s| s.id() != id);
            if subscribers.is_empty() {
                channels.remove(channel);
            }
        }
    }

    pub fn subscribers(&self, channel: &str) -> Vec<SharedRecipient> {
        read(&self.channels)
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// Queues `delivery` for each receiver, never waiting.
    pub fn fan_out(
        &self,
        receivers: &[SharedRecipient],
        delivery: &Arc<Delivery>,
        metrics: &Metrics,
    ) -> FanOut {
        let mut report = FanOut::default();
        for receiver in receivers {
            report.add(receiver.deliver(delivery.clone(), metrics));
        }
        report
    }

    /// The channels with at least one subscriber here.
    pub fn channel_names(&self) -> std::collections::HashSet<String> {
        read(&self.channels).keys().cloned().collect()
    }

    pub fn has_channel(&self, channel: &str) -> bool {
        read(&self.channels).contains_key(channel)
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
