//! Everything about how wstrace reports on itself, built in one place.
//!
//! [`get_subscriber`] assembles the `tracing` stack:
//!
//! ```text
//! Registry
//!   ├─ GlobalFilter         RUST_LOG-style filtering (default: info);
//!   │                       EnvFilter only when a directive needs it
//!   ├─ SpanFieldsLayer      keeps span fields as JSON; children inherit
//!   │                       session_id
//!   ├─ OpenTelemetryLayer   gives every span a W3C trace/span id; exports
//!   │   (in OtelSpans)      over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set
//!   └─ BunyanJsonLayer      one bunyan JSON line per event, with trace_id,
//!                           span_id and the span fields, to stdout and to a
//!                           daily-rolling file
//! ```
//!
//! Log lines go to the rolling files ([`rolling_file`](mod@rolling_file)) and
//! stdout through a batching writer thread per output
//! ([`line_writer`](mod@line_writer)): when a burst fills an output's
//! buffer the logging task waits for it, but never longer than that
//! output's stall bound; after it, that output's lines are dropped and
//! counted (per output, in `/metrics` and the upkeep's reports) until it
//! takes lines again, so a stuck stdout stops neither serving nor the
//! files. Spans leave through `otlp`'s exporter, which writes
//! each batch's OTLP request straight from the SDK's span data. The
//! [`TelemetryGuard`] flushes spans first (their export may itself log),
//! then the log writers.

mod bunyan;
mod counters;
mod filter;
pub mod line_writer;
pub mod log_search;
pub mod logfile;
mod otel_spans;
mod otlp;
mod rolling_file;
mod span_fields;

pub use bunyan::{BunyanJsonLayer, JSON_VALUED_FIELDS, RESERVED as BUNYAN_FIELDS, bunyan_level};
pub use counters::{CountingExporter, CountingProcessor, TelemetryCounters};
pub use span_fields::SpanFieldsLayer;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

use crate::events::InternalEvent;
use crate::limits::{LOG_FILE_STALL, LOG_STDOUT_STALL, SPAN_QUEUE_SPANS};
use filter::GlobalFilter;
use line_writer::{LineCounts, LineOutput, LineWriter, LineWriterGuard, Stream, line_writer};
use otel_spans::OtelSpans;
use rolling_file::RollingFile;

const DEFAULT_SERVICE_NAME: &str = "wstrace";
/// Log files are `<prefix>.YYYY-MM-DD.log` (or `.YYYY-MM-DD-HH[-MM]`).
pub const DEFAULT_LOG_FILE_PREFIX: &str = DEFAULT_SERVICE_NAME;
/// Our own default directives; `RUST_LOG` replaces them entirely.
pub(crate) const DEFAULT_FILTER: &str =
    "info,h2=warn,hyper=warn,tower=warn,tonic=warn,opentelemetry=warn,opentelemetry_sdk=warn";

/// Where log lines go and where spans are exported.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// bunyan `name` and OpenTelemetry `service.name` (`OTEL_SERVICE_NAME`
    /// overrides it).
    pub service_name: String,
    /// Directory for daily-rolling log files; `None` disables file output.
    pub log_dir: Option<PathBuf>,
    /// File name prefix: files are `<prefix>.YYYY-MM-DD.log`.
    pub log_file_prefix: String,
    /// When a new log file is started.
    pub log_rotation: LogRotation,
    /// Rolled files kept (the oldest are deleted at each rotation).
    pub log_max_files: Option<usize>,
    /// Also write every line to stdout.
    pub log_stdout: bool,
    /// Bytes each output's writer may hold (`--log-buffer-bytes`).
    pub log_buffer_bytes: usize,
    /// Filter directives, `RUST_LOG` syntax.
    pub filter: String,
    /// `instance_id` on every log line and `service.instance.id` on every
    /// span.
    pub instance_id: String,
    /// OTLP export, `None` to keep spans local (IDs are still generated).
    pub otlp: Option<OtlpConfig>,
}

