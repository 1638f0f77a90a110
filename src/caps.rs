//! Sessions per client address and per user: one client (or one leaked
//! token) cannot take every connection slot.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// Open sessions by key, each capped.
#[derive(Debug)]
pub struct Counter<K: Eq + Hash + Clone> {
    open: Mutex<HashMap<K, usize>>,
    limit: usize,
}

/// One open session's place in a [`Counter`]; given back on drop.
#[derive(Debug)]
pub struct Slot<K: Eq + Hash + Clone> {
    counter: Arc<Counter<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    /// `limit` 0: no cap.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            open: Mutex::new(HashMap::new()),
            limit,
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for one more session of `key`, or `None` at the cap.
    pub fn try_take(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let mut open = lock(&self.open);
        let count = open.entry(key.clone()).or_default();
        if self.limit > 0 && *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            counter: self.clone(),
            key,
        })
    }

    pub fn open(&self, key: &K) -> usize {
        lock(&self.open).get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = lock(&self.counter.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The caps a server applies: to TCP connections at accept, to sessions
/// at the upgrade.
#[derive(Debug)]
pub struct SessionCaps {
    pub per_ip: Arc<Counter<IpAddr>>,
    pub per_user: Arc<Counter<String>>,
    /// Connections of any kind (plain HTTP, slow readers, sessions) from
    /// one peer address that is not a trusted proxy: the same limit as
    /// its sessions, so idle or never-reading HTTP connections cannot take
    /// every file descriptor either.
    pub connections_per_ip: Arc<Counter<IpAddr>>,
}

impl SessionCaps {
    pub fn new(per_ip: usize, per_user: usize) -> Self {
        Self {
            per_ip: Counter::new(per_ip),
            per_user: Counter::new(per_user),
            connections_per_ip: Counter::new(per_ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let counter = Counter::new(2);
        let a = counter.try_take("x").unwrap();
        let _b = counter.try_take("x").unwrap();
        assert!(counter.try_take("x").is_none());
        assert!(counter.try_take("y").is_some());
        drop(a);
        assert_eq!(counter.open(&"x"), 1);
        assert!(counter.try_take("x").is_some());
        let unlimited = Counter::new(0);
        let slots: Vec<_> = (0..100).filter_map(|_| unlimited.try_take(1)).collect();
        assert_eq!(slots.len(), 100);
    }
}
