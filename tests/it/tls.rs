//! TLS on the listener (`--tls-cert`/`--tls-key`): certificates made by the
//! real `openssl` CLI, a rustls client in-process, Python's `websockets`
//! and `ssl` against the real binary, rotel for the session span's
//! `ws.protocol`, and a reload on SIGHUP.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use wstrace::state::ServerConfig;
use wstrace::tls::{Tls, TlsFiles};

/// `openssl req` arguments for a new P-256 key without a passphrase.
const NEW_EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// A test CA and a server certificate it signed for `localhost` and
/// 127.0.0.1, made with the `openssl` CLI.
pub struct TestCerts {
    pub dir: tempfile::TempDir,
}

impl TestCerts {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = Self { dir };
        let ca = [
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=wstrace test CA",
        ];
        certs.openssl(&[&["req", "-x509"][..], &NEW_EC_KEY, &ca].concat());
        certs.issue("server", "localhost");
        certs
    }

    /// A new server certificate (and key) under `name`, with `common_name`.
    pub fn issue(&self, name: &str, common_name: &str) {
        std::fs::write(
            self.path("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let subject = format!("/CN={common_name}");
        let request = ["-keyout", &key, "-out", &csr, "-subj", &subject];
        self.openssl(&[&["req"][..], &NEW_EC_KEY, &request].concat());
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new(which("openssl").expect("openssl (scripts/test.sh installs it)"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
        }
    }

    /// A rustls client that trusts only the test CA.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

async fn tls_to(
    certs: &TestCerts,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    certs.connector().connect(name, tcp).await.unwrap()
}

/// The next frame, which must be a JSON text frame (`next_json` for a
/// stream that is not `MaybeTlsStream`).
async fn next_text<S>(client: &mut tokio_tungstenite::WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match client.next().await {
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test]
async fn wss_and_https_share_the_listener_and_plain_clients_are_refused() {
    let certs = TestCerts::new();
    let mut server = TestServer::start_with_config(ServerConfig {
        tls: Some(Arc::new(Tls::load(certs.files()).unwrap())),
        ..test_config()
    })
    .await;
    // A WebSocket session over TLS: welcome, then an echo.
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (mut client, _) = tokio_tungstenite::client_async(url, tls_to(&certs, server.addr).await)
        .await
        .unwrap();
    let welcome = next_text(&mut client).await;
    assert!(is_trace_id(welcome["trace_id"].as_str().unwrap()));
    let echo = serde_json::json!({"type": "echo", "content": "over tls"});
    client
        .send(Message::Text(echo.to_string().into()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut client).await["content"], "over tls");
    // HTTPS on the same port.
    let mut https = tls_to(&certs, server.addr).await;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nhost: localhost:{}\r\nconnection: close\r\n\r\n",
        server.addr.port()
    );
    https.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    https.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Plain HTTP to the TLS port: no answer but a closed connection, counted.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&answer).contains("200"),
        "plain HTTP was served"
    );
    let refused = server
        .wait_for_line("handshake failure", |l| {
            l["msg"] == wstrace::events::TlsHandshakeFailed::MESSAGE
        })
        .await;
    assert_eq!(refused["network.peer.address"], "127.0.0.1");
    let metrics = parse_prometheus(&wstrace::http::metrics_text(&server.state));
    assert_eq!(metrics["wstrace_tls_handshake_failures_total"], 1.0);
    client.close(None).await.unwrap();
    server.stop().await;
}

#[test]
fn files_that_do_not_load_are_refused_with_their_path() {
    let certs = TestCerts::new();
    let missing = TlsFiles {
        cert: certs.path("nope.pem"),
        key: certs.path("server.key"),
    };
    let error = Tls::load(missing).unwrap_err().to_string();
    assert!(error.contains("nope.pem"), "{error}");
    certs.issue("other", "localhost");
    let mismatched = TlsFiles {
        cert: certs.path("server.pem"),
        key: certs.path("other.key"),
    };
    let error = Tls::load(mismatched).unwrap_err().to_string();
    assert!(error.contains("do not go together"), "{error}");
    let key_as_cert = TlsFiles {
        cert: certs.path("server.key"),
        key: certs.path("server.key"),
    };
    let error = Tls::load(key_as_cert).unwrap_err().to_string();
    assert!(error.contains("no CERTIFICATE"), "{error}");
}

/// Python's own TLS and WebSocket stacks against the real binary; the
/// session span says `ws.protocol=wss`; a renewed certificate is served
/// after SIGHUP, and a broken one is refused while the old one stays.
#[test]
fn a_python_client_speaks_wss_and_sighup_reloads_the_certificate() {
    let certs = TestCerts::new();
    let collector = Collector::start();
    let endpoint = format!("http://127.0.0.1:{}", collector.http);
    let cert = certs.path("server.pem").display().to_string();
    let key = certs.path("server.key").display().to_string();
    let server = Wstrace::start(&[
        ("WSTRACE_TLS_CERT", &cert),
        ("WSTRACE_TLS_KEY", &key),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ]);
    let port = server.addr.rsplit_once(':').unwrap().1.to_owned();
    let python = |script: &str| {
        let output = Command::new("python3")
            .args([
                "-c",
                script,
                &port,
                &certs.path("ca.pem").display().to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "python: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let trace_id = python(PYTHON_SESSION);
    let trace_id = trace_id.trim();
    assert!(is_trace_id(trace_id), "{trace_id}");
    assert_eq!(python(PYTHON_PEER_CN).trim(), "localhost");

    certs.issue("server", "localhost renewed");
    server.sighup();
    wait_for(Duration::from_secs(10), "the reload line", || {
        read_log_lines(server.log_dir.path())
            .into_iter()
            .find(|l| l["msg"] == wstrace::events::TlsReloaded::MESSAGE)
    });
    assert_eq!(python(PYTHON_PEER_CN).trim(), "localhost renewed");
    std::fs::write(certs.path("server.pem"), "not a certificate").unwrap();
    server.sighup();
    wait_for(Duration::from_secs(10), "the failed reload line", || {
        read_log_lines(server.log_dir.path())
            .into_iter()
            .find(|l| l["msg"] == wstrace::events::TlsReloadFailed::MESSAGE)
    });
    assert_eq!(
        python(PYTHON_PEER_CN).trim(),
        "localhost renewed",
        "the certificate in use stays"
    );

    server.sigterm();
    let (code, _, _) = server.wait();
    assert_eq!(code, Some(0));
    let session = wait_for(Duration::from_secs(20), "the session span", || {
        collector
            .spans()
            .into_iter()
            .find(|s| s.trace_id == trace_id && s.name == "ws.session")
    });
    assert!(
        session.body.contains("ws.protocol") && session.body.contains("wss"),
        "{}",
        session.body
    );
}

/// One session with the `websockets` package: the welcome's trace id.
const PYTHON_SESSION: &str = r#"
import asyncio, json, ssl, sys
import websockets
async def main():
    context = ssl.create_default_context(cafile=sys.argv[2])
    async with websockets.connect(f"wss://localhost:{sys.argv[1]}/ws", ssl=context) as ws:
        welcome = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "echo", "content": "from python"}))
        assert json.loads(await ws.recv())["content"] == "from python"
        print(welcome["trace_id"])
asyncio.run(main())
"#;

/// The common name of the certificate the server presents.
const PYTHON_PEER_CN: &str = r#"
import socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[2])
with socket.create_connection(("127.0.0.1", int(sys.argv[1]))) as raw:
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        subject = dict(item[0] for item in tls.getpeercert()["subject"])
        print(subject["commonName"])
