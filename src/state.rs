//! How a server is set up ([`ServerConfig`]) and what all its parts share
//! while it runs ([`ServerState`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{HostPolicy, JwtRules, JwtVerifier, OriginPolicy, Secret};
use crate::cluster::Cluster;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::routing::{Forwarder, Hub, Router};
use crate::sampling::{DebugRules, DebugSlots};
use crate::telemetry::TelemetryCounters;

/// How a server is set up (from the CLI, or by a test).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub limits: Limits,
    /// Share of messages that get `ws.receive`/`ws.send` spans and log lines.
    pub message_sample_ratio: f64,
    /// Which sessions are debug sessions from their upgrade.
    pub debug: DebugRules,
    pub admin_token: Option<Secret>,
    pub jwt_secret: Option<Secret>,
    /// What a session JWT must say beyond its signature and subject.
    pub jwt_rules: JwtRules,
    pub allowed_origins: Vec<String>,
    /// `Host` names the server answers to; empty: loopback names when it
    /// listens on loopback, any otherwise (see [`HostPolicy`]).
    pub allowed_hosts: Vec<String>,
    /// Proxies whose forwarding headers name the client (`--trusted-proxy`).
    pub trusted_proxies: crate::client_address::TrustedProxies,
    /// Connections open with a PROXY protocol header (`--proxy-protocol`).
    pub proxy_protocol: bool,
    /// `wss://` and `https://` on the listener (`--tls-cert`): loaded
    /// before the server is built, like `cluster`.
    pub tls: Option<Arc<crate::tls::Tls>>,
    /// The telemetry stack's counters, for `/metrics`.
    pub telemetry: Option<Arc<TelemetryCounters>>,
    /// Where this server's log files are, for the explorer's log search.
    pub log_dir: Option<std::path::PathBuf>,
    /// Cap on all log files together (`--log-max-bytes`).
    pub log_max_bytes: Option<u64>,
    /// The log files' name prefix: only files named so are pruned.
    pub log_file_prefix: String,
    /// Grafana base URL, for the explorer's trace links.
    pub grafana_url: Option<String>,
    /// Loki base URL: `/api/logs` searches Loki instead of log files.
    pub loki_url: Option<String>,
    /// Serve the raw echo endpoint `/echo` (conformance testing).
    pub echo_endpoint: bool,
    /// Names this instance in log lines, the registry and envelopes.
    pub instance_id: String,
    /// Cluster mode: connected before the server is built (see
    /// [`Cluster::connect`]).
    pub cluster: Option<Arc<Cluster>>,
    /// Fault injection for tests only (the `fault-injection` feature, never
    /// in a release): an `echo` with exactly this content panics inside the
    /// session's handler.
    #[cfg(feature = "fault-injection")]
    pub fault_panic_on_echo: Option<String>,
}

/// Default message sample ratio; see BENCHMARKS.md for how it was chosen.
pub const DEFAULT_MESSAGE_SAMPLE_RATIO: f64 = 0.01;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            message_sample_ratio: DEFAULT_MESSAGE_SAMPLE_RATIO,
            debug: DebugRules::default(),
            admin_token: None,
            jwt_secret: None,
            jwt_rules: JwtRules::default(),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            trusted_proxies: Default::default(),
            proxy_protocol: false,
            tls: None,
            telemetry: None,
            log_dir: None,
            log_max_bytes: None,
            log_file_prefix: crate::telemetry::DEFAULT_LOG_FILE_PREFIX.to_string(),
            grafana_url: None,
            loki_url: None,
            echo_endpoint: false,
            instance_id: crate::telemetry::default_instance_id(),
            cluster: None,
            #[cfg(feature = "fault-injection")]
            fault_panic_on_echo: None,
        }
    }
}

