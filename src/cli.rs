//! Command line. Every flag can also be set by its `WSTRACE_*` variable.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::auth::Secret;
use crate::cluster::{ClusterConfig, ClusterError};
use crate::limits::{self, Limits};
use crate::state::ServerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "wstrace",
    version,
    about = "A WebSocket server whose every session can be found by one trace ID"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at startup: the size of the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the WebSocket server.
    ///
    /// Logs are bunyan JSON lines on stdout and in daily-rolling files.
    /// Spans are exported over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set
    /// (also honoured: OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_PROTOCOL=grpc|http/protobuf,
    /// OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_*). RUST_LOG sets the log filter.
    Serve(ServeArgs),
    /// Exit 0 if the server's /healthz answers 200 (for container health
    /// checks: the runtime image has no curl).
    Health {
        #[arg(
            long,
            env = "WSTRACE_HEALTH_URL",
            default_value = "http://127.0.0.1:8080/healthz"
        )]
        url: String,
        /// A PEM file of CA certificates to trust for https://, beside the
        /// system's.
        #[arg(long, env = "WSTRACE_HEALTH_CA_CERT")]
        ca_cert: Option<PathBuf>,
    },
    /// Follow one session through wstrace, Vector, Loki, Tempo and Grafana,
    /// and name the first broken link.
    Doctor(crate::tools::doctor::DoctorArgs),
    /// Interactive WebSocket client (or scripted, with --send).
    Client(crate::tools::client::ClientArgs),
    /// Bounded load generator: storm, throughput or sustained.
    Load(crate::tools::load::LoadArgs),
    /// Search and tail the local JSON log files.
    Logs(crate::tools::logs::LogsArgs),
}

/// `--listen`: `8080`, `localhost:8080`, `0.0.0.0:8080` or `[::1]:8080`.
fn listen_address(value: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = value.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    let mut addrs = value
        .to_socket_addrs()
        .map_err(|e| format!("{value:?} is not HOST:PORT or PORT ({e})"))?
        .collect::<Vec<_>>();
    // `localhost` may resolve to ::1 first; the IPv4 address works for
    // every client that says localhost.
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| format!("{value:?} resolves to no address"))
}

