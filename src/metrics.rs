//! Server metrics, rendered in the Prometheus text format at `GET /metrics`.
//!
//! Hot-path counters are plain atomics indexed by a small enum; labelled
//! counters that change rarely (close codes, rejections) sit behind a mutex.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::telemetry::TelemetryCounters;

/// Kinds of frames, the `type` label of the message counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Welcome,
    Ping,
    Pong,
    Echo,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Publish,
    Direct,
    Message,
    Error,
    Binary,
    Invalid,
}

impl FrameKind {
    const ALL: [FrameKind; 14] = [
        FrameKind::Welcome,
        FrameKind::Ping,
        FrameKind::Pong,
        FrameKind::Echo,
        FrameKind::Subscribe,
        FrameKind::Subscribed,
        FrameKind::Unsubscribe,
        FrameKind::Unsubscribed,
        FrameKind::Publish,
        FrameKind::Direct,
        FrameKind::Message,
        FrameKind::Error,
        FrameKind::Binary,
        FrameKind::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Welcome => "welcome",
            FrameKind::Ping => "ping",
            FrameKind::Pong => "pong",
            FrameKind::Echo => "echo",
            FrameKind::Subscribe => "subscribe",
            FrameKind::Subscribed => "subscribed",
            FrameKind::Unsubscribe => "unsubscribe",
            FrameKind::Unsubscribed => "unsubscribed",
            FrameKind::Publish => "publish",
            FrameKind::Direct => "direct",
            FrameKind::Message => "message",
            FrameKind::Error => "error",
            FrameKind::Binary => "binary",
            FrameKind::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

type KindCounters = [AtomicU64; FrameKind::ALL.len()];

/// Bucket upper bounds of the message size histogram, in bytes.
const SIZE_BUCKETS: [u64; 9] = [16, 64, 256, 1024, 4096, 16384, 65536, 262_144, 1_048_576];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; SIZE_BUCKETS.len()],
    count: AtomicU64,
    sum: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, value: u64) {
        if let Some(i) = SIZE_BUCKETS.iter().position(|&b| value <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions_active: AtomicI64,
    pub sessions_opened: AtomicU64,
    sessions_closed: Mutex<BTreeMap<(u16, &'static str), u64>>,
    messages_in: KindCounters,
    messages_out: KindCounters,
    size_in: Histogram,
    size_out: Histogram,
    pub rate_limited: AtomicU64,
    pub oversize: AtomicU64,
    pub outbound_queue_drops: AtomicU64,
    upgrades_rejected: Mutex<BTreeMap<&'static str, u64>>,
    pub admin_requests: AtomicU64,
}

/// Cluster mode's state at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct ClusterReport<'a> {
    pub redis_up: bool,
    pub counters: &'a crate::cluster::ClusterCounters,
}

/// Gauges read from the hub at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct HubGauges {
    pub channels: usize,
    pub subscriptions: usize,
}

impl Metrics {
    pub fn message_in(&self, kind: FrameKind, size: usize) {
        self.messages_in[kind.index()].fetch_add(1, Relaxed);
        self.size_in.observe(size as u64);
    }

    pub fn message_out(&self, kind: FrameKind, size: usize) {
        self.messages_out[kind.index()].fetch_add(1, Relaxed);
        self.size_out.observe(size as u64);
    }

    pub fn session_opened(&self) {
        self.sessions_opened.fetch_add(1, Relaxed);
        self.sessions_active.fetch_add(1, Relaxed);
    }

    pub fn session_closed(&self, code: u16, closed_by: &'static str) {
        self.sessions_active.fetch_sub(1, Relaxed);
        *lock(&self.sessions_closed)
            .entry((code, closed_by))
            .or_default() += 1;
    }

