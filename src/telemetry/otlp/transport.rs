//! The two OTLP transports, each carrying an encoded request and bringing
//! back the response's body: gRPC over `tonic`'s channel (a pass-through
//! codec, since the request is encoded already), and HTTP/1.1 `POST
//! /v1/traces` over `hyper`'s pooled client.
//!
//! Both run their connections on the server's Tokio runtime; the SDK's
//! batch thread, which calls the exporter, only waits for the answer.

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};

use super::{ExportConfig, ExporterConfigError, Protocol};
use crate::limits::OTLP_RESPONSE_MAX_BYTES;

const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
const USER_AGENT: &str = concat!("wstrace/", env!("CARGO_PKG_VERSION"));

#[expect(clippy::large_enum_variant, reason = "one per process")]
pub(super) enum Transport {
    Grpc {
        client: tonic::client::Grpc<Channel>,
        metadata: MetadataMap,
    },
    Http {
        /// `http://` or `https://` (hyper-rustls, trusting the system's
        /// roots plus `OTEL_EXPORTER_OTLP_CERTIFICATE`).
        client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
        uri: http::Uri,
        headers: http::HeaderMap,
        gzip: bool,
        runtime: tokio::runtime::Handle,
    },
}

/// One failed attempt: why, and whether (and when) it is worth another.
#[derive(Debug)]
pub(super) struct SendError {
    pub reason: String,
    pub retryable: bool,
    pub retry_after: Option<Duration>,
}

impl SendError {
    fn permanent(reason: String) -> Self {
        Self {
            reason,
            retryable: false,
            retry_after: None,
        }
    }
}

/// The gRPC codes the OTLP specification calls retryable.
fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled
            | DeadlineExceeded
            | ResourceExhausted
            | Aborted
            | OutOfRange
            | Unavailable
            | DataLoss
    )
}

/// The system's roots plus `OTEL_EXPORTER_OTLP_CERTIFICATE`, and the
/// client certificate if one is set (mTLS).
fn tls_config(config: &ExportConfig) -> Result<rustls::ClientConfig, ExporterConfigError> {
    crate::tls::client_config(
        config.ca_certificate.as_deref(),
        config.client_identity.as_ref(),
    )
    .map_err(|error| ExporterConfigError::TlsFiles(error.to_string()))
}

/// The status stands for a connection that could not be made (nothing
/// listens, a refused or reset connection), not a collector's answer.
fn unreachable(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() || error.is::<std::io::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// tonic refused a response over `OTLP_RESPONSE_MAX_BYTES` (as
/// OUT_OF_RANGE, which would otherwise be retried).
fn response_too_large(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::OutOfRange && status.message().contains("length too large")
}

/// The HTTP statuses the OTLP specification calls retryable.
fn http_retryable(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504)
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header names only: their values are credentials.
        match self {
            Transport::Grpc { metadata, .. } => f
                .debug_struct("Grpc")
                .field("headers", &metadata.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
            Transport::Http { headers, .. } => f
                .debug_struct("Http")
                .field("headers", &headers.keys().collect::<Vec<_>>())
                .finish_non_exhaustive(),
        }
    }
}

/// A port that is not a number (`:43l7`) fails here, at start, and not at
/// every export.
fn check_port(uri: &http::Uri) -> Result<(), String> {
    let Some(authority) = uri.authority() else {
        return Err("it has no host".into());
    };
    let host_and_port = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, h)| h);
    if host_and_port.ends_with(']') {
        return Ok(());
    }
    match host_and_port.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_err() => {
            Err(format!("the port {port:?} is not a number from 0 to 65535"))
        }
        _ => Ok(()),
    }
}