"#;

/// The tools over TLS against the real binary: `client`, `load` and
/// `health` trust the system's roots plus `--ca-cert`; an untrusted server
/// is a connect failure, and usage errors exit 64 in every tool.
#[test]
fn the_tools_speak_wss_and_https_with_a_private_ca() {
    let certs = TestCerts::new();
    let (cert, key) = (certs.path("server.pem"), certs.path("server.key"));
    let server = Wstrace::start(&[
        ("WSTRACE_TLS_CERT", cert.to_str().unwrap()),
        ("WSTRACE_TLS_KEY", key.to_str().unwrap()),
    ]);
    let port = server.addr.rsplit_once(':').unwrap().1.to_owned();
    let ca = certs.path("ca.pem").display().to_string();
    let tool = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_wstrace"))
            .args(args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let wss = format!("wss://localhost:{port}/ws");
    let (code, out) = tool(&[
        "client",
        &wss,
        "--ca-cert",
        &ca,
        "--send",
        "over tls",
        "--expect",
        "1",
    ]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("over tls"), "{out}");
    // Not trusted without the CA: a connect failure (2), saying why.
    let (code, out) = tool(&[
        "client",
        &wss,
        "--send",
        "x",
        "--expect",
        "1",
        "--timeout",
        "5s",
    ]);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.to_lowercase().contains("certificate"), "{out}");
    let https = format!("https://localhost:{port}/healthz");
    assert_eq!(
        tool(&["health", "--url", &https, "--ca-cert", &ca]).0,
        Some(0)
    );
    assert_eq!(tool(&["health", "--url", &https]).0, Some(1), "untrusted");
    let (code, out) = tool(&["load", &wss, "--ca-cert", &ca, "-c", "2", "-m", "10"]);
    assert_eq!(code, Some(0), "{out}");
    // Usage errors: 64, from every tool.
    let not_a_cert = certs.path("server.key").display().to_string();
    for args in [
        vec!["client", &wss, "--ca-cert", &not_a_cert, "--send", "x"],
        vec!["load", "ftp://localhost/ws"],
        vec!["load", &wss, "--header", "no colon"],
        vec!["load", &wss, "--ca-cert", &not_a_cert],
        vec!["health", "--url", "ftp://localhost/healthz"],
        vec!["health", "--url", &https, "--ca-cert", &not_a_cert],
        vec!["doctor", "--url", &wss, "--ca-cert", &not_a_cert],
    ] {
        let (code, out) = tool(&args);
        assert_eq!(code, Some(64), "{args:?}: {out}");
    }
    server.sigterm();
    assert_eq!(server.wait().0, Some(0));
}

