//! The receiving side on a Redis Cluster: sharded pub/sub.
//!
//! The cluster connection carries the subscriptions (`SSUBSCRIBE`, one
//! channel per command: channels hash to different shards) and delivers
//! what they hear as pushes. A shard that goes away takes its channels
//! with it and nothing else: the crate reconnects it and subscribes it
//! again when it returns, and until then subscribing or publishing to its
//! channels fails (`cluster_unavailable`) while every other channel works.
//! A join that failed is retried every [`RETRY_EVERY`]; the interest set
//! only ever holds what a shard confirmed.

use redis::{PushKind, Value};
use std::sync::Arc;
use std::time::Duration;

use super::interest::{self, Difference};
use super::link::Commands;
use super::{Cluster, ClusterContext, ClusterError};
use crate::events::{InternalEvent, RedisShardLost};

/// How often joins that a shard refused are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Subscriptions sent at once during a sync.
const IN_FLIGHT: usize = 64;

/// Subscribes one sharded channel (on the shard that owns its slot).
pub async fn subscribe(cluster: &Cluster, channel: &str) -> Result<(), ClusterError> {
    let Commands::Cluster(mut connection) = cluster.connection() else {
        return Err(ClusterError::Command("sharded pub/sub on one node".into()));
    };
    cluster.call(connection.ssubscribe(channel)).await
}

async fn unsubscribe(cluster: &Cluster, channel: &str) -> Result<(), ClusterError> {
    let Commands::Cluster(mut connection) = cluster.connection() else {
        return Err(ClusterError::Command("sharded pub/sub on one node".into()));
    };
    cluster.call(connection.sunsubscribe(channel)).await
}

pub async fn run(
    context: Arc<ClusterContext>,
    cluster: Arc<Cluster>,
    mut pushes: tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>,
) {
    let mut retry = tokio::time::interval(RETRY_EVERY);
    loop {
        tokio::select! {
            _ = cluster.interest.sync_due() => sync_interest(&context, &cluster).await,
            _ = retry.tick() => sync_interest(&context, &cluster).await,
            push = pushes.recv() => match push {
                Some(push) => {
                    on_push(&context, &cluster, push);
                    // A burst must not starve the writers that drain it.
                    tokio::task::yield_now().await;
                }
                None => return,
            },
            _ = context.shutdown.cancelled() => return,
        }
    }
}

fn on_push(context: &Arc<ClusterContext>, cluster: &Arc<Cluster>, push: redis::PushInfo) {
    match push.kind {
        PushKind::SMessage => {
            if let Some(Value::BulkString(payload)) = push.data.get(1) {
                super::bus::deliver(context, cluster, payload);
            }
        }
        PushKind::Disconnection => {
            RedisShardLost {
                redis: cluster.redis_url(),
            }
            .emit();
        }
        _ => {}
    }
}

/// Subscribes the channels that gained their first subscriber here and
/// unsubscribes those that lost their last; confirms what succeeded.
async fn sync_interest(context: &ClusterContext, cluster: &Cluster) {
    let difference = cluster
        .interest
        .difference(&context.router.hub().channel_names());
    if difference.join.is_empty() && difference.leave.is_empty() {
        return;
    }
    let join = succeeded(cluster, &difference.join, true).await;
    let leave = succeeded(cluster, &difference.leave, false).await;
    let failed = difference.join.len() - join.len();
    if failed > 0 {
        tracing::debug!(
            failed,
            retry_in_ms = RETRY_EVERY.as_millis() as u64,
            "some channel subscriptions got no answer from their shard"
        );
    }
    cluster.interest.confirm(&Difference { join, leave });
}

/// The channels whose subscription (`join`) or unsubscription
/// succeeded, a few at a time.
async fn succeeded(cluster: &Cluster, channels: &[String], join: bool) -> Vec<String> {
    let mut done = Vec::with_capacity(channels.len());
    for chunk in channels.chunks(IN_FLIGHT) {
        let results = futures_util::future::join_all(chunk.iter().map(|name| async move {
            let channel = interest::redis_channel(name);
            if join {
                subscribe(cluster, &channel).await
            } else {
                unsubscribe(cluster, &channel).await
            }
        }))
        .await;
        for (name, result) in chunk.iter().zip(results) {
            if result.is_ok() {
                done.push(name.clone());
            }
        }
    }
    done
}