impl TelemetryConfig {
    /// Local defaults, with the standard environment applied: `RUST_LOG`,
    /// `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`,
    /// `OTEL_TRACES_EXPORTER=none`.
    pub fn from_env(log_dir: Option<PathBuf>, log_stdout: bool) -> Self {
        Self {
            service_name: env_nonempty("OTEL_SERVICE_NAME")
                .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_string()),
            log_dir,
            log_file_prefix: DEFAULT_LOG_FILE_PREFIX.to_string(),
            log_rotation: LogRotation::Daily,
            log_max_files: None,
            log_stdout,
            log_buffer_bytes: crate::limits::DEFAULT_LOG_BUFFER_BYTES,
            filter: env_nonempty("RUST_LOG").unwrap_or_else(|| DEFAULT_FILTER.to_string()),
            instance_id: default_instance_id(),
            otlp: OtlpConfig::from_env(),
        }
    }
}

/// `<hostname>-<4 hex digits>`: readable, and distinct for two instances
/// on one host or for a container restarted under the same hostname.
pub fn default_instance_id() -> String {
    let random = uuid::Uuid::new_v4().as_u128() as u16;
    format!("{}-{random:04x}", bunyan::hostname())
}

/// Deletes the oldest of wstrace's own log files in `dir`
/// (`<prefix>.….log`, as `rolling_file` names them) until
/// they take at most `max_bytes` together; the newest (the one being
/// written) is never deleted, and neither is any other program's file in a
/// shared directory. Returns (files deleted, bytes freed).
pub fn prune_log_dir(dir: &std::path::Path, prefix: &str, max_bytes: u64) -> (usize, u64) {
    let mut files = own_log_files(dir, prefix);
    let size = |f: &PathBuf| std::fs::metadata(f).map_or(0, |m| m.len());
    let mut total: u64 = files.iter().map(size).sum();
    // Name order is time order; keep the newest.
    files.pop();
    let (mut deleted, mut freed) = (0, 0);
    for file in files {
        if total <= max_bytes {
            break;
        }
        let bytes = size(&file);
        if std::fs::remove_file(&file).is_ok() {
            total -= bytes;
            deleted += 1;
            freed += bytes;
        }
    }
    (deleted, freed)
}

/// wstrace's own log files in `dir` (`<prefix>.….log`), oldest first.
fn own_log_files(dir: &std::path::Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(mut files) = logfile::log_files(&[dir.to_path_buf()]) else {
        return Vec::new();
    };
    files.retain(|file| {
        file.file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix(prefix))
            .is_some_and(|rest| rest.starts_with('.') && rest.ends_with(".log"))
    });
    files
}

/// When the log file rolls over to a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogRotation {
    Minutely,
    Hourly,
    #[default]
    Daily,
    Never,
}

/// OTLP trace export. Endpoint, protocol (`grpc` or `http/protobuf`),
/// headers, timeout and compression are read by `otlp::ExportConfig`
/// from the standard `OTEL_EXPORTER_OTLP_*` variables; the sampler from
/// `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`; batching from
/// `OTEL_BSP_*`.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// For the startup log line only; any password is redacted.
    pub endpoint_for_display: String,
}

