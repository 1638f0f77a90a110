//! Server metrics, in the Prometheus text format at `GET /metrics`.
//!
//! Every part of the server describes its own metrics as a table of
//! [`Family`] descriptors (name, help, type, samples): [`Metrics::families`]
//! here, the telemetry pipeline's and cluster mode's beside their counters.
//! [`render`] writes any list of them. Hot-path counters are plain atomics
//! indexed by [`FrameKind`]; labelled counters that change rarely (close
//! codes, rejections) sit behind a mutex.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::protocol::FrameKind;
use crate::sync::lock;

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One sample line: `<name><suffix>{<labels>} <value>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// `_bucket`, `_sum`, `_count` for histograms; empty otherwise.
    pub suffix: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: i64,
}

impl Sample {
    pub fn new(value: i64) -> Self {
        Self {
            suffix: "",
            labels: Vec::new(),
            value,
        }
    }

    pub fn labelled(labels: Vec<(&'static str, String)>, value: i64) -> Self {
        Self {
            suffix: "",
            labels,
            value,
        }
    }
}

/// One metric family: what `# HELP` and `# TYPE` describe, and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self::of(name, help, Kind::Counter, vec![Sample::new(count(value))])
    }

    pub fn gauge(name: &'static str, help: &'static str, value: i64) -> Self {
        Self::of(name, help, Kind::Gauge, vec![Sample::new(value)])
    }

    pub fn of(name: &'static str, help: &'static str, kind: Kind, samples: Vec<Sample>) -> Self {
        Self {
            name,
            help,
            kind,
            samples,
        }
    }
}

