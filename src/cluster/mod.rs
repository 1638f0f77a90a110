//! Cluster mode (`--redis-url`): several instances behind one load
//! balancer, and still one searchable story per session.
//!
//! - [`envelope`]: what one instance tells the others over Redis pub/sub.
//! - [`registry`]: which session lives on which instance (a Redis key per
//!   session, with a TTL the session's heartbeat refreshes).
//! - [`interest`]: which channels this instance hears (those with
//!   subscribers here), each on a Redis channel of its own.
//! - [`ask`]: request and response between instances (what an admin send
//!   delivered elsewhere, the cluster-wide log search).
//! - [`bus`]: the receiving side (subscribe, deliver, reconnect with
//!   backoff) and the instance's own upkeep.
//! - [`publisher`]: the sending side: one bounded queue, pipelined
//!   `PUBLISH`es.
//! - [`forward`]: routing's [`Forwarder`](crate::routing::Forwarder) for cluster mode: hands what
//!   routing delivered here to the other instances.
//!
//! Redis is on the path of cross-instance traffic only. Local delivery
//! never waits for it, so an instance keeps serving its own sessions when
//! Redis is gone; cross-instance delivery then fails visibly (error frames,
//! `wstrace_cluster_*` metrics, a warning per interval) and comes back by
//! itself when Redis does.

pub mod ask;
pub mod bus;
pub mod envelope;
pub mod forward;
pub mod interest;
pub mod link;
pub mod publisher;
pub mod registry;
pub mod sharded;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::auth::{Secret, redact_url, scrub_password};
use crate::error::HttpError;
use crate::metrics::{Family, count};
use crate::routing::{ForwardError, Router};
use crate::sync::lock;
use envelope::Envelope;

/// Every key and channel starts with this.
const PREFIX: &str = "wstrace";

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// May hold a password: a [`Secret`], shown only through
    /// [`redact_url`].
    pub redis_url: Secret,
    pub instance_id: String,
    /// Lifetime of a session's registry key; each heartbeat renews it, so it
    /// must be longer than the heartbeat interval.
    pub session_ttl: Duration,
    /// The longest any one Redis call may take.
    pub timeout: Duration,
    /// Signs every envelope; instances without it ignore them. `None`:
    /// unsigned (whoever can `PUBLISH` to Redis is trusted).
    pub secret: Option<Secret>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid --redis-url {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(
        "cannot reach Redis at {url}: {reason}. Cluster mode (--redis-url) needs Redis when it \
         starts: start Redis, or run a single instance without --redis-url"
    )]
    Unreachable { url: String, reason: String },
    #[error(
        "--cluster-session-ttl ({ttl:?}) must be longer than --heartbeat-interval ({heartbeat:?})"
    )]
    TtlTooShort { ttl: Duration, heartbeat: Duration },
    #[error("Redis is unreachable: cross-instance delivery is off until it returns")]
    Down,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error(
        "{} envelopes or {} bytes are already waiting for Redis",
        publisher::QUEUE_ENVELOPES,
        crate::limits::CLUSTER_QUEUE_BYTES
    )]
    Backlog,
    #[error("Redis command failed: {0}")]
    Command(String),
    /// A node refused the connection: the command was not sent (one
    /// shard of a Redis Cluster that is down, typically).
    #[error("Redis refused the connection (the command was not sent): {0}")]
    Refused(String),
    /// The connection failed after the command was sent: it may have run.
    #[error("Redis connection failed after the command was sent: {0}")]
    Unanswered(String),
}

impl From<ClusterError> for ForwardError {
    fn from(error: ClusterError) -> Self {
        ForwardError {
            // A call that timed out was sent; every other failure means
            // it was not (or, for a command error, not carried out).
            outcome_unknown: matches!(
                error,
                ClusterError::Timeout(_) | ClusterError::Unanswered(_)
            ),
            reason: error.to_string(),
        }
    }
}

