//! The tools' HTTP client (`wstrace health`, `wstrace doctor`): a GET over
//! hyper-util's client, the one the OTLP/HTTP exporter uses, `http://` or
//! `https://` (hyper-rustls, trusting what [`Trust`] trusts); one request,
//! one answer, bounded by a timeout.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::time::Duration;

use super::tls::Trust;

#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("not an http:// or https:// URL with a host: {0}")]
    BadUrl(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("no answer from {0} in time")]
    Timeout(String),
    #[error("bad response from {addr}: {source}")]
    BadResponse { addr: String, source: hyper::Error },
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// The URL as a request target, refusing what this client cannot reach.
fn parse_url(url: &str) -> Result<http::Uri, HttpClientError> {
    let bad = || HttpClientError::BadUrl(url.to_owned());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let http = matches!(uri.scheme_str(), Some("http" | "https"));
    let has_host = uri.host().is_some_and(|host| !host.is_empty());
    if http && has_host {
        Ok(uri)
    } else {
        Err(bad())
    }
}

pub async fn get(
    url: &str,
    timeout: Duration,
    trust: &Trust,
) -> Result<HttpResponse, HttpClientError> {
    let uri = parse_url(url)?;
    let addr = uri
        .authority()
        .map_or_else(String::new, |a| a.as_str().to_owned());
    tokio::time::timeout(timeout, fetch(uri, &addr, trust))
        .await
        .map_err(|_| HttpClientError::Timeout(addr.clone()))?
}

async fn fetch(uri: http::Uri, addr: &str, trust: &Trust) -> Result<HttpResponse, HttpClientError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*trust.config()).clone())
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let request = http::Request::get(uri)
        .header(
            http::header::USER_AGENT,
            concat!("wstrace/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .expect("a GET with a parsed URI is a valid request");
    let response = client
        .request(request)
        .await
        .map_err(|source| HttpClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|source| HttpClientError::BadResponse {
            addr: addr.to_owned(),
            source,
        })?
        .to_bytes();
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// What a query parameter value keeps as is (RFC 3986's unreserved
/// characters); everything else is percent-encoded.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a query parameter value.
pub fn encode_component(value: &str) -> String {
    utf8_percent_encode(value, COMPONENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_are_taken() {
        let uri = parse_url("http://loki:3100/ready?x=1").unwrap();
        assert_eq!(uri.authority().unwrap().as_str(), "loki:3100");
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/ready?x=1");
        assert!(parse_url("http://localhost").is_ok());
        assert!(parse_url("https://x").is_ok());
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http:///x").is_err());
        assert!(parse_url("loki:3100").is_err());
    }

    #[tokio::test]
    async fn answers_are_read_plain_and_chunked() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answers: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        ];
        let server = tokio::spawn(async move {
            for answer in answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = [0; 1024];
                let _ = socket.read(&mut request).await.unwrap();
                socket.write_all(answer).await.unwrap();
            }
        });
        let url = format!("http://{addr}/ready");
        let plain = get(&url, Duration::from_secs(5), &Trust::new(None).unwrap())
            .await
            .unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (200, "ok"));
        let chunked = get(&url, Duration::from_secs(5), &Trust::new(None).unwrap())
            .await
            .unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (404, "abcde"));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let error = get(
            &format!("http://{addr}/"),
            Duration::from_secs(5),
            &Trust::new(None).unwrap(),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, HttpClientError::Connect { .. }), "{error}");
    }

    #[test]
    fn components_encode() {
        assert_eq!(
            encode_component(r#"{service="wstrace"} | trace_id="ab""#),
            "%7Bservice%3D%22wstrace%22%7D%20%7C%20trace_id%3D%22ab%22"
        );
    }
}
