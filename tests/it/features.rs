//! Session features against the in-process server with real WebSocket
//! clients: channels, direct messages, the admin API, auth, limits and
//! metrics.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use wstrace::auth::{JwtVerifier, Secret};
use wstrace::limits::Limits;
use wstrace::state::ServerConfig;

const ADMIN_TOKEN: &str = "admin-7f3c9d2e-never-logged";
const JWT_SECRET: &str = "jwt-secret-b41e-never-logged";

fn traced_config() -> ServerConfig {
    ServerConfig {
        message_sample_ratio: 1.0,
        admin_token: Some(Secret::new(ADMIN_TOKEN)),
        ..test_config()
    }
}

fn admin() -> [(&'static str, &'static str); 1] {
    [("authorization", "Bearer admin-7f3c9d2e-never-logged")]
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(claims: Value) -> String {
    JwtVerifier::new(Secret::new(JWT_SECRET)).sign(&claims)
}

struct Peer {
    client: Client,
    session_id: String,
    trace_id: String,
}

async fn join(server: &TestServer) -> Peer {
    let (mut client, _) = server.connect().await;
    let welcome = next_json(&mut client).await;
    Peer {
        client,
        session_id: welcome["session_id"].as_str().unwrap().to_owned(),
        trace_id: welcome["trace_id"].as_str().unwrap().to_owned(),
    }
}

async fn subscribe(peer: &mut Peer, channel: &str) {
    send_json(
        &mut peer.client,
        json!({"type": "subscribe", "channel": channel}),
    )
    .await;
    assert_eq!(
        next_json(&mut peer.client).await,
        json!({"type": "subscribed", "channel": channel})
    );
}

/// Asserts no data frame arrives within a short wait.
async fn assert_silent(client: &mut Client) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(frame) = tokio::time::timeout_at(deadline, client.next()).await {
        match frame {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected nothing, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn publish_reaches_every_subscriber_and_no_one_else() {
    let mut server = TestServer::start_with_config(traced_config()).await;
    let mut a = join(&server).await;
    let mut b = join(&server).await;
    let mut c = join(&server).await;
    subscribe(&mut a, "room").await;
    subscribe(&mut b, "room").await;
    subscribe(&mut c, "other").await;

    send_json(
        &mut a.client,
        json!({"type": "publish", "channel": "room", "content": "hello room"}),
    )
    .await;
    let a_id = a.session_id.clone();
    let mut ids = Vec::new();
    for peer in [&mut a, &mut b] {
        let message = next_json(&mut peer.client).await;
        assert_eq!(message["type"], "message");
        assert_eq!(message["channel"], "room");
        assert_eq!(message["content"], "hello room");
        assert_eq!(message["from_session"], a_id.as_str());
        let traceparent = message["traceparent"].as_str().unwrap();
        ids.push((
            message["id"].as_str().unwrap().to_owned(),
            traceparent.to_owned(),
        ));
    }
    assert_eq!(ids[0], ids[1], "one message, one id and one origin");
    let a_trace = a.trace_id.clone();
    assert!(
        ids[0].1.starts_with(&format!("00-{a_trace}-")),
        "{}",
        ids[0].1
    );
    assert_silent(&mut c.client).await;

    // The channel list shows both channels; leaving removes empty ones.
    send_json(
        &mut c.client,
        json!({"type": "unsubscribe", "channel": "other"}),
    )
    .await;
    assert_eq!(next_json(&mut c.client).await["type"], "unsubscribed");
    let channels = http(server.addr, "GET", "/api/channels", &admin(), None)
        .await
        .json();
    assert_eq!(
        channels["channels"],
        json!([{"channel": "room", "subscribers": 2}])
    );

    for peer in [&mut a, &mut b, &mut c] {
        peer.client.close(None).await.unwrap();
        while let Some(Ok(_)) = peer.client.next().await {}
    }
    server.stop().await;

    let lines = server.log_lines();
    let delivered: Vec<_> = with_msg(&lines, wstrace::events::MessageDelivered::MESSAGE);
    assert_eq!(delivered.len(), 2);
    let (message_id, traceparent) = &ids[0];
    let origin_span = traceparent.split('-').nth(2).unwrap();
    for line in &delivered {
        // Each receiver records the delivery in its own trace...
        let receiver = line["session_id"].as_str().unwrap();
        let own_trace = if receiver == a.session_id {
            &a.trace_id
        } else {
            &b.trace_id
        };
        assert_eq!(line["trace_id"], own_trace.as_str());
        // ...with a link to the publisher's span.
        assert_eq!(line["link.trace_id"], a_trace);
        assert_eq!(line["link.span_id"], origin_span);
        assert_eq!(line["ws.message.id"], message_id.as_str());
        assert_eq!(line["from_session"], a.session_id);
        assert_eq!(line["channel"], "room");
    }
    assert!(delivered.iter().any(|l| l["session_id"] == b.session_id));
    let published = with_msg(&lines, wstrace::events::MessagePublished::MESSAGE);
    assert_eq!(published[0]["delivered"], 2);
    assert_eq!(published[0]["span_id"], origin_span);
    // The publish's span ends with one `message handled` line: after the
    // lines its handling wrote, in the same span, with its duration.
    let a_lines = lines_of_session(&lines, &a.session_id);
    let in_span: Vec<&str> = a_lines
        .iter()
        .filter(|l| l["span_id"] == origin_span)
        .map(|l| l["msg"].as_str().unwrap())
        .collect();
    assert_eq!(
        in_span,
        [
            wstrace::events::MessagePublished::MESSAGE,
            wstrace::events::MessageHandled::MESSAGE
        ]
    );
    // One per message A sent (subscribe, publish), each in its own span.
    let handled: Vec<_> = a_lines
        .iter()
        .filter(|l| l["msg"] == wstrace::events::MessageHandled::MESSAGE)
        .collect();
    let types: Vec<_> = handled.iter().map(|l| &l["ws.message.type"]).collect();
    assert_eq!(types, ["subscribe", "publish"], "{handled:?}");
    assert_ne!(handled[0]["span_id"], handled[1]["span_id"]);
    // A message's span lies within its session's.
    let closed = a_lines
        .iter()
        .find(|l| l["msg"] == wstrace::events::SessionClosed::MESSAGE)
        .unwrap();
    let session_us = 1000 * (closed["duration_ms"].as_u64().unwrap() + 1);
    for line in &handled {
        let duration = line["duration_us"].as_u64().expect("duration_us");
        assert!(duration <= session_us, "{line} {closed}");
    }
}

#[tokio::test]
async fn direct_message_reaches_only_its_target() {
    let mut server = TestServer::start_with_config(traced_config()).await;
    let mut a = join(&server).await;
    let mut b = join(&server).await;
    let mut c = join(&server).await;
    send_json(
        &mut a.client,
        json!({"type": "direct", "to_session": b.session_id, "content": "psst"}),
    )
    .await;
    let message = next_json(&mut b.client).await;
    assert_eq!(message["type"], "message");
    assert_eq!(message["content"], "psst");
    assert_eq!(message["from_session"], a.session_id);
    assert!(message.get("channel").is_none());
    assert_silent(&mut a.client).await;
    assert_silent(&mut c.client).await;

    send_json(&mut a.client, json!({"type": "direct", "to_session": "01a20000-0000-7000-8000-000000000000", "content": "x"})).await;
    let error = next_json(&mut a.client).await;
    assert_eq!(error["code"], "no_such_recipient");
    server.stop().await;
}

#[tokio::test]
async fn direct_to_user_reaches_all_of_the_users_sessions() {
    let mut server = TestServer::start_with_config(ServerConfig {
        jwt_secret: Some(Secret::new(JWT_SECRET)),
        ..traced_config()
    })
    .await;
    let token = |sub: &str| jwt(json!({"sub": sub, "exp": now() + 600}));
    let connect = |sub: &'static str| {
        let url = server.url(&format!("/ws?token={}", token(sub)));
        async move {
            let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            next_json(&mut client).await;
            client
        }
    };
    let mut alice1 = connect("alice").await;
    let mut alice2 = connect("alice").await;
    let mut bob = connect("bob").await;
    send_json(
        &mut bob,
        json!({"type": "direct", "to_user": "alice", "content": "hi alice"}),
    )
    .await;
    for client in [&mut alice1, &mut alice2] {
        let message = next_json(client).await;
        assert_eq!(message["content"], "hi alice");
        assert_eq!(message["from_user"], "bob");
    }
    assert_silent(&mut bob).await;
    let sessions = http(server.addr, "GET", "/api/sessions", &admin(), None)
        .await
        .json();
    let users: Vec<_> = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["user"].clone())
        .collect();
    assert_eq!(users.iter().filter(|u| **u == "alice").count(), 2);
    server.stop().await;
    assert_no_secret_in_logs(&server, &[&token("alice"), JWT_SECRET, ADMIN_TOKEN]);
}

#[tokio::test]
async fn admin_api_is_disabled_without_a_token_and_refuses_wrong_ones() {
    let mut server = TestServer::start().await;
    let disabled = http(server.addr, "GET", "/api/sessions", &[], None).await;
    assert_eq!(disabled.status, 403);
    assert_eq!(disabled.json()["error"]["code"], "admin_disabled");
    assert!(
        disabled.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("WSTRACE_ADMIN_TOKEN")
    );
    server.stop().await;

    let mut server = TestServer::start_with_config(traced_config()).await;
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "admin-7f3c9d2e-never-logged")],
    ] {
        for (method, path) in [
            ("GET", "/api/sessions"),
            ("GET", "/api/stats"),
            ("GET", "/api/channels"),
            ("POST", "/api/send"),
            ("POST", "/api/broadcast"),
            ("POST", "/api/cleanup"),
            ("DELETE", "/api/sessions/x"),
        ] {
            let response = http(server.addr, method, path, &headers, None).await;
            assert_eq!(response.status, 401, "{method} {path} {headers:?}");
            assert_eq!(response.json()["error"]["code"], "admin_unauthorized");
        }
    }
    server.stop().await;
    assert_no_secret_in_logs(&server, &[ADMIN_TOKEN]);
}

