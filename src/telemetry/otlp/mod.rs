//! OTLP span export that writes the request's protobuf bytes straight from
//! the SDK's spans ([`encode`]) and sends them as they are, over gRPC
//! (`tonic`) or HTTP (`hyper`) ([`transport`]).
//!
//! `opentelemetry-otlp` copies each batch (gRPC), converts every span into
//! `opentelemetry-proto` structs and encodes those: per session (two
//! spans) that was about 60 allocations and 13 µs of CPU, three quarters
//! of what a session's telemetry cost (BENCHMARKS.md, fifth round). This
//! exporter sends the same bytes (a unit test compares them with
//! `opentelemetry-proto`'s) over the same transports, configured from the
//! same `OTEL_EXPORTER_OTLP_*` variables, read the same way.

mod encode;
mod retry;
mod transport;

use bytes::Bytes;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

pub use encode::EncodedResource;
use transport::Transport;

use crate::events::{InternalEvent, SpansRejected};

const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// With `OTEL_EXPORTER_OTLP_ENDPOINT`, `/v1/traces` is added; the
/// trace-specific variable is used as given.
const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
const HTTP_TRACES_PATH: &str = "/v1/traces";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which OTLP transport the standard variables ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else `http/protobuf`, as the specification says. A value this build
    /// does not speak (`http/json`) is refused, not replaced.
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Self, ExporterConfigError> {
        let Some((variable, value)) = first_set(env, "PROTOCOL") else {
            return Ok(Protocol::HttpProtobuf);
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            _ => Err(ExporterConfigError::Protocol { variable, value }),
        }
    }
}

/// Where and how spans are sent, from the standard variables.
#[derive(Clone)]
pub struct ExportConfig {
    pub protocol: Protocol,
    pub endpoint: String,
    /// The variable the endpoint came from, for errors.
    pub endpoint_variable: &'static str,
    pub timeout: Duration,
    /// `OTEL_EXPORTER_OTLP_HEADERS`: sent with every request, lower-cased
    /// keys. Never printed: it is where collectors' API keys go.
    headers: Vec<(String, String)>,
    /// `OTEL_EXPORTER_OTLP_COMPRESSION=gzip`.
    pub gzip: bool,
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`: CA certificates to trust beside
    /// the system's, for an `https://` endpoint.
    pub ca_certificate: Option<std::path::PathBuf>,
    /// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `_CLIENT_KEY` (mTLS).
    pub client_identity: Option<crate::tls::TlsFiles>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExporterConfigError {
    #[error("{variable}={endpoint:?} is not a usable OTLP endpoint: {reason}")]
    Endpoint {
        variable: &'static str,
        endpoint: String,
        reason: String,
    },
    #[error("{variable}={value:?}: OTLP requests are compressed with gzip or none")]
    Compression { variable: String, value: String },
    #[error("OTLP TLS settings: {0}")]
    TlsFiles(String),
    #[error(
        "{0} is set without {1}: a client certificate needs its key, and the key its certificate"
    )]
    HalfIdentity(String, String),
    #[error("{variable}={value:?}: this build speaks OTLP over grpc and http/protobuf")]
    Protocol { variable: String, value: String },
    #[error("{header:?} is not a valid OTLP request header")]
    Header { header: String },
    #[error("OTLP export needs a Tokio runtime to run on")]
    NoRuntime,
}