impl Transport {
    pub(super) fn new(config: &ExportConfig) -> Result<Self, ExporterConfigError> {
        let invalid = |reason: String| ExporterConfigError::Endpoint {
            variable: config.endpoint_variable,
            endpoint: crate::auth::redact_url(&config.endpoint),
            reason,
        };
        let uri: http::Uri = config
            .endpoint
            .parse()
            .map_err(|error: http::uri::InvalidUri| invalid(error.to_string()))?;
        check_port(&uri).map_err(invalid)?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(invalid("the scheme must be http:// or https://".into())),
        };
        // Built (and its files read) whatever the scheme: a CA or client
        // certificate that cannot be used is said at start, not never.
        let tls = tls_config(config)?;
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| ExporterConfigError::NoRuntime)?;
        let mut headers = http::HeaderMap::new();
        for (key, value) in &config.headers {
            let bad_header = || ExporterConfigError::Header {
                header: key.to_string(),
            };
            let name = key.parse::<http::HeaderName>().map_err(|_| bad_header())?;
            // gRPC metadata ending in `-bin` is binary (base64); these
            // values are text.
            if config.protocol == Protocol::Grpc && name.as_str().ends_with("-bin") {
                return Err(bad_header());
            }
            let value = value
                .parse::<http::HeaderValue>()
                .map_err(|_| bad_header())?;
            headers.insert(name, value);
        }
        Ok(match config.protocol {
            Protocol::Grpc => {
                let metadata = MetadataMap::from_headers(headers);
                let endpoint = Endpoint::from(uri)
                    .user_agent(USER_AGENT)
                    .map_err(|error| invalid(error.to_string()))?;
                let endpoint = endpoint.timeout(config.timeout);
                // Spawns the channel's worker: the reason for the runtime.
                let _entered = runtime.enter();
                let channel = if https {
                    // HTTP/2 over rustls (ALPN h2), trusting what the
                    // HTTP transport trusts.
                    let connector = hyper_rustls::HttpsConnectorBuilder::new()
                        .with_tls_config(tls)
                        .https_only()
                        .enable_http2()
                        .build();
                    endpoint.connect_with_connector_lazy(connector)
                } else {
                    endpoint.connect_lazy()
                };
                // tonic checks a message's length prefix before reading it.
                let mut client = tonic::client::Grpc::new(channel)
                    .max_decoding_message_size(OTLP_RESPONSE_MAX_BYTES);
                if config.gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Transport::Grpc { client, metadata }
            }
            Protocol::HttpProtobuf => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/x-protobuf"),
                );
                headers.insert(
                    http::header::USER_AGENT,
                    http::HeaderValue::from_static(USER_AGENT),
                );
                if config.gzip {
                    headers.insert(
                        http::header::CONTENT_ENCODING,
                        http::HeaderValue::from_static("gzip"),
                    );
                }
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .build();
                Transport::Http {
                    client: Client::builder(TokioExecutor::new()).build(connector),
                    uri,
                    headers,
                    gzip: config.gzip,
                    runtime,
                }
            }
        })
    }

    /// The request body as sent: gzip-compressed once for OTLP/HTTP with
    /// `OTEL_EXPORTER_OTLP_COMPRESSION=gzip`, before any attempt (gRPC
    /// compresses in tonic).
    pub(super) fn body(&self, encoded: Bytes) -> Bytes {
        match self {
            Transport::Http { gzip: true, .. } => gzipped(&encoded),
            _ => encoded,
        }
    }

    /// Sends one request body (see [`Transport::body`]) within
    /// `timeout`; the response's body on success.
    pub(super) async fn send(&self, body: Bytes, timeout: Duration) -> Result<Bytes, SendError> {
        match self {
            Transport::Grpc { client, metadata } => {
                let mut client = client.clone();
                client
                    .ready()
                    .await
                    .map_err(|error| SendError::permanent(format!("gRPC channel: {error}")))?;
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata.clone();
                request.set_timeout(timeout);
                let path = http::uri::PathAndQuery::from_static(GRPC_EXPORT_PATH);
                client
                    .unary(request, path, RawBytes)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|status| SendError {
                        reason: format!("gRPC {:?}: {}", status.code(), status.message()),
                        // A collector that answered; not one we could not
                        // reach (tonic says UNAVAILABLE for both).
                        retryable: grpc_retryable(status.code())
                            && !unreachable(&status)
                            && !response_too_large(&status),
                        retry_after: None,
                    })
            }
            Transport::Http {
                client,
                uri,
                headers,
                runtime,
                ..
            } => {
                let mut request = http::Request::post(uri.clone())
                    .body(Full::new(body))
                    .map_err(|error| SendError::permanent(error.to_string()))?;
                *request.headers_mut() = headers.clone();
                let client = client.clone();
                // On the runtime: the connection is its task, and the
                // timeout its timer.
                let exchange = runtime.spawn(async move {
                    tokio::time::timeout(timeout, http_exchange(client, request))
                        .await
                        .unwrap_or_else(|_| {
                            Err(SendError::permanent(format!(
                                "no answer within {timeout:?}"
                            )))
                        })
                });
                exchange.await.unwrap_or_else(|error| {
                    Err(SendError::permanent(format!("export task: {error}")))
                })
            }
        }
    }
}

