//! The traced session, end to end: trace identity at the upgrade, carried
//! through the reader, writer and heartbeat tasks into every JSON line.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wstrace::limits::Limits;

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01")
}

#[tokio::test]
async fn one_trace_id_in_header_welcome_and_every_task_line() {
    let mut server = TestServer::start_with(Limits {
        heartbeat_interval: Duration::from_millis(50),
        ..test_limits()
    })
    .await;
    let (mut client, response) = server.connect().await;
    let header_trace = response.headers()["x-trace-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(is_trace_id(&header_trace), "{header_trace}");
    let traceresponse = response.headers()["traceresponse"].to_str().unwrap();
    assert!(
        traceresponse.starts_with(&format!("00-{header_trace}-")),
        "{traceresponse}"
    );

    let welcome = next_json(&mut client).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["trace_id"], header_trace);
    assert_eq!(welcome["heartbeat_interval_ms"], 50);
    let session_id = welcome["session_id"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&session_id).unwrap();
    assert_eq!(uuid.get_version_num(), 7);

    send_json(&mut client, json!({"type": "echo", "content": "hello"})).await;
    assert_eq!(
        next_json(&mut client).await,
        json!({"type": "echo", "content": "hello"})
    );
    // A reader line: a rejected frame, answered with an error frame.
    client
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    let error = next_json(&mut client).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "invalid_json");
    // The session goes on after an error frame.
    send_json(&mut client, json!({"type": "ping", "id": "p1"})).await;
    let pong = next_json(&mut client).await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["id"], "p1");
    assert!(pong["server_time_ms"].as_u64().unwrap() > 1_700_000_000_000);

    // A heartbeat line: wait for pings; reading lets the client answer them.
    server
        .wait_for_line("heartbeat ping", |l| {
            l["msg"] == wstrace::events::PingSent::MESSAGE && l["session_id"] == session_id.as_str()
        })
        .await;
    let _ = tokio::time::timeout(Duration::from_millis(200), client.next()).await;
    send_json(&mut client, json!({"type": "echo", "content": "again"})).await;
    assert_eq!(next_json(&mut client).await["content"], "again");
    // A writer line: the server's Close frame at shutdown.
    let closer = tokio::spawn(async move { next_close(&mut client).await });
    server.stop().await;
    let (code, _) = closer.await.unwrap();
    assert_eq!(code, 1001);

    let lines = server.log_lines();
    let session_lines = lines_of_session(&lines, &session_id);
    let targets: HashSet<&str> = session_lines
        .iter()
        .map(|l| l["target"].as_str().unwrap())
        .collect();
    for task in [
        "wstrace::session",
        "wstrace::session::reader",
        "wstrace::session::writer",
        "wstrace::session::heartbeat",
    ] {
        assert!(targets.contains(task), "no line from {task}: {targets:?}");
    }
    let mut span_ids = HashSet::new();
    let mut failure_span_ids = HashSet::new();
    for line in &session_lines {
        assert_eq!(line["trace_id"], header_trace, "{line}");
        assert_eq!(line["v"], 0);
        assert_eq!(line["name"], "wstrace");
        let span_id = line["span_id"].as_str().unwrap();
        assert_eq!(span_id.len(), 16);
        let msg = line["msg"].as_str().unwrap();
        if msg == wstrace::events::ClientFrameRejected::MESSAGE
            || msg == wstrace::events::FlightRecorded::MESSAGE
        {
            failure_span_ids.insert(span_id.to_owned());
        } else {
            span_ids.insert(span_id.to_owned());
        }
    }
    // The tasks have no spans of their own: outside a sampled message's
    // span, every line is in the session's span (its target tells the
    // task), and that span is not the upgrade's.
    assert_eq!(span_ids.len(), 1, "{span_ids:?}");
    // The failing message has a span of its own (in the same trace) even
    // though it was not sampled: its line and the flight recorder are in it.
    assert_eq!(failure_span_ids.len(), 1, "{failure_span_ids:?}");
    assert!(failure_span_ids.is_disjoint(&span_ids));
    // And grep by trace id finds exactly this session's lines.
    let by_trace: Vec<_> = lines
        .iter()
        .filter(|l| l["trace_id"] == header_trace)
        .collect();
    assert!(
        by_trace
            .iter()
            .all(|l| l["session_id"] == session_id.as_str())
    );
    assert_eq!(by_trace.len(), session_lines.len());

    let closed = with_msg(&lines, wstrace::events::SessionClosed::MESSAGE);
    assert_eq!(closed.len(), 1);
    let closed = closed[0];
    assert_eq!(closed["session_id"], session_id);
    assert_eq!(closed["closed_by"], "shutdown");
    assert_eq!(closed["close_code"], 1001);
    assert_eq!(closed["messages_in"], 4);
    // welcome, echo, error, pong, echo
    assert_eq!(closed["messages_out"], 5);
    assert_eq!(closed["close_clean"], true);
    assert_eq!(closed["error_count"], 1);
    assert!(closed["bytes_in"].as_u64().unwrap() > 0);
    assert!(closed["bytes_out"].as_u64().unwrap() > 0);
    assert!(closed["pings_sent"].as_u64().unwrap() >= 1);
    assert!(closed["ping_rtt_last_ms"].as_f64().is_some(), "{closed}");
    assert!(closed["ping_rtt_mean_ms"].as_f64().is_some(), "{closed}");
    assert!(closed["duration_ms"].as_u64().is_some());
    assert_eq!(closed["level"], 30);
}

