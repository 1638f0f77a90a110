//! Fan-out across instances through a real redis-server.

use crate::*;

/// A wstrace instance for the fan-out benchmark: cluster mode when
/// `redis_url` is given, default message sample ratio.
pub(crate) fn start_node(redis_url: Option<&str>, instance_id: &str) -> Server {
    Server::wstrace(Kind::WstraceFull, |command| {
        command.args(["--instance-id", instance_id]);
        if let Some(url) = redis_url {
            command.args(["--redis-url", url]);
        }
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real redis-server on a free port, pinned with the servers.
pub(crate) fn start_redis(program: &Path) -> (Child, u16) {
    start_redis_with(program, &[])
}

fn start_redis_with(program: &Path, args: &[String]) -> (Child, u16) {
    let port = free_port();
    let child = pinned(0)
        .arg(program)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port)
}

/// A real Redis Cluster of `masters` redis-servers (no replicas, pinned
/// with the servers), joined by `redis-cli --cluster create`: the
/// processes, the `redis+cluster://` URL, and the nodes' directory.
pub(crate) fn start_redis_cluster(
    program: &Path,
    masters: usize,
) -> (Vec<Child>, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..masters {
        let node_dir = dir.path().join(i.to_string());
        std::fs::create_dir(&node_dir).unwrap();
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-port",
            &free_port().to_string(),
            "--dir",
            node_dir.to_str().unwrap(),
        ];
        nodes.push(start_redis_with(program, &args.map(String::from)));
    }
    let seeds: Vec<String> = nodes
        .iter()
        .map(|(_, port)| format!("127.0.0.1:{port}"))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&seeds)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        created.status.success(),
        "redis-cli --cluster create: {created:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let ok = |port: &u16| {
        let info = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok")
    };
    while !nodes.iter().all(|(_, port)| ok(port)) {
        assert!(Instant::now() < deadline, "the Redis Cluster did not form");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("redis+cluster://{}", seeds.join(","));
    (
        nodes.into_iter().map(|(child, _)| child).collect(),
        url,
        dir,
    )
}

pub(crate) fn since_start_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

pub(crate) async fn protocol_client(server: &Server) -> Ws {
    let stream = TcpStream::connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = client_async(server.url(), stream).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws
}

pub(crate) const STOP: &str = "stop";

/// Reads `message` frames until the stop message; returns one latency
/// sample (µs, from the content's send time) per message, and, when
/// `acks` is given, returns a permit per message to the publisher.
pub(crate) async fn subscriber(mut ws: Ws, acks: Option<Arc<tokio::sync::Semaphore>>) -> Vec<u64> {
    use tokio_tungstenite::tungstenite::Message;
    let mut samples = Vec::new();
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let now = since_start_ns();
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame["type"] != "message" {
            continue;
        }
        let content = frame["content"].as_str().unwrap();
        if content == STOP {
            break;
        }
        let sent: u64 = content.parse().unwrap();
        samples.push(now.saturating_sub(sent) / 1000);
        if let Some(acks) = &acks {
            acks.add_permits(1);
        }
    }
    samples
}

pub(crate) struct FanOutResult {
    pub(crate) latency_us: Vec<u64>,
    pub(crate) deliveries_per_s: f64,
}

