//! What tracing costs, side by side: four echo servers, one client, one run.
//!
//! ```text
//! cargo bench --bench harness            # full run (BENCHMARKS.md)
//! cargo test --bench harness             # smoke run: tiny counts, seconds
//! WSTRACE_BENCH_ONLY=cluster cargo bench --bench harness   # fan-out via Redis
//! WSTRACE_BENCH_ONLY=instances cargo bench --bench harness # cost per instance as the cluster grows
//! WSTRACE_BENCH_ONLY=scale cargo bench --bench harness     # 100,000 chat sessions on 6 instances
//! WSTRACE_BENCH_ONLY=sweep cargo bench --bench harness     # sample ratios, debug sessions
//! WSTRACE_BENCH_ONLY=sweep WSTRACE_BENCH_BASELINE=/tmp/wstrace-before \
//!     cargo bench --bench harness                          # ...and another build beside it
//! WSTRACE_BENCH_ONLY=lifecycle cargo bench --bench harness # session lifecycle only, more rounds
//! WSTRACE_BENCH_ONLY=compression cargo bench --bench harness # permessage-deflate on and off
//! ```
//!
//! Servers (each its own process, pinned to core 0 when `taskset` exists;
//! the client pins itself to core 1):
//! - `tt-plain`: a plain tokio-tungstenite echo server, the same shape and
//!   socket options as `axum-bare` without axum (no `split()`, Nagle on);
//! - `fastwebsockets`: a fastwebsockets echo server on a hyper upgrade, the
//!   floor for memory and upgrade cost;
//! - `axum-bare`: an axum echo server, no tracing (axum's example shape);
//! - `wstrace-off`: wstrace with `RUST_LOG=off`: what it costs without
//!   telemetry;
//! - `wstrace-session`: wstrace, session spans and lifecycle logs only
//!   (message sample ratio 0), spans exported to a real collector (rotel);
//! - `wstrace-full`: wstrace at the default message sample ratio, JSON
//!   logs to files, spans exported over OTLP to rotel.
//!
//! Every measurement runs for every server in the same round, rounds are
//! interleaved (the order rotates; the session lifecycle is measured four
//! times per round), and results are medians over rounds,
//! reported as ratios to `axum-bare` and `tt-plain`. Nothing here asserts a
//! timing; a run fails only if a log line or span was dropped.

#[path = "../../tests/it/common/raw_ws.rs"]
mod raw_ws;

mod client;
mod cluster;
mod compression;
mod instances;
mod report;
mod scale;
mod servers;

use client::*;
use cluster::*;
use compression::*;
use instances::*;
use report::*;
use scale::*;
use servers::*;

use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::{WebSocketStream, client_async};

type Ws = WebSocketStream<TcpStream>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve-tt") => return serve(tt_plain(args[1].parse().unwrap())),
        Some("serve-axum") => return serve(axum_bare(args[1].parse().unwrap())),
        Some("serve-fastws") => return serve(fastws(args[1].parse().unwrap())),
        Some("scale-client") => {
            raise_fd_limit();
            return scale_client(&args[1]);
        }
        _ => {}
    }
    // `cargo bench` passes --bench; `cargo test` runs us without it.
    let full = args.iter().any(|a| a == "--bench");
    raise_fd_limit();
    let plan = if full { Plan::full() } else { Plan::smoke() };
    let out = std::env::var_os("WSTRACE_BENCH_OUT").map(PathBuf::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    pin_self(1);
    let mut report = runtime.block_on(run(plan.clone()));
    if !full && std::env::var_os("WSTRACE_BENCH_ONLY").is_none() {
        // The smoke run covers the cluster fan-out too.
        report.push('\n');
        report.push_str(&runtime.block_on(cluster(&plan)));
    }
    println!("{report}");
    if let Some(out) = out {
        std::fs::write(&out, &report).unwrap();
        eprintln!("report written to {}", out.display());
    }
    println!("1 passed, 0 failed");
}

#[derive(Debug, Clone)]
struct Plan {
    rounds: usize,
    connections: usize,
    window: usize,
    saturation: Duration,
    latency: Duration,
    latency_connections: usize,
    upgrades: usize,
    /// Idle sessions held open, measured at each count.
    idle_checkpoints: Vec<usize>,
    lifecycle_sessions: usize,
    payload: usize,
    /// Cluster fan-out: receivers per publish, and the latency test's rate.
    fanout_subscribers: usize,
    fanout_rate: f64,
}

impl Plan {
    fn full() -> Self {
        Self {
            rounds: 3,
            connections: 32,
            window: 16,
            saturation: Duration::from_secs(3),
            latency: Duration::from_secs(3),
            latency_connections: 32,
            upgrades: 5000,
            idle_checkpoints: vec![1_000, 5_000, 10_000, 15_000],
            lifecycle_sessions: 500,
            payload: 64,
            fanout_subscribers: 8,
            fanout_rate: 1000.0,
        }
    }

    fn smoke() -> Self {
        Self {
            rounds: 1,
            connections: 4,
            window: 4,
            saturation: Duration::from_millis(300),
            latency: Duration::from_millis(300),
            latency_connections: 4,
            upgrades: 40,
            idle_checkpoints: vec![20, 60, 100],
            lifecycle_sessions: 20,
            payload: 64,
            fanout_subscribers: 2,
            fanout_rate: 200.0,
        }
    }
}