#[tokio::test]
async fn concurrent_sessions_never_mix_ids() {
    let mut server = TestServer::start().await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (mut client, response) = server.connect().await;
        let welcome = next_json(&mut client).await;
        let header = response.headers()["x-trace-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(welcome["trace_id"], header);
        clients.push((client, welcome));
    }
    // Interleave traffic so the tasks of all sessions run concurrently.
    for round in 0..5 {
        for (i, (client, _)) in clients.iter_mut().enumerate() {
            send_json(
                client,
                json!({"type": "echo", "content": format!("{i}-{round}")}),
            )
            .await;
            client.send(Message::Text("[]".into())).await.unwrap();
        }
        for (i, (client, _)) in clients.iter_mut().enumerate() {
            assert_eq!(next_json(client).await["content"], format!("{i}-{round}"));
            assert_eq!(next_json(client).await["type"], "error");
        }
    }
    for (client, _) in clients.iter_mut() {
        close_politely(client).await;
    }
    server.stop().await;

    let lines = server.log_lines();
    let mut trace_of_session: HashMap<String, String> = HashMap::new();
    for line in lines.iter().filter(|l| l["session_id"].is_string()) {
        let session = line["session_id"].as_str().unwrap().to_owned();
        let trace = line["trace_id"].as_str().unwrap().to_owned();
        let known = trace_of_session
            .entry(session.clone())
            .or_insert(trace.clone());
        assert_eq!(*known, trace, "session {session} logged two trace ids");
    }
    assert_eq!(trace_of_session.len(), 6);
    for (_, welcome) in &clients {
        let session = welcome["session_id"].as_str().unwrap();
        assert_eq!(
            trace_of_session[session],
            welcome["trace_id"].as_str().unwrap()
        );
        let session_lines = lines_of_session(&lines, session);
        // opened, 5 rejected frames, the flight recorder (at the first),
        // closed
        assert_eq!(session_lines.len(), 8, "{session_lines:#?}");
    }
    let distinct: HashSet<_> = trace_of_session.values().collect();
    assert_eq!(distinct.len(), 6);
}

#[tokio::test]
async fn traceparent_header_is_continued() {
    let mut server = TestServer::start().await;
    let (mut client, response) = server
        .connect_with(&server.url("/ws"), &[("traceparent", &traceparent())])
        .await;
    assert_eq!(response.headers()["x-trace-id"], PARENT_TRACE);
    let traceresponse = response.headers()["traceresponse"].to_str().unwrap();
    assert!(traceresponse.starts_with(&format!("00-{PARENT_TRACE}-")));
    assert!(!traceresponse.contains(PARENT_SPAN), "server span is new");
    // Without an exporter nothing is recorded, and the flags say so.
    assert!(traceresponse.ends_with("-00"), "{traceresponse}");
    let welcome = next_json(&mut client).await;
    assert_eq!(welcome["trace_id"], PARENT_TRACE);
    close_politely(&mut client).await;
    server.stop().await;

    let lines = server.log_lines();
    let opened = with_msg(&lines, wstrace::events::SessionOpened::MESSAGE);
    assert_eq!(opened[0]["trace_id"], PARENT_TRACE);
    assert_eq!(opened[0]["trace.origin"], "header");
    assert!(
        lines
            .iter()
            .all(|l| l["msg"] != wstrace::events::TraceparentIgnored::MESSAGE)
    );
}

#[tokio::test]
async fn traceparent_query_parameter_is_continued() {
    let mut server = TestServer::start().await;
    let url = server.url(&format!("/ws?room=1&traceparent={}", traceparent()));
    let (mut client, response) = server.connect_with(&url, &[]).await;
    assert_eq!(response.headers()["x-trace-id"], PARENT_TRACE);
    assert_eq!(next_json(&mut client).await["trace_id"], PARENT_TRACE);
    close_politely(&mut client).await;
    server.stop().await;
    let lines = server.log_lines();
    let closed = with_msg(&lines, wstrace::events::SessionClosed::MESSAGE);
    assert_eq!(closed[0]["trace_id"], PARENT_TRACE);
    let opened = with_msg(&lines, wstrace::events::SessionOpened::MESSAGE);
    assert_eq!(opened[0]["trace.origin"], "query");
}