impl ExportConfig {
    /// The variables `opentelemetry-otlp` reads for a span exporter, read
    /// the same way: the trace-specific one first; a gRPC endpoint used as
    /// given (gRPC has no path to add), with a scheme added by
    /// `OTEL_EXPORTER_OTLP_INSECURE` when it has none; an HTTP endpoint
    /// from `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` added; timeouts
    /// in milliseconds; headers as `key=value` pairs, percent-decoded.
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Self, ExporterConfigError> {
        let protocol = Protocol::from_env(env)?;
        // Anything but gzip or none is refused rather than ignored: whoever
        // set it expects smaller requests than they would get.
        let gzip = match first_set(env, "COMPRESSION") {
            None => false,
            Some((_, value)) if value.trim().eq_ignore_ascii_case("none") => false,
            Some((_, value)) if value.trim().eq_ignore_ascii_case("gzip") => true,
            Some((variable, value)) => {
                return Err(ExporterConfigError::Compression { variable, value });
            }
        };
        let ca_certificate = first_set(env, "CERTIFICATE").map(|(_, path)| path.into());
        let client_identity = match (
            first_set(env, "CLIENT_CERTIFICATE"),
            first_set(env, "CLIENT_KEY"),
        ) {
            (None, None) => None,
            (Some((_, cert)), Some((_, key))) => Some(crate::tls::TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            (Some((set, _)), None) => {
                return Err(ExporterConfigError::HalfIdentity(
                    set,
                    "OTEL_EXPORTER_OTLP_CLIENT_KEY".into(),
                ));
            }
            (None, Some((set, _))) => {
                return Err(ExporterConfigError::HalfIdentity(
                    set,
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".into(),
                ));
            }
        };
        let traces_endpoint = non_empty(env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"));
        let endpoint = non_empty(env("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let endpoint_variable = match (&traces_endpoint, &endpoint) {
            (Some(_), _) => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            (None, Some(_)) => "OTEL_EXPORTER_OTLP_ENDPOINT",
            (None, None) => "the default OTLP endpoint",
        };
        let endpoint = match protocol {
            Protocol::Grpc => {
                let insecure = first_set(env, "INSECURE")
                    .is_some_and(|(_, v)| v.trim().eq_ignore_ascii_case("true"));
                let endpoint = traces_endpoint
                    .or(endpoint)
                    .unwrap_or_else(|| DEFAULT_GRPC_ENDPOINT.to_string());
                with_scheme(endpoint, insecure)
            }
            Protocol::HttpProtobuf => traces_endpoint.unwrap_or_else(|| {
                let base = endpoint.unwrap_or_else(|| DEFAULT_HTTP_ENDPOINT.to_string());
                format!("{}{HTTP_TRACES_PATH}", base.trim_end_matches('/'))
            }),
        };
        let timeout = [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ]
        .into_iter()
        .find_map(|name| env(name)?.trim().parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
        let mut headers: Vec<(String, String)> = Vec::new();
        // The generic variable first, so the trace-specific one wins.
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            for (key, value) in env(name).iter().flat_map(|v| parse_headers(v)) {
                let key = key.to_ascii_lowercase();
                headers.retain(|(k, _)| *k != key);
                headers.push((key, value));
            }
        }
        Ok(Self {
            protocol,
            endpoint,
            endpoint_variable,
            timeout,
            headers,
            gzip,
            ca_certificate,
            client_identity,
        })
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// The first of `OTEL_EXPORTER_OTLP_TRACES_{setting}` and
/// `OTEL_EXPORTER_OTLP_{setting}` that is set, with its name: the
/// trace-specific variable wins, whatever it says.
fn first_set(env: &impl Fn(&str) -> Option<String>, setting: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{setting}"),
        format!("OTEL_EXPORTER_OTLP_{setting}"),
    ]
    .into_iter()
    .find_map(|variable| {
        let value = non_empty(env(&variable))?;
        Some((variable, value))
    })
}

fn with_scheme(endpoint: String, insecure: bool) -> String {
    let has_scheme = endpoint
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.contains(['/', '?', '#']));
    match (has_scheme, insecure) {
        (true, _) => endpoint,
        (false, true) => format!("http://{endpoint}"),
        (false, false) => format!("https://{endpoint}"),
    }
}

/// `key1=value1,key2=value2`, values percent-decoded; pairs with an empty
/// key or value are skipped.
fn parse_headers(value: &str) -> impl Iterator<Item = (&str, String)> {
    value.split_terminator(',').filter_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        let (key, value) = (key.trim(), value.trim());
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_or_else(|_| value.to_string(), |decoded| decoded.into_owned());
        (!key.is_empty() && !value.is_empty()).then_some((key, value))
    })
}

/// The span exporter. A collector that is down fails each export (at
/// once when nothing listens, after the timeout when it does not answer);
/// the connection is made again for the next batch, and the batch
/// processor goes on.
pub struct OtlpSpanExporter {
    /// For `Debug` only; any password is redacted.
    endpoint_for_display: String,
    transport: Transport,
    /// The export timeout: every attempt and retry of a batch fits in it.
    timeout: Duration,
    /// Where retries wait (the SDK calls the exporter from its own thread).
    runtime: tokio::runtime::Handle,
    resource: EncodedResource,
    /// The last request's size, to allocate the next one at once.
    last_len: AtomicUsize,
    shut_down: AtomicBool,
}

impl OtlpSpanExporter {
    /// Must run inside a Tokio runtime: the connections' tasks run on it
    /// (the SDK's batch thread only hands it requests).
    pub fn new(config: ExportConfig) -> Result<Self, ExporterConfigError> {
        Ok(Self {
            endpoint_for_display: crate::auth::redact_url(&config.endpoint),
            transport: Transport::new(&config)?,
            timeout: config.timeout,
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|_| ExporterConfigError::NoRuntime)?,
            resource: EncodedResource::default(),
            last_len: AtomicUsize::new(0),
            shut_down: AtomicBool::new(false),
        })
    }

