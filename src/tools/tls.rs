//! The tools' TLS (`wss://`, `https://`): the system's trusted roots, plus
//! `--ca-cert FILE` for a private CA; rustls with the ring provider.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
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
    /// The system's roots (what `rustls-native-certs` finds, honouring
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR`) and every certificate in `ca_cert`.
    /// A `ca_cert` that holds none is an error: the run would otherwise
    /// fail later with "unknown issuer".
    pub fn new(ca_cert: Option<&Path>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = ca_cert {
            let unreadable =
                |e: &dyn std::fmt::Display| format!("--ca-cert {}: {e}", path.display());
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| unreadable(&e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unreadable(&e))?;
            if certs.is_empty() {
                return Err(unreadable(&"no CERTIFICATE block in the file"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| unreadable(&e))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // HTTP/1.1 for both: the WebSocket upgrade and the tools' GETs.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
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
