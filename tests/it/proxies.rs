//! Behind proxies: the client address from `X-Forwarded-For`, `Forwarded`
//! and the PROXY protocol, only from trusted peers, with real WebSocket
//! clients connecting from chosen loopback addresses (127.0.0.1 plays the
//! proxy, 10.0.0.0/8 the proxies behind it, 127.0.0.2 a client that
//! reaches the server directly).

use crate::common::*;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wstrace::client_address::TrustedProxies;
use wstrace::limits::Limits;
use wstrace::state::ServerConfig;

const ADMIN_TOKEN: &str = "admin-proxies-test";
const PROXY: [u8; 4] = [127, 0, 0, 1];
const DIRECT: [u8; 4] = [127, 0, 0, 2];

async fn behind_proxy(limits: Limits, proxy_protocol: bool) -> TestServer {
    TestServer::start_with_config(ServerConfig {
        limits,
        trusted_proxies: TrustedProxies::parse(&["127.0.0.1", "10.0.0.0/8"]).unwrap(),
        proxy_protocol,
        admin_token: Some(wstrace::auth::Secret::new(ADMIN_TOKEN)),
        ..test_config()
    })
    .await
}

/// A TCP connection to the server from `source`.
async fn tcp_from(source: [u8; 4], server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::from(source), 0))
        .unwrap();
    socket.connect(server).await.unwrap()
}

