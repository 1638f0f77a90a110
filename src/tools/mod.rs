//! The everyday tools, apart from the server: they speak to it over HTTP
//! and WebSocket like any client, and read its log files. They depend on
//! nothing of the server but `protocol`, the log line format (`telemetry`'s
//! files and `events`' message constants) and `auth::Secret` (the
//! architecture test holds them to that).
//!
//! - [`client`]: `wstrace client`, interactive or scripted.
//! - [`load`]: `wstrace load`, a bounded load generator.
//! - [`logs`]: `wstrace logs`, search and tail of the JSON log files.
//! - [`doctor`]: `wstrace doctor`, one session followed through the
//!   production pipeline.
//! - [`http_client`]: the GET they share, over hyper-util's client.

pub mod client;
pub mod doctor;
pub mod http_client;
pub mod load;
pub mod logs;
pub mod tls;

/// The Close the tools end their sessions with: 1000, Normal Closure, so
/// the server counts them as normal closes.
pub fn normal_close(reason: &str) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: CloseCode::Normal,
        reason: reason.to_owned().into(),
    }
}