/// Counters are u64; no count of this server comes near `i64::MAX`.
pub fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The Prometheus text exposition (format 0.0.4) of `families`, in order.
pub fn render(families: &[Family]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for family in families {
        let name = family.name;
        let _ = writeln!(
            out,
            "# HELP {name} {}\n# TYPE {name} {}",
            family.help,
            family.kind.as_str()
        );
        for sample in &family.samples {
            out.push_str(name);
            out.push_str(sample.suffix);
            if !sample.labels.is_empty() {
                out.push('{');
                for (i, (label, value)) in sample.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{label}=\"{value}\"");
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", sample.value);
        }
    }
    out
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

    /// Cumulative buckets, sum and count, labelled with `direction`.
    fn samples(&self, direction: &'static str) -> Vec<Sample> {
        let sample = |suffix, le: Option<String>, value| Sample {
            suffix,
            labels: std::iter::once(("direction", direction.to_string()))
                .chain(le.map(|le| ("le", le)))
                .collect(),
            value: count(value),
        };
        let mut cumulative = 0;
        let mut samples: Vec<Sample> = SIZE_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, bucket)| {
                cumulative += bucket.load(Relaxed);
                sample("_bucket", Some(bound.to_string()), cumulative)
            })
            .collect();
        let total = self.count.load(Relaxed);
        samples.push(sample("_bucket", Some("+Inf".into()), total));
        samples.push(sample("_sum", None, self.sum.load(Relaxed)));
        samples.push(sample("_count", None, total));
        samples
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions_active: AtomicI64,
    pub sessions_opened: AtomicU64,
    /// By close code (a registered one, or `None` for any other: a client
    /// picks its code, and each must not become a series of its own) and
    /// who closed.
    sessions_closed: Mutex<BTreeMap<(Option<u16>, &'static str), u64>>,
    messages_in: KindCounters,
    messages_out: KindCounters,
    size_in: Histogram,
    size_out: Histogram,
    pub rate_limited: AtomicU64,
    pub oversize: AtomicU64,
    pub outbound_queue_drops: AtomicU64,
    /// Sessions closed because nothing could be written for the write
    /// timeout.
    pub write_timeouts: AtomicU64,
    upgrades_rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// Client-address headers from trusted proxies that could not be
    /// used, by where (header or `proxy-protocol`) and why.
    client_address_errors: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Connections to the TLS listener that failed their handshake.
    pub tls_handshake_failures: AtomicU64,
    pub admin_requests: AtomicU64,
    /// Debug sessions refused by `--max-debug-sessions`.
    pub debug_refused: AtomicU64,
    /// Flight recorder lines written (sessions that failed after messages).
    pub flight_recordings: AtomicU64,
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
            .entry((registered_close_code(code), closed_by))
            .or_default() += 1;
    }

    /// Sessions closed so far, by close code (`other` for unregistered
    /// codes), whoever closed them.
    pub fn closed_by_code(&self) -> BTreeMap<String, u64> {
        let mut by_code = BTreeMap::new();
        for ((code, _), n) in lock(&self.sessions_closed).iter() {
            let code = code.map_or_else(|| "other".to_string(), |c| c.to_string());
            *by_code.entry(code).or_default() += n;
        }
        by_code
    }

    pub fn upgrade_rejected(&self, reason: &'static str) {
        *lock(&self.upgrades_rejected).entry(reason).or_default() += 1;
    }

    pub fn client_address_error(&self, source: &'static str, reason: &'static str) {
        *lock(&self.client_address_errors)
            .entry((source, reason))
            .or_default() += 1;
    }

    /// This server's own metrics, as a table of descriptors.
    pub fn families(&self, hub: HubGauges) -> Vec<Family> {
        let mut families = self.session_families();
        families.extend(self.message_families(hub));
        families.extend(self.refusal_families());
        if let Some(kib) = resident_kib(std::process::id()) {
            families.push(Family::gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                count(kib * 1024),
            ));
        }
        families
    }

    /// Sessions: open, opened, closed by code and by whom.
    fn session_families(&self) -> Vec<Family> {
        let closed = lock(&self.sessions_closed)
            .iter()
            .map(|((code, by), n)| {
                let code = code.map_or_else(|| "other".to_string(), |c| c.to_string());
                Sample::labelled(
                    vec![("code", code), ("closed_by", by.to_string())],
                    count(*n),
                )
            })
            .collect();
        vec![
            Family::gauge(
                "wstrace_sessions_active",
                "Open WebSocket sessions.",
                self.sessions_active.load(Relaxed),
            ),
            Family::counter(
                "wstrace_sessions_opened_total",
                "Sessions opened.",
                self.sessions_opened.load(Relaxed),
            ),
            Family::of(
                "wstrace_sessions_closed_total",
                "Sessions closed, by close code and who closed.",
                Kind::Counter,
                closed,
            ),
        ]
    }

    /// Frames by type and size, and the channels they go through.
    fn message_families(&self, hub: HubGauges) -> Vec<Family> {
        vec![
            Family::of(
                "wstrace_messages_received_total",
                "Frames received, by type.",
                Kind::Counter,
                by_kind(&self.messages_in),
            ),
            Family::of(
                "wstrace_messages_sent_total",
                "Frames sent, by type.",
                Kind::Counter,
                by_kind(&self.messages_out),
            ),
            Family::of(
                "wstrace_message_size_bytes",
                "Size of data frames, by direction.",
                Kind::Histogram,
                [("in", &self.size_in), ("out", &self.size_out)]
                    .into_iter()
                    .flat_map(|(direction, h)| h.samples(direction))
                    .collect(),
            ),
            Family::gauge(
                "wstrace_channels",
                "Channels with at least one subscriber.",
                hub.channels as i64,
            ),
            Family::gauge(
                "wstrace_channel_subscriptions",
                "Subscriptions over all channels.",
                hub.subscriptions as i64,
            ),
        ]
    }

    /// What was refused or cut: rate limits, sizes, slow readers, upgrades,
    /// debug sessions; and the admin requests and flight recordings.
    fn refusal_families(&self) -> Vec<Family> {
        let rejected = lock(&self.upgrades_rejected)
            .iter()
            .map(|(reason, n)| Sample::labelled(vec![("reason", reason.to_string())], count(*n)))
            .collect();
        let address_errors = lock(&self.client_address_errors)
            .iter()
            .map(|((source, reason), n)| {
                let labels = vec![
                    ("source", source.to_string()),
                    ("reason", reason.to_string()),
                ];
                Sample::labelled(labels, count(*n))
            })
            .collect();
        vec![
            Family::counter(
                "wstrace_rate_limited_total",
                "Frames refused by the per-session rate limit.",
                self.rate_limited.load(Relaxed),
            ),
            Family::counter(
                "wstrace_oversize_messages_total",
                "Messages over the size limit (session closed with 1009).",
                self.oversize.load(Relaxed),
            ),
            Family::counter(
                "wstrace_outbound_queue_drops_total",
                "Deliveries refused by a full outbound queue (receiver closed with 1013).",
                self.outbound_queue_drops.load(Relaxed),
            ),
            Family::counter(
                "wstrace_write_timeouts_total",
                "Sessions closed because the client read nothing for --write-timeout.",
                self.write_timeouts.load(Relaxed),
            ),
            Family::of(
                "wstrace_upgrades_rejected_total",
                "Upgrade requests refused, by reason.",
                Kind::Counter,
                rejected,
            ),
            Family::of(
                "wstrace_client_address_errors_total",
                "Client addresses from trusted proxies that could not be read (the TCP peer was used, or the connection refused), by source and reason.",
                Kind::Counter,
                address_errors,
            ),
            Family::counter(
                "wstrace_tls_handshake_failures_total",
                "Connections to the TLS listener (--tls-cert) closed because their handshake failed or timed out.",
                self.tls_handshake_failures.load(Relaxed),
            ),
            Family::counter(
                "wstrace_admin_requests_total",
                "Admin API requests.",
                self.admin_requests.load(Relaxed),
            ),
            Family::counter(
                "wstrace_debug_sessions_refused_total",
                "Debug sessions refused by --max-debug-sessions.",
                self.debug_refused.load(Relaxed),
            ),
            Family::counter(
                "wstrace_flight_recordings_total",
                "Flight recorder lines written: sessions that failed after sending or receiving messages.",
                self.flight_recordings.load(Relaxed),
            ),
        ]
    }
}

