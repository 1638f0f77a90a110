//! The tools' TLS (`wss://`, `https://`): the system's trusted roots, plus
//! `--ca-cert FILE` for a private CA (`crate::tls::client_config`).

use rustls::ClientConfig;
use std::path::Path;
use std::sync::Arc;

/// Whom the tools trust, built once per run.
#[derive(Clone)]
pub struct Trust {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").finish_non_exhaustive()
    }
}

impl Trust {
    /// A `ca_cert` that holds no certificate is an error: the run would
    /// otherwise fail later with "unknown issuer".
    pub fn new(ca_cert: Option<&Path>) -> Result<Self, String> {
        // No ALPN: a WebSocket upgrade is HTTP/1.1, which a server assumes
        // when none is offered, and hyper-rustls sets its own.
        let config = crate::tls::client_config(ca_cert, None)
            .map_err(|error| format!("--ca-cert: {error}"))?;
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// For `tokio-tungstenite`'s `*_tls_with_config` (used for `wss://`
    /// only; `ws://` stays plain).
    pub fn websocket(&self) -> tokio_tungstenite::Connector {
        tokio_tungstenite::Connector::Rustls(self.config.clone())
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }
}
