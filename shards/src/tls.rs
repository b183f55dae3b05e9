//! TLS for client connections (rustls, `ring` provider, TLS 1.2 and 1.3).
//!
//! The connection's reader feeds ciphertext into the shared
//! [`rustls::ServerConnection`] and decodes frames from the plaintext it
//! yields; the writer encodes frames, hands them to rustls, and writes the
//! records. Only the writer ever writes to the socket, so records (including
//! handshake messages the reader's input produced) never interleave.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no certificate.
    #[error("TLS certificate {path}: {reason}")]
    Certificate {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The key file is unreadable or holds no private key.
    #[error("TLS private key {path}: {reason}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// A server configuration from a PEM certificate chain and a PEM private key,
/// with rustls' safe defaults, TLS 1.3 and 1.2 only. Its certificate can be
/// replaced while it serves ([`ServerCert::reload`]).
pub fn server_config_from_pem(
    cert_pem: &Path,
    key_pem: &Path,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ServerCert>), TlsError> {
    let cert = Arc::new(ServerCert {
        current: RwLock::new(certified_key(cert_pem, key_pem)?),
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| TlsError::Config(err.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    Ok((Arc::new(config), cert))
}

/// The certificate chain and key a server configuration presents: every
/// new handshake takes the current one, so replacing it leaves established
/// connections as they are.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServerCert {
    /// Reads the chain and key again and presents them from the next
    /// handshake on; on an error the current ones stay.
    pub fn reload(&self, cert_pem: &Path, key_pem: &Path) -> Result<(), TlsError> {
        let fresh = certified_key(cert_pem, key_pem)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The chain and key of two PEM files, checked to belong together.
fn certified_key(cert_pem: &Path, key_pem: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: cert_pem.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .map_err(|err| cert_error(err.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|err| cert_error(err.to_string()))?;
    if certs.is_empty() {
        return Err(cert_error("no CERTIFICATE block found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|err| TlsError::Key {
        path: key_pem.display().to_string(),
        reason: err.to_string(),
    })?;
    // Checks that the key is the certificate's, as rustls' single-cert
    // configuration does.
    let certified = CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|err| TlsError::Config(err.to_string()))?;
    Ok(Arc::new(certified))
}