#[tokio::test]
async fn malformed_traceparent_starts_a_fresh_trace_and_is_never_copied() {
    let mut server = TestServer::start().await;
    // A value crafted to inject a fake log line if it were copied raw.
    let hostile =
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01%0A%7B%22msg%22%3A%22pwned%22%7D";
    let cases = [
        (server.url(&format!("/ws?traceparent={hostile}")), vec![]),
        (
            server.url("/ws"),
            vec![("traceparent", "00-zzzz-not-a-trace")],
        ),
        (
            server.url("/ws"),
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )],
        ),
    ];
    let mut fresh = HashSet::new();
    for (url, headers) in &cases {
        let (mut client, response) = server.connect_with(url, headers).await;
        assert_eq!(response.status(), 101);
        let trace = response.headers()["x-trace-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(is_trace_id(&trace));
        assert_ne!(trace, PARENT_TRACE);
        assert_eq!(next_json(&mut client).await["trace_id"], trace);
        close_politely(&mut client).await;
        fresh.insert(trace);
    }
    assert_eq!(fresh.len(), 3);
    server.stop().await;

    let lines = server.log_lines();
    let warnings = with_msg(
        &lines,
        "ignoring malformed traceparent; starting a new trace",
    );
    assert_eq!(warnings.len(), 3);
    for warning in &warnings {
        assert_eq!(warning["level"], 40);
        assert!(fresh.contains(warning["trace_id"].as_str().unwrap()));
        assert!(warning["traceparent.length"].as_u64().unwrap() > 0);
    }
    let raw = std::fs::read_dir(server.log_dir())
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect::<String>();
    assert!(!raw.contains("pwned"));
    assert!(!raw.contains("zzzz"));
    assert!(lines.iter().all(|l| l["msg"] != "pwned"));
}

#[tokio::test]
async fn idle_session_is_closed_and_recorded() {
    let mut server = TestServer::start_with(Limits {
        heartbeat_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        close_timeout: Duration::from_secs(3),
        ..test_limits()
    })
    .await;
    let (mut client, session_id) = server.open_session().await;
    // Do not read: pings go unanswered, and the client looks dead.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (code, reason) = next_close(&mut client).await;
    assert_eq!((code, reason.as_str()), (1000, "idle timeout"));

    let closed = server
        .wait_for_line("session closed", |l| {
            l["msg"] == wstrace::events::SessionClosed::MESSAGE
        })
        .await;
    assert_eq!(closed["session_id"], session_id);
    assert_eq!(closed["closed_by"], "idle_timeout");
    assert_eq!(closed["close_code"], 1000);
    assert_eq!(closed["close_reason"], "idle timeout");
    assert!(closed["pings_sent"].as_u64().unwrap() >= 2, "{closed}");
    let lines = server.log_lines();
    let idle = with_msg(&lines, wstrace::events::IdleSessionClosing::MESSAGE);
    assert_eq!(idle.len(), 1);
    assert_eq!(idle[0]["target"], "wstrace::session::heartbeat");
    assert_eq!(idle[0]["trace_id"], closed["trace_id"]);
    server.stop().await;
}

#[tokio::test]
async fn answered_pings_keep_a_session_alive() {
    let mut server = TestServer::start_with(Limits {
        heartbeat_interval: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(300),
        ..test_limits()
    })
    .await;
    let (mut client, _) = server.connect().await;
    next_json(&mut client).await;
    // Reading lets the client answer pings; stay well past the idle timeout.
    let until = tokio::time::Instant::now() + Duration::from_millis(900);
    let mut pings = 0;
    while let Ok(frame) = tokio::time::timeout_at(until, client.next()).await {
        match frame.unwrap().unwrap() {
            Message::Ping(_) => pings += 1,
            other => panic!("only pings expected while idle, got {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings}");
    send_json(
        &mut client,
        json!({"type": "echo", "content": "still here"}),
    )
    .await;
    assert_eq!(next_json(&mut client).await["content"], "still here");
    close_politely(&mut client).await;
    server.stop().await;
    let lines = server.log_lines();
    let closed = with_msg(&lines, wstrace::events::SessionClosed::MESSAGE);
    assert_eq!(closed[0]["closed_by"], "client");
    assert!(closed[0]["ping_rtt_mean_ms"].as_f64().is_some());
}

#[tokio::test]
async fn client_close_is_answered_and_recorded() {
    let mut server = TestServer::start().await;
    let (mut client, _) = server.connect().await;
    next_json(&mut client).await;
    client
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "tab closed".into(),
        })))
        .await
        .unwrap();
    // The server echoes the Close (a clean handshake), then the stream ends.
    let mut reply = None;
    while let Some(Ok(message)) = client.next().await {
        if let Message::Close(frame) = message {
            reply = frame;
        }
    }
    assert_eq!(reply.expect("close reply").code, CloseCode::Away);
    let closed = server
        .wait_for_line("session closed", |l| {
            l["msg"] == wstrace::events::SessionClosed::MESSAGE
        })
        .await;
    assert_eq!(closed["closed_by"], "client");
    assert_eq!(closed["close_code"], 1001);
    assert_eq!(closed["close_reason"], "tab closed");
    assert_eq!(closed["close_clean"], true);
    server.stop().await;
}