/// Every error of every route is `{"error":{"code","message"}}` with its
/// status: the server's own, axum's body rejections, unknown routes and
/// wrong methods.
#[tokio::test]
async fn every_error_answer_is_the_json_error_shape() {
    let mut server = TestServer::start_with_config(traced_config()).await;
    let (token, host) = (admin()[0].1, server.addr);
    let post = |path: &str, content_type: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\
             authorization: {token}\r\n{content_type}content-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let json_type = "content-type: application/json\r\n";
    let huge = format!(r#"{{"content":"{}"}}"#, "x".repeat(3 * 1024 * 1024));
    let cases = [
        (
            post("/api/send", json_type, "{not json"),
            400,
            "bad_request",
        ),
        (
            post("/api/send", "", r#"{"content":"x"}"#),
            415,
            "unsupported_media_type",
        ),
        (
            post("/api/send", json_type, r#"{"content":7}"#),
            422,
            "unprocessable_body",
        ),
        (
            post("/api/send", json_type, &huge),
            413,
            "content_too_large",
        ),
        (
            post("/api/sessions", json_type, "{}"),
            405,
            "method_not_allowed",
        ),
        (post("/no/such/route", json_type, "{}"), 404, "not_found"),
        (
            format!("GET /api/nothing-here HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"),
            404,
            "not_found",
        ),
    ];
    for (request, status, code) in cases {
        let response = raw_http(server.addr, &request).await;
        let first = request.lines().next().unwrap().to_owned();
        assert_eq!(response.status, status, "{first}: {}", response.body);
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{first}"
        );
        let error = &response.json()["error"];
        assert_eq!(error["code"], code, "{first}: {}", response.body);
        assert!(!error["message"].as_str().unwrap().is_empty(), "{first}");
        if status == 405 {
            assert!(response.header("allow").is_some(), "405 keeps Allow");
        }
    }
    server.stop().await;
}

/// Admin content obeys `--max-message-bytes` like a client's message: 413,
/// and the session gets nothing.
#[tokio::test]
async fn admin_content_over_the_message_limit_is_413_and_not_sent() {
    let mut server = TestServer::start_with_config(traced_config()).await;
    let mut peer = join(&server).await;
    subscribe(&mut peer, "news").await;
    let limit = wstrace::limits::DEFAULT_MAX_MESSAGE_BYTES;
    let big = "x".repeat(limit + 1);
    for (path, body) in [
        (
            "/api/send",
            json!({"session_id": peer.session_id, "content": big}),
        ),
        ("/api/broadcast", json!({"channel": "news", "content": big})),
        ("/api/broadcast", json!({"content": big})),
    ] {
        let response = http(server.addr, "POST", path, &admin(), Some(body)).await;
        assert_eq!(response.status, 413, "{path}: {}", response.body);
        assert_eq!(response.json()["error"]["code"], "content_too_large");
    }
    assert_silent(&mut peer.client).await;
    // At the limit it is delivered.
    let at_limit = "y".repeat(limit);
    let sent = http(
        server.addr,
        "POST",
        "/api/send",
        &admin(),
        Some(json!({"session_id": peer.session_id, "content": at_limit})),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    assert_eq!(next_json(&mut peer.client).await["content"], at_limit);
    server.stop().await;
}

#[tokio::test]
async fn admin_api_lists_sends_broadcasts_kicks_and_cleans_up() {
    let mut server = TestServer::start_with_config(traced_config()).await;
    let mut a = join(&server).await;
    let mut b = join(&server).await;
    subscribe(&mut a, "news").await;

    let list = http(server.addr, "GET", "/api/sessions", &admin(), None).await;
    assert_eq!(list.status, 200);
    let list = list.json();
    assert_eq!(list["count"], 2);
    let one = http(
        server.addr,
        "GET",
        &format!("/api/sessions/{}", a.session_id),
        &admin(),
        None,
    )
    .await
    .json();
    assert_eq!(one["trace_id"], a.trace_id);
    assert_eq!(one["channels"], json!(["news"]));
    assert!(one["messages_in"].as_u64().unwrap() >= 1);
    let missing = http(server.addr, "GET", "/api/sessions/nope", &admin(), None).await;
    assert_eq!(missing.status, 404);

    let stats = http(server.addr, "GET", "/api/stats", &admin(), None)
        .await
        .json();
    assert_eq!(stats["sessions_active"], 2);
    assert_eq!(stats["channels"], 1);

    // Send to one session.
    let sent = http(
        server.addr,
        "POST",
        "/api/send",
        &admin(),
        Some(json!({"session_id": b.session_id, "content": "from ops"})),
    )
    .await;
    assert_eq!(sent.status, 200);
    assert_eq!(sent.json()["delivered"], 1);
    let send_trace = sent.header("x-trace-id").unwrap().to_owned();
    let message = next_json(&mut b.client).await;
    assert_eq!(message["content"], "from ops");
    assert!(
        message["traceparent"]
            .as_str()
            .unwrap()
            .contains(&send_trace)
    );
    assert_silent(&mut a.client).await;

    // Broadcast to a channel, then to everyone.
    let to_channel = http(
        server.addr,
        "POST",
        "/api/broadcast",
        &admin(),
        Some(json!({"channel": "news", "content": "headline"})),
    )
    .await
    .json();
    assert_eq!(to_channel["delivered"], 1);
    assert_eq!(next_json(&mut a.client).await["content"], "headline");
    let to_all = http(
        server.addr,
        "POST",
        "/api/broadcast",
        &admin(),
        Some(json!({"content": "all hands"})),
    )
    .await
    .json();
    assert_eq!(to_all["delivered"], 2);
    for peer in [&mut a, &mut b] {
        assert_eq!(next_json(&mut peer.client).await["content"], "all hands");
    }
    let bad = http(
        server.addr,
        "POST",
        "/api/send",
        &admin(),
        Some(json!({"content": "x"})),
    )
    .await;
    assert_eq!(bad.status, 400);

    // Kick: the session gets the close code, and logs a line linked to the
    // admin request's trace.
    let kick = http(
        server.addr,
        "DELETE",
        &format!("/api/sessions/{}?code=4003&reason=bye", a.session_id),
        &admin(),
        None,
    )
    .await;
    assert_eq!(kick.status, 200);
    let kick_trace = kick.header("x-trace-id").unwrap().to_owned();
    assert_eq!(next_close(&mut a.client).await, (4003, "bye".to_owned()));
    let bad_code = http(
        server.addr,
        "DELETE",
        &format!("/api/sessions/{}?code=1011", b.session_id),
        &admin(),
        None,
    )
    .await;
    assert_eq!(bad_code.status, 400);

    // Cleanup closes sessions idle for at least idle_seconds.
    let cleaned = http(
        server.addr,
        "POST",
        "/api/cleanup",
        &admin(),
        Some(json!({"idle_seconds": 0})),
    )
    .await
    .json();
    assert_eq!(cleaned["closed"], 1);
    assert_eq!(next_close(&mut b.client).await.0, 4001);
    server.stop().await;

    let lines = server.log_lines();
    let touched: Vec<_> = with_msg(&lines, wstrace::events::AdminTouchedSession::MESSAGE);
    let kicked = touched
        .iter()
        .find(|l| l["admin.action"] == "close")
        .expect("kick line");
    assert_eq!(kicked["session_id"], a.session_id);
    assert_eq!(kicked["trace_id"], a.trace_id);
    assert_eq!(kicked["link.trace_id"], kick_trace);
    let sent_line = touched
        .iter()
        .find(|l| l["admin.action"] == "send")
        .unwrap();
    assert_eq!(sent_line["session_id"], b.session_id);
    assert_eq!(sent_line["link.trace_id"], send_trace);
    let closed_a = lines_of_session(&lines, &a.session_id)
        .into_iter()
        .find(|l| l["msg"] == wstrace::events::SessionClosed::MESSAGE)
        .unwrap();
    assert_eq!(closed_a["closed_by"], "admin");
    assert_eq!(closed_a["close_code"], 4003);
    assert_no_secret_in_logs(&server, &[ADMIN_TOKEN]);
}

#[tokio::test]
async fn jwt_is_required_when_configured_and_never_logged() {
    let mut server = TestServer::start_with_config(ServerConfig {
        jwt_secret: Some(Secret::new(JWT_SECRET)),
        ..traced_config()
    })
    .await;
    let good = jwt(json!({"sub": "carol", "exp": now() + 600}));
    let expired = jwt(json!({"sub": "carol", "exp": now() - 3600}));
    let forged = JwtVerifier::new(Secret::new("not-the-secret")).sign(&json!({"sub": "carol"}));
    for (token, code) in [
        (None, "token_missing"),
        (Some("not-a-jwt"), "token_malformed"),
        (Some(expired.as_str()), "token_expired"),
        (Some(forged.as_str()), "token_signature"),
    ] {
        let mut request = server.url("/ws").into_client_request_checked();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401);
                let body: Value =
                    serde_json::from_slice(response.body().as_ref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], code);
            }
            other => panic!("expected 401 for {token:?}, got {other:?}"),
        }
    }
    // Good token by header, and by query.
    let (mut by_header, _) = server
        .connect_with(
            &server.url("/ws"),
            &[("authorization", &format!("Bearer {good}"))],
        )
        .await;
    next_json(&mut by_header).await;
    let (mut by_query, _) = server
        .connect_with(&server.url(&format!("/ws?token={good}")), &[])
        .await;
    next_json(&mut by_query).await;
    let sessions = http(server.addr, "GET", "/api/sessions", &admin(), None)
        .await
        .json();
    assert!(
        sessions["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["user"] == "carol")
    );
    server.stop().await;

    let lines = server.log_lines();
    let opened = with_msg(&lines, wstrace::events::SessionOpened::MESSAGE);
    assert_eq!(opened.len(), 2);
    assert!(opened.iter().all(|l| l["user.id"] == "carol"));
    assert_eq!(
        with_msg(&lines, wstrace::events::UpgradeRefused::TOKEN_MESSAGE).len(),
        4
    );
    assert_no_secret_in_logs(
        &server,
        &[
            &good,
            &expired,
            &forged,
            JWT_SECRET,
            ADMIN_TOKEN,
            "not-a-jwt",
        ],
    );
}

