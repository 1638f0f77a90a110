//! The three tiers of message tracing, end to end: the flight recorder a
//! failing session writes, debug sessions (each of the ways a session
//! becomes one) with their spans at a real collector (rotel), and the cap
//! on debug sessions. All at message sample ratio 0, so that everything a
//! test finds was recorded because of its tier, not by chance.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wstrace::auth::{JwtVerifier, Secret};
use wstrace::events::{
    DebugSessionRefused, DebugSwitched, FlightRecorded, MessageHandled, SessionClosed,
    SessionOpened,
};

const JWT_SECRET: &str = "sampling-jwt-secret-2b7e";
const ADMIN_TOKEN: &str = "sampling-admin-token-c41d";

fn token(claims: Value) -> String {
    JwtVerifier::new(Secret::new(JWT_SECRET)).sign(&claims)
}

fn lines_with<'a>(lines: &'a [Value], session: &str, msg: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["session_id"] == session && l["msg"] == msg)
        .collect()
}

// ------------------------------------------------------- flight recorder

/// The server's lines once these sessions have written `session closed`
/// and the server has stopped.
async fn lines_once_closed(server: &mut TestServer, sessions: &[&str]) -> Vec<Value> {
    for session in sessions {
        server
            .wait_for_line("session closed", |l| {
                l["msg"] == SessionClosed::MESSAGE && l["session_id"] == *session
            })
            .await;
    }
    server.stop().await;
    server.log_lines()
}

/// Sends `count` echo messages of growing size, reading each reply; returns
/// the sizes of (request, reply) as they were on the wire.
async fn echo_many(client: &mut Client, count: usize) -> Vec<(usize, usize)> {
    let mut sizes = Vec::new();
    for i in 0..count {
        let request = json!({"type": "echo", "content": "x".repeat(i)}).to_string();
        client
            .send(Message::Text(request.clone().into()))
            .await
            .unwrap();
        let reply = loop {
            match client.next().await.unwrap().unwrap() {
                Message::Text(text) => break text,
                _ => continue,
            }
        };
        sizes.push((request.len(), reply.len()));
    }
    sizes
}

#[tokio::test]
async fn a_1009_writes_the_last_32_messages_and_a_normal_close_writes_none() {
    let mut server = TestServer::start().await;
    let (mut failing, failing_id) = server.open_session().await;
    let (mut fine, fine_id) = server.open_session().await;

    let sizes = echo_many(&mut failing, 50).await;
    echo_many(&mut fine, 50).await;
    let mebibyte = json!({"type": "echo", "content": "y".repeat(1 << 20)}).to_string();
    // The server may close while the frame is still being written.
    let _ = failing.send(Message::Text(mebibyte.into())).await;
    let (code, _) = next_close(&mut failing).await;
    assert_eq!(code, 1009);
    close_politely(&mut fine).await;
    let lines = lines_once_closed(&mut server, &[&failing_id, &fine_id]).await;
    assert!(lines_with(&lines, &fine_id, FlightRecorded::MESSAGE).is_empty());
    let recorded = lines_with(&lines, &failing_id, FlightRecorded::MESSAGE);
    assert_eq!(recorded.len(), 1, "written once: {recorded:#?}");
    let line = recorded[0];
    assert_eq!(line["level"], 40);
    assert_eq!(line["trigger"], "close 1009");
    assert_eq!(line["flight.messages"], 32);
    // 50 requests and 50 replies; the ring keeps the last 32.
    assert_eq!(line["flight.skipped"], 68);
    let entries = line["flight_recorder"]
        .as_array()
        .expect("the recording is JSON in the line, not a string");
    assert_eq!(entries.len(), 32);
    // In order, alternating request and reply: the last 16 round trips.
    let expected: Vec<(u64, &str, &str, usize)> = sizes[34..]
        .iter()
        .enumerate()
        .flat_map(|(i, &(request, reply))| {
            let seq = 69 + 2 * i as u64;
            [
                (seq, "in", "echo", request),
                (seq + 1, "out", "echo", reply),
            ]
        })
        .collect();
    let got: Vec<(u64, &str, &str, usize)> = entries
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["dir"].as_str().unwrap(),
                e["type"].as_str().unwrap(),
                e["size"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(got, expected);
    let times: Vec<f64> = entries
        .iter()
        .map(|e| e["at_ms"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // Unsampled messages have no span ids; nothing of the content is kept.
    assert!(entries.iter().all(|e| e.get("span_id").is_none()));
    assert!(!line.to_string().contains("xxxx"));
    // Written in the session's trace, before `session closed`.
    let session_lines = lines_of_session(&lines, &failing_id);
    let position = |msg: &str| session_lines.iter().position(|l| l["msg"] == msg).unwrap();
    assert!(position(FlightRecorded::MESSAGE) < position(SessionClosed::MESSAGE));
    let trace = &session_lines[0]["trace_id"];
    assert!(session_lines.iter().all(|l| &l["trace_id"] == trace));
}

#[tokio::test]
async fn an_error_frame_writes_the_recorder_once_in_the_failing_messages_span() {
    let mut server = TestServer::start().await;
    let (mut client, session) = server.open_session().await;
    echo_many(&mut client, 3).await;
    for _ in 0..2 {
        send_json(
            &mut client,
            json!({"type": "direct", "to_user": "nobody", "content": "?"}),
        )
        .await;
        assert_eq!(next_json(&mut client).await["code"], "no_such_recipient");
    }
    close_politely(&mut client).await;
    let lines = lines_once_closed(&mut server, &[&session]).await;
    let recorded = lines_with(&lines, &session, FlightRecorded::MESSAGE);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["trigger"], "no_such_recipient");
    let entries = recorded[0]["flight_recorder"].as_array().unwrap();
    // Three round trips, then the failing message itself.
    assert_eq!(entries.len(), 7);
    assert_eq!(entries[6]["type"], "direct");
    assert_eq!(entries[6]["dir"], "in");
    // The refusal line and the recorder are in the failing message's span,
    // which is not the session's.
    let refused = lines_with(&lines, &session, wstrace::events::FrameRefused::MESSAGE);
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0]["span_id"], recorded[0]["span_id"]);
    let opened = &lines_with(&lines, &session, SessionOpened::MESSAGE)[0];
    assert_ne!(opened["span_id"], recorded[0]["span_id"]);
}

