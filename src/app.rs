//! `wstrace serve`: telemetry up, serve until a signal, telemetry flushed.

use crate::cli::ServeArgs;
use crate::cluster::{Cluster, ClusterConfig};
use crate::events::{InternalEvent, Listening, RedisConnected, TelemetryFlushing};
use crate::http::Server;
use crate::state::ServerConfig;
use crate::telemetry::{self, TelemetryConfig, TelemetryError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

impl ServeError {
    /// 64 (`EX_USAGE`, as for a bad flag) when the settings cannot work,
    /// whatever the environment; 1 when something outside failed.
    pub fn exit_code(&self) -> u8 {
        use crate::cluster::ClusterError;
        let usage = match self {
            // A certificate that does not load is the settings' fault.
            ServeError::Usage(_) | ServeError::Tls(_) => true,
            ServeError::Telemetry(error) => error.is_usage(),
            ServeError::Cluster(error) => {
                matches!(
                    error,
                    ClusterError::InvalidUrl { .. } | ClusterError::TtlTooShort { .. }
                )
            }
            ServeError::Bind { .. } | ServeError::Serve(_) => false,
        };
        if usage {
            crate::tools::client::EXIT_USAGE
        } else {
            1
        }
    }
}

/// Settings that contradict each other, refused before anything starts.
fn check_settings(settings: &ServerConfig) -> Result<(), ServeError> {
    if settings.proxy_protocol && settings.trusted_proxies.is_empty() {
        return Err(ServeError::Usage(
            "--proxy-protocol needs --trusted-proxy (WSTRACE_TRUSTED_PROXIES): the load \
             balancers' addresses, the only peers whose PROXY header is believed"
                .into(),
        ));
    }
    Ok(())
}

pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let mut config =
        TelemetryConfig::from_env(args.log_file.then(|| args.log_dir.clone()), args.log_stdout);
    config.log_rotation = args.log_rotation;
    config.log_max_files = (args.log_max_files > 0).then_some(args.log_max_files);
    config.log_buffer_bytes = args.log_buffer_bytes;
    let mut server_config = args.server_config();
    check_settings(&server_config)?;
    if let Some(files) = args.tls_files() {
        server_config.tls = Some(std::sync::Arc::new(crate::tls::Tls::load(files)?));
    }
    config.instance_id = server_config.instance_id.clone();
    let (subscriber, mut guard) = telemetry::get_subscriber(&config)?;
    telemetry::init_subscriber(subscriber)?;

    server_config.telemetry = Some(guard.counters());
    raise_open_file_limit(server_config.limits.max_connections);
    let result = match args.cluster_config(&server_config.instance_id) {
        Ok(cluster) => run(args.listen, server_config, cluster, &config).await,
        Err(error) => Err(error.into()),
    };
    if let Err(error) = &result {
        crate::events::ServeFailed { error }.emit();
    }
    // The last line says how many lines came before it in this run's
    // files (and how many the files could not take): a reader can check
    // that the files hold every one.
    guard.drain_logs();
    let counters = guard.counters();
    let (written, dropped) = counters.log_lines_of_first_output();
    TelemetryFlushing {
        log_lines_before: written,
        log_lines_dropped: dropped,
    }
    .emit();
    guard.shutdown();
    result
}

async fn run(
    listen: std::net::SocketAddr,
    mut server_config: ServerConfig,
    cluster: Option<ClusterConfig>,
    config: &TelemetryConfig,
) -> Result<(), ServeError> {
    if let Some(cluster) = cluster {
        let cluster = Cluster::connect(cluster).await?;
        RedisConnected {
            redis: cluster.redis_url(),
            session_ttl_ms: cluster.session_ttl().as_millis() as u64,
            envelopes_signed: cluster.sealer.signs(),
        }
        .emit();
        server_config.cluster = Some(std::sync::Arc::new(cluster));
    }
    let server = Server::bind(listen, server_config)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    let addr = server.local_addr().map_err(ServeError::Serve)?;
    let state = server.state();
    let settings = &state.config;
    Listening {
        listen: addr,
        log_dir: config.log_dir.as_ref().map(|d| d.display().to_string()),
        otlp_endpoint: config
            .otlp
            .as_ref()
            .map(|o| o.endpoint_for_display.as_str()),
        admin_api: settings.admin_token.is_some(),
        jwt_auth: settings.jwt_secret.is_some(),
        cluster: settings.cluster.is_some(),
        tls: settings.tls.is_some(),
        message_sample_ratio: settings.message_sample_ratio,
    }
    .emit();
    {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            // The JSON line above is for machines; a person at a terminal
            // gets one sentence too (on stderr, never in the JSON stream).
            eprintln!("{}", ready_line(addr, settings, config));
        }
    }
    server
        .run(async {
            let signal = crate::shutdown::signal().await;
            crate::events::ShutdownRequested { signal }.emit();
        })
        .await
        .map_err(ServeError::Serve)?;
    crate::events::ServerStopped.emit();
    Ok(())
}

/// One human sentence: where the server listens, its explorer, its log
/// files, and what is on.
fn ready_line(
    addr: std::net::SocketAddr,
    settings: &ServerConfig,
    config: &TelemetryConfig,
) -> String {
    let on_off = |on: bool| if on { "on" } else { "off" };
    let (ws, http) = match settings.tls {
        Some(_) => ("wss", "https"),
        None => ("ws", "http"),
    };
    let logs = config
        .log_dir
        .as_ref()
        .map_or("no log files".to_owned(), |dir| {
            format!("logs in {}/{}.*.log", dir.display(), config.log_file_prefix)
        });
    let otlp = config.otlp.as_ref().map_or("off".to_owned(), |o| {
        format!("to {}", o.endpoint_for_display)
    });
    format!(
        "wstrace is listening on {ws}://{addr}/ws · explorer {http}://{addr}/ · {logs} · \
         admin API {} · JWT auth {} · cluster {} · OTLP {otlp} · Ctrl-C stops it",
        on_off(settings.admin_token.is_some()),
        on_off(settings.jwt_secret.is_some()),
        on_off(settings.cluster.is_some()),
    )
}

/// Raises the soft open-file limit to the hard one: each session is a
/// descriptor, and a soft limit of 1024 (or 256) would refuse connections
/// long before `--max-connections`. Says what it found, and warns when the
/// limit still falls short.
fn raise_open_file_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return;
        }
        let soft_before = limit.rlim_cur;
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        crate::events::OpenFileLimit {
            soft_before,
            soft: limit.rlim_cur,
            hard: limit.rlim_max,
            max_connections,
        }
        .emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_says_where_and_what_is_on() {
        let config = TelemetryConfig::from_env(Some("logs".into()), true);
        let settings = ServerConfig {
            admin_token: Some(crate::auth::Secret::new("t")),
            ..ServerConfig::default()
        };
        let line = ready_line("127.0.0.1:8080".parse().unwrap(), &settings, &config);
        for part in [
            "listening on ws://127.0.0.1:8080/ws",
            "explorer http://127.0.0.1:8080/",
            "logs in logs/",
            "admin API on",
            "JWT auth off",
            "cluster off",
        ] {
            assert!(line.contains(part), "{part:?} in {line}");
        }
        assert!(!line.contains('\n'), "one line: {line}");
    }
}
