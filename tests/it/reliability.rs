//! Hostile input and faults against the in-process server: each case has a
//! defined answer, and the server is fine afterwards.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wstrace::limits::Limits;
use wstrace::state::ServerConfig;

async fn still_serves(server: &TestServer) {
    let (mut client, _) = server.connect().await;
    next_json(&mut client).await;
    send_json(&mut client, json!({"type": "echo", "content": "alive"})).await;
    assert_eq!(next_json(&mut client).await["content"], "alive");
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let mut server = TestServer::start().await;
    let mut raw = RawClient::upgrade(server.addr, "/ws").await;
    assert_eq!(raw.read_frame().await.unwrap().0, 1, "welcome");
    raw.send_frame(true, 1, &[0x7b, 0xff, 0xfe, 0x7d]).await;
    assert_eq!(raw.close_code().await, Some(1007));
    still_serves(&server).await;
    server.stop().await;
    let lines = server.log_lines();
    let closed = with_msg(&lines, wstrace::events::SessionClosed::MESSAGE);
    assert!(
        closed
            .iter()
            .any(|l| l["close_code"] == 1007 && l["closed_by"] == "error")
    );
}

/// Each way of breaking RFC 6455 closes with 1002, says why in the
/// session's log, and leaves the server serving.
#[tokio::test]
async fn protocol_errors_close_with_1002_and_say_why() {
    let mut server = TestServer::start().await;
    // (fin, opcode, payload, what the log line says)
    let cases: [(bool, u8, &[u8], &str); 4] = [
        (true, 3, b"", "reserved opcode"),
        (false, 9, b"", "fragmented control frame"),
        (
            true,
            0,
            b"x",
            "continuation frame with no message to continue",
        ),
        (true, 8, b"\x03", "close frame with a 1-byte payload"),
    ];
    for (fin, opcode, payload, _) in cases {
        let mut raw = RawClient::upgrade(server.addr, "/ws").await;
        assert_eq!(raw.read_frame().await.unwrap().0, 1, "welcome");
        raw.send_frame(fin, opcode, payload).await;
        assert_eq!(raw.close_code().await, Some(1002), "opcode {opcode}");
    }
    still_serves(&server).await;
    server.stop().await;
    let lines = server.log_lines();
    for (_, _, _, why) in cases {
        assert!(
            lines
                .iter()
                .any(|l| l["close_code"] == 1002
                    && l["error"].as_str().is_some_and(|e| e.contains(why))),
            "no 1002 line says {why:?}"
        );
    }
}

/// A client's ping is answered with its payload, in order with the
/// session's other frames; a client's Close is answered with its code.
#[tokio::test]
async fn pings_and_closes_from_the_client_are_answered() {
    let mut server = TestServer::start().await;
    let mut raw = RawClient::upgrade(server.addr, "/ws").await;
    assert_eq!(raw.read_frame().await.unwrap().0, 1, "welcome");
    let echo = json!({"type": "echo", "content": "first"}).to_string();
    raw.send_frame(true, 1, echo.as_bytes()).await;
    raw.send_frame(true, 9, b"are you there").await;
    let (opcode, reply) = raw.read_frame().await.unwrap();
    assert_eq!(opcode, 1);
    assert!(String::from_utf8(reply).unwrap().contains("first"));
    assert_eq!(
        raw.read_frame().await,
        Some((10, b"are you there".to_vec()))
    );
    raw.send_frame(true, 8, b"\x0f\xa0going").await;
    assert_eq!(raw.read_frame().await, Some((8, vec![0x0f, 0xa0])));
    // And then the server closes the connection.
    assert_eq!(raw.read_frame().await, None);
    server.stop().await;
    let lines = server.log_lines();
    let closed = with_msg(&lines, wstrace::events::SessionClosed::MESSAGE);
    assert_eq!(closed[0]["close_code"], 4000);
    assert_eq!(closed[0]["close_clean"], true);
}