impl From<ClusterError> for HttpError {
    fn from(error: ClusterError) -> Self {
        HttpError::ClusterUnavailable(error.to_string())
    }
}

/// `/metrics` counters of cluster mode.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Envelopes published.
    pub published: AtomicU64,
    /// Envelopes that could not be published (Redis down or too slow).
    pub publish_failures: AtomicU64,
    /// Envelopes received from other instances.
    pub received: AtomicU64,
    /// Envelopes dropped because they could not be decoded.
    pub malformed: AtomicU64,
    /// Registry reads and writes that failed.
    pub registry_failures: AtomicU64,
    /// Times the pub/sub connection came back after a loss.
    pub reconnects: AtomicU64,
}

impl ClusterCounters {
    /// Cluster mode's metrics, for `/metrics`.
    pub fn families(&self, redis_up: bool) -> Vec<Family> {
        let counter =
            |name, help, value: &AtomicU64| Family::counter(name, help, value.load(Relaxed));
        vec![
            Family::gauge(
                "wstrace_cluster_redis_up",
                "1 while the Redis pub/sub connection is up (cluster mode).",
                count(u64::from(redis_up)),
            ),
            counter(
                "wstrace_cluster_published_total",
                "Envelopes published to other instances.",
                &self.published,
            ),
            counter(
                "wstrace_cluster_publish_failures_total",
                "Envelopes that could not be published: other instances missed them.",
                &self.publish_failures,
            ),
            counter(
                "wstrace_cluster_received_total",
                "Envelopes received from other instances.",
                &self.received,
            ),
            counter(
                "wstrace_cluster_malformed_total",
                "Envelopes dropped because they could not be decoded.",
                &self.malformed,
            ),
            counter(
                "wstrace_cluster_registry_failures_total",
                "Session registry reads and writes that failed.",
                &self.registry_failures,
            ),
            counter(
                "wstrace_cluster_reconnects_total",
                "Times the Redis connection came back after a loss.",
                &self.reconnects,
            ),
        ]
    }
}

/// One instance's connection to the cluster: the Redis command connection,
/// the pub/sub subscription until the bus task takes it, the outgoing
/// publish queue, and whether Redis is up. Shared by the sessions (as
/// routing's [`Forwarder`](crate::routing::Forwarder)), the admin API and the cluster's own tasks.
pub struct Cluster {
    instance_id: String,
    url_for_display: String,
    mode: Mode,
    /// Commands and publishes. On one node, replaced after Redis stalls:
    /// the old connection's timed-out commands are dropped with it, not
    /// kept buffered until Redis resumes.
    commands: Mutex<link::Commands>,
    /// Notified when a call times out: the bus task treats Redis as lost.
    stalled: tokio::sync::Notify,
    /// Bytes of sealed envelopes in the outgoing queue.
    queued_bytes: std::sync::atomic::AtomicUsize,
    session_ttl: Duration,
    timeout: Duration,
    /// Whether the pub/sub connection is up: while it is not, calls fail at
    /// once instead of each waiting out the timeout.
    up: AtomicBool,
    pub counters: ClusterCounters,
    /// The channels this instance hears, as Redis has confirmed them.
    pub interest: interest::Interest,
    /// This instance's requests waiting for other instances' answers.
    pub pending: ask::Pending,
    /// Signs outgoing envelopes and checks incoming ones.
    pub sealer: envelope::Sealer,
    /// The subscription made by [`Cluster::connect`], until the bus task
    /// takes it: a server is subscribed before it accepts its first client.
    first_subscription: Mutex<Option<Subscription>>,
    outgoing: tokio::sync::mpsc::Sender<publisher::PublishJob>,
    /// Its receiving end, until the publisher task takes it.
    outgoing_jobs: Mutex<Option<tokio::sync::mpsc::Receiver<publisher::PublishJob>>>,
}