// -------------------------------------------------------- debug sessions

/// A session with its welcome read: (client, session id, trace id).
async fn open(
    server: &Wstrace,
    token: Option<&str>,
    tracestate: Option<&str>,
) -> (Client, String, String) {
    let url = match token {
        Some(token) => format!("{}?token={token}", server.url()),
        None => server.url(),
    };
    let mut request = url.into_client_request().unwrap();
    if let Some(state) = tracestate {
        let headers = request.headers_mut();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", state.parse().unwrap());
    }
    let (mut client, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let welcome = next_json(&mut client).await;
    (
        client,
        welcome["session_id"].as_str().unwrap().to_owned(),
        welcome["trace_id"].as_str().unwrap().to_owned(),
    )
}

async fn echoes(client: &mut Client, count: usize) {
    for i in 0..count {
        send_json(client, json!({"type": "echo", "content": format!("m{i}")})).await;
        assert_eq!(next_json(client).await["content"], format!("m{i}"));
    }
}

async fn admin(server: &Wstrace, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
    let addr: SocketAddr = server.addr.parse().unwrap();
    let auth = format!("Bearer {ADMIN_TOKEN}");
    http(addr, method, path, &[("authorization", &auth)], body).await
}

fn server_with(extra: &[(&str, &str)], collector: Option<&Collector>) -> Wstrace {
    let endpoint = collector.map(|c| format!("http://127.0.0.1:{}", c.grpc));
    let mut envs = vec![
        ("WSTRACE_MESSAGE_SAMPLE_RATIO", "0"),
        ("WSTRACE_JWT_SECRET", JWT_SECRET),
        ("WSTRACE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("WSTRACE_LOG_STDOUT", "false"),
    ];
    if let Some(endpoint) = &endpoint {
        envs.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
        envs.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"));
    }
    envs.extend_from_slice(extra);
    Wstrace::start(&envs)
}

async fn stop(server: Wstrace) -> Vec<Value> {
    server.sigterm();
    let (code, _, log_dir) = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    read_log_lines(log_dir.path())
}

/// Span names by count, for one trace.
fn span_counts(collector: &Collector, trace_id: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for span in collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
    {
        *counts.entry(span.name).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_sessions_trace_every_message_and_ordinary_ones_none() {
    let collector = Collector::start();
    let server = server_with(
        &[
            ("WSTRACE_DEBUG_USERS", "carol,someone-else"),
            ("WSTRACE_ALLOW_CLIENT_DEBUG", "true"),
        ],
        Some(&collector),
    );
    let sub = |user: &str| token(json!({"sub": user}));
    let (mut ordinary, ordinary_id, ordinary_trace) = open(&server, Some(&sub("bob")), None).await;
    let claim_token = token(json!({"sub": "ann", "wstrace_debug": true}));
    let (mut claim, claim_id, claim_trace) = open(&server, Some(&claim_token), None).await;
    let (mut listed, listed_id, listed_trace) = open(&server, Some(&sub("carol")), None).await;
    let (mut asked, asked_id, asked_trace) =
        open(&server, Some(&sub("dan")), Some("vendor=1,wstrace=debug")).await;
    let (mut toggled, toggled_id, toggled_trace) = open(&server, Some(&sub("eve")), None).await;

    const N: usize = 5;
    for client in [&mut ordinary, &mut claim, &mut listed, &mut asked] {
        echoes(client, N).await;
    }
    // The operator's switch: 2 messages before, 3 during, 2 after.
    echoes(&mut toggled, 2).await;
    let on = admin(
        &server,
        "POST",
        &format!("/api/sessions/{toggled_id}/debug"),
        Some(json!({"minutes": 10, "requested_by": "oncall-amy"})),
    )
    .await;
    assert_eq!(on.status, 200, "{}", on.body);
    let on = on.json();
    assert_eq!(on["debug"], true);
    assert_eq!(on["debug_reason"], "admin");
    let until = on["debug_until_ms"].as_u64().unwrap();
    let now = wstrace::protocol::unix_ms(std::time::SystemTime::now());
    assert!(
        (now + 9 * 60_000..=now + 10 * 60_000).contains(&until),
        "{on}"
    );
    let listed_view = admin(&server, "GET", &format!("/api/sessions/{toggled_id}"), None).await;
    assert_eq!(listed_view.json()["debug"], true);
    echoes(&mut toggled, 3).await;
    let off = admin(
        &server,
        "DELETE",
        &format!("/api/sessions/{toggled_id}/debug"),
        None,
    )
    .await;
    assert_eq!(off.status, 200, "{}", off.body);
    assert_eq!(off.json()["debug"], false);
    echoes(&mut toggled, 2).await;

    for client in [
        &mut ordinary,
        &mut claim,
        &mut listed,
        &mut asked,
        &mut toggled,
    ] {
        close_politely(client).await;
    }
    let lines = stop(server).await;

    // Every message of a debug session has its spans at the collector.
    let expected = [
        (&claim_trace, N),
        (&listed_trace, N),
        (&asked_trace, N),
        (&toggled_trace, 3),
    ];
    wait_for(Duration::from_secs(20), "the debug sessions' spans", || {
        expected
            .iter()
            .all(|(trace, n)| span_counts(&collector, trace).get("ws.send") >= Some(n))
            .then_some(())
    });
    for (trace, n) in expected {
        let counts = span_counts(&collector, trace);
        assert_eq!(counts.get("ws.receive"), Some(&n), "{trace}: {counts:?}");
        assert_eq!(counts.get("ws.send"), Some(&n), "{trace}: {counts:?}");
    }
    let debug_spans = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == claim_trace && s.name == "ws.session")
        .map(|s| s.body)
        .collect::<String>();
    assert!(debug_spans.contains("wstrace.debug"), "{debug_spans}");
    // The ordinary session beside them: no message spans at all.
    let counts = span_counts(&collector, &ordinary_trace);
    assert!(counts.contains_key("ws.session"), "{counts:?}");
    assert_eq!(counts.get("ws.receive"), None, "{counts:?}");
    assert_eq!(counts.get("ws.send"), None, "{counts:?}");

    // And a `message handled` line for each message, in its span, with its duration.
    for (session, n) in [
        (&claim_id, N),
        (&listed_id, N),
        (&asked_id, N),
        (&toggled_id, 3),
        (&ordinary_id, 0),
    ] {
        let received = lines_with(&lines, session, MessageHandled::MESSAGE);
        assert_eq!(received.len(), n, "{session}");
    }
    // Each says why in `session opened`.
    for (session, reason) in [
        (&claim_id, Some("jwt_claim")),
        (&listed_id, Some("debug_user")),
        (&asked_id, Some("tracestate")),
        (&ordinary_id, None),
        (&toggled_id, None),
    ] {
        let opened = lines_with(&lines, session, SessionOpened::MESSAGE)[0];
        assert_eq!(opened["debug_reason"].as_str(), reason, "{opened}");
    }
    // The switch is in the session's own trace, with who asked.
    let switched_on = lines_with(&lines, &toggled_id, DebugSwitched::ON);
    assert_eq!(switched_on.len(), 1);
    assert_eq!(switched_on[0]["requested_by"], "oncall-amy");
    assert_eq!(switched_on[0]["debug_minutes"], 10);
    assert_eq!(switched_on[0]["trace_id"], toggled_trace.as_str());
    let switched_off = lines_with(&lines, &toggled_id, DebugSwitched::OFF);
    assert_eq!(switched_off.len(), 1);
    assert!(
        switched_off[0]["requested_by"]
            .as_str()
            .unwrap()
            .starts_with("admin at 127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracestate_debug_is_ignored_unless_allowed() {
    let server = server_with(&[], None);
    let dan = token(json!({"sub": "dan"}));
    let (mut asked, asked_id, _) = open(&server, Some(&dan), Some("wstrace=debug")).await;
    echoes(&mut asked, 3).await;
    close_politely(&mut asked).await;
    let lines = stop(server).await;
    assert!(lines_with(&lines, &asked_id, MessageHandled::MESSAGE).is_empty());
    let opened = lines_with(&lines, &asked_id, SessionOpened::MESSAGE)[0];
    assert!(opened.get("debug").is_none(), "{opened}");
    // The caller's trace is still continued: only the debug request is not.
    assert_eq!(opened["trace_id"], "0af7651916cd43dd8448eb211c80319c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debug_session_cap_refuses_clearly_and_changes_nothing_else() {
    let server = server_with(&[("WSTRACE_MAX_DEBUG_SESSIONS", "1")], None);
    let sub = |user: &str| token(json!({"sub": user}));
    let (mut first, first_id, _) = open(&server, Some(&sub("ann")), None).await;
    let (mut second, second_id, _) = open(&server, Some(&sub("bob")), None).await;
    let path = |id: &str| format!("/api/sessions/{id}/debug");
    let on = admin(
        &server,
        "POST",
        &path(&first_id),
        Some(json!({"minutes": 5})),
    )
    .await;
    assert_eq!(on.status, 200, "{}", on.body);
    let refused = admin(
        &server,
        "POST",
        &path(&second_id),
        Some(json!({"minutes": 5})),
    )
    .await;
    assert_eq!(refused.status, 429, "{}", refused.body);
    let body = refused.json();
    assert_eq!(body["error"]["code"], "too_many_debug_sessions", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-debug-sessions"), "{body}");
    assert!(
        message.contains("DELETE /api/sessions/{id}/debug"),
        "{body}"
    );
    // A debug claim over the cap: the session opens as an ordinary one.
    let claim = token(json!({"sub": "cid", "wstrace_debug": true}));
    let (mut third, third_id, _) = open(&server, Some(&claim), None).await;
    // Bad requests are refused before anything changes.
    for body in [
        json!({"minutes": 0}),
        json!({"minutes": 100_000}),
        json!({"mins": 5}),
    ] {
        let bad = admin(&server, "POST", &path(&second_id), Some(body.clone())).await;
        assert_eq!(bad.status, 400, "{body}: {}", bad.body);
    }
    let unknown = admin(
        &server,
        "POST",
        &path(&uuid::Uuid::now_v7().to_string()),
        Some(json!({"minutes": 5})),
    )
    .await;
    assert_eq!(unknown.status, 404);
    for client in [&mut first, &mut second, &mut third] {
        echoes(client, 2).await;
    }
    // Ending the first frees its place.
    let off = admin(&server, "DELETE", &path(&first_id), None).await;
    assert_eq!(off.status, 200);
    let now_on = admin(
        &server,
        "POST",
        &path(&second_id),
        Some(json!({"minutes": 5})),
    )
    .await;
    assert_eq!(now_on.status, 200, "{}", now_on.body);
    for client in [&mut first, &mut second, &mut third] {
        close_politely(client).await;
    }
    let addr: SocketAddr = server.addr.parse().unwrap();
    let metrics = parse_prometheus(&http(addr, "GET", "/metrics", &[], None).await.body);
    assert_eq!(metrics["wstrace_debug_sessions_refused_total"], 2.0);
    let lines = stop(server).await;
    assert_eq!(
        lines_with(&lines, &first_id, MessageHandled::MESSAGE).len(),
        2
    );
    assert!(lines_with(&lines, &second_id, MessageHandled::MESSAGE).is_empty());
    assert!(lines_with(&lines, &third_id, MessageHandled::MESSAGE).is_empty());
    let refusal = lines_with(&lines, &third_id, DebugSessionRefused::MESSAGE);
    assert_eq!(refusal.len(), 1);
    assert_eq!(refusal[0]["max_debug_sessions"], 1);
    assert_eq!(refusal[0]["debug_reason"], "jwt_claim");
    // Every session ran and closed normally.
    for session in [&first_id, &second_id, &third_id] {
        let closed = lines_with(&lines, session, SessionClosed::MESSAGE)[0];
        assert_eq!(closed["close_code"], 1000, "{closed}");
    }
}
