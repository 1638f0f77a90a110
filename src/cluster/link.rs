//! The two kinds of Redis an instance can use: one node, or a Redis
//! Cluster (`redis+cluster://host1:port1,host2:port2,...`, or
//! `rediss+cluster://` for TLS to every node).
//!
//! On one node, channel traffic is classic pub/sub (`PUBLISH`/`SUBSCRIBE`
//! on a pub/sub connection of its own). On a Redis Cluster it is sharded
//! pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis ≥ 7): each channel lives on the
//! shard that owns its slot, so the broker grows with shards, and a shard
//! that is down takes only its own channels with it. The `redis` crate's
//! cluster client routes each command to its slot's shard, follows
//! `MOVED`/`ASK`, reconnects a lost shard and subscribes it again.
//!
//! What differs between the two is kept here: [`Commands`] is either
//! connection behind one [`ConnectionLike`], and the helpers below do on a
//! cluster what one pipeline or one `SCAN` does on a node (a pipeline
//! may not cross slots; a `SCAN` sees one shard).

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, RedisResult, Value};
use std::collections::HashMap;
use std::time::Duration;

/// The scheme that names a Redis Cluster by its seed nodes.
pub const CLUSTER_SCHEME: &str = "redis+cluster://";
/// The same over TLS: every node, seed or discovered, is reached with
/// `rediss://` (certificates checked against the system's trusted roots,
/// or `SSL_CERT_FILE`).
pub const TLS_CLUSTER_SCHEME: &str = "rediss+cluster://";

/// Where `--redis-url` points.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// One Redis node: the URL as given.
    Node(String),
    /// A Redis Cluster: one `redis://` (or `rediss://`) URL per seed
    /// node, each with the credentials given once for all.
    Cluster(Vec<String>),
}

impl Target {
    /// Reads `redis+cluster://[user:pass@]h1:p1,h2:p2` (or
    /// `rediss+cluster://`) as a cluster and anything else as one node.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            ("redis", rest)
        } else if let Some(rest) = url.strip_prefix(TLS_CLUSTER_SCHEME) {
            ("rediss", rest)
        } else {
            return Ok(Self::Node(url.to_string()));
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, hosts) = match rest.rsplit_once('@') {
            Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
            None => (String::new(), rest),
        };
        let nodes: Vec<String> = hosts
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .map(|host| format!("{scheme}://{credentials}{host}"))
            .collect();
        if nodes.is_empty() {
            return Err(format!(
                "{CLUSTER_SCHEME} needs at least one seed node, e.g. {CLUSTER_SCHEME}10.0.0.1:6379,10.0.0.2:6379"
            ));
        }
        Ok(Self::Cluster(nodes))
    }
}

/// Connects to a Redis Cluster over RESP3 (sharded pub/sub arrives as
/// pushes), with the pushes' receiving end.
pub async fn connect_cluster(
    nodes: &[String],
    timeout: Duration,
) -> RedisResult<(
    ClusterConnection,
    tokio::sync::mpsc::UnboundedReceiver<PushInfo>,
)> {
    let (pushes, received) = tokio::sync::mpsc::unbounded_channel();
    let client = redis::cluster::ClusterClientBuilder::new(nodes.iter().map(String::as_str))
        .use_protocol(redis::ProtocolVersion::RESP3)
        .push_sender(pushes)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        // A shard that is down fails its commands quickly; the caller
        // reports it, and the crate reconnects in the background.
        .retries(2)
        .min_retry_wait(50)
        .max_retry_wait(500)
        .build()?;
    Ok((client.get_async_connection().await?, received))
}

/// The command connection: to one node, or to the whole cluster.
#[derive(Clone)]
pub enum Commands {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The indices of `channels` grouped by hash slot, in order within each
/// group: one pipeline per slot is what a cluster accepts.
pub fn by_slot<'a>(channels: impl IntoIterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut groups: HashMap<Slot, Vec<usize>> = HashMap::new();
    let mut order = Vec::new();
    for (i, channel) in channels.into_iter().enumerate() {
        let slot = Slot::for_key(channel);
        groups
            .entry(slot)
            .or_insert_with(|| {
                order.push(slot);
                Vec::new()
            })
            .push(i);
    }
    order
        .into_iter()
        .filter_map(|slot| groups.remove(&slot))
        .collect()
}

/// The address of every primary, from `CLUSTER SLOTS`: a `SCAN` must be
/// run on each.
pub async fn primaries(connection: &mut ClusterConnection) -> RedisResult<Vec<(String, u16)>> {
    let slots: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(connection)
        .await?;
    let mut found = Vec::new();
    if let Value::Array(ranges) = slots {
        for range in ranges {
            // [start, end, [host, port, id, ...], replicas...]
            let Value::Array(fields) = range else {
                continue;
            };
            let Some(Value::Array(primary)) = fields.get(2) else {
                continue;
            };
            let host = primary
                .first()
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
            let port = primary
                .get(1)
                .and_then(|v| redis::from_redis_value::<u16>(v.clone()).ok());
            if let (Some(host), Some(port)) = (host, port)
                && !found.contains(&(host.clone(), port))
            {
                found.push((host, port));
            }
        }
    }
    Ok(found)
}

/// One command: on a cluster, to the node at `host:port`; on one node,
/// to it.
pub async fn on_node<T: redis::FromRedisValue>(
    connection: &mut Commands,
    command: Cmd,
    node: Option<&(String, u16)>,
) -> RedisResult<T> {
    match (connection, node) {
        (Commands::Cluster(connection), Some((host, port))) => {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            });
            let value = connection.route_command(command, routing).await?;
            Ok(redis::from_redis_value(value)?)
        }
        (connection, _) => command.query_async(connection).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_url_names_every_seed_node_with_the_credentials() {
        assert_eq!(
            Target::parse("redis+cluster://u:p%40w@10.0.0.1:7000,10.0.0.2:7001/"),
            Ok(Target::Cluster(vec![
                "redis://u:p%40w@10.0.0.1:7000".into(),
                "redis://u:p%40w@10.0.0.2:7001".into()
            ]))
        );
        assert_eq!(
            Target::parse("redis://localhost:6379"),
            Ok(Target::Node("redis://localhost:6379".into()))
        );
        assert_eq!(
            Target::parse("rediss+cluster://redis.example:6380"),
            Ok(Target::Cluster(vec!["rediss://redis.example:6380".into()]))
        );
        assert!(Target::parse("redis+cluster://").is_err());
    }

    #[test]
    fn channels_are_grouped_by_slot_in_order() {
        // `{a}x` and `{a}y` share a slot (the hash tag), `b` has its own.
        let groups = by_slot(["{a}x", "b", "{a}y"]);
        assert_eq!(groups, vec![vec![0, 2], vec![1]]);
    }
}