impl OtlpConfig {
    pub fn from_env() -> Option<Self> {
        if env_nonempty("OTEL_TRACES_EXPORTER").is_some_and(|e| e == "none") {
            return None;
        }
        let endpoint = env_nonempty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| env_nonempty("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        Some(Self {
            endpoint_for_display: crate::auth::redact_url(&endpoint),
        })
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot create log directory {dir}: {source}")]
    LogDir { dir: PathBuf, source: io::Error },
    #[error("cannot open a log file in {dir}: {source}")]
    LogFile { dir: PathBuf, source: io::Error },
    #[error("RUST_LOG={filter:?} is not a valid log filter: {source}")]
    Filter {
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error(
        "RUST_LOG={filter:?}: {word:?} is neither a level (trace, debug, info, warn, error, off) \
         nor a wstrace target, and would let no server line through; write LEVEL or \
         TARGET=LEVEL, e.g. RUST_LOG=info,wstrace::session=debug"
    )]
    FilterWord { filter: String, word: String },
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(#[from] otlp::ExporterConfigError),
    #[error("cannot start a log writer thread: {0}")]
    LogThread(io::Error),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

impl TelemetryError {
    /// The settings themselves are wrong (exit 64), not the machine.
    pub fn is_usage(&self) -> bool {
        match self {
            TelemetryError::Filter { .. } | TelemetryError::FilterWord { .. } => true,
            TelemetryError::Exporter(error) => {
                !matches!(error, otlp::ExporterConfigError::NoRuntime)
            }
            _ => false,
        }
    }
}

/// Flushes telemetry when dropped: spans first, then log lines.
#[must_use = "dropping the guard flushes and stops telemetry"]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    log_writers: Vec<LineWriterGuard>,
    counters: Arc<TelemetryCounters>,
}

/// How long shutdown waits for queued log lines to be written before it
/// says how many are not, and then waits for the writer threads anyway.
const LOG_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl TelemetryGuard {
    /// What this telemetry stack wrote, exported and dropped.
    pub fn counters(&self) -> Arc<TelemetryCounters> {
        self.counters.clone()
    }

    /// Waits until every line handed to the outputs is written (or failed),
    /// at most `LOG_DRAIN_TIMEOUT`, and not for an output that takes
    /// nothing for its stall bound (a stdout nobody reads must not stop
    /// shutdown either). Returns which outputs drained, and says on stderr
    /// how many lines the others still hold.
    pub fn drain_logs(&self) -> Vec<bool> {
        let outputs = &self.counters.log_outputs;
        let started = std::time::Instant::now();
        let mut progress: Vec<_> = outputs.iter().map(|o| (o.counts.done(), started)).collect();
        loop {
            let now = std::time::Instant::now();
            let mut waiting = false;
            for (output, (done, since)) in outputs.iter().zip(&mut progress) {
                if output.counts.drained() {
                    continue;
                }
                if output.counts.done() != *done {
                    (*done, *since) = (output.counts.done(), now);
                }
                waiting |= now - *since < output.stall;
            }
            if !waiting || now - started > LOG_DRAIN_TIMEOUT {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        outputs
            .iter()
            .map(|output| {
                let behind = output
                    .counts
                    .queued
                    .load(Relaxed)
                    .saturating_sub(output.counts.done());
                if behind > 0 {
                    // The log writers are what is stuck; stderr is all that is left.
                    eprintln!("wstrace: {behind} log lines not written to {}", output.name);
                }
                behind == 0
            })
            .collect()
    }

    /// Exports every finished span, then writes every queued log line.
    /// Safe to call once; also what `Drop` does.
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown()
        {
            // The log writers still work here, so say so.
            crate::events::SpanExportIncomplete { error: &error }.emit();
        }
        // Every line handed to the writers must be written before their
        // guards are dropped; a writer stuck in its output is left behind
        // (joining it would never return).
        let drained = self.drain_logs();
        for (writer, drained) in self.log_writers.drain(..).zip(drained) {
            if !drained {
                writer.abandon();
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The fan-out of one formatted line to every configured output.
#[derive(Clone)]
pub struct LogOutputs(Vec<LineWriter>);

impl<'a> MakeWriter<'a> for LogOutputs {
    type Writer = LogOutputsWriter<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        LogOutputsWriter(&self.0)
    }
}

pub struct LogOutputsWriter<'a>(&'a [LineWriter]);

impl io::Write for LogOutputsWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        // Every output gets the line: one that cannot take it (and counts
        // that) does not keep it from the others.
        for output in self.0 {
            let _ = output.write_line(buf);
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Builds the subscriber and the guard that flushes it. Nothing global is
/// touched: tests install it with `tracing::subscriber::set_default`, the
/// binary with [`init_subscriber`].
pub fn get_subscriber(
    config: &TelemetryConfig,
) -> Result<
    (
        impl Subscriber + Send + Sync + for<'a> LookupSpan<'a>,
        TelemetryGuard,
    ),
    TelemetryError,
> {
    if let Some(word) = filter::unknown_bare_word(&config.filter) {
        return Err(TelemetryError::FilterWord {
            filter: config.filter.clone(),
            word: word.to_string(),
        });
    }
    let filter = GlobalFilter::parse(&config.filter).map_err(|source| TelemetryError::Filter {
        filter: config.filter.clone(),
        source,
    })?;
    let outputs = LogOutputSet::open(config)?;
    let counters = Arc::new(TelemetryCounters {
        log_outputs: outputs.counts,
        ..TelemetryCounters::default()
    });
    let provider = tracer_provider(config, &counters)?;
    let tracer = provider.tracer(DEFAULT_SERVICE_NAME);

    let subscriber = tracing_subscriber::registry()
        .with(filter.into_layer())
        .with(SpanFieldsLayer)
        .with(OtelSpans(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                // Nothing here reads `opentelemetry::Context::current()`:
                // parents come from the tracing span tree. Activating the
                // context costs a lock and a thread-local push on every
                // poll of every session's tasks.
                .with_context_activation(false)
                .with_threads(false)
                .with_location(false),
        ))
        .with(BunyanJsonLayer::new(
            config.service_name.clone(),
            config.instance_id.clone(),
            LogOutputs(outputs.writers),
        ));

    Ok((
        subscriber,
        TelemetryGuard {
            tracer_provider: Some(provider),
            log_writers: outputs.guards,
            counters,
        },
    ))
}

/// The log outputs (rolling files, stdout), each behind its own writer
/// thread, with what the guard needs to flush them.
struct LogOutputSet {
    writers: Vec<LineWriter>,
    guards: Vec<LineWriterGuard>,
    counts: Vec<LogOutputCounts>,
}

impl LogOutputSet {
    fn open(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        let mut set = Self {
            writers: Vec::new(),
            guards: Vec::new(),
            counts: Vec::new(),
        };
        if let Some(dir) = &config.log_dir {
            std::fs::create_dir_all(dir).map_err(|source| TelemetryError::LogDir {
                dir: dir.clone(),
                source,
            })?;
            let file = RollingFile::open(
                dir,
                &config.log_file_prefix,
                config.log_rotation,
                config.log_max_files,
            )
            .map_err(|source| TelemetryError::LogFile {
                dir: dir.clone(),
                source,
            })?;
            // A disk that takes nothing for this long is broken, not busy.
            set.push("file", file, config.log_buffer_bytes, LOG_FILE_STALL)?;
        }
        if config.log_stdout {
            // A reader that stops reading must not stop the server.
            let stdout = Stream(io::stdout());
            set.push("stdout", stdout, config.log_buffer_bytes, LOG_STDOUT_STALL)?;
        }
        Ok(set)
    }

    fn push(
        &mut self,
        name: &'static str,
        output: impl LineOutput,
        buffer: usize,
        stall: std::time::Duration,
    ) -> Result<(), TelemetryError> {
        let thread = format!("wstrace-log-{name}");
        let (writer, guard, counts) =
            line_writer(output, &thread, buffer, stall).map_err(TelemetryError::LogThread)?;
        self.writers.push(writer);
        self.guards.push(guard);
        self.counts.push(LogOutputCounts {
            name,
            counts,
            stall,
        });
        Ok(())
    }
}

/// One log output's name (`file`, `stdout`) and what it did with its lines.
#[derive(Debug, Clone)]
pub struct LogOutputCounts {
    pub name: &'static str,
    pub counts: Arc<LineCounts>,
    /// Its stall bound: shutdown waits no longer than this for progress.
    pub stall: std::time::Duration,
}

/// The tracer provider: spans exported over OTLP through a bounded, counted
/// batch queue, or (with no endpoint) ids only, nothing recorded.
fn tracer_provider(
    config: &TelemetryConfig,
    counters: &Arc<TelemetryCounters>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let mut resource = Resource::builder();
    if env_nonempty("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(config.service_name.clone());
    }
    resource = resource.with_attribute(opentelemetry::KeyValue::new(
        "service.instance.id",
        config.instance_id.clone(),
    ));
    let provider = SdkTracerProvider::builder().with_resource(resource.build());
    if config.otlp.is_none() {
        // Nothing would receive the spans: keep their ids (for logs and
        // headers) but skip recording them.
        return Ok(provider.with_sampler(Sampler::AlwaysOff).build());
    }
    let max_in_flight = env_nonempty("OTEL_BSP_MAX_QUEUE_SIZE")
        .and_then(|v| v.parse().ok())
        .unwrap_or(SPAN_QUEUE_SPANS);
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(max_in_flight)
        .build();
    let env = |name: &str| std::env::var(name).ok();
    let exporter = otlp::OtlpSpanExporter::new(otlp::ExportConfig::from_env(&env)?)?;
    let processor = BatchSpanProcessor::builder(CountingExporter::new(exporter, counters.clone()))
        .with_batch_config(batch)
        .build();
    let processor = CountingProcessor::new(processor, counters.clone(), max_in_flight);
    Ok(provider.with_span_processor(processor).build())
}

/// Installs the subscriber for the whole process.
pub fn init_subscriber(subscriber: impl Subscriber + Send + Sync) -> Result<(), TelemetryError> {
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| TelemetryError::AlreadyInstalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flight_recording_is_written_as_json() {
        // The bunyan layer writes the fields it lists as JSON, not strings.
        assert!(JSON_VALUED_FIELDS.contains(&crate::events::FlightRecorded::FIELD));
    }

    #[test]
    fn shutdown_writes_every_queued_line() {
        let dir = tempfile::tempdir().unwrap();
        let config = TelemetryConfig {
            service_name: "wstrace".into(),
            log_dir: Some(dir.path().to_path_buf()),
            log_file_prefix: "burst".into(),
            log_rotation: LogRotation::Never,
            log_max_files: None,
            log_stdout: false,
            log_buffer_bytes: crate::limits::DEFAULT_LOG_BUFFER_BYTES,
            filter: "info".into(),
            instance_id: "test-0001".into(),
            otlp: None,
        };
        let (subscriber, mut guard) = get_subscriber(&config).unwrap();
        // A burst far faster than the disk, then shutdown at once.
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..100_000 {
                tracing::info!(
                    i,
                    padding = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                    "burst"
                );
            }
        });
        guard.shutdown();
        let text = std::fs::read_to_string(dir.path().join("burst.log")).unwrap();
        assert_eq!(text.lines().count(), 100_000);
        assert_eq!(guard.counters().log_lines_of_first_output(), (100_000, 0));
    }

    #[test]
    fn pruning_deletes_the_oldest_files_and_never_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        for day in 1..=5 {
            let name = format!("wstrace.2026-11-0{day}.log");
            std::fs::write(dir.path().join(name), vec![b'x'; 1000]).unwrap();
        }
        // Another program's files in the same directory are never touched.
        std::fs::write(dir.path().join("nginx.2026-10-01.log"), vec![b'x'; 5000]).unwrap();
        std::fs::write(dir.path().join("wstrace-other.log"), vec![b'x'; 5000]).unwrap();
        assert_eq!(prune_log_dir(dir.path(), "wstrace", 2500), (3, 3000));
        std::fs::remove_file(dir.path().join("nginx.2026-10-01.log")).unwrap();
        std::fs::remove_file(dir.path().join("wstrace-other.log")).unwrap();
        let left = logfile::log_files(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = left
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["wstrace.2026-11-04.log", "wstrace.2026-11-05.log"]);
        // Even over the cap, the file being written stays.
        assert_eq!(prune_log_dir(dir.path(), "wstrace", 0), (1, 1000));
        assert_eq!(
            logfile::log_files(&[dir.path().to_path_buf()])
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn default_filter_parses_and_keeps_nothing_per_span() {
        assert!(GlobalFilter::parse(DEFAULT_FILTER).unwrap().is_static());
    }
}
