//! Which session lives on which instance.
//!
//! - `wstrace:session:<id>`: the session's [`SessionView`] as JSON, with a
//!   TTL. Set with `NX` when the session opens, renewed by every heartbeat
//!   (unconditionally, so a Redis that lost its data is refilled), deleted
//!   when the session closes. An instance that dies stops renewing: its
//!   sessions vanish within one TTL.
//! - `wstrace:user:<user>`: a set of the user's session ids, same TTL,
//!   for direct messages to a user. Members whose session key is gone are
//!   pruned on read.
//! - `wstrace:instance:<id>`: the instance's stats, renewed by its upkeep
//!   task, for `GET /api/stats`.

use redis::AsyncCommands;
use serde_json::Value;
use std::collections::HashSet;
use uuid::Uuid;

use super::link::{self, Commands};
use super::{Cluster, ClusterError, PREFIX};
use crate::routing::SessionView;

/// Keys per `MGET`, and per `SCAN` step.
const BATCH: usize = 500;

fn session_key(id: &str) -> String {
    format!("{PREFIX}:session:{id}")
}

fn user_key(user: &str) -> String {
    format!("{PREFIX}:user:{user}")
}

fn instance_key(id: &str) -> String {
    format!("{PREFIX}:instance:{id}")
}

impl Cluster {
    fn ttl_secs(&self) -> u64 {
        self.session_ttl.as_secs().max(1)
    }

