//! The integration tests, one binary (as zero2prod has it): one link step,
//! one harness in `common/`, one module per area.
//!
//! - [`session`]: in-process server and real WebSocket clients: trace
//!   identity through every task.
//! - [`features`]: channels, direct messages, the admin API, auth, limits,
//!   metrics.
//! - [`reliability`]: hostile input, fuzzing, panics, rotation, log volume.
//! - [`sampling`]: the flight recorder, debug sessions, the debug cap.
//! - [`proxies`]: client addresses behind trusted proxies (headers and the
//!   PROXY protocol), from chosen loopback source addresses.
//! - [`process`]: the real binary: SIGTERM, stdout, OTLP to a real
//!   collector (rotel), doctor, health.
//! - [`faults`]: what a broken world does to the real binary: a stuck
//!   stdout, a hostile collector, a frozen Redis, a full or deleted log
//!   directory, slow readers.
//! - [`tls`]: `--tls-cert`: openssl-made certificates, rustls and Python
//!   clients, SIGHUP reloads.
//! - [`tools`]: the client (pipes, a pseudo-terminal), load, logs.
//! - [`pipeline`]: `vector.toml` and its VRL (the `vrl` crate), compose,
//!   promtool, the Loki/Tempo/Grafana files, Grafana's query grammars.
//! - [`cluster`]: real redis-server, real instances, real nginx.
//! - [`doctor`]: `wstrace doctor` and `--trace` against a real collector,
//!   with labelled stand-ins for Vector, Loki, Tempo's API and Grafana.
//! - [`architecture`]: the crate's layers, and no import cycles.

mod architecture;
mod cluster;
mod common;
mod doctor;
mod faults;
mod features;
mod pipeline;
mod process;
mod proxies;
mod reliability;
mod sampling;
mod session;
mod tls;
mod tools;
