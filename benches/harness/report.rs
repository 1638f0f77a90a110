//! The runs (the main one, the sweep, the lifecycle) and their tables.

use crate::*;

#[derive(Debug, Default, Clone)]
pub(crate) struct Row {
    pub(crate) cpu_us_per_msg: Vec<f64>,
    pub(crate) server_busy: Vec<f64>,
    pub(crate) msgs_per_s: Vec<f64>,
    pub(crate) p50_us: Vec<f64>,
    pub(crate) p99_us: Vec<f64>,
    pub(crate) p999_us: Vec<f64>,
    pub(crate) upgrades_per_s: Vec<f64>,
    pub(crate) cpu_us_per_upgrade: Vec<f64>,
    /// KiB resident per idle session at each of `Plan::idle_checkpoints`.
    pub(crate) idle_kib_per_session: Vec<f64>,
    pub(crate) log_bytes_per_session: f64,
    pub(crate) log_bytes_per_msg: f64,
    pub(crate) log_lines: u64,
    pub(crate) lines_dropped: u64,
    pub(crate) spans_exported: u64,
}

/// KiB per idle session at each checkpoint, the least-squares line through
/// (sessions, KiB above the empty server), and what it predicts at 100,000.
pub(crate) fn idle_table(plan: &Plan, rows: &[Row]) -> String {
    use std::fmt::Write;
    let mut table = String::new();
    let counts = &plan.idle_checkpoints;
    let _ = write!(table, "| server |");
    for n in counts {
        let _ = write!(table, " KiB/session at {n} |");
    }
    let _ = writeln!(
        table,
        " fit: KiB/session | ×fastwebsockets | fit: MiB at 100,000 sessions |"
    );
    let _ = writeln!(table, "|---|{}---|---|---|", "---|".repeat(counts.len()));
    let fits: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| {
            let totals: Vec<f64> = r
                .idle_kib_per_session
                .iter()
                .zip(counts)
                .map(|(per, n)| per * *n as f64)
                .collect();
            linear_fit(
                &counts.iter().map(|n| *n as f64).collect::<Vec<_>>(),
                &totals,
            )
        })
        .collect();
    let floor = fits[Kind::FastWs.row()].0;
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let _ = write!(table, "| {} |", kind.name());
        for per in &rows[i].idle_kib_per_session {
            let _ = write!(table, " {per:.1} |");
        }
        let (slope, intercept) = fits[i];
        let _ = writeln!(
            table,
            " {slope:.2} | {:.2} | {:.0} |",
            slope / floor,
            (intercept + slope * 100_000.0) / 1024.0
        );
    }
    table
}

