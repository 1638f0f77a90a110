//! Cluster mode: Redis, envelopes, cross-instance deliveries.

use super::target::*;
use super::*;

/// Cluster mode is on and Redis answered.
#[derive(Debug)]
pub struct RedisConnected<'a> {
    pub redis: &'a str,
    pub session_ttl_ms: u64,
    /// Envelopes are signed (`--cluster-secret`); unsigned, a warning.
    pub envelopes_signed: bool,
}

impl RedisConnected<'_> {
    pub const MESSAGE: &'static str = "cluster mode: connected to Redis";
    pub const UNSIGNED_MESSAGE: &'static str = "cluster mode without --cluster-secret: \
         anyone who can PUBLISH to this Redis can deliver frames to any session or kick it";
}

impl InternalEvent for RedisConnected<'_> {
    fn emit(self) {
        if !self.envelopes_signed {
            tracing::warn!(target: CLUSTER, message = Self::UNSIGNED_MESSAGE, redis = self.redis);
        }
        tracing::info!(
            target: CLUSTER,
            message = Self::MESSAGE,
            redis = self.redis,
            session_ttl_ms = self.session_ttl_ms,
            envelopes_signed = self.envelopes_signed
        );
    }
}

/// The pub/sub connection to Redis is gone.
#[derive(Debug)]
pub struct RedisLost<'a> {
    pub redis: &'a str,
    pub cause: &'static str,
}

impl RedisLost<'_> {
    pub const MESSAGE: &'static str = "lost the connection to Redis: sessions here are served \
         as before; cross-instance delivery fails until it returns (retrying with backoff)";
}

impl InternalEvent for RedisLost<'_> {
    fn emit(self) {
        tracing::warn!(
            target: CLUSTER,
            message = Self::MESSAGE,
            redis = self.redis,
            cause = self.cause
        );
    }
}

/// On a Redis Cluster, the connection to one shard is gone (the crate
/// reconnects it and subscribes it again by itself).
#[derive(Debug)]
pub struct RedisShardLost<'a> {
    pub redis: &'a str,
}

impl RedisShardLost<'_> {
    pub const MESSAGE: &'static str = "lost the connection to one Redis Cluster shard: its \
         channels fail (cluster_unavailable) until it returns; every other channel works \
         (reconnecting in the background)";
}

impl InternalEvent for RedisShardLost<'_> {
    fn emit(self) {
        tracing::warn!(target: CLUSTER, message = Self::MESSAGE, redis = self.redis);
    }
}

/// Redis is back; this instance's sessions are in the registry again.
#[derive(Debug)]
pub struct RedisReconnected<'a> {
    pub redis: &'a str,
    pub down_ms: u64,
    pub sessions_reregistered: usize,
}

impl RedisReconnected<'_> {
    pub const MESSAGE: &'static str = "reconnected to Redis: cross-instance delivery resumed";
}

impl InternalEvent for RedisReconnected<'_> {
    fn emit(self) {
        tracing::info!(
            target: CLUSTER,
            message = Self::MESSAGE,
            redis = self.redis,
            down_ms = self.down_ms,
            sessions_reregistered = self.sessions_reregistered
        );
    }
}

/// Cross-instance publishes or registry calls failed during the last
/// interval (one line per interval, with counts).
#[derive(Debug)]
pub struct ClusterDeliveryFailing<'a> {
    pub redis: &'a str,
    pub redis_up: bool,
    pub publish_failures: u64,
    pub registry_failures: u64,
    pub publish_failures_total: u64,
    pub interval_ms: u64,
}

impl ClusterDeliveryFailing<'_> {
    pub const MESSAGE: &'static str =
        "cross-instance delivery failing: messages reached this instance's sessions only";
}

impl InternalEvent for ClusterDeliveryFailing<'_> {
    fn emit(self) {
        tracing::warn!(
            target: CLUSTER,
            message = Self::MESSAGE,
            redis = self.redis,
            redis_up = self.redis_up,
            publish_failures = self.publish_failures,
            registry_failures = self.registry_failures,
            publish_failures_total = self.publish_failures_total,
            interval_ms = self.interval_ms
        );
    }
}

/// An envelope from Redis that does not decode; counted in
/// `wstrace_cluster_malformed_total` by the cluster's counters.
pub struct ClusterEnvelopeDropped<'a> {
    pub error: &'a dyn Display,
    pub bytes: usize,
}

impl ClusterEnvelopeDropped<'_> {
    pub const MESSAGE: &'static str = "dropped a cluster envelope";
}

impl InternalEvent for ClusterEnvelopeDropped<'_> {
    fn emit(self) {
        tracing::warn!(
            target: CLUSTER,
            message = Self::MESSAGE,
            error = %self.error,
            bytes = self.bytes
        );
    }
}

/// A sampled message from another instance, handed to the sessions here
/// (inside the `redis.deliver` span).
#[derive(Debug)]
pub struct ClusterMessageDelivered<'a> {
    pub message_id: &'a str,
    pub delivered: usize,
    pub dropped: usize,
    pub link: &'a opentelemetry::trace::SpanContext,
}

impl ClusterMessageDelivered<'_> {
    pub const MESSAGE: &'static str = "cluster message delivered on this instance";
}

impl InternalEvent for ClusterMessageDelivered<'_> {
    fn emit(self) {
        tracing::info!(
            target: CLUSTER,
            message = Self::MESSAGE,
            ws.message.id = %self.message_id,
            delivered = self.delivered,
            dropped = self.dropped,
            link.trace_id = %self.link.trace_id(),
            link.span_id = %self.link.span_id()
        );
    }
}

/// Another instance asked this one to act on a session (close it, switch
/// its debug mode) that has left since the registry named this instance.
#[derive(Debug)]
pub struct RemoteActionForGoneSession {
    pub session_id: uuid::Uuid,
    /// `kick` or `debug`.
    pub action: &'static str,
}

impl RemoteActionForGoneSession {
    pub const KICK_MESSAGE: &'static str = "kick for a session that is no longer here";
    pub const DEBUG_MESSAGE: &'static str = "debug switch for a session that is no longer here";
}

impl InternalEvent for RemoteActionForGoneSession {
    fn emit(self) {
        let message = match self.action {
            "kick" => Self::KICK_MESSAGE,
            _ => Self::DEBUG_MESSAGE,
        };
        tracing::info!(target: CLUSTER, session_id = %self.session_id, message);
    }
}

/// A debug switch from another instance that this one's cap refused; the
/// requester was answered already, so it is told here and counted.
pub struct RemoteDebugRefused<'a> {
    pub session_id: uuid::Uuid,
    pub error: &'a dyn Display,
    pub metrics: &'a Metrics,
}

impl RemoteDebugRefused<'_> {
    pub const MESSAGE: &'static str = "debug switch from another instance refused";
}

impl InternalEvent for RemoteDebugRefused<'_> {
    fn emit(self) {
        self.metrics
            .debug_refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            target: CLUSTER,
            session_id = %self.session_id,
            error = %self.error,
            message = Self::MESSAGE
        );
    }
}