/// A request to the WebSocket endpoint that is not an upgrade is told what
/// is missing, as JSON, and no session starts.
#[tokio::test]
async fn a_request_that_is_not_an_upgrade_is_told_why() {
    let mut server = TestServer::start().await;
    let plain = http(server.addr, "GET", "/ws", &[], None).await;
    assert_eq!(plain.status, 400);
    assert_eq!(plain.json()["error"]["code"], "not_a_websocket_upgrade");
    let old = http(
        server.addr,
        "GET",
        "/ws",
        &[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-version", "8"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    )
    .await;
    assert_eq!(old.status, 400);
    assert_eq!(old.header("sec-websocket-version"), Some("13"));
    server.stop().await;
    assert!(with_msg(&server.log_lines(), wstrace::events::SessionOpened::MESSAGE).is_empty());
}

#[tokio::test]
async fn fragmented_oversize_message_closes_with_1009() {
    let mut server = TestServer::start_with(Limits {
        max_message_bytes: 64 * 1024,
        ..test_limits()
    })
    .await;
    // Each fragment is under the limit; together they are over it. The
    // server's memory staying flat is measured on the real binary, in its
    // own process (tests/process.rs): this process runs other tests.
    for _ in 0..5 {
        assert_eq!(send_fragmented_oversize(server.addr).await, Some(1009));
    }
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn injected_newlines_stay_inside_one_json_line() {
    let mut server = TestServer::start_with_config(ServerConfig {
        message_sample_ratio: 1.0,
        ..test_config()
    })
    .await;
    let forged = "bye\n{\"v\":0,\"msg\":\"pwned\",\"level\":50}\r\n";
    let (mut client, _) = server.connect().await;
    next_json(&mut client).await;
    // In a rejected frame, in echoed content, and in a close reason.
    client.send(Message::Text(forged.into())).await.unwrap();
    next_json(&mut client).await;
    send_json(&mut client, json!({"type": "echo", "content": forged})).await;
    next_json(&mut client).await;
    client
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: forged.into(),
        })))
        .await
        .unwrap();
    while let Some(Ok(_)) = client.next().await {}
    server.stop().await;
    // log_lines() asserts every line is one JSON object.
    let lines = server.log_lines();
    assert!(lines.iter().all(|l| l["msg"] != "pwned"));
    let closed = with_msg(&lines, wstrace::events::SessionClosed::MESSAGE);
    assert_eq!(
        closed[0]["close_reason"], forged,
        "kept, escaped, in its field"
    );
}

#[tokio::test]
async fn huge_or_many_headers_are_refused_before_any_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start().await;
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge = format!("x-huge: {}\r\n", "a".repeat(512 * 1024));
    for extra in [many, huge] {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        let _ = stream.write_all(request.as_bytes()).await;
        let mut response = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.starts_with("HTTP/1.1 431")
                || response.starts_with("HTTP/1.1 400")
                || response.is_empty(),
            "{}",
            response.lines().next().unwrap_or("")
        );
        assert!(!response.starts_with("HTTP/1.1 101"));
    }
    still_serves(&server).await;
    server.stop().await;
    assert!(with_msg(&server.log_lines(), "session opened").len() == 1);
}