/// Least squares: (slope, intercept) of y against x.
pub(crate) fn linear_fit(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = x.iter().map(|a| (a - mx) * (a - mx)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (slope, my - slope * mx)
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// A real OTLP collector for the wstrace servers (rotel, from PyPI).
pub(crate) fn start_collector(dir: &Path) -> (Child, String, PathBuf) {
    start_collector_with(dir, true)
}

/// rotel; `debug_log`: it prints every span it gets (to count them).
pub(crate) fn start_collector_with(dir: &Path, debug_log: bool) -> (Child, String, PathBuf) {
    let agent = std::env::var("ROTEL_AGENT").unwrap_or_else(|_| {
        let out = Command::new("python3")
            .args(["-c", "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))"])
            .output()
            .expect("python3");
        assert!(out.status.success(), "rotel is not installed: pip install rotel");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let output = dir.join("rotel.out");
    let child = pinned(1)
        .arg(agent)
        .args(["start", "--exporter", "blackhole", "--log-format", "json"])
        .args(if debug_log {
            &["--debug-log", "traces"][..]
        } else {
            &[]
        })
        .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{port}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rotel");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "rotel did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, format!("http://127.0.0.1:{port}"), output)
}

/// Spans the collector says it received (its JSON "Received traces." lines).
pub(crate) fn spans_received(output: &Path) -> u64 {
    std::fs::read_to_string(output)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["msg"] == "Received traces.")
        .filter_map(|v| v["spans"].as_u64())
        .sum()
}

/// `WSTRACE_BENCH_ONLY=sweep`: CPU per message at saturation for several
/// message sample ratios, next to axum-bare, to choose the default ratio;
/// and a debug session (every message traced whatever the ratio). With
/// `WSTRACE_BENCH_BASELINE=<another wstrace binary>`, that build at ratios
/// 0 and 0.01 too, for a before/after in the same run.
pub(crate) async fn sweep(plan: &Plan) -> String {
    let work = tempfile::tempdir().unwrap();
    let (mut collector, endpoint, _) = start_collector(work.path());
    let ratios = [0.0, 0.001, 0.01, 0.1, 1.0];
    let bare = Server::start(Kind::AxumBare, &endpoint, 0.0);
    let mut rows: Vec<(String, Server)> = ratios
        .iter()
        .map(|&r| {
            (
                r.to_string(),
                Server::start(Kind::WstraceFull, &endpoint, r),
            )
        })
        .collect();
    rows.push((
        "0, every session a debug session".to_owned(),
        Server::wstrace_debug(&endpoint),
    ));
    if let Some(baseline) = std::env::var_os("WSTRACE_BENCH_BASELINE") {
        let baseline = PathBuf::from(baseline);
        for ratio in [0.0, 0.01] {
            rows.push((
                format!("{ratio}, baseline build"),
                Server::wstrace_baseline(&baseline, &endpoint, ratio),
            ));
        }
    }
    let mut bare_cpu = Vec::new();
    let mut cpu = vec![Vec::new(); rows.len()];
    let mut log = vec![Vec::new(); rows.len()];
    for round in 0..plan.rounds {
        let s = saturate(&bare, plan).await;
        bare_cpu.push(s.cpu.as_secs_f64() * 1e6 / s.messages.max(1) as f64);
        // Rotated, as in the main run: no row always goes first.
        for k in 0..rows.len() {
            let i = (k + round) % rows.len();
            let server = &rows[i].1;
            let before = server.log_bytes();
            let s = saturate(server, plan).await;
            cpu[i].push(s.cpu.as_secs_f64() * 1e6 / s.messages.max(1) as f64);
            log[i].push((server.log_bytes() - before) as f64 / s.messages.max(1) as f64);
        }
    }
    let _ = collector.kill();
    let _ = collector.wait();
    use std::fmt::Write;
    let mut report = String::new();
    let bare = median(&bare_cpu);
    let _ = writeln!(
        report,
        "| message sample ratio | CPU µs/msg | ×axum-bare | log B/msg |"
    );
    let _ = writeln!(report, "|---|---|---|---|");
    let _ = writeln!(report, "| axum-bare | {bare:.2} | 1.00 | - |");
    for (i, (label, _)) in rows.iter().enumerate() {
        let c = median(&cpu[i]);
        let _ = writeln!(
            report,
            "| {label} | {c:.2} | {:.2} | {:.2} |",
            c / bare,
            median(&log[i])
        );
    }
    report
}

/// `WSTRACE_BENCH_ONLY=lifecycle`: CPU per session lifecycle alone, in
/// user and system time apart, over more rounds than the main run (a
/// storm's kernel time here moves by half from one second to the next).
/// Each round measures every server once, in rotated order; a ratio is
/// also taken within each round, so the machine's slow drift cancels.
/// With `WSTRACE_BENCH_BASELINE=<another wstrace binary>`, that build's
/// `wstrace-full` beside this one's.
pub(crate) async fn lifecycle(plan: &Plan) -> String {
    let work = tempfile::tempdir().unwrap();
    let (mut collector, endpoint, _) = start_collector(work.path());
    let ratio = wstrace::state::DEFAULT_MESSAGE_SAMPLE_RATIO;
    let mut rows: Vec<(String, Server)> = [
        Kind::AxumBare,
        Kind::FastWs,
        Kind::WstraceOff,
        Kind::WstraceFull,
    ]
    .iter()
    .map(|&k| (k.name().to_owned(), Server::start(k, &endpoint, ratio)))
    .collect();
    if let Some(baseline) = std::env::var_os("WSTRACE_BENCH_BASELINE") {
        let baseline = PathBuf::from(baseline);
        rows.push((
            "wstrace-full, baseline build".to_owned(),
            Server::wstrace_baseline(&baseline, &endpoint, ratio),
        ));
    }
    let rounds = plan.rounds * 4;
    // What `upgrades` opens: 16 workers, the same number each.
    let sessions = (plan.upgrades / 16 * 16) as f64;
    // Per row: (user µs, system µs) per lifecycle, one per round.
    let mut samples = vec![Vec::new(); rows.len()];
    let mut faults_per = vec![Vec::new(); rows.len()];
    let mut segments_per = vec![Vec::new(); rows.len()];
    // WSTRACE_BENCH_WARM=1: every round starts with each server's message
    // saturation test, as in the main run, where the lifecycle storms
    // follow it.
    let warm = std::env::var_os("WSTRACE_BENCH_WARM").is_some();
    for round in 0..rounds {
        if warm {
            for (_, server) in &rows {
                saturate(server, plan).await;
            }
        }
        for k in 0..rows.len() {
            let i = (k + round) % rows.len();
            let pid = rows[i].1.pid();
            let (before, segments) = (ProcStat::read(pid), tcp_segments_sent());
            let (_, _) = upgrades(&rows[i].1, plan).await;
            let (after, segments) = (ProcStat::read(pid), tcp_segments_sent() - segments);
            let per_session = |d: Duration| d.as_secs_f64() * 1e6 / sessions;
            samples[i].push((
                per_session(after.user - before.user),
                per_session(after.system - before.system),
            ));
            faults_per[i].push((after.minor_faults - before.minor_faults) as f64 / sessions);
            segments_per[i].push(segments as f64 / sessions);
        }
    }
    let _ = collector.kill();
    let _ = collector.wait();
    use std::fmt::Write;
    let total = |row: &[(f64, f64)]| row.iter().map(|(u, s)| u + s).collect::<Vec<_>>();
    let bare = total(&samples[0]);
    let mut report = String::new();
    let _ = writeln!(
        report,
        "| server | user µs/lifecycle | system µs | total µs | ×axum-bare (medians) | ×axum-bare (median of per-round ratios) | total µs, min–max | page faults/lifecycle | TCP segments/lifecycle (both ends), min–max |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|");
    for (i, (label, _)) in rows.iter().enumerate() {
        let t = total(&samples[i]);
        // A round where axum-bare used less than one clock tick (a smoke
        // run's few sessions) has no ratio.
        let per_round: Vec<f64> = t
            .iter()
            .zip(&bare)
            .map(|(a, b)| a / b)
            .filter(|r| r.is_finite())
            .collect();
        let user: Vec<f64> = samples[i].iter().map(|(u, _)| *u).collect();
        let system: Vec<f64> = samples[i].iter().map(|(_, s)| *s).collect();
        let (lo, hi) = t
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let _ = writeln!(
            report,
            "| {label} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {lo:.0}–{hi:.0} | {:.2} | {:.1}–{:.1} |",
            median(&user),
            median(&system),
            median(&t),
            median(&t) / median(&bare),
            median(&per_round),
            median(&faults_per[i]),
            segments_per[i].iter().copied().fold(f64::MAX, f64::min),
            segments_per[i].iter().copied().fold(f64::MIN, f64::max),
        );
    }
    let _ = writeln!(
        report,
        "\n{rounds} rounds of {sessions} sessions per server (16 at a time){}.",
        if warm {
            ", each round after every server's message saturation test"
        } else {
            ""
        }
    );
    report
}

pub(crate) async fn run(plan: Plan) -> String {
    match std::env::var("WSTRACE_BENCH_ONLY").as_deref() {
        Ok("sweep") => return sweep(&plan).await,
        Ok("lifecycle") => return lifecycle(&plan).await,
        Ok("cluster") => return cluster(&plan).await,
        Ok("instances") => return instances(&plan).await,
        Ok("scale") => return scale(&plan).await,
        Ok("compression") => return compression(&plan).await,
        _ => {}
    }
    let work = tempfile::tempdir().unwrap();
    let (mut collector, endpoint, collector_out) = start_collector(work.path());
    let sample_ratio = wstrace::state::DEFAULT_MESSAGE_SAMPLE_RATIO;
    let mut servers: Vec<Server> = Kind::ALL
        .iter()
        .map(|&k| Server::start(k, &endpoint, sample_ratio))
        .collect();
    let mut rows = vec![Row::default(); servers.len()];
    let mut latency_rates = Vec::new();

    // WSTRACE_BENCH_ONLY=idle measures idle memory alone (for profiling).
    let only_idle = std::env::var("WSTRACE_BENCH_ONLY").is_ok_and(|v| v == "idle");
    for round in 0..if only_idle { 0 } else { plan.rounds } {
        // Rotate the order so no server always runs first (warm caches) or last.
        let order: Vec<usize> = (0..servers.len())
            .map(|i| (i + round) % servers.len())
            .collect();
        for &i in &order {
            let server = &servers[i];
            let log_before = server.log_bytes();
            let s = saturate(server, &plan).await;
            let messages = s.messages.max(1) as f64;
            rows[i]
                .cpu_us_per_msg
                .push(s.cpu.as_secs_f64() * 1e6 / messages);
            rows[i].msgs_per_s.push(messages / s.elapsed.as_secs_f64());
            rows[i]
                .server_busy
                .push(s.cpu.as_secs_f64() / s.elapsed.as_secs_f64());
            if server.kind.logs() {
                rows[i].log_bytes_per_msg = (server.log_bytes() - log_before) as f64 / messages;
            }
        }
        // The latency test sends one frame at a time, so the bare rate it
        // takes half of is measured the same way: one request in flight per
        // connection (pipelined saturation lets servers batch, which the
        // latency traffic does not).
        let unbatched =
            saturate_with(&servers[Kind::AxumBare.row()], &plan, 1, plan.saturation).await;
        let rate = unbatched.messages as f64 / unbatched.elapsed.as_secs_f64() * 0.5;
        latency_rates.push(rate);
        for &i in &order {
            let samples = latency(&servers[i], &plan, rate).await;
            rows[i].p50_us.push(percentile(&samples, 50.0) as f64);
            rows[i].p99_us.push(percentile(&samples, 99.0) as f64);
            rows[i].p999_us.push(percentile(&samples, 99.9) as f64);
        }
        // Four times per round: a storm takes about a second, and this
        // machine's noise over one second (the kernel's share of a
        // server's CPU time jumps by half in some) is as large as the
        // differences; the median of twelve leaves those out.
        for _ in 0..4 {
            for &i in &order {
                let (per_s, cpu) = upgrades(&servers[i], &plan).await;
                rows[i].upgrades_per_s.push(per_s);
                rows[i].cpu_us_per_upgrade.push(cpu.as_secs_f64() * 1e6);
            }
        }
        eprintln!("round {} of {} done", round + 1, plan.rounds);
    }
    for (i, server) in servers.iter().enumerate() {
        if server.kind.logs() && !only_idle {
            rows[i].log_bytes_per_session = lifecycle_log_bytes(server, &plan).await;
        }
        rows[i].idle_kib_per_session = idle_memory(server, &plan).await;
    }
    // Nothing lost: what was written is on disk, what was exported arrived.
    let mut failures = Vec::new();
    for (i, server) in servers.iter_mut().enumerate() {
        if !server.kind.logs() {
            continue;
        }
        let metrics = scrape(server).await;
        let written = metrics[r#"wstrace_log_lines_written_total{output="file"}"#] as u64;
        rows[i].lines_dropped = metrics[r#"wstrace_log_lines_dropped_total{output="file"}"#] as u64;
        rows[i].spans_exported = metrics["wstrace_spans_exported_total"] as u64;
        let spans_dropped = metrics["wstrace_spans_dropped_total"] as u64;
        if spans_dropped > 0 {
            failures.push(format!(
                "{}: {spans_dropped} spans dropped",
                server.kind.name()
            ));
        }
        server.stop();
        let on_disk = server.log_lines();
        rows[i].log_lines = on_disk;
        if on_disk < written {
            failures.push(format!(
                "{}: {written} lines written, {on_disk} on disk",
                server.kind.name()
            ));
        }
        if rows[i].lines_dropped > 0 {
            failures.push(format!(
                "{}: {} log lines dropped",
                server.kind.name(),
                rows[i].lines_dropped
            ));
        }
    }
    // Both wstrace servers exported to the one collector, and have exited
    // (flushing their spans): compare what they sent with what it got.
    std::thread::sleep(Duration::from_millis(500));
    let received = spans_received(&collector_out);
    let exported: u64 = rows.iter().map(|r| r.spans_exported).sum();
    if received < exported {
        failures.push(format!(
            "servers exported {exported} spans, the collector got {received}"
        ));
    }
    let _ = collector.kill();
    let _ = collector.wait();

    let mut report = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        report,
        "| server | CPU µs/msg | ×axum-bare | ×tt-plain | msgs/s | server busy | p50 µs | p99 µs | p99.9 µs | p99 ×axum-bare | sessions/s | CPU µs/session lifecycle | lifecycle ×axum-bare | log B/session | log B/msg |"
    );
    let _ = writeln!(
        report,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let cpu = |k: Kind| median(&rows[k.row()].cpu_us_per_msg);
    let p99 = |k: Kind| median(&rows[k.row()].p99_us);
    let lifecycle = |k: Kind| median(&rows[k.row()].cpu_us_per_upgrade);
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let r = &rows[i];
        let c = median(&r.cpu_us_per_msg);
        let _ = writeln!(
            report,
            "| {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0}% | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {} | {} |",
            kind.name(),
            c,
            c / cpu(Kind::AxumBare),
            c / cpu(Kind::TtPlain),
            median(&r.msgs_per_s),
            median(&r.server_busy) * 100.0,
            median(&r.p50_us),
            median(&r.p99_us),
            median(&r.p999_us),
            median(&r.p99_us) / p99(Kind::AxumBare),
            median(&r.upgrades_per_s),
            lifecycle(*kind),
            lifecycle(*kind) / lifecycle(Kind::AxumBare),
            if kind.logs() {
                format!("{:.0}", r.log_bytes_per_session)
            } else {
                "-".into()
            },
            if kind.logs() {
                format!("{:.2}", r.log_bytes_per_msg)
            } else {
                "-".into()
            },
        );
    }
    let _ = writeln!(report);
    report.push_str(&idle_table(&plan, &rows));
    let _ = writeln!(report);
    let lines: u64 = rows.iter().map(|r| r.log_lines).sum();
    let dropped: u64 = rows.iter().map(|r| r.lines_dropped).sum();
    let _ = writeln!(report);
    let _ = writeln!(
        report,
        "log lines on disk: {lines}; log lines dropped: {dropped}; spans exported (before shutdown): {exported}; spans received by the collector (after shutdown): {received}; spans dropped: 0"
    );
    let _ = writeln!(
        report,
        "latency test rate (50% of axum-bare with one request in flight per connection): {:.0} msgs/s",
        median(&latency_rates)
    );
    let _ = writeln!(
        report,
        "plan: {plan:?}; message sample ratio (wstrace-full): {sample_ratio}"
    );
    if !failures.is_empty() {
        panic!("telemetry was lost:\n{}\n{report}", failures.join("\n"));
    }
    report
}