    fn encode(&self, batch: &[SpanData]) -> Bytes {
        let mut body = Vec::with_capacity(self.last_len.load(Relaxed));
        encode::export_request(&self.resource, batch, &mut body);
        self.last_len.store(body.len(), Relaxed);
        Bytes::from(body)
    }
}

impl std::fmt::Debug for OtlpSpanExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpSpanExporter")
            .field("endpoint", &self.endpoint_for_display)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl SpanExporter for OtlpSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.shut_down.load(Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let body = self.transport.body(self.encode(&batch));
        drop(batch);
        let response = retry::send(&self.transport, &self.runtime, body, self.timeout)
            .await
            .map_err(|error| {
                OTelSdkError::InternalFailure(format!(
                    "OTLP export to {} failed: {error}",
                    self.endpoint_for_display
                ))
            })?;
        if let Some((rejected_spans, error_message)) = partial_success(&response) {
            // Per the specification this is not retried; say it, since
            // these spans will not be found in the backend.
            SpansRejected {
                rejected_spans,
                error_message: &error_message,
            }
            .emit();
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Relaxed) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

/// `ExportTraceServiceResponse.partial_success`, when it reports anything:
/// `(rejected_spans, error_message)`.
fn partial_success(mut response: &[u8]) -> Option<(i64, String)> {
    let mut found = None;
    while let Some((field, wire_type)) = read_tag(&mut response) {
        let value = read_field(&mut response, wire_type)?;
        if let (1, Field::Bytes(mut partial)) = (field, value) {
            let (mut rejected, mut message) = (0_i64, String::new());
            while let Some((field, wire_type)) = read_tag(&mut partial) {
                match (field, read_field(&mut partial, wire_type)?) {
                    (1, Field::Varint(n)) => rejected = n as i64,
                    (2, Field::Bytes(text)) => message = String::from_utf8_lossy(text).into(),
                    _ => {}
                }
            }
            if rejected != 0 || !message.is_empty() {
                found = Some((rejected, message));
            }
        }
    }
    found
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn read_tag(input: &mut &[u8]) -> Option<(u64, u8)> {
    let key = read_varint(input)?;
    Some((key >> 3, (key & 7) as u8))
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0_u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

fn read_field<'a>(input: &mut &'a [u8], wire_type: u8) -> Option<Field<'a>> {
    let skip = |input: &mut &'a [u8], n: usize| {
        let (taken, rest) = input.split_at_checked(n)?;
        *input = rest;
        Some(taken)
    };
    match wire_type {
        0 => read_varint(input).map(Field::Varint),
        1 => skip(input, 8).map(|_| Field::Other),
        2 => {
            let len = usize::try_from(read_varint(input)?).ok()?;
            skip(input, len).map(Field::Bytes)
        }
        5 => skip(input, 4).map(|_| Field::Other),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn protocol_is_http_protobuf_unless_grpc_is_asked_for() {
        let protocol = |pairs: &[(&str, &str)]| Protocol::from_env(&env(pairs));
        assert_eq!(protocol(&[]).unwrap(), Protocol::HttpProtobuf);
        let grpc = [("OTEL_EXPORTER_OTLP_PROTOCOL", " GRPC ")];
        assert_eq!(protocol(&grpc).unwrap(), Protocol::Grpc);
        let both = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
        ];
        assert_eq!(protocol(&both).unwrap(), Protocol::HttpProtobuf);
        let json = [
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let refused = protocol(&json).unwrap_err().to_string();
        assert!(
            refused.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"http/json\""),
            "{refused}"
        );
    }

    fn header<'a>(config: &'a ExportConfig, key: &str) -> Option<&'a str> {
        let found = config.headers.iter().find(|(k, _)| k == key);
        found.map(|(_, v)| v.as_str())
    }

    #[test]
    fn http_endpoints_get_their_path_from_the_generic_variable_only() {
        let config = |pairs: &[(&str, &str)]| ExportConfig::from_env(&env(pairs)).unwrap();
        assert_eq!(config(&[]).endpoint, "http://localhost:4318/v1/traces");
        let generic = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://tempo:4318/")]);
        assert_eq!(generic.endpoint, "http://tempo:4318/v1/traces");
        assert_eq!(generic.protocol, Protocol::HttpProtobuf);
        let specific = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://tempo:4318/custom",
            ),
        ]);
        assert_eq!(specific.endpoint, "http://tempo:4318/custom");
    }

    #[test]
    fn grpc_config_reads_the_standard_variables() {
        let grpc = ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        let config = ExportConfig::from_env(&env(&[grpc])).unwrap();
        assert_eq!(config.endpoint, "http://localhost:4317");
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert!(config.headers.is_empty());

        let config = ExportConfig::from_env(&env(&[
            grpc,
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://tempo:4317"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-scope-orgid=team%20a, api-key=one,=skipped,empty=",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=two"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ]))
        .unwrap();
        assert_eq!(config.endpoint, "http://tempo:4317");
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert_eq!(header(&config, "x-scope-orgid").unwrap(), "team a");
        assert_eq!(
            header(&config, "api-key").unwrap(),
            "two",
            "the trace variable wins"
        );
        assert_eq!(config.headers.len(), 2);

        let config = ExportConfig::from_env(&env(&[
            grpc,
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4317"),
            ("OTEL_EXPORTER_OTLP_INSECURE", "true"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "not a number"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "700"),
        ]))
        .unwrap();
        assert_eq!(config.endpoint, "http://collector:4317");
        assert_eq!(config.timeout, Duration::from_millis(700));
        let config = ExportConfig::from_env(&env(&[
            grpc,
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ]))
        .unwrap();
        assert_eq!(config.endpoint, "https://collector:4317");
    }

    /// The exporter, built where it must be: inside a runtime (its
    /// transports take the runtime's handle).
    fn exporter_in_a_runtime(
        config: ExportConfig,
    ) -> Result<OtlpSpanExporter, ExporterConfigError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { OtlpSpanExporter::new(config) })
    }

    #[test]
    fn headers_are_never_printed() {
        for protocol in ["grpc", "http/protobuf"] {
            let config = ExportConfig::from_env(&env(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "Authorization=Bearer%20s3cret",
                ),
            ]))
            .unwrap();
            assert_eq!(header(&config, "authorization").unwrap(), "Bearer s3cret");
            // MetadataMap's Debug prints values; the exporter's must not.
            let exporter = exporter_in_a_runtime(config).unwrap();
            let printed = format!("{exporter:?}");
            assert!(!printed.contains("s3cret"), "{printed}");
            assert!(printed.contains("authorization"), "{printed}");
        }
    }

    #[test]
    fn bad_endpoints_are_refused_with_a_reason() {
        let refuse = |protocol: &str, endpoint: &str| {
            let config = ExportConfig::from_env(&env(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
            ]))
            .unwrap();
            exporter_in_a_runtime(config).unwrap_err().to_string()
        };
        for protocol in ["grpc", "http/protobuf"] {
            let bad = refuse(protocol, "http://bad host:4317");
            assert!(bad.contains("is not a usable OTLP endpoint"), "{bad}");
            assert!(
                bad.starts_with("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="),
                "names the variable: {bad}"
            );
            let port = refuse(protocol, "http://tempo:43l7");
            assert!(
                port.contains(r#"the port "43l7" is not a number"#),
                "{port}"
            );
            assert!(refuse(protocol, "http://[::1]:4317x").contains("not a number"));
            let scheme = refuse(protocol, "ftp://tempo:4317");
            assert!(scheme.contains("must be http"), "{scheme}");
        }
        let password = refuse("grpc", "ftp://user:hunter2@tempo:4317");
        assert!(!password.contains("hunter2"), "{password}");
    }

    #[test]
    fn a_binary_grpc_header_is_refused_and_allowed_over_http() {
        let build = |protocol: &str| {
            let config = ExportConfig::from_env(&env(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_EXPORTER_OTLP_HEADERS", "trace-bin=abc"),
            ]))
            .unwrap();
            exporter_in_a_runtime(config)
                .map(|_| ())
                .map_err(|error| error.to_string())
        };
        let refused = build("grpc").unwrap_err();
        assert!(
            refused.contains("\"trace-bin\" is not a valid OTLP request header"),
            "{refused}"
        );
        assert!(build("http/protobuf").is_ok());
    }

    #[test]
    fn gzip_or_none_and_nothing_else() {
        let error =
            ExportConfig::from_env(&env(&[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")]))
                .err()
                .unwrap()
                .to_string();
        assert!(
            error.contains("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION=\"zstd\""),
            "{error}"
        );
        assert!(error.contains("gzip or none"), "{error}");
        let gzip = ExportConfig::from_env(&env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "GZIP")]));
        assert!(gzip.unwrap().gzip);
        // The trace-specific variable wins, as for every other setting.
        let none_wins = ExportConfig::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]));
        assert!(!none_wins.unwrap().gzip);
        let half = ExportConfig::from_env(&env(&[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "k.pem")]));
        assert!(half.err().unwrap().to_string().contains("needs its key"));
        let generic = ExportConfig::from_env(&env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]));
        assert!(generic.is_err());
    }

    /// Collects the `rejected_spans` of every `SpansRejected` line.
    #[derive(Clone, Default)]
    struct Rejections(std::sync::Arc<std::sync::Mutex<Vec<u64>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Rejections {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Visit(Option<u64>, bool);
            impl tracing::field::Visit for Visit {
                fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
                    if field.name() == "rejected_spans" {
                        self.0 = Some(value as u64);
                    }
                }
                fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                    self.1 |= field.name() == "message" && value == SpansRejected::MESSAGE;
                }
                fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
            }
            let mut visit = Visit(None, false);
            event.record(&mut visit);
            if let Visit(Some(rejected), true) = visit {
                self.0.lock().unwrap().push(rejected);
            }
        }
    }

    /// A real OTLP/HTTP endpoint on loopback (hyper) that keeps each
    /// request's body and answers with `response`.
    async fn collector(
        response: Vec<u8>,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    ) {
        use http_body_util::{BodyExt, Full};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sent, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (sent, response) = (sent.clone(), response.clone());
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (sent, response) = (sent.clone(), response.clone());
                        async move {
                            assert_eq!(request.uri().path(), "/v1/traces");
                            assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                            let body = request.into_body().collect().await?.to_bytes();
                            let _ = sent.send(body);
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(
                                response,
                            ))))
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        (addr, received)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_export_sends_the_batch_and_logs_a_partial_success() {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
        };
        use prost::Message;
        use tracing_subscriber::layer::SubscriberExt;
        let answer = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "too old".into(),
            }),
        };
        let (addr, mut received) = collector(answer.encode_to_vec()).await;
        let config = ExportConfig::from_env(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://{addr}"),
        )]))
        .unwrap();
        let mut exporter = OtlpSpanExporter::new(config).unwrap();
        exporter.set_resource(&Resource::builder().with_service_name("wstrace").build());
        let scope = opentelemetry::InstrumentationScope::builder("wstrace").build();
        let batch: Vec<SpanData> = (0..3)
            .map(|i| encode::tests::span_data(&scope, "ws.session", i))
            .collect();

        let rejections = Rejections::default();
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(rejections.clone()),
        );
        exporter.export(batch).await.unwrap();

        let body = received.recv().await.unwrap();
        let request = ExportTraceServiceRequest::decode(body).unwrap();
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 3);
        assert!(spans.iter().all(|s| s.name == "ws.session"));
        assert_eq!(*rejections.0.lock().unwrap(), [2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_export_to_a_closed_port_fails_instead_of_hanging() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for protocol in ["grpc", "http/protobuf"] {
            let config = ExportConfig::from_env(&env(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    &format!("http://127.0.0.1:{port}"),
                ),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
            ]))
            .unwrap();
            let exporter = OtlpSpanExporter::new(config).unwrap();
            let scope = opentelemetry::InstrumentationScope::builder("wstrace").build();
            let batch = vec![encode::tests::span_data(&scope, "ws.session", 1)];
            let error = exporter.export(batch).await.unwrap_err().to_string();
            let names_the_endpoint = format!("OTLP export to http://127.0.0.1:{port}");
            assert!(error.contains(&names_the_endpoint), "{protocol}: {error}");
            assert!(error.contains("failed"), "{protocol}: {error}");
        }
    }

    #[test]
    fn partial_success_is_read_from_the_response() {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceResponse,
        };
        use prost::Message;
        let encode = |partial: Option<ExportTracePartialSuccess>| {
            ExportTraceServiceResponse {
                partial_success: partial,
            }
            .encode_to_vec()
        };
        assert_eq!(partial_success(&encode(None)), None);
        assert_eq!(
            partial_success(&encode(Some(ExportTracePartialSuccess::default()))),
            None
        );
        let rejected = encode(Some(ExportTracePartialSuccess {
            rejected_spans: 3,
            error_message: "too old".into(),
        }));
        assert_eq!(partial_success(&rejected), Some((3, "too old".to_string())));
        assert_eq!(partial_success(&[0x0a, 0x05, 0x08]), None, "truncated");
    }
}
