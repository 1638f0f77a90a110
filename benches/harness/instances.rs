//! `WSTRACE_BENCH_ONLY=instances`: what an instance pays for the size of
//! its cluster. N instances behind one real redis-server, each with its own
//! chat (one channel, `INSTANCE_SUBSCRIBERS` subscribers and a publisher of
//! its own), so no message needs another instance: an instance's CPU per
//! local publish should not grow with N. Beside it, the receiving
//! instance's CPU per publish when the publisher sits on another instance,
//! against the same chat all local.
//!
//! `WSTRACE_BENCH_BASELINE=/path/to/wstrace` measures another build beside
//! this one, in the same rounds.

use crate::*;

/// Subscribers on each instance's own channel.
const INSTANCE_SUBSCRIBERS: usize = 10;
/// Cluster sizes measured.
const SIZES: [usize; 4] = [1, 2, 4, 8];

/// One wstrace build under test.
struct Build {
    name: String,
    binary: PathBuf,
}

fn builds() -> Vec<Build> {
    let mut builds = vec![Build {
        name: "this build".into(),
        binary: PathBuf::from(env!("CARGO_BIN_EXE_wstrace")),
    }];
    if let Some(baseline) = std::env::var_os("WSTRACE_BENCH_BASELINE") {
        builds.push(Build {
            name: format!("baseline ({})", Path::new(&baseline).display()),
            binary: baseline.into(),
        });
    }
    builds
}

fn start_instances(build: &Build, redis_url: &str, count: usize, round: usize) -> Vec<Server> {
    (0..count)
        .map(|i| {
            Server::wstrace_binary(Kind::WstraceFull, &build.binary, |command| {
                command
                    .args(["--instance-id", &format!("bench-{round}-{i}")])
                    .args(["--redis-url", redis_url]);
            })
        })
        .collect()
}

/// A chat: subscribers on `subscribers_at`, one publisher on
/// `publisher_at`, `rate` publishes/s for `length`. Returns the subscriber
/// tasks (each ends at the stop message with its count) and the number
/// published.
struct Chat {
    readers: Vec<tokio::task::JoinHandle<Vec<u64>>>,
    publisher: Ws,
    channel: String,
}

impl Chat {
    async fn open(publisher_at: &Server, subscribers_at: &Server, channel: String) -> Self {
        use tokio_tungstenite::tungstenite::Message;
        let mut readers = Vec::new();
        for _ in 0..INSTANCE_SUBSCRIBERS {
            let mut ws = protocol_client(subscribers_at).await;
            let subscribe = serde_json::json!({"type": "subscribe", "channel": channel});
            ws.send(Message::Text(subscribe.to_string().into()))
                .await
                .unwrap();
            ws.next().await.unwrap().unwrap();
            readers.push(tokio::spawn(subscriber(ws, None)));
        }
        Self {
            readers,
            publisher: protocol_client(publisher_at).await,
            channel,
        }
    }

    fn frame(&self, content: String) -> tokio_tungstenite::tungstenite::Message {
        let json =
            serde_json::json!({"type": "publish", "channel": self.channel, "content": content});
        tokio_tungstenite::tungstenite::Message::Text(json.to_string().into())
    }

    async fn publish_for(&mut self, rate: f64, length: Duration) -> u64 {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let started = Instant::now();
        let mut sent = 0;
        while started.elapsed() < length {
            ticks.tick().await;
            let frame = self.frame(since_start_ns().to_string());
            self.publisher.send(frame).await.unwrap();
            sent += 1;
        }
        sent
    }

    /// Ends the chat; asserts every subscriber got every message.
    async fn close(mut self, sent: u64) {
        let stop = self.frame(STOP.into());
        self.publisher.send(stop).await.unwrap();
        for reader in self.readers {
            let got = tokio::time::timeout(Duration::from_secs(30), reader)
                .await
                .expect("subscribers finish")
                .unwrap();
            assert_eq!(got.len() as u64, sent, "every subscriber got every message");
        }
        let _ = self.publisher.close(None).await;
    }
}