/// A WebSocket upgrade over `stream` with extra headers: the session's
/// welcome, or the refusal's HTTP status.
async fn upgrade(
    server: &TestServer,
    stream: TcpStream,
    headers: &[(&'static str, &str)],
) -> Result<(Client, Value), u16> {
    let mut request = server.url("/ws").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().append(*name, value.parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
    {
        Ok((mut client, _)) => {
            let welcome = next_json(&mut client).await;
            Ok((client, welcome))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("upgrade failed: {other}"),
    }
}

async fn session_from(
    server: &TestServer,
    source: [u8; 4],
    headers: &[(&'static str, &str)],
) -> Result<(Client, Value), u16> {
    upgrade(server, tcp_from(source, server.addr).await, headers).await
}

/// The `session opened` line of the session the welcome names.
async fn opened_line(server: &TestServer, welcome: &Value) -> Value {
    let id = welcome["session_id"].as_str().unwrap().to_owned();
    server
        .wait_for_line("session opened", |l| {
            l["session_id"] == id.as_str() && l["msg"] == wstrace::events::SessionOpened::MESSAGE
        })
        .await
}

fn address_errors(server: &TestServer, source: &str, reason: &str) -> f64 {
    let metrics = parse_prometheus(&wstrace::http::metrics_text(&server.state));
    let key =
        format!("wstrace_client_address_errors_total{{source=\"{source}\",reason=\"{reason}\"}}");
    metrics.get(&key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_in_lines_and_the_api() {
    let mut server = behind_proxy(test_limits(), false).await;
    // One hop, then a client that sent its own header (prepended, so never
    // taken) through two trusted proxies.
    let cases = [
        ("x-forwarded-for", "198.51.100.7", "198.51.100.7"),
        (
            "x-forwarded-for",
            "6.6.6.6, 198.51.100.8, 10.1.1.1",
            "198.51.100.8",
        ),
        (
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8::17]:4711";proto=https, for=10.2.2.2"#,
            "2001:db8::17",
        ),
    ];
    let mut clients = Vec::new();
    for (header, value, client) in cases {
        let (ws, welcome) = session_from(&server, PROXY, &[(header, value)])
            .await
            .unwrap();
        let line = opened_line(&server, &welcome).await;
        assert_eq!(line["client.address"], client, "{header}: {value}");
        assert_eq!(
            line["net.peer.ip"], "127.0.0.1",
            "the TCP peer stays the proxy"
        );
        clients.push((
            ws,
            welcome["session_id"].as_str().unwrap().to_owned(),
            client,
        ));
    }
    // The admin API, asked through the proxy (127.0.0.1) itself.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let listed = http(
        server.addr,
        "GET",
        "/api/sessions",
        &[("authorization", &bearer)],
        None,
    )
    .await;
    let sessions = listed.json()["sessions"].as_array().unwrap().clone();
    for (_, id, client) in &clients {
        let view = sessions
            .iter()
            .find(|s| s["session_id"] == id.as_str())
            .unwrap();
        assert_eq!(view["client"], *client);
        assert!(
            view["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{view}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn the_per_address_cap_counts_clients_behind_the_proxy() {
    let limits = Limits {
        max_sessions_per_ip: 1,
        ..test_limits()
    };
    let mut server = behind_proxy(limits, false).await;
    let xff = |ip| [("x-forwarded-for", ip)];
    let _a = session_from(&server, PROXY, &xff("198.51.100.1"))
        .await
        .unwrap();
    let _b = session_from(&server, PROXY, &xff("198.51.100.2"))
        .await
        .unwrap();
    // The same client again is over its cap, though the proxy is shared.
    assert_eq!(
        session_from(&server, PROXY, &xff("198.51.100.1"))
            .await
            .err(),
        Some(429)
    );
    let refused = server
        .wait_for_line("per-ip refusal", |l| {
            l["msg"] == wstrace::events::UpgradeRefused::PER_IP_MESSAGE
        })
        .await;
    assert_eq!(refused["client.address"], "198.51.100.1");
    server.stop().await;
}

#[tokio::test]
async fn a_forged_header_from_an_untrusted_peer_changes_nothing() {
    let limits = Limits {
        max_sessions_per_ip: 1,
        ..test_limits()
    };
    let mut server = behind_proxy(limits, false).await;
    let forged = [
        ("x-forwarded-for", "198.51.100.1"),
        ("forwarded", "for=198.51.100.1"),
    ];
    let (_ws, welcome) = session_from(&server, DIRECT, &forged).await.unwrap();
    let line = opened_line(&server, &welcome).await;
    assert_eq!(line["client.address"], "127.0.0.2");
    // Another forged address does not buy a second slot.
    let other = [("x-forwarded-for", "198.51.100.99")];
    assert_eq!(session_from(&server, DIRECT, &other).await.err(), Some(429));
    assert_eq!(address_errors(&server, "x-forwarded-for", "malformed"), 0.0);
    server.stop().await;
}

#[tokio::test]
async fn malformed_forwarding_headers_are_ignored_with_a_counted_warning() {
    let mut server = behind_proxy(test_limits(), false).await;
    let long = vec!["198.51.100.7"; 800].join(", ");
    let cases: [(&'static str, &str, &str); 4] = [
        ("x-forwarded-for", "garbage, 198.51.100.7", "malformed"),
        ("x-forwarded-for", "[2001:db8::1]:8080", "malformed"),
        ("forwarded", "for=2001:db8::1;proto=http", "malformed"),
        ("x-forwarded-for", &long, "too long or not text"),
    ];
    let mut clients = Vec::new();
    for (header, value, _) in cases {
        let (ws, welcome) = session_from(&server, PROXY, &[(header, value)])
            .await
            .unwrap();
        let line = opened_line(&server, &welcome).await;
        assert_eq!(
            line["client.address"],
            "127.0.0.1",
            "{header}: {} bytes",
            value.len()
        );
        clients.push(ws);
    }
    assert_eq!(address_errors(&server, "x-forwarded-for", "malformed"), 2.0);
    assert_eq!(address_errors(&server, "forwarded", "malformed"), 1.0);
    assert_eq!(
        address_errors(&server, "x-forwarded-for", "too long or not text"),
        1.0
    );
    let warning = server
        .wait_for_line("ignored header", |l| {
            l["msg"] == wstrace::events::ForwardedHeaderIgnored::MESSAGE
                && l["header.length"] == long.len()
        })
        .await;
    assert_eq!(warning["level"], 40);
    assert!(
        !warning.to_string().contains("198.51.100.7, 198"),
        "the value is not logged"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_proxy_protocol_names_the_client_and_is_refused_from_others() {
    let mut server = behind_proxy(test_limits(), true).await;
    for header in [
        b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n".to_vec(),
        proxy_v2([198, 51, 100, 8], 6666),
    ] {
        let mut stream = tcp_from(PROXY, server.addr).await;
        stream.write_all(&header).await.unwrap();
        let (_ws, welcome) = upgrade(&server, stream, &[]).await.unwrap();
        let line = opened_line(&server, &welcome).await;
        let expected = if header.starts_with(b"PROXY") {
            "198.51.100.7"
        } else {
            "198.51.100.8"
        };
        assert_eq!(line["client.address"], expected);
        assert_eq!(line["net.peer.ip"], "127.0.0.1");
    }
    // No header, or a header from a peer that is not a trusted proxy: the
    // connection is closed before any HTTP, and counted.
    let mut plain = tcp_from(PROXY, server.addr).await;
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_to_end(plain).await,
        0,
        "no answer without a PROXY header"
    );
    let mut direct = tcp_from(DIRECT, server.addr).await;
    direct
        .write_all(b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_to_end(direct).await,
        0,
        "no answer to an untrusted peer"
    );
    eventually(
        "refusals counted",
        std::time::Duration::from_secs(5),
        || {
            address_errors(&server, "proxy-protocol", "malformed") == 1.0
                && address_errors(&server, "proxy-protocol", "untrusted_peer") == 1.0
        },
    );
    server.stop().await;
}

fn proxy_v2(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend([0x21, 0x11, 0, 12]);
    header.extend(source);
    header.extend([127, 0, 0, 1]);
    header.extend(port.to_be_bytes());
    header.extend(80u16.to_be_bytes());
    header
}

async fn read_to_end(mut stream: TcpStream) -> usize {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    );
    // A reset is as much a refusal as a close.
    let _ = read.await.expect("the server closed the connection");
    answer.len()
}
