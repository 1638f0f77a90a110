//! Real programs as child processes: the `wstrace` binary, and a real OTLP
//! collector (rotel, from PyPI; `scripts/test.sh` installs it and sets
//! `ROTEL_AGENT`).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{http, parse_prometheus, read_log_lines};

pub struct Wstrace {
    pub child: Child,
    pub log_dir: tempfile::TempDir,
    pub addr: String,
    /// Drains stdout as the server runs, as any real consumer would (a
    /// full pipe would otherwise stall the stdout writer).
    pub stdout: Option<std::thread::JoinHandle<String>>,
    /// Or holds it unread: a consumer that stopped reading.
    _stuck_stdout: Option<std::process::ChildStdout>,
}

impl Wstrace {
    pub fn start(envs: &[(&str, &str)]) -> Self {
        Self::start_configured(envs, |_| {}, true)
    }

    /// Starts the server with an open-file limit of `soft`/`hard`, as a
    /// shell's `ulimit -n` would leave it.
    pub fn start_with_open_files(envs: &[(&str, &str)], soft: u64, hard: u64) -> Self {
        use std::os::unix::process::CommandExt;
        Self::start_configured(
            envs,
            move |command| {
                // SAFETY: only setrlimit, which is async-signal-safe, runs
                // between fork and exec.
                unsafe {
                    command.pre_exec(move || {
                        let limit = libc::rlimit {
                            rlim_cur: soft,
                            rlim_max: hard,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            },
            true,
        )
    }

    /// Starts the server with a stdout pipe that nobody reads.
    pub fn start_with_stuck_stdout(envs: &[(&str, &str)]) -> Self {
        Self::start_configured(envs, |_| {}, false)
    }

    fn start_configured(
        envs: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
        drain_stdout: bool,
    ) -> Self {
        let log_dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_wstrace"));
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--shutdown-timeout",
                "5s",
            ])
            .env_remove("RUST_LOG")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in envs {
            command.env(key, value);
        }
        // WSTRACE_LOG_DIR in `envs` (a test's own directory) wins.
        let log_path = envs
            .iter()
            .find(|(key, _)| *key == "WSTRACE_LOG_DIR")
            .map_or_else(
                || log_dir.path().to_path_buf(),
                |(_, dir)| PathBuf::from(dir),
            );
        command.arg("--log-dir").arg(&log_path);
        configure(&mut command);
        let mut child = command.spawn().expect("spawn wstrace");
        let mut pipe = child.stdout.take().unwrap();
        let (stdout, stuck_stdout) = if drain_stdout {
            let drain = std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            });
            (Some(drain), None)
        } else {
            (None, Some(pipe))
        };
        let listening = wait_for(Duration::from_secs(20), "wstrace listening", || {
            read_log_lines(&log_path)
                .into_iter()
                .find(|l| l["msg"] == wstrace::events::Listening::MESSAGE)
        });
        let addr = listening["listen"].as_str().unwrap().to_owned();
        Self {
            child,
            log_dir,
            addr,
            stdout,
            _stuck_stdout: stuck_stdout,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// SIGKILL: the instance dies without cleaning up anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// SIGSTOP (`true`) or SIGCONT: an instance that hangs, its sockets
    /// still open.
    pub fn freeze(&self, frozen: bool) {
        self.signal(if frozen { "-STOP" } else { "-CONT" });
    }

    /// SIGHUP: reload the TLS files.
    pub fn sighup(&self) {
        self.signal("-HUP");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit; returns (exit code, stdout, log dir).
    pub fn wait(mut self) -> (Option<i32>, String, tempfile::TempDir) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "wstrace did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .stdout
            .take()
            .map_or_else(String::new, |t| t.join().unwrap());
        let log_dir = std::mem::replace(&mut self.log_dir, tempfile::tempdir().unwrap());
        (status.code(), stdout, log_dir)
    }
}

impl Drop for Wstrace {
    fn drop(&mut self) {
        // A test that fails (or never stops it) must not leave it running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    wait_for(limit, what, || f().then_some(()));
}

pub fn scrape(addr: &str) -> std::collections::HashMap<String, f64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let response = runtime.block_on(http(addr.parse().unwrap(), "GET", "/metrics", &[], None));
    parse_prometheus(&response.body)
}

pub fn rotel_agent() -> PathBuf {
    if let Some(path) = std::env::var_os("ROTEL_AGENT") {
        return path.into();
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "rotel is not installed: `pip install rotel` (scripts/test.sh does it)"
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

pub fn server_rss_kib(pid: u32) -> u64 {
    wstrace::metrics::resident_kib(pid).expect("/proc is readable")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real OTLP collector printing every span it receives.
pub struct Collector {
    pub child: Child,
    pub output: PathBuf,
    _dir: tempfile::TempDir,
    pub grpc: u16,
    pub http: u16,
}

impl Collector {
    pub fn start() -> Self {
        Self::start_on(free_port(), free_port())
    }

    /// A collector whose OTLP/gRPC receiver is on `grpc` and OTLP/HTTP
    /// receiver on `http`.
    pub fn start_on(grpc: u16, http: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("rotel.out");
        let child = Command::new(rotel_agent())
            .args(["start", "--exporter", "blackhole"])
            .args(["--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rotel-agent");
        for port in [grpc, http] {
            wait_for(Duration::from_secs(20), "rotel to listen", || {
                std::net::TcpStream::connect(("127.0.0.1", port)).ok()
            });
        }
        Self {
            child,
            output,
            _dir: dir,
            grpc,
            http,
        }
    }

    /// Spans received so far, as (trace id, name, attribute lines).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        parse_spans(&std::fs::read_to_string(&self.output).unwrap_or_default())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub name: String,
    pub body: String,
}

/// Parses rotel's detailed debug output: blocks starting with `Span #N`.
pub fn parse_spans(text: &str) -> Vec<ReceivedSpan> {
    text.split("\nSpan #")
        .skip(1)
        .filter_map(|block| {
            let field = |name: &str| {
                block.lines().find_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    (key.trim() == name).then(|| value.trim().to_owned())
                })
            };
            Some(ReceivedSpan {
                trace_id: field("Trace ID")?,
                name: field("Name")?,
                body: block.to_owned(),
            })
        })
        .collect()
}

/// A real `redis-server` (Debian's; `scripts/test.sh` installs it) on a
/// port of its own, without persistence: a restart comes back empty, as a
/// lost cache node would.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    program: PathBuf,
    /// Arguments beyond the port (a cluster node's settings).
    args: Vec<String>,
}

/// What `--redis-url` should be for a Redis the test started.
pub trait RedisUrl {
    fn url(&self) -> String;
}

/// A certificate and key (signed by `ca`) for a Redis that also listens
/// with TLS; clients need not present a certificate.
pub struct RedisTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl RedisTls {
    /// redis-server's arguments for a TLS port beside the plain one (which
    /// the test's own `redis-cli` and readiness check keep using); with
    /// `cluster`, the cluster bus and `CLUSTER SLOTS` answers use TLS too.
    fn args(&self, tls_port: u16, cluster: bool) -> Vec<String> {
        let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
        let mut args = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path(&self.cert),
            "--tls-key-file".into(),
            path(&self.key),
            "--tls-ca-cert-file".into(),
            path(&self.ca),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        if cluster {
            args.extend(["--tls-cluster".into(), "yes".into()]);
        }
        args
    }
}

/// A real redis-server reached over TLS (`rediss://`).
pub struct TlsRedisServer {
    /// Kept running while this lives.
    _server: RedisServer,
    pub tls_port: u16,
}

impl TlsRedisServer {
    pub fn start(tls: &RedisTls) -> Option<Self> {
        let tls_port = free_port();
        let server = RedisServer::start_with(tls.args(tls_port, false))?;
        Some(Self {
            _server: server,
            tls_port,
        })
    }
}

impl RedisUrl for TlsRedisServer {
    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }
}

impl RedisUrl for RedisServer {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl RedisServer {
    /// SIGSTOP (`true`) or SIGCONT: a Redis that is frozen, not gone (its
    /// sockets stay open and take bytes until their buffers fill).
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// `None` when redis-server is not installed (a failure instead under
    /// `WSTRACE_REQUIRE_TOOLS`).
    pub fn start() -> Option<Self> {
        Self::start_with(Vec::new())
    }

    fn start_with(args: Vec<String>) -> Option<Self> {
        let program = super::which("redis-server")?;
        let mut redis = Self {
            child: None,
            port: free_port(),
            program,
            args,
        };
        redis.restart();
        Some(redis)
    }

    /// Starts it (again) on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(&self.program)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_for(Duration::from_secs(10), "redis-server to answer", || {
            use std::io::Write;
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            stream.write_all(b"PING\r\n").ok()?;
            let mut reply = [0u8; 7];
            stream.read_exact(&mut reply).ok()?;
            (&reply == b"+PONG\r\n").then_some(())
        });
    }