/// N instances, each with its own chat, all publishing at once: each
/// instance's CPU per publish, median over the instances.
async fn per_local_publish(instances: &[Server], plan: &Plan, round: usize) -> f64 {
    let mut chats = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        chats.push(Chat::open(instance, instance, format!("own-{round}-{i}")).await);
    }
    // Let subscriptions settle before the window opens.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before: Vec<Duration> = instances.iter().map(Server::cpu).collect();
    let rate = plan.fanout_rate / 2.0;
    let sent = futures_util::future::join_all(
        chats
            .iter_mut()
            .map(|chat| chat.publish_for(rate, plan.saturation)),
    )
    .await;
    // What the instances still do for the window's publishes (queued
    // deliveries) belongs to it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut per_publish: Vec<f64> = instances
        .iter()
        .zip(&before)
        .zip(&sent)
        .map(|((instance, before), sent)| {
            (instance.cpu() - *before).as_secs_f64() * 1e6 / *sent as f64
        })
        .collect();
    for (chat, sent) in chats.into_iter().zip(sent) {
        chat.close(sent).await;
    }
    per_publish.sort_by(f64::total_cmp);
    median(&per_publish)
}

/// The receiving instance's CPU per publish: publisher on `publisher_at`,
/// subscribers on `receiver`.
async fn receiver_cost(publisher_at: &Server, receiver: &Server, plan: &Plan, name: &str) -> f64 {
    let mut chat = Chat::open(publisher_at, receiver, name.to_owned()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = receiver.cpu();
    let sent = chat
        .publish_for(plan.fanout_rate / 2.0, plan.saturation)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cost = (receiver.cpu() - before).as_secs_f64() * 1e6 / sent as f64;
    chat.close(sent).await;
    cost
}

pub(crate) async fn instances(plan: &Plan) -> String {
    let Some(redis_program) = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        return "instances benchmark skipped: redis-server is not installed".into();
    };
    let builds = builds();
    // cost[build][size] and the cross-instance pair per build, one sample
    // per round.
    let mut cost = vec![vec![Vec::new(); SIZES.len()]; builds.len()];
    let mut local = vec![Vec::new(); builds.len()];
    let mut remote = vec![Vec::new(); builds.len()];
    for round in 0..plan.rounds {
        for (b, build) in builds.iter().enumerate() {
            for k in 0..SIZES.len() {
                let s = (k + round) % SIZES.len();
                // A fresh Redis each time: nothing left from the last size.
                let (mut redis, port) = start_redis(&redis_program);
                let url = format!("redis://127.0.0.1:{port}");
                let instances = start_instances(build, &url, SIZES[s], round);
                cost[b][s].push(per_local_publish(&instances, plan, round).await);
                if SIZES[s] == 2 {
                    let (a, z) = (&instances[0], &instances[1]);
                    local[b].push(receiver_cost(z, z, plan, &format!("local-{round}")).await);
                    remote[b].push(receiver_cost(a, z, plan, &format!("remote-{round}")).await);
                }
                drop(instances);
                let _ = redis.kill();
                let _ = redis.wait();
            }
        }
        eprintln!("instances round {} of {} done", round + 1, plan.rounds);
    }
    use std::fmt::Write;
    let mut report = String::new();
    let _ = writeln!(
        report,
        "| build | instances | CPU µs per local publish (median instance) | × one instance |"
    );
    let _ = writeln!(report, "|---|---|---|---|");
    for (b, build) in builds.iter().enumerate() {
        let one = median(&cost[b][0]);
        for (s, size) in SIZES.iter().enumerate() {
            let at = median(&cost[b][s]);
            let _ = writeln!(
                report,
                "| {} | {size} | {at:.1} | {:.2} |",
                build.name,
                at / one
            );
        }
    }
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "| build | receiving instance's CPU µs per publish: publisher here | publisher on another instance | × here |"
    );
    let _ = writeln!(report, "|---|---|---|---|");
    for (b, build) in builds.iter().enumerate() {
        let (here, there) = (median(&local[b]), median(&remote[b]));
        let _ = writeln!(
            report,
            "| {} | {here:.1} | {there:.1} | {:.2} |",
            build.name,
            there / here
        );
    }
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "{INSTANCE_SUBSCRIBERS} subscribers per channel, {} publishes/s per instance for {:?}; medians of {} rounds",
        plan.fanout_rate / 2.0,
        plan.saturation,
        plan.rounds
    );
    report
}