    pub fn upgrade_rejected(&self, reason: &'static str) {
        *lock(&self.upgrades_rejected).entry(reason).or_default() += 1;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(
        &self,
        hub: HubGauges,
        telemetry: Option<&TelemetryCounters>,
        cluster: Option<ClusterReport<'_>>,
    ) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let w = &mut out;
        gauge(
            w,
            "wstrace_sessions_active",
            "Open WebSocket sessions.",
            self.sessions_active.load(Relaxed),
        );
        counter(
            w,
            "wstrace_sessions_opened_total",
            "Sessions opened.",
            self.sessions_opened.load(Relaxed),
        );
        header(
            w,
            "wstrace_sessions_closed_total",
            "Sessions closed, by close code and who closed.",
            "counter",
        );
        for ((code, by), n) in lock(&self.sessions_closed).iter() {
            let _ = writeln!(
                w,
                "wstrace_sessions_closed_total{{code=\"{code}\",closed_by=\"{by}\"}} {n}"
            );
        }
        for (name, help, counters) in [
            (
                "wstrace_messages_received_total",
                "Frames received, by type.",
                &self.messages_in,
            ),
            (
                "wstrace_messages_sent_total",
                "Frames sent, by type.",
                &self.messages_out,
            ),
        ] {
            header(w, name, help, "counter");
            for kind in FrameKind::ALL {
                let _ = writeln!(
                    w,
                    "{name}{{type=\"{}\"}} {}",
                    kind.as_str(),
                    counters[kind.index()].load(Relaxed)
                );
            }
        }
        header(
            w,
            "wstrace_message_size_bytes",
            "Size of data frames, by direction.",
            "histogram",
        );
        for (direction, h) in [("in", &self.size_in), ("out", &self.size_out)] {
            let mut cumulative = 0;
            for (bound, bucket) in SIZE_BUCKETS.iter().zip(&h.buckets) {
                cumulative += bucket.load(Relaxed);
                let _ = writeln!(
                    w,
                    "wstrace_message_size_bytes_bucket{{direction=\"{direction}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = h.count.load(Relaxed);
            let _ = writeln!(
                w,
                "wstrace_message_size_bytes_bucket{{direction=\"{direction}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                w,
                "wstrace_message_size_bytes_sum{{direction=\"{direction}\"}} {}",
                h.sum.load(Relaxed)
            );
            let _ = writeln!(
                w,
                "wstrace_message_size_bytes_count{{direction=\"{direction}\"}} {count}"
            );
        }
        gauge(
            w,
            "wstrace_channels",
            "Channels with at least one subscriber.",
            hub.channels as i64,
        );
        gauge(
            w,
            "wstrace_channel_subscriptions",
            "Subscriptions over all channels.",
            hub.subscriptions as i64,
        );
        for (name, help, value) in [
            (
                "wstrace_rate_limited_total",
                "Frames refused by the per-session rate limit.",
                &self.rate_limited,
            ),
            (
                "wstrace_oversize_messages_total",
                "Messages over the size limit (session closed with 1009).",
                &self.oversize,
            ),
            (
                "wstrace_outbound_queue_drops_total",
                "Deliveries refused by a full outbound queue (receiver closed with 1013).",
                &self.outbound_queue_drops,
            ),
        ] {
            counter(w, name, help, value.load(Relaxed));
        }
        header(
            w,
            "wstrace_upgrades_rejected_total",
            "Upgrade requests refused, by reason.",
            "counter",
        );
        for (reason, n) in lock(&self.upgrades_rejected).iter() {
            let _ = writeln!(
                w,
                "wstrace_upgrades_rejected_total{{reason=\"{reason}\"}} {n}"
            );
        }
        counter(
            w,
            "wstrace_admin_requests_total",
            "Admin API requests.",
            self.admin_requests.load(Relaxed),
        );
        if let Some(kib) = resident_kib(std::process::id()) {
            gauge(
                w,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                (kib * 1024) as i64,
            );
        }
        if let Some(t) = telemetry {
            for (name, help, value) in [
                (
                    "wstrace_log_lines_written_total",
                    "Log lines written.",
                    t.log_lines_written.load(Relaxed),
                ),
                (
                    "wstrace_log_lines_dropped_total",
                    "Log lines that could not be written.",
                    t.log_lines_dropped.load(Relaxed),
                ),
                (
                    "wstrace_spans_exported_total",
                    "Spans the OTLP collector accepted.",
                    t.spans_exported.load(Relaxed),
                ),
                (
                    "wstrace_spans_dropped_total",
                    "Spans that will never reach the collector (export failed or queue full).",
                    t.spans_dropped(),
                ),
            ] {
                counter(w, name, help, value);
            }
            gauge(
                w,
                "wstrace_spans_queued",
                "Spans waiting for export.",
                t.spans_in_flight() as i64,
            );
        }
        if let Some(cluster) = cluster {
            gauge(
                w,
                "wstrace_cluster_redis_up",
                "1 while the Redis pub/sub connection is up (cluster mode).",
                i64::from(cluster.redis_up),
            );
            let c = cluster.counters;
            for (name, help, value) in [
                (
                    "wstrace_cluster_published_total",
                    "Envelopes published to other instances.",
                    &c.published,
                ),
                (
                    "wstrace_cluster_publish_failures_total",
                    "Envelopes that could not be published: other instances missed them.",
                    &c.publish_failures,
                ),
                (
                    "wstrace_cluster_received_total",
                    "Envelopes received from other instances.",
                    &c.received,
                ),
                (
                    "wstrace_cluster_malformed_total",
                    "Envelopes dropped because they could not be decoded.",
                    &c.malformed,
                ),
                (
                    "wstrace_cluster_registry_failures_total",
                    "Session registry reads and writes that failed.",
                    &c.registry_failures,
                ),
                (
                    "wstrace_cluster_reconnects_total",
                    "Times the Redis connection came back after a loss.",
                    &c.reconnects,
                ),
            ] {
                counter(w, name, help, value.load(Relaxed));
            }
        }
        out
    }
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/<pid>/status`);
/// None where there is no such file.
pub fn resident_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn header(w: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn counter(w: &mut String, name: &str, help: &str, value: u64) {
    header(w, name, help, "counter");
    let _ = writeln!(w, "{name} {value}");
}

fn gauge(w: &mut String, name: &str, help: &str, value: i64) {
    header(w, name, help, "gauge");
    let _ = writeln!(w, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for size in [10, 100, 100, 5000, 2_000_000] {
            m.message_in(FrameKind::Echo, size);
        }
        let text = m.render(HubGauges::default(), None, None);
        assert!(text.contains("wstrace_message_size_bytes_bucket{direction=\"in\",le=\"16\"} 1\n"));
        assert!(
            text.contains("wstrace_message_size_bytes_bucket{direction=\"in\",le=\"256\"} 3\n")
        );
        assert!(
            text.contains("wstrace_message_size_bytes_bucket{direction=\"in\",le=\"1048576\"} 4\n")
        );
        assert!(
            text.contains("wstrace_message_size_bytes_bucket{direction=\"in\",le=\"+Inf\"} 5\n")
        );
        assert!(text.contains("wstrace_message_size_bytes_sum{direction=\"in\"} 2005210\n"));
        assert!(text.contains("wstrace_messages_received_total{type=\"echo\"} 5\n"));
    }

    #[test]
    fn closed_sessions_are_labelled() {
        let m = Metrics::default();
        m.session_opened();
        m.session_opened();
        m.session_closed(1000, "client");
        let text = m.render(HubGauges::default(), None, None);
        assert!(text.contains("wstrace_sessions_active 1\n"));
        assert!(
            text.contains("wstrace_sessions_closed_total{code=\"1000\",closed_by=\"client\"} 1\n")
        );
    }
}