/// A feature switched on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on: `HOST:PORT` (a name is resolved, e.g.
    /// `localhost:8080`), or a bare `PORT` for 127.0.0.1.
    #[arg(long, env = "WSTRACE_LISTEN", default_value = "127.0.0.1:8080", value_parser = listen_address)]
    pub listen: SocketAddr,

    /// Directory for the daily-rolling JSON log files.
    #[arg(long, env = "WSTRACE_LOG_DIR", default_value = "logs")]
    pub log_dir: PathBuf,

    /// Write log lines to files in --log-dir.
    #[arg(long, env = "WSTRACE_LOG_FILE", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_file: bool,

    /// When to start a new log file.
    #[arg(long, env = "WSTRACE_LOG_ROTATION", default_value = "daily")]
    pub log_rotation: crate::telemetry::LogRotation,

    /// Rolled log files kept; the oldest are deleted at each rotation
    /// (0: keep all).
    #[arg(long, env = "WSTRACE_LOG_MAX_FILES", default_value_t = 14)]
    pub log_max_files: usize,

    /// Most bytes all log files may take together; the oldest are deleted
    /// first, never the one being written (0: no cap). Checked every
    /// --telemetry-report-interval.
    #[arg(long, env = "WSTRACE_LOG_MAX_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub log_max_bytes: u64,

    /// Write log lines to stdout.
    #[arg(long, env = "WSTRACE_LOG_STDOUT", default_value_t = true, action = clap::ArgAction::Set)]
    pub log_stdout: bool,

    /// Bytes of log lines each output (file, stdout) may hold while it
    /// writes. A full buffer makes logging wait, at most 1 s for stdout
    /// and 30 s for the file; an output that takes nothing for that long
    /// has its lines dropped and counted until it takes lines again.
    #[arg(long, env = "WSTRACE_LOG_BUFFER_BYTES", default_value_t = crate::limits::DEFAULT_LOG_BUFFER_BYTES)]
    pub log_buffer_bytes: usize,

    /// Interval between server pings (e.g. 30s, 500ms).
    #[arg(long, env = "WSTRACE_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// Close a session after this long without any frame from the client.
    #[arg(long, env = "WSTRACE_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// How long to wait for the client's Close after the server sent one.
    #[arg(long, env = "WSTRACE_CLOSE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub close_timeout: Duration,

    /// How long shutdown waits for sessions to close before exiting.
    #[arg(long, env = "WSTRACE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Largest accepted message in bytes; larger ones close the session with 1009.
    #[arg(long, env = "WSTRACE_MAX_MESSAGE_BYTES", default_value_t = limits::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,

    /// Most concurrent sessions; further upgrades get 503.
    #[arg(long, env = "WSTRACE_MAX_CONNECTIONS", default_value_t = limits::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Most sessions from one client address; further upgrades get 429
    /// (0: no cap).
    #[arg(long, env = "WSTRACE_MAX_SESSIONS_PER_IP", default_value_t = limits::DEFAULT_MAX_SESSIONS_PER_IP)]
    pub max_sessions_per_ip: usize,

    /// Most sessions of one JWT user; further upgrades get 429 (0: no cap).
    #[arg(long, env = "WSTRACE_MAX_SESSIONS_PER_USER", default_value_t = limits::DEFAULT_MAX_SESSIONS_PER_USER)]
    pub max_sessions_per_user: usize,

    /// Messages per second one session may send (0: unlimited). Over it
    /// frames are refused with an error frame; a client that keeps going
    /// for another burst is closed with 1008.
    #[arg(long, env = "WSTRACE_MESSAGES_PER_SECOND", default_value_t = limits::DEFAULT_MESSAGES_PER_SECOND)]
    pub messages_per_second: u32,

    /// permessage-deflate (RFC 7692) for clients that offer it (every
    /// browser does): on or off. Without context takeover, so an idle
    /// session costs nothing more.
    #[arg(long, env = "WSTRACE_COMPRESSION", default_value = "on")]
    pub compression: OnOff,

    /// With compression on: messages of at least this many bytes go out
    /// compressed (smaller ones would not shrink enough to pay for it).
    #[arg(long, env = "WSTRACE_COMPRESSION_MIN_BYTES", default_value_t = limits::DEFAULT_COMPRESSION_MIN_BYTES)]
    pub compression_min_bytes: usize,

    /// Messages a session may send at once before the rate applies.
    #[arg(long, env = "WSTRACE_MESSAGE_BURST", default_value_t = limits::DEFAULT_MESSAGE_BURST)]
    pub message_burst: u32,

    /// Channels one session may subscribe to.
    #[arg(long, env = "WSTRACE_MAX_SUBSCRIPTIONS", default_value_t = limits::DEFAULT_MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,

    /// Frames queued for a session's writer; a receiver whose queue is full
    /// is closed with 1013.
    #[arg(long, env = "WSTRACE_OUTBOUND_QUEUE_FRAMES", default_value_t = limits::OUTBOUND_QUEUE_FRAMES)]
    pub outbound_queue_frames: usize,

    /// Bytes of frames queued for a session's writer; a receiver over it is
    /// closed with 1013, and a session's own replies wait (backpressure).
    #[arg(long, env = "WSTRACE_OUTBOUND_QUEUE_BYTES", default_value_t = limits::DEFAULT_OUTBOUND_QUEUE_BYTES)]
    pub outbound_queue_bytes: usize,

    /// Close a session (1008) whose client reads nothing for this long.
    #[arg(long, env = "WSTRACE_WRITE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Time a client has to send its whole HTTP request head.
    #[arg(long, env = "WSTRACE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// At most one warning per interval about dropped log lines or spans.
    #[arg(long, env = "WSTRACE_TELEMETRY_REPORT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub telemetry_report_interval: Duration,

    /// Share of messages (0.0-1.0) that get ws.receive/ws.send spans and log
    /// lines. Errors, closes and session lifecycle are always recorded.
    #[arg(long, env = "WSTRACE_MESSAGE_SAMPLE_RATIO", default_value_t = crate::state::DEFAULT_MESSAGE_SAMPLE_RATIO)]
    pub message_sample_ratio: f64,

    /// User (JWT subject) whose sessions record every message, whatever the
    /// sample ratio (repeatable, or comma-separated in the variable).
    #[arg(
        long = "debug-user",
        env = "WSTRACE_DEBUG_USERS",
        value_delimiter = ','
    )]
    pub debug_users: Vec<String>,

    /// Let callers ask for a debug session with `tracestate: wstrace=debug`
    /// (and the sampled flag). Off: otherwise any client could make the
    /// server log all its traffic.
    #[arg(long, env = "WSTRACE_ALLOW_CLIENT_DEBUG")]
    pub allow_client_debug: bool,

    /// Debug sessions open at once on this instance; more are refused
    /// (admin API: 429; at the upgrade: recorded as ordinary sessions).
    #[arg(long, env = "WSTRACE_MAX_DEBUG_SESSIONS", default_value_t = limits::DEFAULT_MAX_DEBUG_SESSIONS)]
    pub max_debug_sessions: usize,

    /// Messages each session's flight recorder keeps, written to the log at
    /// the session's first failure (0: no recorder).
    #[arg(long, env = "WSTRACE_FLIGHT_RECORDER_MESSAGES", default_value_t = limits::DEFAULT_FLIGHT_RECORDER_MESSAGES)]
    pub flight_recorder_messages: usize,

    /// Browser origin allowed to open a WebSocket (repeatable, or
    /// comma-separated in the variable; `*` for any). Default: the origin
    /// must match the Host the request was sent to.
    #[arg(
        long = "allowed-origin",
        env = "WSTRACE_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Host name the server answers to (repeatable, or comma-separated in
    /// the variable; `*` for any). Default: loopback names when listening
    /// on a loopback address (a defence against DNS rebinding), any
    /// otherwise. Set it on a public server.
    #[arg(
        long = "allowed-host",
        env = "WSTRACE_ALLOWED_HOST",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,

    /// Proxy in front of the server whose `Forwarded` / `X-Forwarded-For`
    /// says who the client is: a CIDR range or an address (repeatable, or
    /// comma-separated in the variable). Unset: those headers are ignored
    /// and the client is the TCP peer (docs/production.md).
    #[arg(
        long = "trusted-proxy",
        env = "WSTRACE_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = crate::client_address::parse_range
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Every connection opens with a PROXY protocol header (v1 or v2), as a
    /// TCP load balancer sends it; it names the client. Needs
    /// --trusted-proxy: a header from any other peer is refused.
    #[arg(long, env = "WSTRACE_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// Serve `wss://` and `https://` with this certificate chain (PEM,
    /// leaf first); needs --tls-key. Both files are read again on SIGHUP.
    #[arg(long, env = "WSTRACE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WSTRACE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Bearer token for the admin API under /api. Unset: the API answers
    /// 403. Prefer the variable: flags show in `ps`.
    #[arg(long, env = "WSTRACE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<Secret>,

    /// Grafana base URL: the explorer page at / links trace IDs to Grafana
    /// Explore (Loki and Tempo).
    #[arg(long, env = "WSTRACE_GRAFANA_URL")]
    pub grafana_url: Option<String>,

    /// Loki base URL (`http://loki:3100`): `/api/logs` and the explorer
    /// search Loki, every instance's shipped lines, instead of this
    /// instance's (or, in cluster mode, every instance's) files.
    #[arg(long, env = "WSTRACE_LOKI_URL")]
    pub loki_url: Option<String>,

    /// Also serve `/echo`: raw echo of every data frame, no welcome frame
    /// (for WebSocket conformance suites such as Autobahn).
    #[arg(long, env = "WSTRACE_ECHO_ENDPOINT")]
    pub echo_endpoint: bool,

    /// Cluster mode: one Redis node (`redis://[:password@]host:port[/db]`,
    /// `rediss://` for TLS) or a Redis Cluster ≥ 7 by its seed nodes
    /// (`redis+cluster://[:password@]host1:port1,host2:port2`; channels then
    /// use sharded pub/sub). Channel publishes, broadcasts, direct messages
    /// and admin actions then reach sessions on every instance that uses
    /// the same Redis. The server does not start if Redis cannot be reached.
    #[arg(long, env = "WSTRACE_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// Names this instance in every log line, span and registry entry.
    /// Default: `<hostname>-<4 random hex digits>`.
    #[arg(long, env = "WSTRACE_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Cluster mode: lifetime of a session's registry entry. Each heartbeat
    /// renews it; the sessions of an instance that dies vanish within it.
    #[arg(long, env = "WSTRACE_CLUSTER_SESSION_TTL", default_value = "75s", value_parser = humantime::parse_duration)]
    pub cluster_session_ttl: Duration,

    /// Cluster mode: shared secret that signs every envelope between
    /// instances (HMAC-SHA256); all instances need the same one. Unset:
    /// anyone who can PUBLISH to Redis can deliver frames or kick sessions.
    #[arg(long, env = "WSTRACE_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<Secret>,

    /// Cluster mode: the longest one Redis call may take.
    #[arg(long, env = "WSTRACE_REDIS_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// HS256 key for session JWTs (`Authorization: Bearer` or `?token=`).
    /// Set: every upgrade needs a valid token, whose `sub` is the user.
    #[arg(long, env = "WSTRACE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Refuse session JWTs without an `exp` claim.
    #[arg(long, env = "WSTRACE_JWT_REQUIRE_EXP")]
    pub jwt_require_exp: bool,

    /// Session JWTs must name this audience in `aud`.
    #[arg(long, env = "WSTRACE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Session JWTs must have this `iss`.
    #[arg(long, env = "WSTRACE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
}