/// RFC 6455 4.2.1: a key that is not one base64 16-byte nonce, or a version
/// list that is not exactly 13, is a 400 with the JSON error body, never a
/// 101.
#[tokio::test]
async fn malformed_keys_and_versions_get_400_not_101() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start().await;
    let good_key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    let cases = [
        format!("Sec-WebSocket-Key: \r\n{v13}"),
        format!("Sec-WebSocket-Key: not*base64*at*all!\r\n{v13}"),
        format!("Sec-WebSocket-Key: AAAAAA==\r\n{v13}"),
        format!("{good_key}Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n{v13}"),
        format!("{good_key}Sec-WebSocket-Version: 13, 8\r\n"),
        format!("{good_key}{v13}Sec-WebSocket-Version: 8\r\n"),
    ];
    for headers in cases {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             {headers}Connection: close\r\n\r\n",
            server.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
            .await
            .unwrap()
            .unwrap();
        let response = String::from_utf8_lossy(&response);
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{headers:?}: {response}"
        );
        assert!(
            response.contains(r#""code":"not_a_websocket_upgrade""#),
            "{response}"
        );
    }
    still_serves(&server).await;
    server.stop().await;
    assert!(with_msg(&server.log_lines(), "session opened").len() == 1);
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_panicking_handler_closes_only_its_session_with_1011() {
    let mut server = TestServer::start_with_config(ServerConfig {
        fault_panic_on_echo: Some("boom".into()),
        ..test_config()
    })
    .await;
    let (mut victim, response) = server.connect().await;
    let victim_trace = response.headers()["x-trace-id"]
        .to_str()
        .unwrap()
        .to_owned();
    next_json(&mut victim).await;
    let (mut bystander, _) = server.connect().await;
    next_json(&mut bystander).await;

    send_json(&mut victim, json!({"type": "echo", "content": "boom"})).await;
    assert_eq!(
        next_close(&mut victim).await,
        (1011, "internal error".to_owned())
    );
    for i in 0..3 {
        send_json(
            &mut bystander,
            json!({"type": "echo", "content": format!("still {i}")}),
        )
        .await;
        assert_eq!(
            next_json(&mut bystander).await["content"],
            format!("still {i}")
        );
    }
    server.stop().await;
    let lines = server.log_lines();
    let panicked = with_msg(&lines, wstrace::events::HandlerPanicked::MESSAGE);
    assert_eq!(panicked.len(), 1);
    assert_eq!(panicked[0]["trace_id"], victim_trace);
    assert_eq!(panicked[0]["level"], 50);
    assert!(
        panicked[0]["panic"]
            .as_str()
            .unwrap()
            .contains("injected fault")
    );
    let closed: Vec<_> = with_msg(&lines, wstrace::events::SessionClosed::MESSAGE)
        .into_iter()
        .filter(|l| l["trace_id"] == victim_trace.as_str())
        .collect();
    assert_eq!(closed[0]["close_code"], 1011);
    assert_eq!(closed[0]["closed_by"], "error");
}