trait IntoRequestChecked {
    fn into_client_request_checked(
        self,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request;
}

impl IntoRequestChecked for String {
    fn into_client_request_checked(
        self,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        self.into_client_request().unwrap()
    }
}

fn assert_no_secret_in_logs(server: &TestServer, secrets: &[&str]) {
    for entry in std::fs::read_dir(server.log_dir()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for secret in secrets {
            // A token's signature part is its most unique piece.
            let needle = secret.rsplit('.').next().unwrap();
            assert!(
                !text.contains(needle),
                "secret {secret:?} found in the logs"
            );
        }
    }
}

/// The status line of a request sent with exactly these headers.
async fn raw_status(addr: std::net::SocketAddr, path: &str, headers: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

/// DNS rebinding: a page on evil.example re-points the name at 127.0.0.1.
/// Its requests then carry `Host: evil.example:PORT` and a matching
/// `Origin`; a loopback server refuses them on every route.
#[tokio::test]
async fn a_rebound_host_name_is_refused_on_every_route() {
    let mut server = TestServer::start().await;
    let port = server.addr.port();
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let evil = format!("Host: evil.example:{port}\r\nOrigin: http://evil.example:{port}\r\n");
    for path in ["/ws", "/api/stats", "/metrics", "/", "/explorer/app.js"] {
        let headers = format!("{evil}{upgrade}");
        assert_eq!(raw_status(server.addr, path, &headers).await, 421, "{path}");
    }
    // The same request with the server's own name passes.
    let own = format!("Host: localhost:{port}\r\nOrigin: http://localhost:{port}\r\n{upgrade}");
    assert_eq!(raw_status(server.addr, "/ws", &own).await, 101);
    // Liveness probes may use any name.
    let probe = format!("Host: evil.example:{port}\r\n");
    assert_eq!(raw_status(server.addr, "/healthz", &probe).await, 200);
    // Lines are complete once the server has stopped and flushed.
    server.stop().await;
    let lines = server.log_lines();
    assert_eq!(
        with_msg(&lines, wstrace::events::HostRefused::MESSAGE).len(),
        5
    );

    // A name the operator allows passes.
    let mut listed = TestServer::start_with_config(ServerConfig {
        allowed_hosts: vec!["evil.example".into()],
        allowed_origins: vec!["*".into()],
        ..test_config()
    })
    .await;
    let evil = format!("Host: evil.example:{}\r\n{upgrade}", listed.addr.port());
    assert_eq!(raw_status(listed.addr, "/ws", &evil).await, 101);
    listed.stop().await;
}

/// The explorer runs no inline script and cannot be framed: its script is
/// a same-origin file, and the CSP says so.
#[tokio::test]
async fn the_explorer_page_allows_no_inline_script_and_no_framing() {
    let mut server = TestServer::start().await;
    let page = http(server.addr, "GET", "/", &[], None).await;
    let csp = page.header("content-security-policy").unwrap().to_owned();
    let script_src = csp
        .split(';')
        .map(str::trim)
        .find(|d| d.starts_with("script-src"))
        .unwrap();
    assert_eq!(script_src, "script-src 'self'", "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        !page.body.contains("<script>"),
        "inline script left in the page"
    );
    assert!(
        page.body
            .contains(r#"<script src="/explorer/app.js"></script>"#)
    );
    let script = http(server.addr, "GET", "/explorer/app.js", &[], None).await;
    assert_eq!(script.status, 200);
    assert!(
        script
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(script.body.contains("fetch("), "the page's script");
    server.stop().await;
}

/// The status and error code of an upgrade refused before it happens.
async fn refused_upgrade(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
) -> (u16, Value) {
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = serde_json::from_slice(response.body().as_ref().unwrap()).unwrap();
            (response.status().as_u16(), body)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// One address, or one user's token, cannot take every slot: past the
/// cap an upgrade gets 429, and a closed session frees its slot.
#[tokio::test]
async fn sessions_are_capped_per_address_and_per_user() {
    let mut server = TestServer::start_with_config(ServerConfig {
        limits: Limits {
            max_sessions_per_ip: 3,
            max_sessions_per_user: 2,
            ..test_limits()
        },
        jwt_secret: Some(Secret::new(JWT_SECRET)),
        ..test_config()
    })
    .await;
    let with_token = |sub: &str| {
        let mut request = server.url("/ws").into_client_request_checked();
        let token = jwt(json!({"sub": sub, "exp": now() + 600}));
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let (mut ann1, _) = tokio_tungstenite::connect_async(with_token("ann"))
        .await
        .unwrap();
    let (_ann2, _) = tokio_tungstenite::connect_async(with_token("ann"))
        .await
        .unwrap();
    let (status, body) = refused_upgrade(with_token("ann")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_sessions"))
    );
    let (_bob, _) = tokio_tungstenite::connect_async(with_token("bob"))
        .await
        .unwrap();
    // Three from 127.0.0.1 now: the address is at its cap, whoever asks.
    let (status, body) = refused_upgrade(with_token("cy")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_sessions"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("from this address")
    );
    // A session that ends gives its slots back.
    next_json(&mut ann1).await;
    ann1.close(None).await.unwrap();
    server
        .wait_for_line("ann1 closed", |l| {
            l["msg"] == wstrace::events::SessionClosed::MESSAGE
        })
        .await;
    let (_ann3, _) = tokio_tungstenite::connect_async(with_token("ann"))
        .await
        .unwrap();
    let metrics = parse_prometheus(&wstrace::http::metrics_text(&server.state));
    assert_eq!(
        metrics["wstrace_upgrades_rejected_total{reason=\"per_user_limit\"}"],
        1.0
    );
    assert_eq!(
        metrics["wstrace_upgrades_rejected_total{reason=\"per_ip_limit\"}"],
        1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn wrong_origin_is_refused_with_403() {
    let mut server = TestServer::start().await;
    let host = server.addr.to_string();
    let same = format!("http://{host}");
    let (mut ok, _) = server
        .connect_with(&server.url("/ws"), &[("origin", &same)])
        .await;
    next_json(&mut ok).await;
    let mut request = server.url("/ws").into_client_request_checked();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body: Value = serde_json::from_slice(response.body().as_ref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "origin_not_allowed");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    server.stop().await;

    let mut listed = TestServer::start_with_config(ServerConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..test_config()
    })
    .await;
    let (mut ok, _) = listed
        .connect_with(&listed.url("/ws"), &[("origin", "https://app.example")])
        .await;
    next_json(&mut ok).await;
    listed.stop().await;
}

#[tokio::test]
async fn message_flood_gets_an_error_frame_then_1008() {
    let mut server = TestServer::start_with_config(ServerConfig {
        limits: Limits {
            messages_per_second: 1,
            message_burst: 5,
            ..test_limits()
        },
        ..traced_config()
    })
    .await;
    let mut peer = join(&server).await;
    let frame = json!({"type": "echo", "content": "spam"}).to_string();
    for _ in 0..50 {
        if peer
            .client
            .send(Message::Text(frame.clone().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut echoes = 0;
    let mut limited = 0;
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), peer.client.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(&text).unwrap();
                match v["type"].as_str().unwrap() {
                    "echo" => echoes += 1,
                    "error" => {
                        assert_eq!(v["code"], "rate_limited");
                        limited += 1;
                    }
                    other => panic!("{other}"),
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.unwrap(),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert_eq!(close.reason.as_str(), "message rate exceeded");
    // The burst, plus at most one token refilled while the flood was sent.
    assert!(
        (5..=6).contains(&echoes),
        "the burst is answered before the close: {echoes}"
    );
    assert!(
        (1..=2).contains(&limited),
        "one error frame per refused streak: {limited}"
    );
    server.stop().await;
    let metrics = parse_prometheus(&wstrace::http::metrics_text(&server.state));
    assert!(metrics["wstrace_rate_limited_total"] >= 5.0);
    let lines = server.log_lines();
    let closed = with_msg(&lines, wstrace::events::SessionClosed::MESSAGE);
    assert_eq!(closed[0]["closed_by"], "policy");
    assert_eq!(closed[0]["close_code"], 1008);
}

#[tokio::test]
async fn stalled_reader_never_blocks_a_publisher() {
    let mut server = TestServer::start_with_config(ServerConfig {
        limits: Limits {
            messages_per_second: 0,
            outbound_queue_frames: 16,
            ..test_limits()
        },
        ..test_config()
    })
    .await;
    let mut publisher = join(&server).await;
    let mut stalled = join(&server).await;
    subscribe(&mut publisher, "firehose").await;
    subscribe(&mut stalled, "firehose").await;
    // `stalled` never reads again. The publisher sends enough to fill the
    // socket buffers and the stalled session's queue many times over, and
    // reads its own copies back.
    let content = "x".repeat(16 * 1024);
    let total = 300;
    let (mut tx, mut rx) = publisher.client.split();
    let publishing = async {
        for i in 0..total {
            let frame = json!({"type": "publish", "channel": "firehose", "content": format!("{i}:{content}")});
            tx.send(Message::Text(frame.to_string().into()))
                .await
                .unwrap();
        }
    };
    let receiving = async {
        let mut received = 0;
        while received < total {
            match rx.next().await.unwrap().unwrap() {
                Message::Text(text) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["type"], "message");
                    assert!(
                        v["content"]
                            .as_str()
                            .unwrap()
                            .starts_with(&format!("{received}:"))
                    );
                    received += 1;
                }
                Message::Close(frame) => panic!("publisher closed: {frame:?}"),
                _ => {}
            }
        }
        received
    };
    let (_, received) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(publishing, receiving)
    })
    .await
    .expect("the publisher was blocked");
    assert_eq!(received, total);
    let metrics = parse_prometheus(&wstrace::http::metrics_text(&server.state));
    assert!(metrics["wstrace_outbound_queue_drops_total"] >= 1.0);
    server.stop().await;
    drop(stalled.client);

    let lines = server.log_lines();
    let stalled_lines = lines_of_session(&lines, &stalled.session_id);
    let overflow = stalled_lines
        .iter()
        .find(|l| l["msg"] == wstrace::events::OutboundQueueFull::MESSAGE)
        .expect("overflow logged in the stalled session");
    assert_eq!(overflow["trace_id"], stalled.trace_id);
    let closed = stalled_lines
        .iter()
        .find(|l| l["msg"] == wstrace::events::SessionClosed::MESSAGE)
        .unwrap();
    assert_eq!(closed["closed_by"], "policy");
    assert_eq!(closed["close_code"], 1013);
}

#[tokio::test]
async fn subscriptions_are_limited_and_channel_names_checked() {
    let mut server = TestServer::start_with_config(ServerConfig {
        limits: Limits {
            max_subscriptions: 2,
            ..test_limits()
        },
        ..test_config()
    })
    .await;
    let mut peer = join(&server).await;
    subscribe(&mut peer, "a").await;
    subscribe(&mut peer, "b").await;
    send_json(
        &mut peer.client,
        json!({"type": "subscribe", "channel": "c"}),
    )
    .await;
    assert_eq!(
        next_json(&mut peer.client).await["code"],
        "too_many_subscriptions"
    );
    send_json(
        &mut peer.client,
        json!({"type": "subscribe", "channel": "bad name"}),
    )
    .await;
    assert_eq!(next_json(&mut peer.client).await["code"], "invalid_channel");
    send_json(
        &mut peer.client,
        json!({"type": "unsubscribe", "channel": "zzz"}),
    )
    .await;
    assert_eq!(next_json(&mut peer.client).await["code"], "not_subscribed");
    server.stop().await;
}

#[tokio::test]
async fn oversize_frames_close_with_1009() {
    let mut server = TestServer::start_with(Limits {
        max_message_bytes: 64 * 1024,
        ..test_limits()
    })
    .await;
    let big = "x".repeat(1024 * 1024);
    let attempt = async || {
        let mut peer = join(&server).await;
        // Fragmented: many frames that add up past the limit.
        let _ = peer.client.send(Message::Text(big.clone().into())).await;
        let (code, _) = next_close(&mut peer.client).await;
        assert_eq!(code, 1009);
    };
    // Memory staying flat is measured on the real binary
    // (tests/process.rs `oversize_messages_leave_server_memory_flat`).
    for _ in 0..5 {
        attempt().await;
    }
    server.stop().await;
    let metrics = parse_prometheus(&wstrace::http::metrics_text(&server.state));
    assert_eq!(metrics["wstrace_oversize_messages_total"], 5.0);
}

#[tokio::test]
async fn header_read_timeout_cuts_off_unfinished_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start_with(Limits {
        header_read_timeout: Duration::from_millis(300),
        ..test_limits()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept the unfinished request open");
    server.stop().await;
}

#[tokio::test]
async fn metrics_parse_and_match_what_happened() {
    let mut server = TestServer::start_with_config(traced_config()).await;
    let mut a = join(&server).await;
    let mut b = join(&server).await;
    subscribe(&mut a, "m").await;
    for i in 0..3 {
        send_json(
            &mut b.client,
            json!({"type": "echo", "content": format!("{i}")}),
        )
        .await;
        next_json(&mut b.client).await;
    }
    send_json(
        &mut b.client,
        json!({"type": "publish", "channel": "m", "content": "x"}),
    )
    .await;
    next_json(&mut a.client).await;
    b.client
        .send(Message::Text("nonsense".into()))
        .await
        .unwrap();
    next_json(&mut b.client).await;
    b.client.close(None).await.unwrap();
    while let Some(Ok(_)) = b.client.next().await {}
    server
        .wait_for_line("b closed", |l| {
            l["msg"] == wstrace::events::SessionClosed::MESSAGE
        })
        .await;

    let response = http(server.addr, "GET", "/metrics", &[], None).await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = parse_prometheus(&response.body);
    assert_eq!(m["wstrace_sessions_opened_total"], 2.0);
    assert_eq!(m["wstrace_sessions_active"], 1.0);
    assert_eq!(
        m["wstrace_sessions_closed_total{code=\"1005\",closed_by=\"client\"}"],
        1.0
    );
    assert_eq!(m["wstrace_messages_received_total{type=\"echo\"}"], 3.0);
    assert_eq!(m["wstrace_messages_received_total{type=\"publish\"}"], 1.0);
    assert_eq!(
        m["wstrace_messages_received_total{type=\"subscribe\"}"],
        1.0
    );
    assert_eq!(m["wstrace_messages_received_total{type=\"invalid\"}"], 1.0);
    assert_eq!(m["wstrace_messages_sent_total{type=\"welcome\"}"], 2.0);
    assert_eq!(m["wstrace_messages_sent_total{type=\"echo\"}"], 3.0);
    assert_eq!(m["wstrace_messages_sent_total{type=\"message\"}"], 1.0);
    assert_eq!(m["wstrace_messages_sent_total{type=\"error\"}"], 1.0);
    assert_eq!(m["wstrace_message_size_bytes_count{direction=\"in\"}"], 6.0);
    assert_eq!(m["wstrace_channels"], 1.0);
    assert_eq!(m["wstrace_channel_subscriptions"], 1.0);
    assert!(m[r#"wstrace_log_lines_written_total{output="file"}"#] > 5.0);
    assert_eq!(m[r#"wstrace_log_lines_dropped_total{output="file"}"#], 0.0);
    if let Some(promtool) = which("promtool") {
        let checked = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .output_with_stdin(response.body.as_bytes());
        assert!(
            checked.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    server.stop().await;
}

/// A stand-in for Loki's query API, labelled as such: Loki cannot be
/// installed here. It answers every `query_range` with `lines` (as Loki's
/// JSON would carry them, one stream) and keeps each request's target.
async fn stand_in_loki(
    lines: Vec<(u64, Value)>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let values: Vec<Value> = lines
        .iter()
        .map(|(ns, line)| json!([ns.to_string(), line.to_string()]))
        .collect();
    let body = json!({"status": "success", "data": {"resultType": "streams",
        "result": [{"stream": {"service": "wstrace"}, "values": values}]}})
    .to_string();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            log.lock()
                .unwrap()
                .push(head.lines().next().unwrap_or("").to_owned());
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn with_a_loki_url_the_log_search_asks_loki_and_says_so() {
    let trace = "00c2a1b2c3d4e5f60718293a4b5c6d7e";
    // Out of order on purpose: the answer is oldest first.
    let lines = vec![
        (2_000, json!({"msg": "second", "trace_id": trace})),
        (1_000, json!({"msg": "first", "trace_id": trace})),
    ];
    let (loki, seen) = stand_in_loki(lines).await;
    let server = TestServer::start_with_config(ServerConfig {
        loki_url: Some(format!("http://{loki}")),
        ..traced_config()
    })
    .await;
    let path = format!("/api/logs?q={}", &trace[..8]);
    let found = http(server.addr, "GET", &path, &admin(), None).await;
    assert_eq!(found.status, 200, "{}", found.body);
    let found = found.json();
    assert_eq!(found["source"], "loki");
    let msgs: Vec<&str> = found["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["msg"].as_str().unwrap())
        .collect();
    assert_eq!(msgs, ["first", "second"]);
    // The query Loki got: the id anchored at its start, over a window.
    let request = seen.lock().unwrap()[0].clone();
    let target = request.split(' ').nth(1).unwrap();
    let query: std::collections::HashMap<String, String> =
        url_query(target.split_once('?').unwrap().1);
    assert_eq!(query["query"], wstrace::http::loki::loki_query(&trace[..8]));
    assert!(query["start"].parse::<u128>().unwrap() < query["end"].parse::<u128>().unwrap());

    // Loki down: a clear 502, not an empty answer.
    let down = TestServer::start_with_config(ServerConfig {
        loki_url: Some("http://127.0.0.1:9".into()),
        ..traced_config()
    })
    .await;
    let refused = http(down.addr, "GET", &path, &admin(), None).await;
    assert_eq!(refused.status, 502, "{}", refused.body);
    assert_eq!(refused.json()["error"]["code"], "log_store_unavailable");
}

fn url_query(query: &str) -> std::collections::HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let v = v.replace('+', " ");
            let v = percent_encoding::percent_decode_str(&v).decode_utf8_lossy();
            (k.to_owned(), v.into_owned())
        })
        .collect()
}

/// Python's `websockets` offers permessage-deflate on every connection
/// (as browsers do), compresses what it sends, and inflates what it gets:
/// an echo and a fan-out to two subscribers round-trip through it.
const PYTHON_DEFLATE: &str = r#"
import asyncio, json, sys, websockets
async def main():
    url = f"ws://127.0.0.1:{sys.argv[1]}/ws"
    content = "hello compressed world, " * 200
    async with websockets.connect(url, max_size=None) as a, websockets.connect(url, max_size=None) as b:
        await a.recv(); await b.recv()
        await a.send(json.dumps({"type": "echo", "content": content}))
        echo = json.loads(await a.recv())
        for ws in (a, b):
            await ws.send(json.dumps({"type": "subscribe", "channel": "big"}))
            await ws.recv()
        await a.send(json.dumps({"type": "publish", "channel": "big", "content": content}))
        got = []
        for ws in (a, b):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "message":
                    got.append(frame["content"] == content)
                    break
        print(json.dumps({"extensions": a.response.headers.get("Sec-WebSocket-Extensions"),
                          "echo": echo["content"] == content, "fan_out": got}))
asyncio.run(main())
"#;

/// The upgrade by hand, offering `extensions` (if any): the response head
/// (lower case), and the stream after it.
async fn raw_upgrade(
    addr: &str,
    extensions: Option<&str>,
) -> (String, tokio::net::TcpStream, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let offer = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    let (head, rest) = raw_ws::upgrade_with(&mut stream, "/ws", &offer, "wstrace").await;
    (head.to_lowercase(), stream, rest)
}

/// Sends `text` as one masked frame and reads the reply frame.
async fn send_and_read(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    text: &str,
) -> (u8, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let frame = raw_ws::masked_frame(true, 0x1, text.as_bytes(), [1, 2, 3, 4]);
    stream.write_all(&frame).await.unwrap();
    read_frame(stream, buf).await
}

/// One whole server frame: (first byte, payload).
async fn read_frame(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        if buf.len() >= 2 {
            let (len, header) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => (usize::MAX, 0),
                short => (short as usize, 2),
            };
            if header > 0 && buf.len() >= header + len {
                let first = buf[0];
                let payload = buf[header..header + len].to_vec();
                buf.drain(..header + len);
                return (first, payload);
            }
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole frame");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permessage_deflate_is_negotiated_with_a_real_client_and_replies_go_compressed() {
    let server = Wstrace::start(&[]);
    let port = server.addr.rsplit_once(':').unwrap().1.to_owned();
    let output = std::process::Command::new("python3")
        .args(["-c", PYTHON_DEFLATE, &port])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["extensions"],
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    assert_eq!(
        (&report["echo"], &report["fan_out"]),
        (&json!(true), &json!([true, true])),
        "{report}"
    );

    // On the wire: a reply over --compression-min-bytes has RSV1 set and
    // inflates to the frame; a short one (the welcome) goes as it is.
    let (head, mut stream, mut buf) = raw_upgrade(
        &server.addr,
        Some("permessage-deflate; client_max_window_bits"),
    )
    .await;
    assert!(
        head.contains("sec-websocket-extensions: permessage-deflate; server_no_context_takeover"),
        "{head}"
    );
    let (first, _) = read_frame(&mut stream, &mut buf).await;
    assert_eq!(first, 0x81, "the welcome is short: not compressed");
    let content = "x".repeat(2000);
    let echo = json!({"type": "echo", "content": content}).to_string();
    let (first, wire) = send_and_read(&mut stream, &mut buf, &echo).await;
    assert_eq!(first, 0xc1, "FIN, RSV1, text");
    assert!(
        wire.len() < 200,
        "{} bytes on the wire for 2 KB",
        wire.len()
    );
    let reply = wstrace::websocket::deflate::inflate(&wire, 1 << 20).unwrap();
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["content"], content.as_str());
    // Invalid UTF-8 ends it with 1007, and its flight recorder is written.
    let bad = raw_ws::masked_frame(true, 0x1, b"\xff", [1, 2, 3, 4]);
    tokio::io::AsyncWriteExt::write_all(&mut stream, &bad)
        .await
        .unwrap();
    let compressed_reply = wire.len();
    drop(stream);

    // A bad offer is declined: the upgrade still succeeds, uncompressed.
    let (head, mut stream, mut buf) = raw_upgrade(
        &server.addr,
        Some("permessage-deflate; server_max_window_bits=99"),
    )
    .await;
    assert!(
        head.starts_with("http/1.1 101") && !head.contains("sec-websocket-extensions"),
        "{head}"
    );
    read_frame(&mut stream, &mut buf).await; // the welcome
    assert_eq!(send_and_read(&mut stream, &mut buf, &echo).await.0, 0x81);
    drop(stream);
    server.sigterm();
    let (_, _, log_dir) = server.wait();
    let opened: Vec<bool> = read_log_lines(log_dir.path())
        .iter()
        .filter(|l| l["msg"] == wstrace::events::SessionOpened::MESSAGE)
        .map(|l| l["compression"].as_bool().unwrap())
        .collect();
    assert_eq!(
        opened,
        [true, true, true, false],
        "the session opened lines say which"
    );
    // `session closed` counts the bytes on the wire beside the message
    // bytes: the compressed echo took a fraction of its size.
    let closed: Vec<Value> = read_log_lines(log_dir.path())
        .into_iter()
        .filter(|l| l["msg"] == wstrace::events::SessionClosed::MESSAGE)
        .collect();
    let raw = closed
        .iter()
        .find(|l| l["messages_out"] == 2 && l["bytes_out"].as_u64().unwrap() > 2000)
        .expect("the raw compressed session's line");
    let (sent, wire) = (
        raw["bytes_out"].as_u64().unwrap(),
        raw["wire_bytes_out"].as_u64().unwrap(),
    );
    assert!(
        wire * 3 < sent,
        "{sent} message bytes took {wire} on the wire: {raw}"
    );
    assert_eq!(raw["compression"], true, "{raw}");
    // The flight recorder keeps sizes as on the wire: the echo's reply as
    // compressed, the uncompressed request as it was.
    let recording = read_log_lines(log_dir.path())
        .into_iter()
        .find(|l| {
            l["msg"] == wstrace::events::FlightRecorded::MESSAGE
                && l["session_id"] == raw["session_id"]
        })
        .expect("the 1007 session's flight recorder");
    let entries = recording["flight_recorder"].as_array().unwrap();
    let size_of = |dir: &str| {
        entries
            .iter()
            .find(|e| e["dir"] == dir && e["type"] == "echo")
            .map(|e| e["size"].as_u64().unwrap() as usize)
    };
    assert_eq!(size_of("out"), Some(compressed_reply), "{recording}");
    assert_eq!(size_of("in"), Some(echo.len()), "{recording}");
    assert!(
        raw["wire_bytes_in"].as_u64().unwrap() > raw["bytes_in"].as_u64().unwrap(),
        "uncompressed in: headers and masks count too"
    );

    // Switched off, nothing is negotiated.
    let off = Wstrace::start(&[("WSTRACE_COMPRESSION", "off")]);
    let (head, _, _) = raw_upgrade(&off.addr, Some("permessage-deflate")).await;
    assert!(
        head.starts_with("http/1.1 101") && !head.contains("sec-websocket-extensions"),
        "{head}"
    );
}