async fn http_exchange(
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    request: http::Request<Full<Bytes>>,
) -> Result<Bytes, SendError> {
    let response = client
        .request(request)
        .await
        // Not retried: nothing answered (the batch is dropped and counted
        // at once, as when the collector is down), unlike a collector that
        // says it is busy.
        .map_err(|error| SendError::permanent(format!("HTTP: {error}")))?;
    let status = response.status();
    let retry_after = retry_after(response.headers().get(http::header::RETRY_AFTER));
    // Read no more than an OTLP response can need: a collector that
    // streams a huge body must not make the exporter buffer it.
    let body = match Limited::new(response.into_body(), OTLP_RESPONSE_MAX_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        // The status already said whether the spans were taken; what
        // follows it is not worth reading (the connection is dropped).
        Err(error) if error.is::<LengthLimitError>() => Bytes::new(),
        Err(error) => return Err(SendError::permanent(format!("HTTP body: {error}"))),
    };
    if status.is_success() {
        return Ok(body);
    }
    Err(SendError {
        reason: format!("HTTP {status}"),
        retryable: http_retryable(status),
        retry_after,
    })
}

/// `Retry-After` in seconds (the form collectors send); a date is ignored.
fn retry_after(value: Option<&http::HeaderValue>) -> Option<Duration> {
    let seconds: u64 = value?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// The request body, gzip-compressed (`OTEL_EXPORTER_OTLP_COMPRESSION`).
fn gzipped(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// Request and response bodies as bytes: the request is encoded already,
/// and only `partial_success` is read from the response.
#[derive(Debug, Clone, Copy)]
struct RawBytes;

impl Codec for RawBytes {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> Self::Encoder {
        RawBytes
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawBytes
    }
}

impl Encoder for RawBytes {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_worth_another_attempt() {
        for status in [429, 502, 503, 504] {
            assert!(
                http_retryable(http::StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [400, 401, 403, 404, 413, 500] {
            assert!(
                !http_retryable(http::StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::ResourceExhausted,
            tonic::Code::Aborted,
        ] {
            assert!(grpc_retryable(code), "{code:?}");
            // A collector's own answer: retried.
            assert!(!unreachable(&tonic::Status::new(code, "busy")), "{code:?}");
        }
        for code in [
            tonic::Code::InvalidArgument,
            tonic::Code::Unauthenticated,
            tonic::Code::Unimplemented,
        ] {
            assert!(!grpc_retryable(code), "{code:?}");
        }
        // UNAVAILABLE because nothing answered: failed at once.
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(refused));
        assert!(unreachable(&status), "{status:?}");
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let header = |v: &str| http::HeaderValue::from_str(v).unwrap();
        assert_eq!(
            retry_after(Some(&header("2"))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(Some(&header("Wed, 21 Oct 2026 07:28:00 GMT"))),
            None
        );
        assert_eq!(retry_after(None), None);
    }
}