#[tokio::test(flavor = "current_thread")]
async fn every_log_line_emitted_at_saturation_is_on_disk() {
    let mut server = TestServer::start_with_config(ServerConfig {
        message_sample_ratio: 1.0,
        limits: Limits {
            messages_per_second: 0,
            ..test_limits()
        },
        ..test_config()
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..400 {
        let url = server.url("/ws");
        tasks.push(tokio::spawn(async move {
            let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            next_json(&mut client).await;
            for i in 0..10 {
                send_json(
                    &mut client,
                    json!({"type": "echo", "content": format!("{i}")}),
                )
                .await;
            }
            for _ in 0..10 {
                next_json(&mut client).await;
            }
            client.close(None).await.unwrap();
            while let Some(Ok(_)) = client.next().await {}
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    server.stop().await;
    let counters = server.state.config.telemetry.clone().unwrap();
    let (written, dropped) = counters.log_lines_of_first_output();
    let on_disk = server.log_lines().len() as u64;
    assert_eq!(dropped, 0);
    assert_eq!(on_disk, written, "every line counted as written is on disk");
    // 400 sessions × (opened + 10 received + closed) at least.
    assert!(on_disk >= 400 * 12, "{on_disk}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The protocol decoder never panics and always says what is wrong.
    #[test]
    fn decoder_never_panics(text in ".{0,200}", json_ish in r#"\{("type":)?"[a-z]{0,12}"(,"[a-z_]{1,10}":("[^"]{0,10}"|[0-9]{1,4}|null|\[\]))*\}"#) {
        for input in [text.as_str(), json_ish.as_str()] {
            match wstrace::protocol::decode(input) {
                Ok(_) => {}
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Arbitrary bytes on the wire after a real upgrade: the server answers
    /// with a close or drops the connection, and keeps serving others.
    #[test]
    fn arbitrary_bytes_never_break_the_server(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let server = FUZZ_SERVER.get_or_init(start_fuzz_server);
            let mut raw = RawClient::upgrade(server.addr, "/ws").await;
            raw.read_frame().await;
            use tokio::io::AsyncWriteExt;
            let _ = raw.stream.write_all(&bytes).await;
            let _ = raw.stream.shutdown().await;
            // Whatever comes back is well-formed frames, then EOF.
            while let Some((opcode, _)) = raw.read_frame().await {
                assert!(matches!(opcode, 1 | 2 | 8 | 9 | 10), "opcode {opcode}");
            }
            let response = http(server.addr, "GET", "/healthz", &[], None).await;
            assert_eq!(response.status, 200);
        });
    }
}

/// One server for all fuzz cases, on its own thread and runtime.
struct FuzzServer {
    addr: std::net::SocketAddr,
}

static FUZZ_SERVER: std::sync::OnceLock<FuzzServer> = std::sync::OnceLock::new();

fn start_fuzz_server() -> FuzzServer {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let server = TestServer::start().await;
            tx.send(server.addr).unwrap();
            std::future::pending::<()>().await;
        });
    });
    FuzzServer {
        addr: rx.recv().unwrap(),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn log_rotation_while_sessions_are_live_loses_and_repeats_nothing() {
    use std::collections::{HashMap, HashSet};
    // Start a few seconds before a minute boundary, so the minutely log
    // rolls over while the sessions talk.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let second = now.as_secs() % 60;
    if second < 55 {
        tokio::time::sleep(Duration::from_secs(55 - second)).await;
    }
    let mut server = TestServer::start_rotating(
        ServerConfig {
            message_sample_ratio: 1.0,
            ..test_config()
        },
        wstrace::telemetry::LogRotation::Minutely,
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let url = server.url("/ws");
        tasks.push(tokio::spawn(async move {
            let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let session = next_json(&mut client).await["session_id"]
                .as_str()
                .unwrap()
                .to_owned();
            let mut sent = 0;
            let end = tokio::time::Instant::now() + Duration::from_secs(8);
            while tokio::time::Instant::now() < end {
                send_json(
                    &mut client,
                    json!({"type": "echo", "content": sent.to_string()}),
                )
                .await;
                next_json(&mut client).await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            client.close(None).await.unwrap();
            while let Some(Ok(_)) = client.next().await {}
            (session, sent)
        }));
    }
    let mut expected = HashMap::new();
    for task in tasks {
        let (session, sent) = task.await.unwrap();
        expected.insert(session, sent);
    }
    server.stop().await;
    let files = std::fs::read_dir(server.log_dir()).unwrap().count();
    assert!(files >= 2, "the log rolled over ({files} file)");
    let lines = server.log_lines();
    let mut seen = HashSet::new();
    for line in &lines {
        let key = (
            line["time"].to_string(),
            line["span_id"].to_string(),
            line["msg"].to_string(),
        );
        assert!(seen.insert(key), "duplicated line: {line}");
    }
    for (session, sent) in expected {
        let received = lines_of_session(&lines, &session)
            .into_iter()
            .filter(|l| l["msg"] == wstrace::events::MessageHandled::MESSAGE)
            .count();
        assert_eq!(
            received, sent,
            "session {session}: one line per message, across files"
        );
    }
}

/// A client that sends nothing but invalid frames gets an error frame for
/// each, but its session writes a bounded number of warning lines; the
/// rest are counted in the next line and in `session closed`. A 404 is not
/// worth an info line at all.
#[tokio::test]
async fn invalid_frame_floods_write_bounded_warnings_with_accounting() {
    let mut server = TestServer::start_with_config(ServerConfig {
        limits: Limits {
            messages_per_second: 0,
            ..test_limits()
        },
        ..test_config()
    })
    .await;
    let (mut client, _) = server.connect().await;
    next_json(&mut client).await;
    for _ in 0..300 {
        client.send(Message::Text("x".into())).await.unwrap();
    }
    for _ in 0..300 {
        assert_eq!(next_json(&mut client).await["type"], "error");
    }
    client.close(None).await.unwrap();
    for _ in 0..5 {
        let response = http(server.addr, "GET", "/no-such-page", &[], None).await;
        assert_eq!(response.status, 404);
    }
    server.stop().await;
    let lines = server.log_lines();
    let warnings = with_msg(&lines, wstrace::events::ClientFrameRejected::MESSAGE);
    let budget = wstrace::limits::SESSION_WARNINGS_PER_INTERVAL as usize;
    assert_eq!(warnings.len(), budget);
    let closed = with_msg(&lines, wstrace::events::SessionClosed::MESSAGE);
    assert_eq!(closed[0]["warnings_suppressed"], 300 - budget as u64);
    assert_eq!(closed[0]["error_count"], 300);
    let not_found = lines
        .iter()
        .filter(|l| l["status"] == 404 && l["level"].as_u64() >= Some(30))
        .count();
    assert_eq!(not_found, 0, "404s logged at info");
}