/// One Redis node, or a Redis Cluster (see [`link`]).
// One per process: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Mode {
    Node {
        client: redis::Client,
        manager_config: ConnectionManagerConfig,
    },
    /// Sharded pub/sub: the crate's cluster connection carries commands
    /// and subscriptions, and repairs a lost shard by itself.
    Sharded,
}

/// Where the bus task hears other instances.
pub enum Subscription {
    /// One node's pub/sub connection.
    Node(PubSub),
    /// The cluster connection's pushes (`smessage`, disconnections).
    Sharded(tokio::sync::mpsc::UnboundedReceiver<redis::PushInfo>),
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("instance_id", &self.instance_id)
            .field("redis", &self.url_for_display)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects and subscribes, or says why it cannot: cluster mode does
    /// not start without Redis.
    pub async fn connect(config: ClusterConfig) -> Result<Self, ClusterError> {
        let secret_url = config.redis_url.expose();
        let url = redact_url(secret_url);
        // The redis crate's errors may quote the URL it was given.
        let reason = |error: &dyn std::fmt::Display| scrub_password(&error.to_string(), secret_url);
        if crate::auth::credentials_need_encoding(secret_url) {
            return Err(ClusterError::InvalidUrl {
                url,
                reason: "its password holds / ? # or @: percent-encode them (%2F %3F %23 %40)"
                    .into(),
            });
        }
        let unreachable = |reason: String| ClusterError::Unreachable {
            url: url.clone(),
            reason,
        };
        let invalid = |reason: String| ClusterError::InvalidUrl {
            url: url.clone(),
            reason,
        };
        let connect_within = config.timeout * 4;
        let no_answer = || unreachable(format!("no answer within {connect_within:?}"));
        let (mode, commands, pushes) = match link::Target::parse(secret_url).map_err(invalid)? {
            link::Target::Node(node) => {
                let client = redis::Client::open(node).map_err(|e| invalid(reason(&e)))?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.timeout))
                    .set_response_timeout(Some(config.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                let manager =
                    ConnectionManager::new_with_config(client.clone(), manager_config.clone());
                let commands = tokio::time::timeout(connect_within, manager)
                    .await
                    .map_err(|_| no_answer())?
                    .map_err(|e| unreachable(reason(&e)))?;
                let mode = Mode::Node {
                    client,
                    manager_config,
                };
                (mode, link::Commands::Node(commands), None)
            }
            link::Target::Cluster(nodes) => {
                let connect = link::connect_cluster(&nodes, config.timeout);
                let (commands, pushes) = tokio::time::timeout(connect_within, connect)
                    .await
                    .map_err(|_| no_answer())?
                    .map_err(|e| unreachable(reason(&e)))?;
                (
                    Mode::Sharded,
                    link::Commands::Cluster(commands),
                    Some(pushes),
                )
            }
        };
        let (outgoing, outgoing_jobs) = tokio::sync::mpsc::channel(publisher::QUEUE_ENVELOPES);
        let cluster = Self {
            outgoing,
            outgoing_jobs: Mutex::new(Some(outgoing_jobs)),
            instance_id: config.instance_id,
            url_for_display: url.clone(),
            mode,
            commands: Mutex::new(commands),
            stalled: tokio::sync::Notify::new(),
            queued_bytes: Default::default(),
            session_ttl: config.session_ttl,
            timeout: config.timeout,
            up: AtomicBool::new(true),
            counters: ClusterCounters::default(),
            interest: interest::Interest::default(),
            pending: ask::Pending::default(),
            sealer: envelope::Sealer::new(config.secret.clone()),
            first_subscription: Mutex::new(None),
        };
        let _: String = cluster
            .call(redis::cmd("PING").query_async(&mut cluster.connection()))
            .await
            .map_err(|e| unreachable(reason(&e)))?;
        let subscription = match pushes {
            None => Subscription::Node(
                cluster
                    .subscribe()
                    .await
                    .map_err(|e| unreachable(reason(&e)))?,
            ),
            Some(pushes) => {
                let own = [
                    Self::bus_channel(),
                    Self::instance_channel(&cluster.instance_id),
                ];
                for channel in own {
                    sharded::subscribe(&cluster, &channel)
                        .await
                        .map_err(|e| unreachable(reason(&e)))?;
                }
                Subscription::Sharded(pushes)
            }
        };
        *lock(&cluster.first_subscription) = Some(subscription);
        Ok(cluster)
    }

    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The Redis URL without its password.
    pub fn redis_url(&self) -> &str {
        &self.url_for_display
    }

    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    pub fn families(&self) -> Vec<Family> {
        self.counters.families(self.is_up())
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Relaxed);
    }

    /// The channel every instance listens on: broadcasts to everyone.
    /// Channel publishes go to the channel's own Redis channel
    /// ([`interest::redis_channel`]), which only instances with
    /// subscribers of it hear.
    pub fn bus_channel() -> String {
        format!("{PREFIX}:bus")
    }

    /// The channel only `instance_id` listens on: direct messages and kicks
    /// for its sessions.
    pub fn instance_channel(instance_id: &str) -> String {
        format!("{PREFIX}:to:{instance_id}")
    }

    /// A new pub/sub connection, subscribed to the bus and this instance's
    /// own channel (the bus task then adds the channels, see [`interest`]).
    async fn subscribe(&self) -> Result<PubSub, ClusterError> {
        let Mode::Node { client, .. } = &self.mode else {
            return Err(ClusterError::Command(
                "classic pub/sub on a Redis Cluster".into(),
            ));
        };
        let subscribe = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub
                .subscribe(&[
                    Self::bus_channel(),
                    Self::instance_channel(&self.instance_id),
                ])
                .await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(self.timeout, subscribe).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(error)) => Err(ClusterError::Command(error.to_string())),
            Err(_) => Err(ClusterError::Timeout(self.timeout)),
        }
    }

    fn take_first_subscription(&self) -> Option<Subscription> {
        lock(&self.first_subscription).take()
    }

    /// The outgoing queue's receiving end, for [`publisher::run_publisher`].
    pub fn take_outgoing(&self) -> Option<tokio::sync::mpsc::Receiver<publisher::PublishJob>> {
        lock(&self.outgoing_jobs).take()
    }

    /// Queues an envelope for the publisher task, or fails at once: while
    /// Redis is down, or when the queue holds `QUEUE_ENVELOPES` envelopes
    /// or `CLUSTER_QUEUE_BYTES` bytes.
    pub fn enqueue(&self, job: publisher::PublishJob) -> Result<(), ClusterError> {
        let bytes = job.wire.len();
        let refused = if !self.is_up() {
            ClusterError::Down
        } else if self.queued_bytes.fetch_add(bytes, Relaxed) + bytes
            > crate::limits::CLUSTER_QUEUE_BYTES
        {
            self.queued_bytes.fetch_sub(bytes, Relaxed);
            ClusterError::Backlog
        } else {
            match self.outgoing.try_send(job) {
                Ok(()) => return Ok(()),
                Err(refused) => {
                    self.queued_bytes.fetch_sub(bytes, Relaxed);
                    match refused {
                        tokio::sync::mpsc::error::TrySendError::Full(_) => ClusterError::Backlog,
                        tokio::sync::mpsc::error::TrySendError::Closed(_) => ClusterError::Down,
                    }
                }
            }
        };
        self.counters.publish_failures.fetch_add(1, Relaxed);
        Err(refused)
    }

    /// Seals an envelope for the wire.
    pub fn seal(&self, envelope: &Envelope) -> String {
        self.sealer.seal(envelope)
    }

    /// The publisher sent (or gave up on) jobs of this many bytes.
    pub fn dequeued(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Relaxed);
    }

    /// Runs one Redis call: at once `Down` while the connection is known to
    /// be lost, and never longer than the timeout.
    async fn call<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, ClusterError> {
        if !self.is_up() {
            return Err(ClusterError::Down);
        }
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) if error.is_timeout() => Err(self.stall()),
            // Redis answered with an error: the command did not run.
            Ok(Err(error)) if error.code().is_some() => {
                Err(ClusterError::Command(error.to_string()))
            }
            Ok(Err(error)) if error.is_connection_refusal() => {
                Err(ClusterError::Refused(error.to_string()))
            }
            Ok(Err(error)) => Err(ClusterError::Unanswered(error.to_string())),
            Err(_) => Err(self.stall()),
        }
    }

    /// A stalled Redis (frozen, or its link) is known within one timeout:
    /// later calls fail at once, not after piling up in the connection,
    /// until the bus task has made a new one.
    ///
    /// On a Redis Cluster a timeout is one shard's: the others still serve
    /// their channels, and the crate repairs the shard's connection.
    fn stall(&self) -> ClusterError {
        if self.is_sharded() {
            return ClusterError::Timeout(self.timeout);
        }
        self.set_up(false);
        self.stalled.notify_one();
        ClusterError::Timeout(self.timeout)
    }

    /// Waits (bounded) until the command connection answers again after
    /// Redis came back: its first call after a loss fails while it
    /// reconnects, and that call should not be a message.
    async fn await_commands(&self) -> bool {
        if !self.renew_commands().await {
            return false;
        }
        for _ in 0..20 {
            let mut connection = self.connection();
            let command = redis::cmd("PING");
            let ping = command.query_async::<String>(&mut connection);
            if let Ok(Ok(_)) = tokio::time::timeout(self.timeout, ping).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn connection(&self) -> link::Commands {
        lock(&self.commands).clone()
    }

    /// Whether this is a Redis Cluster (sharded pub/sub).
    pub fn is_sharded(&self) -> bool {
        matches!(self.mode, Mode::Sharded)
    }

    /// A fresh command connection, in place of one that stalled (one
    /// node; a cluster connection repairs itself).
    async fn renew_commands(&self) -> bool {
        let Mode::Node {
            client,
            manager_config,
        } = &self.mode
        else {
            return true;
        };
        let fresh = ConnectionManager::new_with_config(client.clone(), manager_config.clone());
        match tokio::time::timeout(self.timeout * 2, fresh).await {
            Ok(Ok(fresh)) => {
                *lock(&self.commands) = link::Commands::Node(fresh);
                true
            }
            _ => false,
        }
    }

    /// Resolves when a call has timed out since the last time.
    pub async fn stalled(&self) {
        self.stalled.notified().await;
    }

    /// Publishes an envelope; returns how many instances received it.
    pub async fn publish(&self, channel: &str, envelope: &Envelope) -> Result<u64, ClusterError> {
        let wire = self.seal(envelope);
        let mut receivers = self.publish_batch(&[(channel, &wire)]).await;
        receivers.pop().unwrap_or(Ok(0))
    }

    /// Publishes sealed envelopes, in order per channel; returns how many
    /// instances received each. One node takes them in one pipeline; a
    /// cluster in one pipeline per slot (all at once), so a shard that is
    /// down fails only its own channels' envelopes.
    pub async fn publish_batch(&self, sealed: &[(&str, &str)]) -> Vec<Result<u64, ClusterError>> {
        let results = if self.is_sharded() {
            let groups = link::by_slot(sealed.iter().map(|(channel, _)| *channel));
            let sent = groups.iter().map(|group| {
                let batch: Vec<_> = group.iter().map(|&i| sealed[i]).collect();
                self.publish_pipeline("SPUBLISH", batch)
            });
            let mut results = vec![Ok(0); sealed.len()];
            for (group, result) in groups
                .iter()
                .zip(futures_util::future::join_all(sent).await)
            {
                for (n, &i) in group.iter().enumerate() {
                    results[i] = result
                        .clone()
                        .map(|receivers| receivers.get(n).copied().unwrap_or_default());
                }
            }
            results
        } else {
            match self.publish_pipeline("PUBLISH", sealed.to_vec()).await {
                Ok(receivers) => (0..sealed.len())
                    .map(|i| Ok(receivers.get(i).copied().unwrap_or_default()))
                    .collect(),
                Err(error) => vec![Err(error); sealed.len()],
            }
        };
        for result in &results {
            let counter = match result {
                Ok(_) => &self.counters.published,
                Err(_) => &self.counters.publish_failures,
            };
            counter.fetch_add(1, Relaxed);
        }
        results
    }

    async fn publish_pipeline(
        &self,
        command: &str,
        sealed: Vec<(&str, &str)>,
    ) -> Result<Vec<u64>, ClusterError> {
        let mut pipe = redis::pipe();
        for (channel, wire) in sealed {
            pipe.cmd(command).arg(channel).arg(wire);
        }
        let mut connection = self.connection();
        self.call(pipe.query_async::<Vec<u64>>(&mut connection))
            .await
    }
}

/// What cluster mode's background tasks need from the running server.
pub struct ClusterContext {
    pub router: Arc<Router>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// At most one warning per interval about cross-instance failures.
    pub report_every: Duration,
    /// This instance's stats, as the registry stores them.
    pub stats: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Largest `message` frame an envelope may carry.
    pub max_frame_bytes: usize,
    /// The cap on this instance's debug sessions.
    pub debug_slots: Arc<crate::sampling::DebugSlots>,
    /// This instance's log files, searched when another instance asks.
    pub log_search: Arc<crate::telemetry::log_search::LogSearch>,
}

/// The background tasks of cluster mode, which live as long as the server.
pub struct ClusterTasks {
    bus: tokio::task::JoinHandle<()>,
    upkeep: tokio::task::JoinHandle<()>,
    publisher: tokio::task::JoinHandle<()>,
    finish_publishing: CancellationToken,
}

/// Hears other instances: over one node's pub/sub, or the cluster's
/// sharded pub/sub.
async fn hear(context: Arc<ClusterContext>, cluster: Arc<Cluster>) {
    match cluster.take_first_subscription() {
        Some(Subscription::Sharded(pushes)) => sharded::run(context, cluster, pushes).await,
        Some(Subscription::Node(pubsub)) => bus::run_bus(context, cluster, Some(pubsub)).await,
        None => bus::run_bus(context, cluster, None).await,
    }
}

impl ClusterTasks {
    /// Starts them. The bus and upkeep tasks end with the server's shutdown
    /// signal; the publisher when [`ClusterTasks::finish`] says so.
    pub fn start(cluster: Arc<Cluster>, context: ClusterContext) -> Option<Self> {
        let jobs = cluster.take_outgoing()?;
        let finish_publishing = CancellationToken::new();
        let context = Arc::new(context);
        Some(Self {
            bus: tokio::spawn(hear(context.clone(), cluster.clone())),
            upkeep: tokio::spawn(bus::run_upkeep(context, cluster.clone())),
            publisher: tokio::spawn(publisher::run_publisher(
                cluster,
                jobs,
                finish_publishing.clone(),
            )),
            finish_publishing,
        })
    }

    /// Call once the sessions are gone: what they published still leaves,
    /// and the upkeep task removes this instance's stats key. Waits at most
    /// `limit`.
    pub async fn finish(self, limit: Duration) {
        self.finish_publishing.cancel();
        let all = async {
            let _ = self.publisher.await;
            let _ = self.upkeep.await;
            let _ = self.bus.await;
        };
        let _ = tokio::time::timeout(limit, all).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_namespaced() {
        assert_eq!(Cluster::bus_channel(), "wstrace:bus");
        assert_eq!(Cluster::instance_channel("a-1"), "wstrace:to:a-1");
    }
}
