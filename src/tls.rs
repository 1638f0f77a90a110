//! TLS, rustls with the ring provider (no OpenSSL): the server's own
//! listener (`--tls-cert`/`--tls-key`, PEM: `wss://` and `https://` on one
//! port; the files are read again on SIGHUP, and a set that does not load
//! keeps the one in use), and the client side the OTLP exporter and the
//! tools share ([`client_config`]: the system's roots plus a CA file, and
//! a client certificate for mTLS).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;

use crate::sync::{read, write};

/// The certificate chain and key files, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read the TLS private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot use the CA certificates in {path}: {reason}")]
    Ca { path: PathBuf, reason: String },
    #[error("the TLS certificate {cert} and key {key} do not go together: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The server's TLS settings, swapped whole when the files are reloaded.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self {
            files,
            config: RwLock::new(config),
        })
    }

    /// An acceptor with the settings in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(read(&self.config).clone())
    }

    /// Reads the files again (SIGHUP); on failure the settings in use stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *write(&self.config) = config;
        Ok(())
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }
}

fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = files.load()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mismatch = |error| files.mismatch(error);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(mismatch)?;
    // HTTP/1.1 only: the WebSocket upgrade is an HTTP/1.1 request.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client's trust and identity: the system's roots (what
/// `rustls-native-certs` finds, honouring `SSL_CERT_FILE`/`SSL_CERT_DIR`)
/// plus every certificate in `ca`, and `identity` (certificate chain, key)
/// for servers that ask for one (mTLS). No ALPN protocols: each user sets
/// its own.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<&TlsFiles>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca {
        let invalid = |reason: String| TlsError::Ca {
            path: path.to_owned(),
            reason,
        };
        let certs = certificates(path).map_err(|error| invalid(error.to_string()))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|error| invalid(error.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Ca {
            path: PathBuf::new(),
            reason: error.to_string(),
        })?
        .with_root_certificates(roots);
    let Some(files) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let (chain, key) = files.load()?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|error| files.mismatch(error))
}

impl TlsFiles {
    /// The certificate chain and its private key, read from the files.
    fn load(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let chain = certificates(&self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|error| TlsError::Key {
            path: self.key.clone(),
            reason: error.to_string(),
        })?;
        Ok((chain, key))
    }

    /// rustls refused the pair (a key that is not the certificate's).
    fn mismatch(&self, error: rustls::Error) -> TlsError {
        TlsError::Mismatch {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason: error.to_string(),
        }
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |reason: String| TlsError::Certificate {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|error| invalid(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(error.to_string()))?;
    if chain.is_empty() {
        return Err(invalid("no CERTIFICATE block in the file".into()));
    }
    Ok(chain)
}
