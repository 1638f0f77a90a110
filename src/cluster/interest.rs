//! Interest-based routing: an instance hears a channel's publishes only
//! while a session here subscribes to it.
//!
//! Each channel has a Redis channel of its own ([`redis_channel`]). The hub
//! is the truth about which channels have subscribers here; the bus task
//! keeps the pub/sub connection's subscriptions equal to it: it is told
//! when they may differ ([`Interest::changed`]), compares, and subscribes
//! or unsubscribes the difference. Level-triggered, so any number of
//! joins and leaves between two syncs cost one comparison, and a lost
//! connection is repaired by the same comparison against an empty set.
//!
//! A session's `subscribe` is answered once Redis has confirmed the
//! channel ([`Interest::wait_for`]), so a publish made on another instance
//! after the client saw `subscribed` reaches it.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{Notify, watch};

use super::{ClusterError, PREFIX};
use crate::sync::lock;

/// The Redis channel that carries `channel`'s publishes between instances.
pub fn redis_channel(channel: &str) -> String {
    format!("{PREFIX}:ch:{channel}")
}

/// The channel's name, from its Redis channel's.
pub fn channel_of(redis_channel: &str) -> Option<&str> {
    redis_channel.strip_prefix(PREFIX)?.strip_prefix(":ch:")
}

/// This instance's channel subscriptions in Redis.
#[derive(Debug)]
pub struct Interest {
    /// Channels whose subscription the current pub/sub connection has
    /// confirmed.
    confirmed: Mutex<HashSet<String>>,
    /// Bumped after every sync and every loss, for waiting listeners.
    synced: watch::Sender<u64>,
    /// The hub's channels may differ from `confirmed`.
    changed: Notify,
}

impl Default for Interest {
    fn default() -> Self {
        Self {
            confirmed: Mutex::default(),
            synced: watch::Sender::new(0),
            changed: Notify::new(),
        }
    }
}

/// What one sync does.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Difference {
    pub join: Vec<String>,
    pub leave: Vec<String>,
}

impl Interest {
    /// Asks the bus task to sync (stored if it is busy: never lost).
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Resolves when a sync is due.
    pub async fn sync_due(&self) {
        self.changed.notified().await;
    }

    /// The subscriptions that would make Redis's equal `wanted`.
    pub fn difference(&self, wanted: &HashSet<String>) -> Difference {
        let confirmed = lock(&self.confirmed);
        let mut join: Vec<String> = wanted.difference(&confirmed).cloned().collect();
        let mut leave: Vec<String> = confirmed.difference(wanted).cloned().collect();
        join.sort();
        leave.sort();
        Difference { join, leave }
    }

    /// Redis confirmed `difference`.
    pub fn confirm(&self, difference: &Difference) {
        let mut confirmed = lock(&self.confirmed);
        for channel in &difference.leave {
            confirmed.remove(channel);
        }
        confirmed.extend(difference.join.iter().cloned());
        drop(confirmed);
        self.synced.send_modify(|n| *n += 1);
    }

    /// The pub/sub connection is gone, and its subscriptions with it.
    pub fn lost(&self) {
        lock(&self.confirmed).clear();
        self.synced.send_modify(|n| *n += 1);
    }

    pub fn is_confirmed(&self, channel: &str) -> bool {
        lock(&self.confirmed).contains(channel)
    }

    pub fn confirmed_count(&self) -> usize {
        lock(&self.confirmed).len()
    }

    /// Waits until `channel` is confirmed, for at most `timeout`, or until
    /// `up` says Redis is gone.
    pub async fn wait_for(
        &self,
        channel: &str,
        timeout: Duration,
        up: impl Fn() -> bool,
    ) -> Result<(), ClusterError> {
        let mut synced = self.synced.subscribe();
        self.changed();
        let wait = async {
            loop {
                if self.is_confirmed(channel) {
                    return Ok(());
                }
                if !up() {
                    return Err(ClusterError::Down);
                }
                if synced.changed().await.is_err() {
                    return Err(ClusterError::Down);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(ClusterError::Timeout(timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_channel_maps_to_a_redis_channel_and_back() {
        assert_eq!(redis_channel("news"), "wstrace:ch:news");
        assert_eq!(channel_of("wstrace:ch:news"), Some("news"));
        assert_eq!(channel_of("wstrace:bus"), None);
    }

    #[test]
    fn a_sync_joins_what_is_new_and_leaves_what_is_gone() {
        let interest = Interest::default();
        let first = interest.difference(&set(&["a", "b"]));
        assert_eq!(first.join, ["a", "b"]);
        assert!(first.leave.is_empty());
        interest.confirm(&first);
        let second = interest.difference(&set(&["b", "c"]));
        assert_eq!(
            second,
            Difference {
                join: vec!["c".into()],
                leave: vec!["a".into()]
            }
        );
        interest.confirm(&second);
        assert!(interest.is_confirmed("c") && !interest.is_confirmed("a"));
        interest.lost();
        assert_eq!(interest.difference(&set(&["b", "c"])).join, ["b", "c"]);
    }

    #[tokio::test]
    async fn a_listener_returns_on_confirmation_and_fails_when_redis_is_down() {
        let interest = std::sync::Arc::new(Interest::default());
        let waiter = {
            let interest = interest.clone();
            tokio::spawn(async move {
                interest
                    .wait_for("a", Duration::from_secs(5), || true)
                    .await
            })
        };
        interest.sync_due().await;
        interest.confirm(&interest.difference(&set(&["a"])));
        assert!(waiter.await.unwrap().is_ok());
        let down = interest
            .wait_for("b", Duration::from_secs(5), || false)
            .await;
        assert!(matches!(down, Err(ClusterError::Down)));
        let slow = interest
            .wait_for("b", Duration::from_millis(20), || true)
            .await;
        assert!(matches!(slow, Err(ClusterError::Timeout(_))));
    }
}