/// What every part of a running server shares: its settings, as given,
/// and the parts built from them.
#[derive(Debug)]
pub struct ServerState {
    pub config: ServerConfig,
    /// The sessions here, and the way to other instances.
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub jwt: Option<JwtVerifier>,
    pub origins: OriginPolicy,
    pub hosts: HostPolicy,
    /// Cancelled when the server starts shutting down: the accept loop and
    /// upkeep tasks stop on it, and a session that joins the hub after it
    /// sees it. Open sessions are closed by the sweep through the hub
    /// (`http::run`), not by this token.
    pub shutdown: CancellationToken,
    /// Every running session, to wait for at shutdown.
    pub sessions: TaskTracker,
    /// One permit per session: the connection cap.
    pub connections: Arc<Semaphore>,
    pub started: Instant,
    /// Sessions per client address and per user.
    pub caps: crate::caps::SessionCaps,
    /// `/api/logs` reads the log directory: one search at a time.
    pub log_search: Arc<crate::telemetry::log_search::LogSearch>,
    /// The cap on debug sessions (`--max-debug-sessions`).
    pub debug_slots: Arc<DebugSlots>,
}

impl ServerState {
    /// The state of a server not (yet) bound: its `Host` policy assumes a
    /// loopback listener unless `allowed_hosts` says otherwise.
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Self::bound(config, None)
    }

    /// The state of a server listening on `listen`.
    pub fn bound(mut config: ServerConfig, listen: Option<std::net::SocketAddr>) -> Arc<Self> {
        if let Some(cluster) = &config.cluster {
            config.instance_id = cluster.instance_id().to_string();
        }
        let metrics = Arc::new(Metrics::default());
        let forwarder = config
            .cluster
            .clone()
            .map(|cluster| cluster as Arc<dyn Forwarder>);
        Arc::new(Self {
            router: Arc::new(Router::new(
                config.instance_id.clone(),
                metrics.clone(),
                forwarder,
            )),
            metrics,
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            jwt: config
                .jwt_secret
                .clone()
                .map(|key| JwtVerifier::new(key).with_rules(config.jwt_rules.clone())),
            origins: OriginPolicy::from_list(&config.allowed_origins),
            hosts: HostPolicy::new(&config.allowed_hosts, listen),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            started: Instant::now(),
            log_search: Arc::new(crate::telemetry::log_search::LogSearch::new(
                config.log_dir.clone(),
            )),
            debug_slots: DebugSlots::new(config.limits.max_debug_sessions),
            caps: crate::caps::SessionCaps::new(
                config.limits.max_sessions_per_ip,
                config.limits.max_sessions_per_user,
            ),
            config,
        })
    }

    pub fn hub(&self) -> &Hub {
        self.router.hub()
    }

    pub fn instance_id(&self) -> &str {
        &self.config.instance_id
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.config.cluster.as_ref()
    }

    /// The numbers of this instance, for `/api/stats` and the cluster
    /// registry.
    pub fn instance_stats(&self) -> serde_json::Value {
        let metrics = &self.metrics;
        let hub = self.hub();
        let gauges = hub.gauges();
        let (mut messages_in, mut messages_out) = (0, 0);
        for session in hub.sessions() {
            let view = session.view(self.instance_id());
            messages_in += view.messages_in;
            messages_out += view.messages_out;
        }
        serde_json::json!({
            "instance_id": self.instance_id(),
            "sessions_active": hub.len(),
            "sessions_opened_total": metrics.sessions_opened.load(Relaxed),
            "sessions_closed_by_code": metrics.closed_by_code(),
            "channels": gauges.channels,
            "subscriptions": gauges.subscriptions,
            "messages_in_active_sessions": messages_in,
            "messages_out_active_sessions": messages_out,
            "rate_limited_total": metrics.rate_limited.load(Relaxed),
            "outbound_queue_drops_total": metrics.outbound_queue_drops.load(Relaxed),
            "uptime_s": self.started.elapsed().as_secs(),
        })
    }

    /// Everything `/metrics` shows: this server's, the telemetry
    /// pipeline's and cluster mode's metric families.
    pub fn metric_families(&self) -> Vec<crate::metrics::Family> {
        let mut families = self.metrics.families(self.hub().gauges());
        if let Some(telemetry) = &self.config.telemetry {
            families.extend(telemetry.families());
        }
        if let Some(cluster) = self.cluster() {
            families.extend(cluster.families());
        }
        families
    }
}