impl ServeArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            heartbeat_interval: self.heartbeat_interval,
            idle_timeout: self.idle_timeout,
            close_timeout: self.close_timeout,
            shutdown_timeout: self.shutdown_timeout,
            max_message_bytes: self.max_message_bytes,
            max_connections: self.max_connections,
            max_sessions_per_ip: self.max_sessions_per_ip,
            max_sessions_per_user: self.max_sessions_per_user,
            outbound_queue_frames: self.outbound_queue_frames,
            outbound_queue_bytes: self.outbound_queue_bytes,
            write_timeout: self.write_timeout,
            messages_per_second: self.messages_per_second,
            message_burst: self.message_burst,
            max_subscriptions: self.max_subscriptions,
            header_read_timeout: self.header_read_timeout,
            telemetry_report_interval: self.telemetry_report_interval,
            flight_recorder_messages: self.flight_recorder_messages,
            max_debug_sessions: self.max_debug_sessions,
            compression_min_bytes: (self.compression == OnOff::On)
                .then_some(self.compression_min_bytes),
        }
    }

    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            limits: self.limits(),
            message_sample_ratio: self.message_sample_ratio,
            debug: crate::sampling::DebugRules {
                users: self
                    .debug_users
                    .iter()
                    .filter(|u| !u.is_empty())
                    .cloned()
                    .collect(),
                allow_client_debug: self.allow_client_debug,
            },
            admin_token: non_empty(&self.admin_token),
            jwt_secret: non_empty(&self.jwt_secret),
            jwt_rules: crate::auth::JwtRules {
                require_exp: self.jwt_require_exp,
                audience: self.jwt_audience.clone().filter(|a| !a.is_empty()),
                issuer: self.jwt_issuer.clone().filter(|i| !i.is_empty()),
            },
            allowed_origins: self.allowed_origins.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            trusted_proxies: crate::client_address::TrustedProxies::new(
                self.trusted_proxies.clone(),
            ),
            proxy_protocol: self.proxy_protocol,
            tls: None,
            telemetry: None,
            log_dir: self.log_file.then(|| self.log_dir.clone()),
            log_max_bytes: (self.log_max_bytes > 0).then_some(self.log_max_bytes),
            log_file_prefix: crate::telemetry::DEFAULT_LOG_FILE_PREFIX.to_string(),
            grafana_url: self.grafana_url.clone(),
            loki_url: self.loki_url.clone(),
            echo_endpoint: self.echo_endpoint,
            instance_id: self.instance_id(),
            cluster: None,
            #[cfg(feature = "fault-injection")]
            fault_panic_on_echo: None,
        }
    }

    /// `--tls-cert` and `--tls-key`, when given (clap requires both).
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }

    /// The flag, or a fresh default (call once per process).
    pub fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .unwrap_or_else(crate::telemetry::default_instance_id)
    }

    /// Cluster mode's settings, if `--redis-url` is set; the TTL must
    /// outlast the heartbeat that renews it.
    pub fn cluster_config(&self, instance_id: &str) -> Result<Option<ClusterConfig>, ClusterError> {
        let Some(redis_url) = non_empty(&self.redis_url) else {
            return Ok(None);
        };
        if self.cluster_session_ttl <= self.heartbeat_interval {
            return Err(ClusterError::TtlTooShort {
                ttl: self.cluster_session_ttl,
                heartbeat: self.heartbeat_interval,
            });
        }
        Ok(Some(ClusterConfig {
            redis_url,
            instance_id: instance_id.to_string(),
            session_ttl: self.cluster_session_ttl,
            timeout: self.redis_timeout,
            secret: non_empty(&self.cluster_secret),
        }))
    }
}

