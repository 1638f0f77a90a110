//! A minimal HTTP/1.1 client over plain TCP, for the tools that talk to a
//! local stack (`wstrace health`, `wstrace doctor`): GET only, `http://`
//! only, one request per connection.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("not an http:// URL: {0}")]
    BadUrl(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("no answer from {0} in time")]
    Timeout(String),
    #[error("bad response from {addr}: {why}")]
    BadResponse { addr: String, why: String },
    #[error("i/o error with {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// Splits `http://host:port/path?query` into (`host:port`, `/path?query`).
pub fn split_url(url: &str) -> Result<(String, String), HttpClientError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpClientError::BadUrl(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpClientError::BadUrl(url.to_owned()));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

pub async fn get(url: &str, timeout: Duration) -> Result<HttpResponse, HttpClientError> {
    let (addr, path) = split_url(url)?;
    tokio::time::timeout(timeout, get_inner(&addr, &path))
        .await
        .map_err(|_| HttpClientError::Timeout(addr.clone()))?
}

async fn get_inner(addr: &str, path: &str) -> Result<HttpResponse, HttpClientError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HttpClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {host}\r\nuser-agent: wstrace/{}\r\naccept: */*\r\nconnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let io = |source| HttpClientError::Io {
        addr: addr.to_owned(),
        source,
    };
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(io)?;
    parse_response(&raw).map_err(|why| HttpClientError::BadResponse {
        addr: addr.to_owned(),
        why,
    })
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk")?;
        let size = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or(&[]);
    }
}

/// Percent-encodes a query parameter value.
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("http://loki:3100/ready").unwrap(),
            ("loki:3100".into(), "/ready".into())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost:80".into(), "/".into())
        );
        assert!(split_url("https://x").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[test]
    fn responses_parse_plain_and_chunked() {
        let plain = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (200, "ok"));
        let chunked = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (404, "abcde"));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn components_encode() {
        assert_eq!(
            encode_component(r#"{service="wstrace"} | trace_id="ab""#),
            "%7Bservice%3D%22wstrace%22%7D%20%7C%20trace_id%3D%22ab%22"
        );
    }
}