/// One publisher on `publisher_at`, `subscribers` receivers on
/// `subscribers_at`, all on a channel of their own. Latency: an open-loop
/// publish rate. Throughput: as fast as the slowest path allows, with at
/// most `plan.window` messages not yet received by the first subscriber.
pub(crate) async fn fan_out(
    publisher_at: &Server,
    subscribers_at: &Server,
    channel: &str,
    plan: &Plan,
    rate: f64,
) -> FanOutResult {
    use tokio_tungstenite::tungstenite::Message;
    let publish = |content: String| {
        Message::Text(
            serde_json::json!({"type": "publish", "channel": channel, "content": content})
                .to_string()
                .into(),
        )
    };
    let mut phases = Vec::new();
    for phase in ["latency", "throughput"] {
        let acks =
            (phase == "throughput").then(|| Arc::new(tokio::sync::Semaphore::new(plan.window)));
        let mut readers = Vec::new();
        for i in 0..plan.fanout_subscribers {
            let mut ws = protocol_client(subscribers_at).await;
            let subscribe = serde_json::json!({"type": "subscribe", "channel": channel});
            ws.send(Message::Text(subscribe.to_string().into()))
                .await
                .unwrap();
            ws.next().await.unwrap().unwrap();
            let acks = if i == 0 { acks.clone() } else { None };
            readers.push(tokio::spawn(subscriber(ws, acks)));
        }
        let mut publisher = protocol_client(publisher_at).await;
        let started = Instant::now();
        let mut sent = 0u64;
        match &acks {
            None => {
                let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                while started.elapsed() < plan.latency {
                    ticks.tick().await;
                    publisher
                        .send(publish(since_start_ns().to_string()))
                        .await
                        .unwrap();
                    sent += 1;
                }
            }
            Some(acks) => {
                while started.elapsed() < plan.saturation {
                    acks.acquire().await.unwrap().forget();
                    publisher
                        .send(publish(since_start_ns().to_string()))
                        .await
                        .unwrap();
                    sent += 1;
                }
            }
        }
        publisher.send(publish(STOP.into())).await.unwrap();
        let mut latency_us = Vec::new();
        let mut received = 0;
        for reader in readers {
            let samples = tokio::time::timeout(Duration::from_secs(30), reader)
                .await
                .expect("subscribers finish")
                .unwrap();
            received += samples.len() as u64;
            latency_us.extend(samples);
        }
        let elapsed = started.elapsed();
        assert_eq!(
            received,
            sent * plan.fanout_subscribers as u64,
            "every subscriber got every message"
        );
        latency_us.sort_unstable();
        phases.push((latency_us, received as f64 / elapsed.as_secs_f64()));
        let _ = publisher.close(None).await;
    }
    let (throughput, latency) = (phases.pop().unwrap(), phases.pop().unwrap());
    FanOutResult {
        latency_us: latency.0,
        deliveries_per_s: throughput.1,
    }
}

/// `WSTRACE_BENCH_ONLY=cluster`: fan-out latency and throughput through
/// Redis between two instances, next to the same fan-out on one instance
/// without cluster mode (and within one instance with it on).
pub(crate) async fn cluster(plan: &Plan) -> String {
    let Some(redis_program) = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        return "cluster benchmark skipped: redis-server is not installed".into();
    };
    let (mut redis, port) = start_redis(&redis_program);
    let url = format!("redis://127.0.0.1:{port}");
    let single = start_node(None, "bench-single");
    let a = start_node(Some(&url), "bench-a");
    let b = start_node(Some(&url), "bench-b");
    let paths: [(&str, &Server, &Server); 3] = [
        ("one instance, no cluster mode", &single, &single),
        ("cluster mode, same instance", &a, &a),
        ("cluster mode, across instances (via Redis)", &a, &b),
    ];
    let mut p50 = vec![Vec::new(); paths.len()];
    let mut p99 = vec![Vec::new(); paths.len()];
    let mut rate = vec![Vec::new(); paths.len()];
    for round in 0..plan.rounds {
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            let (_, publisher_at, subscribers_at) = paths[i];
            let channel = format!("bench-{round}-{i}");
            let result = fan_out(
                publisher_at,
                subscribers_at,
                &channel,
                plan,
                plan.fanout_rate,
            )
            .await;
            p50[i].push(percentile(&result.latency_us, 50.0) as f64);
            p99[i].push(percentile(&result.latency_us, 99.0) as f64);
            rate[i].push(result.deliveries_per_s);
        }
        eprintln!("cluster round {} of {} done", round + 1, plan.rounds);
    }
    let _ = redis.kill();
    let _ = redis.wait();
    use std::fmt::Write;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "| fan-out path | p50 µs | p99 µs | p99 ×one instance | deliveries/s | ×one instance |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|");
    let (base_p99, base_rate) = (median(&p99[0]), median(&rate[0]));
    for (i, (name, _, _)) in paths.iter().enumerate() {
        let _ = writeln!(
            report,
            "| {name} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
            median(&p50[i]),
            median(&p99[i]),
            median(&p99[i]) / base_p99,
            median(&rate[i]),
            median(&rate[i]) / base_rate,
        );
    }
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "{} subscribers per publish; latency at {} publishes/s; throughput with at most {} messages in flight; plan: {plan:?}",
        plan.fanout_subscribers, plan.fanout_rate, plan.window
    );
    report
}