/// The close codes that get a series of their own: RFC 6455's and
/// wstrace's (`error::close_code`). Any other code a client sends is
/// counted as `other`.
fn registered_close_code(code: u16) -> Option<u16> {
    use crate::error::close_code::*;
    const REGISTERED: [u16; 17] = [
        NORMAL,
        GOING_AWAY,
        PROTOCOL_ERROR,
        UNSUPPORTED_DATA,
        NO_STATUS,
        ABNORMAL,
        INVALID_PAYLOAD,
        POLICY_VIOLATION,
        MESSAGE_TOO_BIG,
        1010, // mandatory extension
        INTERNAL_ERROR,
        1012, // service restart
        TRY_AGAIN_LATER,
        1014, // bad gateway
        1015, // TLS handshake
        KICKED,
        CLEANED_UP,
    ];
    REGISTERED.contains(&code).then_some(code)
}

fn by_kind(counters: &KindCounters) -> Vec<Sample> {
    FrameKind::ALL
        .iter()
        .map(|kind| {
            Sample::labelled(
                vec![("type", kind.as_str().to_string())],
                count(counters[kind.index()].load(Relaxed)),
            )
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        for size in [10, 100, 100, 5000, 2_000_000] {
            m.message_in(FrameKind::Echo, size);
        }
        let text = render(&m.families(HubGauges::default()));
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
    fn client_chosen_close_codes_share_one_series() {
        let m = Metrics::default();
        for code in 3000..3300 {
            m.session_opened();
            m.session_closed(code, "client");
        }
        m.session_closed(1000, "client");
        m.session_closed(4000, "admin");
        let text = render(&m.families(HubGauges::default()));
        let series = text
            .lines()
            .filter(|l| l.starts_with("wstrace_sessions_closed_total{"))
            .count();
        assert_eq!(series, 3, "{text}");
        assert!(
            text.contains(
                "wstrace_sessions_closed_total{code=\"other\",closed_by=\"client\"} 300\n"
            )
        );
        assert!(text.contains("code=\"4000\",closed_by=\"admin\"} 1\n"));
    }

    #[test]
    fn closed_sessions_are_labelled() {
        let m = Metrics::default();
        m.session_opened();
        m.session_opened();
        m.session_closed(1000, "client");
        let text = render(&m.families(HubGauges::default()));
        assert!(text.contains("wstrace_sessions_active 1\n"));
        assert!(
            text.contains("wstrace_sessions_closed_total{code=\"1000\",closed_by=\"client\"} 1\n")
        );
    }
}