/// An empty secret is no secret: `WSTRACE_ADMIN_TOKEN=` (as an unset
/// compose variable expands) must leave the admin API off, not open it to
/// an empty bearer token; an empty JWT key would let anyone sign tokens.
fn non_empty(secret: &Option<Secret>) -> Option<Secret> {
    secret.clone().filter(|s| !s.expose().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn empty_secrets_count_as_unset() {
        let Command::Serve(args) = Cli::try_parse_from([
            "wstrace",
            "serve",
            "--admin-token",
            "",
            "--jwt-secret",
            "",
            "--redis-url",
            "",
        ])
        .unwrap()
        .command
        else {
            unreachable!()
        };
        let config = args.server_config();
        assert!(config.admin_token.is_none());
        assert!(config.jwt_secret.is_none());
        assert!(args.cluster_config("a").unwrap().is_none());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_limits() {
        let Command::Serve(args) = Cli::try_parse_from(["wstrace", "serve"]).unwrap().command
        else {
            unreachable!()
        };
        let limits = args.limits();
        let defaults = Limits::default();
        assert_eq!(args.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(limits.heartbeat_interval, defaults.heartbeat_interval);
        assert_eq!(limits.idle_timeout, defaults.idle_timeout);
        assert_eq!(limits.close_timeout, defaults.close_timeout);
        assert_eq!(limits.shutdown_timeout, defaults.shutdown_timeout);
        assert_eq!(limits.header_read_timeout, defaults.header_read_timeout);
        assert_eq!(limits.messages_per_second, defaults.messages_per_second);
        assert_eq!(limits.max_subscriptions, defaults.max_subscriptions);
        assert!(args.admin_token.is_none());
    }

    #[test]
    fn listen_takes_a_port_a_name_or_an_address() {
        let listen = |value: &str| {
            let Command::Serve(args) = Cli::try_parse_from(["wstrace", "serve", "--listen", value])
                .unwrap()
                .command
            else {
                unreachable!()
            };
            args.listen.to_string()
        };
        assert_eq!(listen("8080"), "127.0.0.1:8080");
        assert_eq!(listen("localhost:9000"), "127.0.0.1:9000");
        assert_eq!(listen("0.0.0.0:80"), "0.0.0.0:80");
        assert_eq!(listen("[::1]:8080"), "[::1]:8080");
        assert!(Cli::try_parse_from(["wstrace", "serve", "--listen", "nowhere"]).is_err());
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        let Command::Serve(args) =
            Cli::try_parse_from(["wstrace", "serve", "--admin-token", "hunter2"])
                .unwrap()
                .command
        else {
            unreachable!()
        };
        assert!(!format!("{args:?}").contains("hunter2"));
    }

    #[test]
    fn every_flag_has_an_env_var() {
        let command = Cli::command();
        for arg in command.get_subcommands().flat_map(|c| c.get_arguments()) {
            if matches!(arg.get_id().as_str(), "help" | "version") || arg.is_positional() {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{} has no env", arg.get_id()));
            assert!(env.to_string_lossy().starts_with("WSTRACE_"));
        }
    }
}
