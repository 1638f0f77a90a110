//! What every part of a running server shares.

use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{JwtVerifier, OriginPolicy, Secret};
use crate::cluster::Cluster;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::telemetry::TelemetryCounters;

/// How a server is set up (from the CLI, or by a test).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub limits: Limits,
    /// Share of messages that get `ws.receive`/`ws.send` spans and log lines.
    pub message_sample_ratio: f64,
    pub admin_token: Option<Secret>,
    pub jwt_secret: Option<Secret>,
    pub allowed_origins: Vec<String>,
    /// The telemetry stack's counters, for `/metrics`.
    pub telemetry: Option<Arc<TelemetryCounters>>,
    /// Where this server's log files are, for the explorer's log search.
    pub log_dir: Option<std::path::PathBuf>,
    /// Grafana base URL, for the explorer's trace links.
    pub grafana_url: Option<String>,
    /// Serve the raw echo endpoint `/echo` (conformance testing).
    pub echo_endpoint: bool,
    /// Names this instance in log lines, the registry and envelopes.
    pub instance_id: String,
    /// Cluster mode: connected before the server is built (see
    /// [`Cluster::connect`]).
    pub cluster: Option<Arc<Cluster>>,
    /// Fault injection for tests only (not on the CLI): an `echo` with
    /// exactly this content panics inside the session's handler.
    #[doc(hidden)]
    pub fault_panic_on_echo: Option<String>,
}

/// Default message sample ratio; see BENCHMARKS.md for how it was chosen.
pub const DEFAULT_MESSAGE_SAMPLE_RATIO: f64 = 0.01;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            message_sample_ratio: DEFAULT_MESSAGE_SAMPLE_RATIO,
            admin_token: None,
            jwt_secret: None,
            allowed_origins: Vec::new(),
            telemetry: None,
            log_dir: None,
            grafana_url: None,
            echo_endpoint: false,
            instance_id: crate::telemetry::default_instance_id(),
            cluster: None,
            fault_panic_on_echo: None,
        }
    }
}

#[derive(Debug)]
pub struct ServerState {
    pub limits: Limits,
    pub message_sample_ratio: f64,
    pub hub: Hub,
    pub metrics: Metrics,
    pub telemetry: Option<Arc<TelemetryCounters>>,
    pub admin_token: Option<Secret>,
    pub jwt: Option<JwtVerifier>,
    pub origins: OriginPolicy,
    /// Broadcast to every session: the server is shutting down.
    pub shutdown: CancellationToken,
    /// Every running session, to wait for at shutdown.
    pub sessions: TaskTracker,
    /// One permit per session: the connection cap.
    pub connections: Arc<Semaphore>,
    pub started: Instant,
    pub log_dir: Option<std::path::PathBuf>,
    pub grafana_url: Option<String>,
    pub echo_endpoint: bool,
    pub instance_id: String,
    pub cluster: Option<Arc<Cluster>>,
    pub fault_panic_on_echo: Option<String>,
}

impl ServerState {
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            limits: config.limits,
            message_sample_ratio: config.message_sample_ratio,
            hub: Hub::default(),
            metrics: Metrics::default(),
            telemetry: config.telemetry,
            admin_token: config.admin_token,
            jwt: config.jwt_secret.map(JwtVerifier::new),
            origins: OriginPolicy::from_list(&config.allowed_origins),
            shutdown: CancellationToken::new(),
            sessions: TaskTracker::new(),
            started: Instant::now(),
            log_dir: config.log_dir,
            grafana_url: config.grafana_url,
            echo_endpoint: config.echo_endpoint,
            instance_id: config
                .cluster
                .as_ref()
                .map_or(config.instance_id, |c| c.instance_id().to_string()),
            cluster: config.cluster,
            fault_panic_on_echo: config.fault_panic_on_echo,
        })
    }
}