    fn count_failure<T>(&self, result: Result<T, ClusterError>) -> Result<T, ClusterError> {
        if result.is_err() {
            self.counters
                .registry_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Writes a session's entry; `first` sets it only if absent (a session
    /// id is registered once).
    pub async fn register(&self, view: &SessionView, first: bool) -> Result<(), ClusterError> {
        let ttl = self.ttl_secs();
        let json = serde_json::to_string(view).unwrap_or_default();
        let mut set = redis::cmd("SET");
        set.arg(session_key(&view.session_id)).arg(json);
        if first {
            set.arg("NX");
        }
        set.arg("EX").arg(ttl);
        let mut pipe = redis::pipe();
        pipe.add_command(set).ignore();
        if let Some(user) = &view.user {
            let key = user_key(user);
            pipe.sadd(&key, &view.session_id)
                .ignore()
                .expire(&key, ttl as i64)
                .ignore();
        }
        let result = self.run_all(pipe).await;
        self.count_failure(result)
    }

    pub async fn unregister(&self, id: Uuid, user: Option<&str>) -> Result<(), ClusterError> {
        let id = id.to_string();
        let mut pipe = redis::pipe();
        pipe.del(session_key(&id)).ignore();
        if let Some(user) = user {
            pipe.srem(user_key(user), &id).ignore();
        }
        let result = self.run_all(pipe).await;
        self.count_failure(result)
    }

    /// Runs every command of `pipe`: as one pipeline on one node; on a
    /// cluster, each on its own (its keys hash to different slots), all at
    /// once.
    async fn run_all(&self, pipe: redis::Pipeline) -> Result<(), ClusterError> {
        let mut connection = self.connection();
        if !self.is_sharded() {
            return self.call(pipe.query_async::<()>(&mut connection)).await;
        }
        let each = pipe.cmd_iter().map(|command| {
            let mut connection = connection.clone();
            async move {
                let sent = command.query_async::<redis::Value>(&mut connection);
                self.call(sent).await
            }
        });
        futures_util::future::join_all(each)
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    pub async fn lookup(&self, id: Uuid) -> Result<Option<SessionView>, ClusterError> {
        let mut connection = self.connection();
        let result = self
            .call(connection.get::<_, Option<String>>(session_key(&id.to_string())))
            .await;
        Ok(self
            .count_failure(result)?
            .and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// Every live session of `user`, on any instance.
    pub async fn sessions_of_user(&self, user: &str) -> Result<Vec<SessionView>, ClusterError> {
        let mut connection = self.connection();
        let key = user_key(user);
        let result = self.call(connection.smembers::<_, Vec<String>>(&key)).await;
        let ids = self.count_failure(result)?;
        let views = self.views(&ids).await?;
        let live: HashSet<&str> = views.iter().map(|v| v.session_id.as_str()).collect();
        let stale: Vec<&String> = ids
            .iter()
            .filter(|id| !live.contains(id.as_str()))
            .collect();
        if !stale.is_empty() {
            // Sessions of a dead instance: their keys expired, the set
            // still names them.
            let result = self.call(connection.srem::<_, _, ()>(&key, stale)).await;
            let _ = self.count_failure(result);
        }
        Ok(views)
    }

    /// Every session in the cluster, ordered by id.
    pub async fn all_sessions(&self) -> Result<Vec<SessionView>, ClusterError> {
        let ids: Vec<String> = self
            .scan(&format!("{PREFIX}:session:*"))
            .await?
            .into_iter()
            .filter_map(|key| key.rsplit(':').next().map(str::to_string))
            .collect();
        let mut views = self.views(&ids).await?;
        views.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        Ok(views)
    }

    async fn views(&self, ids: &[String]) -> Result<Vec<SessionView>, ClusterError> {
        let keys: Vec<String> = ids.iter().map(|id| session_key(id)).collect();
        self.read_json(&keys).await
    }

    /// The JSON values of `keys` that exist and parse, in key order.
    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        keys: &[String],
    ) -> Result<Vec<T>, ClusterError> {
        let mut values = Vec::with_capacity(keys.len());
        let mut connection = self.connection();
        for chunk in keys.chunks(BATCH) {
            let result = self
                .call(
                    redis::cmd("MGET")
                        .arg(chunk)
                        .query_async::<Vec<Option<String>>>(&mut connection),
                )
                .await;
            values.extend(
                self.count_failure(result)?
                    .into_iter()
                    .flatten()
                    .filter_map(|json| serde_json::from_str(&json).ok()),
            );
        }
        Ok(values)
    }

    /// The keys matching `pattern`: on a cluster, from every primary (a
    /// `SCAN` sees only the node it runs on).
    async fn scan(&self, pattern: &str) -> Result<Vec<String>, ClusterError> {
        let mut connection = self.connection();
        let nodes = match &mut connection {
            Commands::Node(_) => vec![None],
            Commands::Cluster(cluster) => {
                let result = self.call(link::primaries(cluster)).await;
                self.count_failure(result)?.into_iter().map(Some).collect()
            }
        };
        let mut keys = Vec::new();
        for node in &nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(BATCH);
                let step = link::on_node(&mut connection, scan, node.as_ref());
                let result = self.call(step).await;
                let (next, batch): (u64, Vec<String>) = self.count_failure(result)?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // SCAN may return a key twice.
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// This instance's stats, for the cluster view of `/api/stats`, with
    /// the time they were taken (`as_of`).
    pub async fn publish_stats(&self, stats: &Value) -> Result<(), ClusterError> {
        let stats = stamped(stats.clone());
        let mut connection = self.connection();
        let result = self
            .call(connection.set_ex::<_, _, ()>(
                instance_key(&self.instance_id),
                stats.to_string(),
                self.ttl_secs(),
            ))
            .await;
        self.count_failure(result)
    }

    pub async fn forget_instance(&self) -> Result<(), ClusterError> {
        let mut connection = self.connection();
        let result = self
            .call(connection.del::<_, ()>(instance_key(&self.instance_id)))
            .await;
        self.count_failure(result)
    }

    /// The stats of every live instance, ordered by instance id, each with
    /// `as_of` and its age now (`age_ms`).
    pub async fn instance_stats(&self) -> Result<Vec<Value>, ClusterError> {
        let keys = self.scan(&format!("{PREFIX}:instance:*")).await?;
        let mut stats: Vec<Value> = self.read_json(&keys).await?;
        let now = unix_ms();
        for entry in &mut stats {
            if let Some(at) = entry["as_of_unix_ms"].as_u64() {
                entry["age_ms"] = now.saturating_sub(at).into();
            }
        }
        Ok(stats)
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Stats with the time they were taken.
pub fn stamped(mut stats: Value) -> Value {
    let now = std::time::SystemTime::now();
    stats["as_of"] = humantime::format_rfc3339_millis(now).to_string().into();
    stats["as_of_unix_ms"] = unix_ms().into();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced() {
        assert_eq!(session_key("s1"), "wstrace:session:s1");
        assert_eq!(user_key("alice"), "wstrace:user:alice");
        assert_eq!(instance_key("a-1"), "wstrace:instance:a-1");
    }
}