/// What the stand-in collector below received: each request's
/// `content-encoding` and body.
type Received = Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP receiver over TLS (the test CA's certificate), written
/// here to answer as a collector under load does: the first export gets
/// 503 with `Retry-After: 0`, every later one 200.
async fn flaky_https_collector(certs: &TestCerts) -> (u16, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = Tls::load(certs.files()).unwrap().acceptor();
    let received: Received = Arc::default();
    let log = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                while let Some((encoding, body)) = read_post(&mut tls).await {
                    let first = {
                        let mut log = log.lock().unwrap();
                        log.push((encoding, body));
                        log.len() == 1
                    };
                    let answer: &[u8] = if first {
                        b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 0\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
                    };
                    if tls.write_all(answer).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, received)
}

/// One HTTP/1.1 request with a `content-length` body.
async fn read_post<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')
                .map(|v| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")?.parse().ok()?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some((header("content-encoding").unwrap_or_default(), body))
}

/// OTLP/HTTP to an `https://` collector trusted through
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`, gzip-compressed; a 503 is retried
/// (after its `Retry-After`) and the batch arrives once, nothing dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_go_to_an_https_collector_gzipped_and_a_503_is_retried() {
    let certs = TestCerts::new();
    let (port, received) = flaky_https_collector(&certs).await;
    let endpoint = format!("https://localhost:{port}");
    let ca = certs.path("ca.pem").display().to_string();
    let server = Wstrace::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let (mut client, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    next_json(&mut client).await;
    close_politely(&mut client).await;
    let got = received.clone();
    let exported = tokio::task::spawn_blocking(move || {
        let addr = server.addr.clone();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let exported = loop {
            let metrics = scrape(&addr);
            if metrics
                .get("wstrace_spans_exported_total")
                .copied()
                .unwrap_or(0.0)
                >= 2.0
            {
                break metrics;
            }
            let seen: Vec<String> = got
                .lock()
                .unwrap()
                .iter()
                .map(|(e, b)| format!("{e} {}", b.len()))
                .collect();
            assert!(
                std::time::Instant::now() < deadline,
                "no export succeeded; the collector saw {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        server.sigterm();
        assert_eq!(server.wait().0, Some(0));
        exported
    })
    .await
    .unwrap();
    assert_eq!(exported["wstrace_spans_dropped_total"], 0.0);
    let received = received.lock().unwrap().clone();
    assert!(
        received.len() >= 2,
        "the 503 was not retried: {} requests",
        received.len()
    );
    for (encoding, body) in &received {
        assert_eq!(encoding, "gzip");
        let mut decoded = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut decoded)
            .unwrap();
        assert!(
            String::from_utf8_lossy(&decoded).contains("ws.session"),
            "not an OTLP request"
        );
    }
    // The retry carries the same batch; once accepted it is not sent again.
    assert_eq!(
        received[0].1, received[1].1,
        "the retry is the same request"
    );
    let repeats = received[1..]
        .iter()
        .filter(|(_, body)| *body == received[1].1)
        .count();
    assert_eq!(repeats, 1, "the accepted batch was sent again");
}

/// OTLP/gRPC over mutual TLS, gzip-compressed, to a real collector: nginx
/// (Debian's, terminating TLS with the test CA's certificate, requiring a
/// client certificate from that CA, and passing gRPC on with
/// `grpc_pass`) in front of rotel.
#[test]
fn spans_go_over_grpc_with_tls_and_gzip_through_nginx_to_rotel() {
    let certs = TestCerts::new();
    let collector = Collector::start();
    let port = free_port();
    let nginx_dir = tempfile::tempdir().unwrap();
    let path = |name: &str| nginx_dir.path().join(name).display().to_string();
    let config = format!(
        "error_log {log} warn;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {body};\n\
         server {{\n    listen 127.0.0.1:{port} ssl http2;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
         ssl_client_certificate {ca};\n    ssl_verify_client on;\n\
         location / {{ grpc_pass grpc://127.0.0.1:{grpc}; }}\n  }}\n}}\n",
        log = path("error.log"),
        body = path("body"),
        cert = certs.path("server.pem").display(),
        key = certs.path("server.key").display(),
        ca = certs.path("ca.pem").display(),
        grpc = collector.grpc,
    );
    std::fs::write(path("nginx.conf"), config).unwrap();
    let program = ["/usr/sbin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| which("nginx"))
        .expect("nginx (scripts/test.sh installs it)");
    let mut nginx = Command::new(program)
        .args(["-c", &path("nginx.conf"), "-p", &path("")])
        .args(["-g", &format!("daemon off; pid {};", path("nginx.pid"))])
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "nginx to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let endpoint = format!("https://localhost:{port}");
    let ca = certs.path("ca.pem").display().to_string();
    let client_cert = certs.path("server.pem").display().to_string();
    let client_key = certs.path("server.key").display().to_string();
    let server = Wstrace::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca),
        // The test CA's certificate is for clients too.
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &client_cert),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &client_key),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let client = Command::new(env!("CARGO_BIN_EXE_wstrace"))
        .args(["client", &server.url(), "--send", "hello", "--expect", "1"])
        .output()
        .unwrap();
    assert!(client.status.success());
    let trace_id = String::from_utf8_lossy(&client.stdout)
        .split("trace_id=")
        .nth(1)
        .map(|rest| rest.chars().take(32).collect::<String>())
        .expect("the client prints its trace id");
    server.sigterm();
    let (code, _, log_dir) = server.wait();
    assert_eq!(code, Some(0));
    let session = wait_for(Duration::from_secs(20), "the session span at rotel", || {
        collector
            .spans()
            .into_iter()
            .find(|s| s.trace_id == trace_id && s.name == "ws.session")
    });
    assert!(session.body.contains("ws.protocol"), "{}", session.body);
    let dropped = read_log_lines(log_dir.path())
        .into_iter()
        .filter(|l| l["msg"] == wstrace::events::SpansDropped::MESSAGE)
        .count();
    assert_eq!(dropped, 0, "spans were dropped");
    // SIGTERM: the master stops its workers (SIGKILL would orphan them).
    let _ = Command::new("kill")
        .args(["-TERM", &nginx.id().to_string()])
        .status();
    let _ = nginx.wait();
}