    /// A command through the real `redis-cli`; its raw output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// SIGKILL: no goodbye to the clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real Redis Cluster on loopback: `masters` `redis-server`s with
/// `--cluster-enabled yes`, joined by the real `redis-cli --cluster
/// create`, no replicas, no persistence. A shard that is killed and
/// restarted keeps its node id and slots (its `nodes.conf` stays), but
/// comes back empty.
pub struct RedisCluster {
    pub shards: Vec<RedisServer>,
    /// Each shard's TLS port, when it was started with TLS.
    tls_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start(masters: usize) -> Option<Self> {
        Self::start_with_tls(masters, None)
    }

    /// With `tls`, every shard also listens with TLS and the cluster bus
    /// uses it; [`RedisUrl::url`] is then `rediss+cluster://`.
    pub fn start_with_tls(masters: usize, tls: Option<&RedisTls>) -> Option<Self> {
        super::which("redis-server")?;
        let mut tls_ports = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let mut shards = Vec::new();
        for i in 0..masters {
            let node_dir = dir.path().join(i.to_string());
            std::fs::create_dir(&node_dir).unwrap();
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                // The bus port explicitly: port + 10000 may not be free.
                "--cluster-port",
                &free_port().to_string(),
                "--cluster-node-timeout",
                "1000",
                // Slots of a shard that is down fail; the others still work.
                "--cluster-require-full-coverage",
                "no",
                "--dir",
                node_dir.to_str().unwrap(),
            ];
            let mut args = args.map(String::from).to_vec();
            if let Some(tls) = tls {
                let tls_port = free_port();
                tls_ports.push(tls_port);
                args.extend(tls.args(tls_port, true));
            }
            shards.push(RedisServer::start_with(args)?);
        }
        let addresses: Vec<String> = shards
            .iter()
            .map(|shard| format!("127.0.0.1:{}", shard.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {created:?}"
        );
        let cluster = Self {
            shards,
            tls_ports,
            _dir: dir,
        };
        cluster.wait_until_ok();
        Some(cluster)
    }

