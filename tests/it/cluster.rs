//! Cluster mode against a real `redis-server`, with real `wstrace`
//! instances as child processes and real WebSocket clients: cross-instance
//! publish, direct messages and kicks, the registry's expiry, and Redis
//! lost and restored mid-run.

use crate::common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use wstrace::auth::{JwtVerifier, Secret};

const ADMIN_TOKEN: &str = "cluster-admin-token-41f0";
const JWT_SECRET: &str = "cluster-jwt-secret-77aa";
const CLUSTER_SECRET: &str = "cluster-envelope-key-5d21";

fn node(redis: &impl RedisUrl, instance_id: &str, extra: &[(&str, &str)]) -> Wstrace {
    let url = redis.url();
    let mut envs = vec![
        ("WSTRACE_REDIS_URL", url.as_str()),
        ("WSTRACE_INSTANCE_ID", instance_id),
        ("WSTRACE_MESSAGE_SAMPLE_RATIO", "1"),
        ("WSTRACE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("WSTRACE_LOG_STDOUT", "false"),
        ("WSTRACE_CLUSTER_SECRET", CLUSTER_SECRET),
    ];
    envs.extend_from_slice(extra);
    Wstrace::start(&envs)
}

/// The instance id a node was started with (from its first log line).
fn instance_of(server: &Wstrace) -> String {
    read_log_lines(server.log_dir.path())[0]["instance_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn addr(server: &Wstrace) -> SocketAddr {
    server.addr.parse().unwrap()
}

/// A client with its welcome frame read: (client, session id, trace id).
async fn join(server: &Wstrace, token: Option<&str>) -> (Client, String, String) {
    let url = match token {
        Some(token) => format!("{}?token={token}", server.url()),
        None => server.url(),
    };
    let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = next_json(&mut client).await;
    assert_eq!(welcome["type"], "welcome");
    // The client learns which instance serves it.
    assert_eq!(welcome["instance_id"], instance_of(server));
    let session = welcome["session_id"].as_str().unwrap().to_owned();
    let trace = welcome["trace_id"].as_str().unwrap().to_owned();
    (client, session, trace)
}

async fn subscribe(client: &mut Client, channel: &str) {
    send_json(client, json!({"type": "subscribe", "channel": channel})).await;
    assert_eq!(next_json(client).await["type"], "subscribed");
}

/// Asserts that no text frame arrives for a while (pings are fine).
async fn assert_quiet(client: &mut Client, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(600);
    while let Ok(next) = tokio::time::timeout_at(deadline, client.next()).await {
        match next {
            Some(Ok(Message::Text(text))) => panic!("{what} got {text}"),
            Some(Ok(_)) => continue,
            other => panic!("{what}: connection ended: {other:?}"),
        }
    }
}

async fn admin(server: &Wstrace, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    http(addr(server), method, path, &headers, body).await
}

async fn metric(server: &Wstrace, name: &str) -> f64 {
    let response = http(addr(server), "GET", "/metrics", &[], None).await;
    parse_prometheus(&response.body)
        .get(name)
        .copied()
        .unwrap_or_else(|| panic!("{name} not exported"))
}

async fn wait_until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn user_token(user: &str) -> String {
    JwtVerifier::new(Secret::new(JWT_SECRET)).sign(&json!({"sub": user}))
}

/// Instances subscribed (in Redis) to a wstrace channel's Redis channel.
fn redis_listeners(redis: &RedisServer, channel: &str) -> u64 {
    let redis_channel = format!("wstrace:ch:{channel}");
    let reply = redis.cli(&["PUBSUB", "NUMSUB", &redis_channel]);
    reply.lines().nth(1).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_hears_only_the_channels_its_sessions_subscribe_to() {
    let Some(redis) = RedisServer::start() else {
        return eprintln!("skipped: redis-server is not installed");
    };
    let fast = [("WSTRACE_MESSAGES_PER_SECOND", "0")];
    let a = node(&redis, "inst-a", &fast);
    let b = node(&redis, "inst-b", &fast);
    let (mut publisher, _, _) = join(&a, None).await;
    let (mut first, _, _) = join(&b, None).await;
    let (mut second, _, _) = join(&b, None).await;
    let publish = |channel: &str, n: usize| json!({"type": "publish", "channel": channel, "content": format!("{channel} {n}")});

    // Nobody on B listens: B is not sent A's publishes at all.
    assert_eq!(redis_listeners(&redis, "room"), 0);
    for n in 0..20 {
        send_json(&mut publisher, publish("room", n)).await;
    }
    // (A publishes through a queue: wait until Redis has them all.)
    wait_until("A to publish", Duration::from_secs(5), || async {
        metric(&a, "wstrace_cluster_published_total").await >= 20.0
    })
    .await;
    // The first subscriber makes B listen before `subscribed` is answered,
    // so the very next publish from A reaches it.
    subscribe(&mut first, "room").await;
    assert_eq!(redis_listeners(&redis, "room"), 1);
    subscribe(&mut second, "room").await;
    assert_eq!(
        redis_listeners(&redis, "room"),
        1,
        "one subscription per instance"
    );
    send_json(&mut publisher, publish("room", 100)).await;
    for receiver in [&mut first, &mut second] {
        assert_eq!(next_json(receiver).await["content"], "room 100");
    }
    assert_eq!(
        metric(&b, "wstrace_cluster_received_total").await,
        1.0,
        "B received the one publish made while it had subscribers, none of the 20 before"
    );

    // The last one to leave (by unsubscribing, or by closing) ends B's
    // subscription; the channel is re-joined when someone comes back.
    send_json(
        &mut first,
        json!({"type": "unsubscribe", "channel": "room"}),
    )
    .await;
    assert_eq!(next_json(&mut first).await["type"], "unsubscribed");
    assert_eq!(redis_listeners(&redis, "room"), 1, "one subscriber left");
    second.close(None).await.unwrap();
    wait_until("B to leave the channel", Duration::from_secs(5), || async {
        redis_listeners(&redis, "room") == 0
    })
    .await;
    for n in 200..220 {
        send_json(&mut publisher, publish("room", n)).await;
    }
    wait_until("A to publish", Duration::from_secs(5), || async {
        metric(&a, "wstrace_cluster_published_total").await >= 41.0
    })
    .await;
    subscribe(&mut first, "room").await;
    send_json(&mut publisher, publish("room", 300)).await;
    assert_eq!(next_json(&mut first).await["content"], "room 300");
    assert_quiet(&mut first, "a subscriber, after the one message").await;
    assert_eq!(metric(&b, "wstrace_cluster_received_total").await, 2.0);
    // Broadcasts to everyone still reach every instance.
    let broadcast = admin(
        &a,
        "POST",
        "/api/broadcast",
        Some(json!({"content": "all"})),
    )
    .await;
    assert_eq!(broadcast.status, 200, "{}", broadcast.body);
    assert_eq!(next_json(&mut first).await["content"], "all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_subscribers_on_every_instance_and_no_one_else() {
    let Some(redis) = RedisServer::start() else {
        return eprintln!("skipped: redis-server is not installed");
    };
    let collector = Collector::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.http);
    let otlp = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let a = node(&redis, "inst-a", &otlp);
    let b = node(&redis, "inst-b", &otlp);
    let c = node(&redis, "inst-c", &otlp);

    let (mut on_b, b_session, _) = join(&b, None).await;
    let (mut on_c, c_session, _) = join(&c, None).await;
    let (mut elsewhere_c, _, _) = join(&c, None).await;
    let (mut bystander_a, _, _) = join(&a, None).await;
    let (mut publisher, publisher_session, publisher_trace) = join(&a, None).await;
    subscribe(&mut on_b, "news").await;
    subscribe(&mut on_c, "news").await;
    subscribe(&mut elsewhere_c, "sports").await;

    send_json(
        &mut publisher,
        json!({"type": "publish", "channel": "news", "content": "hello, cluster"}),
    )
    .await;
    let mut origins = Vec::new();
    for receiver in [&mut on_b, &mut on_c] {
        let message = next_json(receiver).await;
        assert_eq!(message["type"], "message");
        assert_eq!(message["content"], "hello, cluster");
        assert_eq!(message["from_session"], publisher_session.as_str());
        let traceparent = message["traceparent"].as_str().unwrap().to_owned();
        assert_eq!(
            traceparent.split('-').nth(1),
            Some(publisher_trace.as_str())
        );
        origins.push(traceparent);
    }
    assert_eq!(origins[0], origins[1], "one publisher span");
    let publisher_span = origins[0].split('-').nth(2).unwrap().to_owned();
    assert_quiet(&mut elsewhere_c, "a subscriber of another channel").await;
    assert_quiet(&mut bystander_a, "a session that is not subscribed").await;
    assert_quiet(&mut publisher, "the publisher").await;

    // Publishes are pipelined to Redis, and still arrive in order. (50: a
    // burst larger than a receiver's 64-frame queue may, by design, close a
    // receiver that is slower than the burst with 1013.)
    for n in 0..50 {
        send_json(
            &mut publisher,
            json!({"type": "publish", "channel": "news", "content": n.to_string()}),
        )
        .await;
    }
    for receiver in [&mut on_b, &mut on_c] {
        for n in 0..50 {
            assert_eq!(next_json(receiver).await["content"], n.to_string());
        }
    }

    // Each receiver's own session logs the delivery, linked to the
    // publisher's span, on its own instance.
    for (server, session, instance) in [(&b, &b_session, "inst-b"), (&c, &c_session, "inst-c")] {
        let lines = wait_for(Duration::from_secs(10), "the delivery line", || {
            let lines = read_log_lines(server.log_dir.path());
            lines
                .iter()
                .any(|l| {
                    l["msg"] == wstrace::events::MessageDelivered::MESSAGE
                        && l["session_id"] == session.as_str()
                })
                .then_some(lines)
        });
        let delivered = lines
            .iter()
            .find(|l| {
                l["msg"] == wstrace::events::MessageDelivered::MESSAGE
                    && l["session_id"] == session.as_str()
            })
            .unwrap();
        assert_eq!(delivered["link.trace_id"], publisher_trace.as_str());
        assert_eq!(delivered["link.span_id"], publisher_span.as_str());
        assert_ne!(
            delivered["trace_id"],
            publisher_trace.as_str(),
            "the receiver's own trace"
        );
        assert!(
            lines.iter().all(|l| l["instance_id"] == instance),
            "instance_id on every line"
        );
    }

    // The trace shows the hop: redis.publish on A, a redis.deliver child on
    // B and on C, in the publisher's trace.
    // (The first message's publish span is the child of its ws.receive.)
    let (publish, delivers) = wait_for(Duration::from_secs(20), "the hop spans", || {
        let spans = collector.spans();
        let publish = spans.iter().find(|s| {
            s.name == "redis.publish"
                && s.trace_id == publisher_trace
                && span_field(&s.body, "Parent ID") == publisher_span
        })?;
        let publish_id = span_field(&publish.body, "ID");
        let delivers: Vec<String> = spans
            .iter()
            .filter(|s| s.name == "redis.deliver" && s.trace_id == publisher_trace)
            .filter(|s| span_field(&s.body, "Parent ID") == publish_id)
            .map(|s| s.body.clone())
            .collect();
        (delivers.len() == 2).then(|| (publish.body.clone(), delivers))
    });
    assert!(
        publish.contains("cluster.instance_id: Str(inst-a)"),
        "{publish}"
    );
    let mut delivered_on: Vec<&str> = Vec::new();
    for deliver in &delivers {
        for instance in ["inst-b", "inst-c"] {
            if deliver.contains(&format!("cluster.instance_id: Str({instance})")) {
                delivered_on.push(instance);
            }
        }
    }
    delivered_on.sort();
    assert_eq!(delivered_on, ["inst-b", "inst-c"]);
}

/// A field of rotel's detailed span dump (`ID`, `Parent ID`).
fn span_field(body: &str, name: &str) -> String {
    body.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_admin_sends_and_kicks_cross_instances() {
    let Some(redis) = RedisServer::start() else {
        return eprintln!("skipped: redis-server is not installed");
    };
    let jwt = [("WSTRACE_JWT_SECRET", JWT_SECRET)];
    let a = node(&redis, "inst-a", &jwt);
    let b = node(&redis, "inst-b", &jwt);
    let (mut sender, sender_session, _) = join(&a, Some(&user_token("sam"))).await;
    let (mut alice_a, _, _) = join(&a, Some(&user_token("alice"))).await;
    let (mut alice_b, alice_b_session, _) = join(&b, Some(&user_token("alice"))).await;
    let (mut bob_b, bob_session, _) = join(&b, Some(&user_token("bob"))).await;

    // Both instances see the whole cluster, each session with its instance.
    let listed = admin(&a, "GET", "/api/sessions", None).await.json();
    assert_eq!(listed["scope"], "cluster");
    assert_eq!(listed["count"], 4, "{listed}");
    let instance_of = |id: &str| {
        listed["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["session_id"] == id)
            .map(|s| s["instance_id"].clone())
    };
    assert_eq!(instance_of(&bob_session), Some(json!("inst-b")));
    assert_eq!(instance_of(&sender_session), Some(json!("inst-a")));
    let one = admin(&a, "GET", &format!("/api/sessions/{bob_session}"), None).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["user"], "bob");

    // To a session on the other instance.
    send_json(
        &mut sender,
        json!({"type": "direct", "to_session": bob_session, "content": "hi bob"}),
    )
    .await;
    let message = next_json(&mut bob_b).await;
    assert_eq!(message["content"], "hi bob");
    assert_eq!(message["from_user"], "sam");

    // To a user with a session on each instance: both get it, once.
    send_json(
        &mut sender,
        json!({"type": "direct", "to_user": "alice", "content": "hi alice"}),
    )
    .await;
    assert_eq!(next_json(&mut alice_a).await["content"], "hi alice");
    assert_eq!(next_json(&mut alice_b).await["content"], "hi alice");
    assert_quiet(&mut alice_b, "alice on B, after her one copy").await;

    // Nobody anywhere: a clear error frame.
    send_json(
        &mut sender,
        json!({"type": "direct", "to_user": "nobody", "content": "?"}),
    )
    .await;
    let error = next_json(&mut sender).await;
    assert_eq!(error["code"], "no_such_recipient", "{error}");

    // The admin API on A sends to a session on B.
    let sent = admin(
        &a,
        "POST",
        "/api/send",
        Some(json!({"session_id": alice_b_session, "content": "from ops"})),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let report = sent.json();
    // B said what it delivered: the report is what happened, not a guess.
    assert_eq!(report["remote_sessions"], 1, "{report}");
    assert_eq!(report["forwarded_to_instances"], 1, "{report}");
    assert_eq!(report["here"]["delivered"], 0, "{report}");
    assert_eq!(report["elsewhere"]["delivered"], 1, "{report}");
    assert_eq!(report["elsewhere"]["unconfirmed_instances"], 0, "{report}");
    assert_eq!(report["delivered"], 1, "{report}");
    assert_eq!(next_json(&mut alice_b).await["content"], "from ops");

    // ...and kicks it; B closes it with the code, and logs the admin
    // request in the session's own trace.
    let kicked = admin(
        &a,
        "DELETE",
        &format!("/api/sessions/{bob_session}?code=4000&reason=bye"),
        None,
    )
    .await;
    assert_eq!(kicked.status, 200, "{}", kicked.body);
    assert_eq!(kicked.json()["instance_id"], "inst-b");
    assert_eq!(next_close(&mut bob_b).await, (4000, "bye".to_owned()));
    let lines = wait_for(Duration::from_secs(10), "the kick in B's logs", || {
        let lines = read_log_lines(b.log_dir.path());
        lines
            .iter()
            .any(|l| {
                l["msg"] == wstrace::events::SessionClosed::MESSAGE
                    && l["session_id"] == bob_session.as_str()
            })
            .then_some(lines)
    });
    let touched = lines
        .iter()
        .find(|l| {
            l["msg"] == wstrace::events::AdminTouchedSession::MESSAGE
                && l["session_id"] == bob_session.as_str()
        })
        .expect("the admin request is in the session's trace");
    assert_eq!(touched["admin.action"], "close");
    let closed = lines
        .iter()
        .find(|l| {
            l["msg"] == wstrace::events::SessionClosed::MESSAGE
                && l["session_id"] == bob_session.as_str()
        })
        .unwrap();
    assert_eq!(closed["closed_by"], "admin");

    // Gone from the registry once closed.
    wait_until(
        "bob leaves the registry",
        Duration::from_secs(10),
        || async {
            admin(&a, "GET", &format!("/api/sessions/{bob_session}"), None)
                .await
                .status
                == 404
        },
    )
    .await;
    let unknown = admin(&a, "DELETE", &format!("/api/sessions/{bob_session}"), None).await;
    assert_eq!(unknown.status, 404);

    // A graceful stop takes B's sessions and stats out of Redis at once,
    // not after the TTL (75 s by default).
    b.sigterm();
    let (code, _, _) = b.wait();
    assert_eq!(code, Some(0));
    drop(alice_b);
    let left = admin(&a, "GET", "/api/sessions", None).await.json();
    assert_eq!(left["count"], 2, "only A's sessions: {left}");
    let stats = admin(&a, "GET", "/api/stats", None).await.json();
    assert_eq!(stats["cluster"]["instances"], 1, "{stats}");
}

/// Echo round trips on one session.
async fn echoes(client: &mut Client, count: usize) {
    for i in 0..count {
        send_json(client, json!({"type": "echo", "content": format!("m{i}")})).await;
        assert_eq!(next_json(client).await["content"], format!("m{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_switch_reaches_a_session_on_another_instance() {
    let Some(redis) = RedisServer::start() else {
        return eprintln!("skipped: redis-server is not installed");
    };
    let unsampled = [("WSTRACE_MESSAGE_SAMPLE_RATIO", "0")];
    let a = node(&redis, "inst-a", &unsampled);
    let b = node(&redis, "inst-b", &unsampled);
    let (mut client, session, trace) = join(&b, None).await;
    let lines_of_b = |msg: &'static str| {
        read_log_lines(b.log_dir.path())
            .into_iter()
            .filter(|l| l["session_id"] == session.as_str() && l["msg"] == msg)
            .collect::<Vec<_>>()
    };
    echoes(&mut client, 2).await;
    let path = format!("/api/sessions/{session}/debug");
    let on = admin(
        &a,
        "POST",
        &path,
        Some(json!({"minutes": 5, "requested_by": "oncall-amy"})),
    )
    .await;
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(on.json()["instance_id"], "inst-b");
    assert_eq!(on.json()["forwarded"], true);
    // B applies it when the envelope arrives, and says so in the session's
    // trace, with who asked.
    let switched = wait_for(Duration::from_secs(10), "debug on, in B's log", || {
        lines_of_b(wstrace::events::DebugSwitched::ON).pop()
    });
    assert_eq!(switched["requested_by"], "oncall-amy");
    assert_eq!(switched["trace_id"], trace.as_str());
    echoes(&mut client, 3).await;
    let off = admin(&a, "DELETE", &path, None).await;
    assert_eq!(off.status, 200, "{}", off.body);
    wait_for(Duration::from_secs(10), "debug off, in B's log", || {
        lines_of_b(wstrace::events::DebugSwitched::OFF).pop()
    });
    echoes(&mut client, 2).await;
    client.close(None).await.unwrap();
    wait_for(Duration::from_secs(10), "session closed", || {
        lines_of_b(wstrace::events::SessionClosed::MESSAGE).pop()
    });
    // Only the three messages sent while it was on were recorded.
    assert_eq!(
        lines_of_b(wstrace::events::MessageHandled::MESSAGE).len(),
        3
    );
    // An unknown session is a 404 on every instance.
    let unknown = format!("/api/sessions/{}/debug", uuid::Uuid::now_v7());
    let missing = admin(&a, "POST", &unknown, Some(json!({"minutes": 5}))).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_search_broadcast_and_stats_cover_every_instance_and_name_the_silent() {
    let Some(redis) = RedisServer::start() else {
        return eprintln!("skipped: redis-server is not installed");
    };
    let a = node(&redis, "inst-a", &[]);
    let b = node(&redis, "inst-b", &[]);
    let (mut on_a, _, _) = join(&a, None).await;
    let (mut on_b, b_session, b_trace) = join(&b, None).await;
    subscribe(&mut on_a, "ops").await;
    subscribe(&mut on_b, "ops").await;

    // A broadcast through A reports what B delivered too.
    let body = json!({"channel": "ops", "content": "deploy at noon"});
    let sent = admin(&a, "POST", "/api/broadcast", Some(body)).await.json();
    assert_eq!(sent["here"]["delivered"], 1, "{sent}");
    assert_eq!(sent["forwarded_to_instances"], 1, "{sent}");
    assert_eq!(sent["elsewhere"]["delivered"], 1, "{sent}");
    assert_eq!(sent["delivered"], 2, "{sent}");
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(next_json(client).await["content"], "deploy at noon");
    }

    // A session on B, searched through A: B's lines, merged, and B named.
    let path = format!("/api/logs?q={b_trace}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let found = admin(&a, "GET", &path, None).await.json();
        if found["lines"].as_array().is_some_and(|l| !l.is_empty()) {
            break found;
        }
        assert!(Instant::now() < deadline, "B's lines through A: {found}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found["scope"], "cluster", "{found}");
    assert_eq!(found["partial"], false, "{found}");
    let lines = found["lines"].as_array().unwrap();
    assert!(
        lines.iter().all(|l| l["trace_id"] == b_trace.as_str()),
        "{found}"
    );
    assert!(lines.iter().any(|l| l["session_id"] == b_session.as_str()));
    let instances: Vec<&str> = found["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(instances.len(), 2, "{found}");
    let short = &b_session[..8];
    let by_short = admin(&a, "GET", &format!("/api/logs?q={short}"), None)
        .await
        .json();
    assert!(
        !by_short["lines"].as_array().unwrap().is_empty(),
        "{by_short}"
    );

    // Per-instance stats say when they were taken.
    let stats = admin(&a, "GET", "/api/stats", None).await.json();
    let per_instance = stats["cluster"]["per_instance"].as_array().unwrap();
    assert_eq!(per_instance.len(), 2, "{stats}");
    for entry in per_instance {
        assert!(
            entry["as_of"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{entry}"
        );
        assert!(entry["age_ms"].is_u64(), "{entry}");
    }

    // B hangs: the search answers with A's part and names B.
    b.freeze(true);
    let started = Instant::now();
    let partial = admin(&a, "GET", &path, None).await.json();
    b.freeze(false);
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(partial["scope"], "cluster", "{partial}");
    let silent = partial["partial"].as_array().expect("partial names B");
    assert_eq!(silent[0]["instance_id"], instance_of(&b), "{partial}");
    assert_eq!(partial["lines"].as_array().unwrap().len(), 0, "{partial}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_killed_instance_expire_from_the_registry_within_one_ttl() {
    let Some(redis) = RedisServer::start() else {
        return eprintln!("skipped: redis-server is not installed");
    };
    let ttl = [
        ("WSTRACE_HEARTBEAT_INTERVAL", "300ms"),
        ("WSTRACE_CLUSTER_SESSION_TTL", "2s"),
    ];
    let a = node(&redis, "inst-a", &ttl);
    let mut b = node(&redis, "inst-b", &ttl);
    let (_on_a, a_session, _) = join(&a, None).await;
    let mut on_b = Vec::new();
    for _ in 0..3 {
        on_b.push(join(&b, None).await);
    }
    let count = || async { admin(&a, "GET", "/api/sessions", None).await.json()["count"].as_u64() };
    assert_eq!(count().await, Some(4));
    // Heartbeats renew the entries: still there after more than one TTL.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert_eq!(count().await, Some(4), "live sessions must not expire");
    let stats = admin(&a, "GET", "/api/stats", None).await.json();
    assert_eq!(stats["cluster"]["instances"], 2, "{stats}");
    assert_eq!(stats["cluster"]["sessions_active"], 4, "{stats}");

    b.kill();
    let killed = Instant::now();
    wait_until("B's sessions to expire", Duration::from_secs(6), || async {
        count().await == Some(1)
    })
    .await;
    let expired_after = killed.elapsed();
    let listed = admin(&a, "GET", "/api/sessions", None).await.json();
    assert_eq!(listed["sessions"][0]["session_id"], a_session.as_str());
    // Within one TTL (2 s) of the last renewal, plus polling slack.
    assert!(
        expired_after < Duration::from_millis(2000 + 1500),
        "{expired_after:?}"
    );
    wait_until("B's stats to expire", Duration::from_secs(6), || async {
        admin(&a, "GET", "/api/stats", None).await.json()["cluster"]["instances"] == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_keeps_local_delivery_and_cross_instance_delivery_resumes() {
    let Some(mut redis) = RedisServer::start() else {
        return eprintln!("skipped: redis-server is not installed");
    };
    let fast = [
        ("WSTRACE_TELEMETRY_REPORT_INTERVAL", "500ms"),
        ("WSTRACE_REDIS_TIMEOUT", "300ms"),
        // The burst below is not what the rate limit is about.
        ("WSTRACE_MESSAGES_PER_SECOND", "0"),
    ];
    let a = node(&redis, "inst-a", &fast);
    let b = node(&redis, "inst-b", &fast);
    let (mut publisher, _, _) = join(&a, None).await;
    let (mut local, _, _) = join(&a, None).await;
    let (mut remote, remote_session, _) = join(&b, None).await;
    subscribe(&mut local, "alerts").await;
    subscribe(&mut remote, "alerts").await;
    let publish =
        |n: usize| json!({"type": "publish", "channel": "alerts", "content": format!("alert {n}")});

    send_json(&mut publisher, publish(0)).await;
    assert_eq!(next_json(&mut local).await["content"], "alert 0");
    assert_eq!(next_json(&mut remote).await["content"], "alert 0");

    redis.kill();
    wait_until("A to notice", Duration::from_secs(10), || async {
        metric(&a, "wstrace_cluster_redis_up").await == 0.0
    })
    .await;
    for n in 1..=5 {
        send_json(&mut publisher, publish(n)).await;
        // Local delivery never stops...
        assert_eq!(next_json(&mut local).await["content"], format!("alert {n}"));
        // ...and the publisher is told the rest of the cluster missed it.
        let error = next_json(&mut publisher).await;
        assert_eq!(error["code"], "cluster_unavailable", "{error}");
    }
    // Nothing piles up while Redis is away: a burst of publishes fails
    // at once and leaves A's memory flat.
    let rss_before = metric(&a, "process_resident_memory_bytes").await;
    for n in 0..2000 {
        send_json(&mut publisher, publish(1000 + n)).await;
        assert_eq!(next_json(&mut local).await["type"], "message");
        assert_eq!(
            next_json(&mut publisher).await["code"],
            "cluster_unavailable"
        );
    }
    let grown = metric(&a, "process_resident_memory_bytes").await - rss_before;
    assert!(grown < 8.0 * 1024.0 * 1024.0, "RSS grew {grown} bytes");
    assert_quiet(&mut remote, "a session on B while Redis is down").await;
    assert!(metric(&a, "wstrace_cluster_publish_failures_total").await >= 2005.0);
    // The admin API says so too.
    let sessions = admin(&a, "GET", "/api/sessions", None).await.json();
    assert_eq!(sessions["scope"], "instance");
    assert!(sessions["cluster_error"].is_string(), "{sessions}");
    let send = admin(
        &a,
        "POST",
        "/api/send",
        Some(json!({"session_id": remote_session, "content": "?"})),
    )
    .await;
    assert_eq!(send.status, 503, "{}", send.body);
    assert_eq!(send.json()["error"]["code"], "cluster_unavailable");

    redis.restart();
    wait_until("A and B to reconnect", Duration::from_secs(20), || async {
        metric(&a, "wstrace_cluster_redis_up").await == 1.0
            && metric(&b, "wstrace_cluster_redis_up").await == 1.0
    })
    .await;
    send_json(&mut publisher, publish(6)).await;
    assert_eq!(next_json(&mut local).await["content"], "alert 6");
    assert_eq!(next_json(&mut remote).await["content"], "alert 6");
    // Redis came back empty; the instances register their sessions again.
    wait_until(
        "every session back in the registry",
        Duration::from_secs(10),
        || async {
            let listed = admin(&a, "GET", "/api/sessions", None).await.json();
            listed["scope"] == "cluster" && listed["count"] == 3
        },
    )
    .await;
    assert!(metric(&a, "wstrace_cluster_reconnects_total").await >= 1.0);

    // The outage is in the logs: the loss, the failures at most once per
    // interval, the recovery; and no panic.
    let lines = read_log_lines(a.log_dir.path());
    assert_eq!(with_msg(&lines, "lost the connection to Redis: sessions here are served as before; cross-instance delivery fails until it returns (retrying with backoff)").len(), 1);
    let failing = with_msg(
        &lines,
        "cross-instance delivery failing: messages reached this instance's sessions only",
    );
    assert!(!failing.is_empty());
    let reported: u64 = failing
        .iter()
        .map(|l| l["publish_failures"].as_u64().unwrap())
        .sum();
    assert!(reported >= 2005, "{reported}");
    assert_eq!(
        with_msg(
            &lines,
            "reconnected to Redis: cross-instance delivery resumed"
        )
        .len(),
        1
    );
    assert!(
        lines.iter().all(|l| l["level"].as_u64() < Some(50)),
        "no error lines"
    );
}

/// Redis frozen (SIGSTOP) while sessions publish large messages: A sees
/// it within `--redis-timeout` (redis_up 0), its memory stays bounded (the
/// queue is bounded in bytes and timed-out pipelines are dropped with
/// their connection), and the codes tell the truth: no message answered
/// `cluster_unavailable` ever reaches B; only `cluster_delivery_unknown`
/// ones may. After SIGCONT delivery resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_detected_bounds_memory_and_codes_tell_the_truth() {
    let Some(redis) = RedisServer::start() else {
        return eprintln!("skipped: redis-server is not installed");
    };
    let fast = [
        ("WSTRACE_TELEMETRY_REPORT_INTERVAL", "500ms"),
        ("WSTRACE_REDIS_TIMEOUT", "500ms"),
        ("WSTRACE_MESSAGES_PER_SECOND", "0"),
    ];
    let a = node(&redis, "inst-a", &fast);
    let b = node(&redis, "inst-b", &fast);
    let (mut remote, _, _) = join(&b, None).await;
    subscribe(&mut remote, "big").await;
    let mut publishers = Vec::new();
    for _ in 0..4 {
        publishers.push(join(&a, None).await.0);
    }
    let padding = "x".repeat(60 * 1024);
    let publish = |n: usize| json!({"type": "publish", "channel": "big", "content": format!("{n:05} {padding}")});
    send_json(&mut publishers[0], publish(0)).await;
    assert!(
        next_json(&mut remote).await["content"]
            .as_str()
            .unwrap()
            .starts_with("00000")
    );

    let rss_before = metric(&a, "process_resident_memory_bytes").await;
    redis.freeze(true);
    let frozen_at = std::time::Instant::now();
    let mut detected = None;
    // ~2 s of 4 × 60 KiB messages every 10 ms: ~48 MiB offered.
    let mut n = 1;
    while frozen_at.elapsed() < Duration::from_secs(2) {
        for publisher in &mut publishers {
            send_json(publisher, publish(n)).await;
            n += 1;
        }
        if detected.is_none() && metric(&a, "wstrace_cluster_redis_up").await == 0.0 {
            detected = Some(frozen_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let grown = metric(&a, "process_resident_memory_bytes").await - rss_before;
    let detected = detected.expect("redis_up never went to 0");
    eprintln!("frozen Redis: detected after {detected:?}, A's RSS grew {grown} bytes");
    assert!(
        detected < Duration::from_millis(1500),
        "detected after {detected:?}"
    );
    assert!(grown < 40.0 * 1024.0 * 1024.0, "RSS grew {grown} bytes");
    // What each publisher was told, by message number.
    let (mut unavailable, mut unknown) = (Vec::new(), Vec::new());
    for publisher in &mut publishers {
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(Duration::from_millis(300), publisher.next()).await
        {
            let Message::Text(text) = frame else { continue };
            let frame: Value = serde_json::from_str(&text).unwrap();
            match frame["code"].as_str() {
                Some("cluster_unavailable") => unavailable.push(frame),
                Some("cluster_delivery_unknown") => unknown.push(frame),
                _ => {}
            }
        }
    }
    assert!(
        !unavailable.is_empty(),
        "publishes after the detection are refused"
    );
    let refused = unavailable.len() + unknown.len();

    redis.freeze(false);
    wait_until("A and B to recover", Duration::from_secs(20), || async {
        metric(&a, "wstrace_cluster_redis_up").await == 1.0
            && metric(&b, "wstrace_cluster_redis_up").await == 1.0
    })
    .await;
    // Whatever Redis had already read arrives now; then the marker.
    send_json(
        &mut publishers[0],
        json!({"type": "publish", "channel": "big", "content": "marker"}),
    )
    .await;
    let mut received = 0;
    loop {
        let frame = next_json(&mut remote).await;
        let content = frame["content"].as_str().unwrap().to_owned();
        if content == "marker" {
            break;
        }
        received += 1;
    }
    // Every message is either told as refused or delivered, never both.
    let sent = n - 1;
    assert!(
        received + unavailable.len() <= sent,
        "{received} delivered + {} told not sent > {sent} sent",
        unavailable.len()
    );
    assert!(
        received + refused >= sent,
        "{received} + {refused} < {sent}"
    );
}

#[test]
fn cluster_mode_refuses_to_start_without_redis_and_hides_the_password() {
    let port = free_port();
    let log_dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis-timeout",
            "300ms",
        ])
        .arg("--log-dir")
        .arg(log_dir.path())
        .env(
            "WSTRACE_REDIS_URL",
            format!("redis://:hunter2@127.0.0.1:{port}"),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot reach Redis at redis://:***@127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("run a single instance without --redis-url"),
        "{stderr}"
    );
    let everything = format!(
        "{stderr}{}{}",
        String::from_utf8_lossy(&output.stdout),
        read_log_lines(log_dir.path())
            .iter()
            .map(Value::to_string)
            .collect::<String>()
    );
    assert!(!everything.contains("hunter2"), "the password leaked");
    assert!(!everything.contains("wstrace listening"));

    let short = std::process::Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-file", "false"])
        .args([
            "--heartbeat-interval",
            "30s",
            "--cluster-session-ttl",
            "10s",
        ])
        .args(["--redis-url", &format!("redis://127.0.0.1:{port}")])
        .output()
        .unwrap();
    // Settings that cannot work: a usage error, as for a bad flag.
    assert_eq!(short.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(
        stderr.contains("must be longer than --heartbeat-interval"),
        "{stderr}"
    );
}

/// `pipeline/nginx.conf` run by a real nginx (Debian's, a stand-in for the
/// compose file's `nginx:1.27.4-alpine` image), with only the upstream
/// addresses, the port and the log paths replaced.
struct Nginx {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: [&str; 2]) -> Option<Self> {
        // Debian puts it in /usr/sbin, which a non-root PATH may lack.
        let sbin = std::path::PathBuf::from("/usr/sbin/nginx");
        let program = if sbin.is_file() {
            sbin
        } else {
            which("nginx")?
        };
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let config =
            std::fs::read_to_string(crate::common::repo_root().join("pipeline/nginx.conf"))
                .unwrap()
                .replace("wstrace-1:8080", upstreams[0])
                .replace("wstrace-2:8080", upstreams[1])
                .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
                .replace("/dev/stdout", &path("access.log"))
                .replace(
                    "http {",
                    &format!(
                        "http {{\n    client_body_temp_path {};\n    proxy_temp_path {};",
                        path("body"),
                        path("proxy")
                    ),
                );
        assert!(config.contains(upstreams[0]) && config.contains(upstreams[1]));
        std::fs::write(path("nginx.conf"), config).unwrap();
        let child = std::process::Command::new(program)
            .args(["-c", &path("nginx.conf"), "-p", &path("")])
            .args(["-g", &format!("daemon off; pid {};", path("nginx.pid"))])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_for(Duration::from_secs(10), "nginx to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Some(Self { child, port, dir })
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_nginx_runs_the_compose_proxy_config_over_both_instances() {
    let Some(redis) = RedisServer::start() else {
        return eprintln!("skipped: redis-server is not installed");
    };
    // nginx (127.0.0.1) is the instances' trusted proxy.
    let settings = [
        ("WSTRACE_JWT_SECRET", JWT_SECRET),
        ("WSTRACE_TRUSTED_PROXIES", "127.0.0.1"),
    ];
    let a = node(&redis, "inst-a", &settings);
    let b = node(&redis, "inst-b", &settings);
    let Some(nginx) = Nginx::start([&a.addr, &b.addr]) else {
        return eprintln!("skipped: nginx is not installed");
    };
    let token = user_token("pat");
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut clients = Vec::new();
    for i in 0..4 {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("ws://127.0.0.1:{}/ws?token={token}", nginx.port);
        let mut request = url.into_client_request().unwrap();
        if i == 0 {
            request
                .headers_mut()
                .insert("traceparent", traceparent.parse().unwrap());
        }
        // Each client from an address of its own, 127.0.0.2 to .5.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from(([127, 0, 0, 2 + i], 0)))
            .unwrap();
        let stream = socket
            .connect(format!("127.0.0.1:{}", nginx.port).parse().unwrap())
            .await
            .unwrap();
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        let (mut client, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap();
        let welcome = next_json(&mut client).await;
        let trace_id = welcome["trace_id"].as_str().unwrap().to_owned();
        // The trace ID survives the proxy, and so does the caller's trace.
        assert_eq!(response.headers()["x-trace-id"], trace_id.as_str());
        if i == 0 {
            assert_eq!(trace_id, "0af7651916cd43dd8448eb211c80319c");
        }
        subscribe(&mut client, "room").await;
        clients.push((client, welcome["session_id"].as_str().unwrap().to_owned()));
    }

    // Through the proxy, one service: every session, on both instances.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let proxy: SocketAddr = format!("127.0.0.1:{}", nginx.port).parse().unwrap();
    let listed = http(
        proxy,
        "GET",
        "/api/sessions",
        &[("authorization", &auth)],
        None,
    )
    .await
    .json();
    assert_eq!(listed["count"], 4, "{listed}");
    let mut instances: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["instance_id"].as_str().unwrap())
        .collect();
    instances.sort();
    instances.dedup();
    assert_eq!(
        instances,
        ["inst-a", "inst-b"],
        "least_conn spreads sessions"
    );
    // nginx's X-Forwarded-For names each client; the TCP peer is nginx.
    let mut client_addresses: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{s}");
            s["client"].as_str().unwrap()
        })
        .collect();
    client_addresses.sort();
    assert_eq!(
        client_addresses,
        ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    );

    // A publish reaches the room on both instances.
    send_json(
        &mut clients[0].0,
        json!({"type": "publish", "channel": "room", "content": "through the proxy"}),
    )
    .await;
    for (client, _) in &mut clients[1..] {
        assert_eq!(next_json(client).await["content"], "through the proxy");
    }

    // The proxy's access log has the upgrades, and never the token.
    drop(clients);
    let log = wait_for(Duration::from_secs(10), "the access log", || {
        let log = nginx.access_log();
        (log.matches("\"uri\":\"/ws\"").count() >= 4).then_some(log)
    });
    assert!(log.contains("\"status\":101"), "{log}");
    assert!(log.contains("0af7651916cd43dd8448eb211c80319c"), "{log}");
    assert!(!log.contains(&token), "the JWT reached the proxy log");
}

/// Whoever can `PUBLISH` to Redis is not trusted: envelopes must carry the
/// cluster secret's signature, and even signed ones are checked like admin
/// requests. A forged delivery (any frame, any `from_user`) and a kick with
/// a code no operator may use reach nobody; they are counted and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_or_invalid_envelopes_are_dropped() {
    use wstrace::cluster::envelope::{Action, Audience, ENVELOPE_VERSION, Envelope, Sealer};
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = node(&redis, "node-a", &[]);
    let b = node(&redis, "node-b", &[]);
    let (mut listener, session, _) = join(&b, None).await;
    subscribe(&mut listener, "news").await;
    let forged_frame = json!({"type": "message", "id": "m", "channel": "news",
        "from_user": "admin", "content": "forged", "ts": 1, "traceparent": "00-00"})
    .to_string();
    let envelope = |action: Action| Envelope {
        v: ENVELOPE_VERSION,
        from_instance: "intruder".into(),
        origin: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        hop: None,
        sampled: true,
        action,
    };
    let deliver = envelope(Action::Deliver {
        to: Audience::Channel {
            channel: "news".into(),
        },
        message_id: "m".into(),
        frame: forged_frame.clone(),
        channel: Some("news".into()),
        from_session: None,
        ack: None,
    });
    let kick = envelope(Action::Kick {
        session_id: session.parse().unwrap(),
        code: 1005,
        reason: "r".repeat(3002),
    });
    let right = Sealer::new(Some(Secret::new(CLUSTER_SECRET)));
    let wrong = Sealer::new(Some(Secret::new("guessed")));
    let payloads = [
        Sealer::new(None).seal(&deliver),
        wrong.seal(&deliver),
        right.seal(&kick),
        "not even json".to_string(),
    ];
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    for payload in &payloads {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("wstrace:bus")
            .arg(payload)
            .query_async(&mut connection)
            .await
            .unwrap();
    }
    assert_quiet(&mut listener, "a subscriber of forged envelopes").await;
    wait_until("forgeries counted", Duration::from_secs(5), || async {
        metric(&b, "wstrace_cluster_malformed_total").await >= payloads.len() as f64
    })
    .await;
    // A real publish from the other instance still arrives, signed.
    let (mut publisher, _, _) = join(&a, None).await;
    send_json(
        &mut publisher,
        json!({"type": "publish", "channel": "news", "content": "real"}),
    )
    .await;
    let message = next_json(&mut listener).await;
    assert_eq!(message["content"], "real");
    // A warning for each; the log writer is asynchronous, so wait for them.
    let dropped = || {
        read_log_lines(b.log_dir.path())
            .into_iter()
            .filter(|l| l["msg"] == wstrace::events::ClusterEnvelopeDropped::MESSAGE)
            .collect::<Vec<_>>()
    };
    wait_until("a warning per forgery", Duration::from_secs(15), || async {
        dropped().len() >= payloads.len()
    })
    .await;
    for line in dropped() {
        let error = line["error"].as_str().unwrap();
        assert!(
            error.contains("--cluster-secret") || error.contains("refused"),
            "{line}"
        );
    }
}

// ---- A Redis Cluster (sharded pub/sub) ----

/// Starts a 3-master Redis Cluster, or says why the test is skipped.
fn redis_cluster() -> Option<RedisCluster> {
    let cluster = RedisCluster::start(3);
    if cluster.is_none() {
        eprintln!("skipped: redis-server is not installed");
    }
    cluster
}

/// The sharded channel's subscribers on the shard that owns it.
fn shard_listeners(cluster: &RedisCluster, channel: &str) -> u64 {
    let redis_channel = format!("wstrace:ch:{channel}");
    let shard = &cluster.shards[cluster.shard_of(&redis_channel)];
    let reply = shard.cli(&["PUBSUB", "SHARDNUMSUB", &redis_channel]);
    reply.lines().nth(1).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_carries_publishes_directs_kicks_debug_and_the_registry() {
    let Some(redis) = redis_cluster() else { return };
    let settings = [
        ("WSTRACE_JWT_SECRET", JWT_SECRET),
        ("WSTRACE_HEARTBEAT_INTERVAL", "300ms"),
        ("WSTRACE_CLUSTER_SESSION_TTL", "2s"),
    ];
    let a = node(&redis, "inst-a", &settings);
    let mut b = node(&redis, "inst-b", &settings);
    let (mut publisher, _, publisher_trace) = join(&a, Some(&user_token("sam"))).await;
    let (mut on_b, b_session, b_trace) = join(&b, Some(&user_token("bob"))).await;
    let (mut kicked_b, kicked_session, _) = join(&b, Some(&user_token("kim"))).await;

    // Channels spread over the shards; only B subscribes each, by SSUBSCRIBE
    // on the shard that owns it.
    let channels = ["news", "sports", "weather", "tech", "music", "art"];
    let shards: std::collections::HashSet<usize> = channels
        .iter()
        .map(|c| redis.shard_of(&format!("wstrace:ch:{c}")))
        .collect();
    assert!(shards.len() > 1, "the channels must span shards");
    for channel in channels {
        subscribe(&mut on_b, channel).await;
        assert_eq!(shard_listeners(&redis, channel), 1, "{channel}");
    }
    for channel in channels {
        let content = format!("on {channel}");
        send_json(
            &mut publisher,
            json!({"type": "publish", "channel": channel, "content": content}),
        )
        .await;
        let message = next_json(&mut on_b).await;
        assert_eq!(message["content"], content.as_str(), "{message}");
        let traceparent = message["traceparent"].as_str().unwrap();
        assert_eq!(
            traceparent.split('-').nth(1),
            Some(publisher_trace.as_str())
        );
    }
    assert_quiet(&mut on_b, "B after one copy of each").await;

    // The registry: keys spread over the shards, listed from every one.
    let listed = admin(&a, "GET", "/api/sessions", None).await.json();
    assert_eq!(listed["scope"], "cluster");
    assert_eq!(listed["count"], 3, "{listed}");

    // A direct message to a user on the other instance.
    send_json(
        &mut publisher,
        json!({"type": "direct", "to_user": "bob", "content": "hi bob"}),
    )
    .await;
    assert_eq!(next_json(&mut on_b).await["content"], "hi bob");

    // The debug switch, through A, for B's session.
    let on = admin(
        &a,
        "POST",
        &format!("/api/sessions/{b_session}/debug"),
        Some(json!({"minutes": 5, "requested_by": "oncall-amy"})),
    )
    .await;
    assert_eq!(on.status, 200, "{}", on.body);
    assert_eq!(on.json()["instance_id"], "inst-b");
    let switched = wait_for(Duration::from_secs(10), "debug on, in B's log", || {
        read_log_lines(b.log_dir.path()).into_iter().find(|l| {
            l["msg"] == wstrace::events::DebugSwitched::ON && l["session_id"] == b_session.as_str()
        })
    });
    assert_eq!(switched["trace_id"], b_trace.as_str());

    // A kick, through A, of a session on B.
    let kick = admin(
        &a,
        "DELETE",
        &format!("/api/sessions/{kicked_session}?code=4000&reason=bye"),
        None,
    )
    .await;
    assert_eq!(kick.status, 200, "{}", kick.body);
    assert_eq!(next_close(&mut kicked_b).await, (4000, "bye".to_owned()));

    // B dies without a goodbye: its sessions leave the registry within a TTL.
    b.kill();
    wait_until("B's sessions to expire", Duration::from_secs(8), || async {
        admin(&a, "GET", "/api/sessions", None).await.json()["count"] == 1
    })
    .await;
    wait_until("B's stats to expire", Duration::from_secs(8), || async {
        admin(&a, "GET", "/api/stats", None).await.json()["cluster"]["instances"] == 1
    })
    .await;
}

/// The first name `name(i)` whose Redis key hashes to a shard for which
/// `wanted` holds.
fn name_on(
    redis: &RedisCluster,
    key: impl Fn(&str) -> String,
    wanted: impl Fn(usize) -> bool,
) -> String {
    (0..)
        .map(|i| format!("n{i}"))
        .find(|name| wanted(redis.shard_of(&key(name))))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_cluster_shard_fails_only_its_channels_and_recovers_by_itself() {
    let Some(mut redis) = redis_cluster() else {
        return;
    };
    // The shard to kill holds neither the bus nor the instances' own
    // channels and keys: what it takes down is its channels.
    let doomed = (0..3)
        .find(|&i| redis.shard_of("wstrace:bus") != i)
        .unwrap();
    let safe = |shard| shard != doomed;
    let instance = |prefix: &str| {
        let ok = |id: &str| {
            safe(redis.shard_of(&format!("wstrace:to:{id}")))
                && safe(redis.shard_of(&format!("wstrace:instance:{id}")))
        };
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|id| ok(id))
            .unwrap()
    };
    let (id_a, id_b) = (instance("inst-a-"), instance("inst-b-"));
    let lost = name_on(&redis, |c| format!("wstrace:ch:{c}"), |s| s == doomed);
    let kept = name_on(&redis, |c| format!("wstrace:ch:{c}"), safe);
    let fast = [
        ("WSTRACE_REDIS_TIMEOUT", "500ms"),
        ("WSTRACE_TELEMETRY_REPORT_INTERVAL", "500ms"),
    ];
    let a = node(&redis, &id_a, &fast);
    let b = node(&redis, &id_b, &fast);
    let (mut publisher, _, _) = join(&a, None).await;
    let (mut on_b, _, _) = join(&b, None).await;
    subscribe(&mut on_b, &lost).await;
    subscribe(&mut on_b, &kept).await;
    let publish = |channel: &str, content: &str| json!({"type": "publish", "channel": channel, "content": content});
    for channel in [&lost, &kept] {
        send_json(&mut publisher, publish(channel, "before")).await;
        assert_eq!(next_json(&mut on_b).await["channel"], channel.as_str());
    }

    redis.shards[doomed].kill();
    // The shard's channel fails, clearly, for the publisher...
    send_json(&mut publisher, publish(&lost, "during")).await;
    let error = next_json(&mut publisher).await;
    assert_eq!(error["code"], "cluster_unavailable", "{error}");
    // ...and for a subscriber on an instance that does not hear it yet
    // (it cannot join it); every other channel works.
    let (mut late, _, _) = join(&a, None).await;
    send_json(&mut late, json!({"type": "subscribe", "channel": lost})).await;
    // Joined here, and told that other instances cannot reach it yet.
    assert_eq!(next_json(&mut late).await["type"], "subscribed");
    let refused = next_json(&mut late).await;
    assert_eq!(refused["code"], "cluster_unavailable", "{refused}");
    for n in 0..20 {
        send_json(&mut publisher, publish(&kept, &format!("kept {n}"))).await;
        assert_eq!(next_json(&mut on_b).await["content"], format!("kept {n}"));
    }
    assert_eq!(metric(&a, "wstrace_cluster_redis_up").await, 1.0);

    // The shard returns (empty, same slots): delivery on its channel
    // resumes without a restart of either instance.
    redis.shards[doomed].restart();
    redis.wait_until_ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    'recovered: loop {
        assert!(Instant::now() < deadline, "{lost} never came back");
        attempt += 1;
        let content = format!("after {attempt}");
        send_json(&mut publisher, publish(&lost, &content)).await;
        let wait = tokio::time::Instant::now() + Duration::from_millis(700);
        loop {
            tokio::select! {
                reply = next_json(&mut publisher) => {
                    assert_eq!(reply["code"], "cluster_unavailable", "{reply}");
                    break;
                }
                message = next_json(&mut on_b) => {
                    // Only what was published after the shard returned.
                    assert_eq!(message["channel"], lost.as_str());
                    if message["content"] == content.as_str() {
                        break 'recovered;
                    }
                }
                _ = tokio::time::sleep_until(wait) => break,
            }
        }
    }
    send_json(&mut publisher, publish(&lost, "steady")).await;
    assert_eq!(next_json(&mut on_b).await["content"], "steady");
    assert_quiet(&mut on_b, "B after the shard returned").await;

    let lines = read_log_lines(b.log_dir.path());
    assert!(
        !with_msg(&lines, wstrace::events::RedisShardLost::MESSAGE).is_empty(),
        "the lost shard is in B's log"
    );
}

/// The test CA's files for a Redis that listens with TLS.
fn redis_tls(certs: &crate::tls::TestCerts) -> RedisTls {
    RedisTls {
        cert: certs.path("server.pem"),
        key: certs.path("server.key"),
        ca: certs.path("ca.pem"),
    }
}

/// A publish on A reaches a subscriber on B, both over `redis`.
async fn assert_cross_instance_publish(redis: &impl RedisUrl, ca: &str) {
    let trust = [("SSL_CERT_FILE", ca)];
    let (a, b) = (node(redis, "tls-a", &trust), node(redis, "tls-b", &trust));
    let (mut publisher, _, _) = join(&a, None).await;
    let (mut listener, _, _) = join(&b, None).await;
    for channel in ["news", "sports", "weather"] {
        subscribe(&mut listener, channel).await;
        let content = format!("over TLS on {channel}");
        let publish = json!({"type": "publish", "channel": channel, "content": content});
        send_json(&mut publisher, publish).await;
        assert_eq!(next_json(&mut listener).await["content"], content.as_str());
    }
}

/// `rediss://` to one node and `rediss+cluster://` to a Redis Cluster whose
/// every shard (and cluster bus) speaks TLS, certificates checked against
/// `SSL_CERT_FILE`; a Redis whose certificate is not trusted refuses the
/// start with a reason, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_reaches_redis_and_a_redis_cluster_over_tls() {
    let Some(_) = which("redis-server") else {
        return eprintln!("skipped: redis-server is not installed");
    };
    let certs = crate::tls::TestCerts::new();
    let tls = redis_tls(&certs);
    let ca = certs.path("ca.pem");
    let ca = ca.to_str().unwrap();

    let node_redis = TlsRedisServer::start(&tls).unwrap();
    assert_cross_instance_publish(&node_redis, ca).await;
    let cluster = RedisCluster::start_with_tls(3, Some(&tls)).unwrap();
    assert!(cluster.url().starts_with("rediss+cluster://"));
    assert_cross_instance_publish(&cluster, ca).await;

    // Without the test CA among the trusted roots: no start, and why.
    let log_dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(["serve", "--listen", "127.0.0.1:0", "--redis-timeout", "2s"])
        .arg("--log-dir")
        .arg(log_dir.path())
        .env("WSTRACE_REDIS_URL", node_redis.url())
        .env("SSL_CERT_FILE", certs.path("server.key"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot reach Redis at {}", node_redis.url()))
            && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
}
