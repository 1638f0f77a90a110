//! Counts of what telemetry wrote, exported and dropped, for `/metrics`:
//! "nothing lost" is something to check, not to believe.

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::LogOutputCounts;
use super::line_writer::LineCounts;
use crate::metrics::{Family, Kind, Sample, count};

#[derive(Debug, Default)]
pub struct TelemetryCounters {
    /// Each log output (file, stdout) and what it did with its lines.
    pub log_outputs: Vec<LogOutputCounts>,
    /// Recorded spans that ended and went to the export queue.
    pub spans_queued: AtomicU64,
    /// Spans the collector accepted.
    pub spans_exported: AtomicU64,
    /// Spans in batches the collector refused or never answered.
    pub spans_export_failed: AtomicU64,
    /// Spans not queued because the export queue was full.
    pub spans_dropped_queue_full: AtomicU64,
    /// Why the last export failed (it names the endpoint): said by the
    /// periodic report, not once per failure.
    pub last_export_error: std::sync::Mutex<Option<String>>,
}

impl TelemetryCounters {
    /// Spans in the queue or in an export under way.
    pub fn spans_in_flight(&self) -> u64 {
        self.spans_queued.load(Relaxed).saturating_sub(
            self.spans_exported.load(Relaxed) + self.spans_export_failed.load(Relaxed),
        )
    }

    /// (written, dropped) of the first output: the file when there is one.
    pub fn log_lines_of_first_output(&self) -> (u64, u64) {
        self.log_outputs.first().map_or((0, 0), |output| {
            (output.counts.written.load(Relaxed), output.counts.dropped())
        })
    }

    /// The telemetry pipeline's metrics, for `/metrics`.
    pub fn families(&self) -> Vec<Family> {
        let per_output = |count_of: fn(&LineCounts) -> u64| {
            self.log_outputs
                .iter()
                .map(|o| {
                    Sample::labelled(
                        vec![("output", o.name.to_owned())],
                        count(count_of(&o.counts)),
                    )
                })
                .collect()
        };
        vec![
            Family::of(
                "wstrace_log_lines_written_total",
                "Log lines an output (file, stdout) took.",
                Kind::Counter,
                per_output(|c| c.written.load(Relaxed)),
            ),
            Family::of(
                "wstrace_log_lines_dropped_total",
                "Log lines an output could not take (full disk, stalled reader).",
                Kind::Counter,
                per_output(LineCounts::dropped),
            ),
            Family::counter(
                "wstrace_spans_exported_total",
                "Spans the OTLP collector accepted.",
                self.spans_exported.load(Relaxed),
            ),
            Family::counter(
                "wstrace_spans_dropped_total",
                "Spans that will never reach the collector (export failed or queue full).",
                self.spans_dropped(),
            ),
            Family::gauge(
                "wstrace_spans_queued",
                "Spans waiting for export.",
                count(self.spans_in_flight()),
            ),
        ]
    }

    pub fn spans_dropped(&self) -> u64 {
        self.spans_export_failed.load(Relaxed) + self.spans_dropped_queue_full.load(Relaxed)
    }
}

/// Counts what the wrapped exporter delivered and what it failed to.
#[derive(Debug)]
pub struct CountingExporter<E> {
    inner: E,
    counters: Arc<TelemetryCounters>,
}

impl<E> CountingExporter<E> {
    pub fn new(inner: E, counters: Arc<TelemetryCounters>) -> Self {
        Self { inner, counters }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => self.counters.spans_exported.fetch_add(n, Relaxed),
            Err(error) => {
                let mut last = self.counters.last_export_error.lock();
                if let Ok(last) = last.as_mut() {
                    **last = Some(error.to_string());
                }
                self.counters.spans_export_failed.fetch_add(n, Relaxed)
            }
        };
        result
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Bounds the export queue itself so that every span it cannot take is
/// counted here (the SDK's batch processor only logs its first drop).
#[derive(Debug)]
pub struct CountingProcessor<P> {
    inner: P,
    counters: Arc<TelemetryCounters>,
    max_in_flight: u64,
}

impl<P> CountingProcessor<P> {
    pub fn new(inner: P, counters: Arc<TelemetryCounters>, max_in_flight: usize) -> Self {
        Self {
            inner,
            counters,
            max_in_flight: max_in_flight as u64,
        }
    }
}

impl<P: SpanProcessor> SpanProcessor for CountingProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }
    fn on_end(&self, span: SpanData) {
        if self.counters.spans_in_flight() >= self.max_in_flight {
            self.counters.spans_dropped_queue_full.fetch_add(1, Relaxed);
            return;
        }
        self.counters.spans_queued.fetch_add(1, Relaxed);
        self.inner.on_end(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