    /// Waits until every running shard says `cluster_state:ok` and knows
    /// every other as connected.
    pub fn wait_until_ok(&self) {
        wait_for(
            Duration::from_secs(20),
            "the Redis Cluster to be ok",
            || {
                self.shards
                    .iter()
                    .filter(|shard| shard.child.is_some())
                    .all(|shard| {
                        shard.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")
                            && !shard.cli(&["CLUSTER", "NODES"]).contains("fail")
                    })
                    .then_some(())
            },
        );
    }

    /// The index of the shard that owns `key`'s slot.
    pub fn shard_of(&self, key: &str) -> usize {
        let slot: u16 = self.shards[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .unwrap();
        let owns = |shard: &RedisServer| {
            let nodes = shard.cli(&["CLUSTER", "NODES"]);
            let myself = nodes
                .lines()
                .find(|l| l.contains("myself"))
                .unwrap()
                .to_owned();
            myself.split_whitespace().skip(8).any(|range| {
                let (start, end) = range.split_once('-').unwrap_or((range, range));
                (start.parse().unwrap_or(u16::MAX)..=end.parse().unwrap_or(0)).contains(&slot)
            })
        };
        self.shards
            .iter()
            .position(owns)
            .expect("a shard owns every slot")
    }
}

impl RedisUrl for RedisCluster {
    fn url(&self) -> String {
        let (scheme, ports) = match self.tls_ports.is_empty() {
            true => ("redis", self.shards.iter().map(|s| s.port).collect()),
            false => ("rediss", self.tls_ports.clone()),
        };
        let seeds: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("{scheme}+cluster://{}", seeds.join(","))
    }
}