#[tokio::test]
async fn dropped_connection_is_recorded_as_abnormal() {
    let mut server = TestServer::start().await;
    let (mut client, _) = server.connect().await;
    next_json(&mut client).await;
    drop(client);
    let closed = server
        .wait_for_line("session closed", |l| {
            l["msg"] == wstrace::events::SessionClosed::MESSAGE
        })
        .await;
    assert_eq!(closed["closed_by"], "client");
    assert_eq!(closed["close_code"], 1006);
    assert_eq!(closed["close_clean"], false);
    server.stop().await;
}

#[tokio::test]
async fn binary_frames_are_echoed() {
    let mut server = TestServer::start().await;
    let (mut client, _) = server.connect().await;
    next_json(&mut client).await;
    client
        .send(Message::Binary(vec![0u8, 1, 2, 255].into()))
        .await
        .unwrap();
    let echoed = client.next().await.unwrap().unwrap();
    assert_eq!(echoed, Message::Binary(vec![0u8, 1, 2, 255].into()));
    close_politely(&mut client).await;
    server.stop().await;
}

#[tokio::test]
async fn oversize_message_closes_with_1009() {
    let mut server = TestServer::start_with(Limits {
        max_message_bytes: 1024,
        ..test_limits()
    })
    .await;
    let (mut client, _) = server.connect().await;
    next_json(&mut client).await;
    let big = json!({"type": "echo", "content": "x".repeat(4096)}).to_string();
    client.send(Message::Text(big.into())).await.unwrap();
    let (code, reason) = next_close(&mut client).await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    let closed = server
        .wait_for_line("session closed", |l| {
            l["msg"] == wstrace::events::SessionClosed::MESSAGE
        })
        .await;
    assert_eq!(closed["closed_by"], "error");
    assert_eq!(closed["close_code"], 1009);
    assert_eq!(closed["error_count"], 1);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_sends_1001_and_every_session_writes_its_closed_line() {
    let mut server = TestServer::start().await;
    let mut sessions = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..5 {
        let (mut client, _) = server.connect().await;
        sessions.push(
            next_json(&mut client).await["session_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        clients.push(client);
    }
    // Close handshakes must complete while the server shuts down, so every
    // client reads concurrently with the shutdown.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| tokio::spawn(async move { next_close(&mut client).await }))
        .collect();
    server.stop().await;
    for reader in readers {
        let (code, reason) = reader.await.unwrap();
        assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    }
    let lines = server.log_lines();
    for session in &sessions {
        let closed: Vec<_> = lines_of_session(&lines, session)
            .into_iter()
            .filter(|l| l["msg"] == wstrace::events::SessionClosed::MESSAGE)
            .collect();
        assert_eq!(closed.len(), 1, "session {session}");
        assert_eq!(closed[0]["closed_by"], "shutdown");
        assert_eq!(closed[0]["close_code"], 1001);
        assert_eq!(closed[0]["close_clean"], true);
    }
    assert_eq!(
        with_msg(&lines, "stopped accepting; closing sessions").len(),
        1
    );
}

#[tokio::test]
async fn connection_limit_answers_503_with_json() {
    let mut server = TestServer::start_with(Limits {
        max_connections: 1,
        ..test_limits()
    })
    .await;
    let (mut first, _) = server.connect().await;
    next_json(&mut first).await;
    let refused = tokio_tungstenite::connect_async(server.url("/ws")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("x-trace-id"));
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_ref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    close_politely(&mut first).await;
    // The slot is free again once the session is gone.
    server
        .wait_for_line("session closed", |l| {
            l["msg"] == wstrace::events::SessionClosed::MESSAGE
        })
        .await;
    let (mut second, _) = server.connect().await;
    next_json(&mut second).await;
    close_politely(&mut second).await;
    server.stop().await;
}

#[tokio::test]
async fn healthz_answers_while_serving() {
    let mut server = TestServer::start().await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");
    server.stop().await;
}
