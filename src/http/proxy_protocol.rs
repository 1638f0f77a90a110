//! The PROXY protocol (HAProxy's, v1 text and v2 binary), for TCP load
//! balancers that cannot add HTTP headers: with `--proxy-protocol` every
//! connection must open with the header, and only from a trusted proxy.

use ppp::{HeaderResult, PartialResult, v1, v2};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::limits::MAX_PROXY_HEADER_BYTES;

/// Why a connection's PROXY header was refused (the connection is closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeaderError {
    /// The header did not arrive within the header read timeout.
    Timeout,
    /// The connection closed before a whole header arrived.
    Closed,
    /// Not a PROXY header, or not a valid one.
    Malformed,
    /// Longer than [`MAX_PROXY_HEADER_BYTES`].
    TooLong,
}

impl ProxyHeaderError {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyHeaderError::Timeout => "timeout",
            ProxyHeaderError::Closed => "closed",
            ProxyHeaderError::Malformed => "malformed",
            ProxyHeaderError::TooLong => "too_long",
        }
    }
}

/// Reads the connection's PROXY header and returns the client it names:
/// `None` for a `LOCAL` (v2) or `UNKNOWN` (v1) header, which a balancer
/// sends for its own health checks. Consumes exactly the header: what
/// follows is the client's HTTP request.
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = [0u8; MAX_PROXY_HEADER_BYTES];
    let read = async {
        loop {
            // Peek, so that the bytes after the header stay in the socket
            // for hyper.
            let seen = stream
                .peek(&mut buf)
                .await
                .map_err(|_| ProxyHeaderError::Closed)?;
            if seen == 0 {
                return Err(ProxyHeaderError::Closed);
            }
            match parse(&buf[..seen]) {
                Parsed::Complete { length, client } => {
                    stream
                        .read_exact(&mut buf[..length])
                        .await
                        .map_err(|_| ProxyHeaderError::Closed)?;
                    return Ok(client);
                }
                Parsed::Incomplete if seen == buf.len() => return Err(ProxyHeaderError::TooLong),
                // Balancers send the header in one segment; a split one
                // waits for the rest (bounded by the timeout).
                Parsed::Incomplete => tokio::time::sleep(Duration::from_millis(5)).await,
                Parsed::Invalid => return Err(ProxyHeaderError::Malformed),
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ProxyHeaderError::Timeout))
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Complete {
        length: usize,
        client: Option<SocketAddr>,
    },
    Incomplete,
    Invalid,
}

fn parse(input: &[u8]) -> Parsed {
    let header = HeaderResult::parse(input);
    if header.is_incomplete() {
        return Parsed::Incomplete;
    }
    match header {
        HeaderResult::V1(Ok(header)) => Parsed::Complete {
            length: header.header.len(),
            client: match header.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(header)) => Parsed::Complete {
            length: header.len(),
            client: match (header.command, header.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (_, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => None,
            },
        },
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Parsed::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_ipv4(command: u8, source: [u8; 4], port: u16) -> Vec<u8> {
        let mut header = Vec::from(v2::PROTOCOL_PREFIX);
        header.extend([0x20 | command, 0x11, 0, 12]);
        header.extend(source);
        header.extend([10, 0, 0, 1]);
        header.extend(port.to_be_bytes());
        header.extend(443u16.to_be_bytes());
        header
    }

    #[test]
    fn v1_headers_name_the_client() {
        let input = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 8080\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(input),
            Parsed::Complete {
                length: 44,
                client: Some("198.51.100.7:5555".parse().unwrap())
            }
        );
        let input = b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 8080\r\n";
        let Parsed::Complete { client, length } = parse(input) else {
            panic!("v6 header not parsed")
        };
        assert_eq!(client, Some("[2001:db8::7]:5555".parse().unwrap()));
        assert_eq!(length, input.len());
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Parsed::Complete {
                length: 15,
                client: None
            }
        );
    }

    #[test]
    fn v2_headers_name_the_client_and_local_is_the_balancer() {
        let mut input = v2_ipv4(0x1, [198, 51, 100, 7], 5555);
        let length = input.len();
        input.extend(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&input),
            Parsed::Complete {
                length,
                client: Some("198.51.100.7:5555".parse().unwrap())
            }
        );
        let local = v2_ipv4(0x0, [198, 51, 100, 7], 5555);
        assert_eq!(
            parse(&local),
            Parsed::Complete {
                length,
                client: None
            }
        );
    }

    #[test]
    fn partial_and_foreign_input() {
        assert_eq!(parse(b"PROXY TCP4 198.51"), Parsed::Incomplete);
        assert_eq!(parse(&v2::PROTOCOL_PREFIX[..7]), Parsed::Incomplete);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Parsed::Invalid);
        assert_eq!(
            parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n"),
            Parsed::Invalid
        );
    }

    #[tokio::test]
    async fn the_header_is_consumed_and_the_request_left() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream
                .write_all(b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 8080\r\n")
                .await
                .unwrap();
            // The rest in a second segment: the reader must not take it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.write_all(b"GET /").await.unwrap();
            stream
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let source = read_header(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(source, Some("198.51.100.7:5555".parse().unwrap()));
        let mut rest = [0u8; 5];
        stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET /");
        drop(client.await.unwrap());

        // A client that sends nothing is cut at the timeout.
        let silent = TcpStream::connect(address).await.unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        let result = read_header(&mut stream, Duration::from_millis(50)).await;
        assert_eq!(result, Err(ProxyHeaderError::Timeout));
        drop(silent);
    }
}
