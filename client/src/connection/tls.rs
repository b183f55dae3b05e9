//! TLS: the rustls client configuration, built once per [`Client`] from
//! [`TlsOptions`], and the handshake every connection attempt (first connect
//! and each reconnect) performs with it.
//!
//! [`Client`]: crate::Client

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig as RustlsConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::stream::{AttemptError, Stream};
use crate::{Error, TlsError, TlsOptions, TlsRoots};

/// What every TLS connection of one client shares.
pub(super) struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl Tls {
    /// Loads the trust anchors and fixes the server name: the override, else
    /// the host part of the connect address, else the first address's IP.
    pub(super) async fn new(
        options: &TlsOptions,
        host: Option<String>,
        addrs: &[SocketAddr],
    ) -> Result<Tls, Error> {
        let name = options
            .server_name
            .clone()
            .or(host)
            .or_else(|| addrs.first().map(|addr| addr.ip().to_string()))
            .unwrap_or_default();
        let server_name = server_name(name)?;
        let roots = options.roots.clone();
        // Reading the trust store or the CA file is blocking file I/O.
        let config = tokio::task::spawn_blocking(move || client_config(&roots))
            .await
            .map_err(|join| Error::Io(io::Error::other(join)))??;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs the TLS handshake over a fresh TCP connection to `peer`.
    ///
    /// A failure rustls reports (an untrusted or wrong certificate, a peer
    /// that does not speak TLS or shares no version with us) is `Refused`: the
    /// same server would give the same answer. A connection that breaks is
    /// `Failed`, worth retrying.
    pub(super) async fn handshake(
        &self,
        tcp: TcpStream,
        peer: &str,
    ) -> Result<Stream, AttemptError> {
        match self.connector.connect(self.server_name.clone(), tcp).await {
            Ok(tls) => Ok(Stream::Tls(Box::new(tls))),
            Err(source) => {
                let from_rustls = source
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>());
                let err = Error::Tls(TlsError::Handshake {
                    peer: peer.to_owned(),
                    source,
                });
                Err(if from_rustls {
                    AttemptError::Refused(err)
                } else {
                    AttemptError::Failed(err)
                })
            }
        }
    }
}

/// An IP address (with or without the brackets of an IPv6 literal) becomes
/// an IP server name, anything else must be a valid DNS name.
fn server_name(name: String) -> Result<ServerName<'static>, TlsError> {
    let unbracketed = name
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(&name);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(name.clone()).map_err(|_| TlsError::InvalidServerName { name })
}

/// TLS 1.3 and 1.2 on the `ring` provider, verifying the server against
/// `roots`, without a client certificate.
fn client_config(roots: &TlsRoots) -> Result<RustlsConfig, TlsError> {
    let store = match roots {
        TlsRoots::System => system_roots()?,
        TlsRoots::CaFile(path) => file_roots(path)?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = RustlsConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.3 and 1.2");
    Ok(builder.with_root_certificates(store).with_no_client_auth())
}

/// The platform's trust store; certificates that do not parse are skipped.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let mut reason = format!("none found ({ignored} could not be parsed)");
        for err in &loaded.errors {
            reason.push_str("; ");
            reason.push_str(&err.to_string());
        }
        return Err(TlsError::NoSystemRoots { reason });
    }
    Ok(store)
}

/// Every `CERTIFICATE` block of a PEM file; each must be a usable anchor.
fn file_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let pem_error = |err: pem::Error| match err {
        pem::Error::Io(source) => TlsError::CaFileUnreadable {
            path: path.to_owned(),
            source,
        },
        other => TlsError::CaFileInvalid {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    };
    let mut store = RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .enumerate()
    {
        store
            .add(cert.map_err(pem_error)?)
            .map_err(|err| TlsError::CaFileInvalid {
                path: path.to_owned(),
                reason: format!("certificate {}: {err}", index + 1),
            })?;
    }
    if store.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A unique path under the temp dir, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn with(name: &str, contents: &[u8]) -> TempFile {
            let path = std::env::temp_dir()
                .join(format!("corebus-client-tls-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).expect("temp file written");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("localhost".into()),
            Ok(ServerName::DnsName(name)) if name.as_ref() == "localhost"
        ));
        for ip in ["127.0.0.1", "::1", "[::1]"] {
            assert!(
                matches!(server_name(ip.into()), Ok(ServerName::IpAddress(_))),
                "{ip}"
            );
        }
        assert!(matches!(
            server_name("not a name!".into()),
            Err(TlsError::InvalidServerName { name }) if name == "not a name!"
        ));
        assert!(matches!(
            server_name(String::new()),
            Err(TlsError::InvalidServerName { .. })
        ));
    }

    #[test]
    fn missing_ca_file_is_unreadable() {
        let path = std::env::temp_dir().join("corebus-client-tls-no-such-file.pem");
        let err = client_config(&TlsRoots::CaFile(path.clone())).expect_err("no file");
        assert!(
            matches!(&err, TlsError::CaFileUnreadable { path: p, source }
                if *p == path && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
    }

    #[test]
    fn ca_file_without_certificate() {
        let file = TempFile::with("empty.pem", b"just some text\n");
        let err = client_config(&TlsRoots::CaFile(file.0.clone())).expect_err("no cert");
        assert!(
            matches!(&err, TlsError::NoCertificate { path } if *path == file.0),
            "{err:?}"
        );
    }

    #[test]
    fn ca_file_with_broken_pem() {
        let file = TempFile::with(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        let err = client_config(&TlsRoots::CaFile(file.0.clone())).expect_err("bad PEM");
        assert!(
            matches!(&err, TlsError::CaFileInvalid { path, .. } if *path == file.0),
            "{err:?}"
        );
    }

    #[test]
    fn ca_file_with_a_non_certificate() {
        // Valid PEM and base64, but not DER of a certificate.
        let file = TempFile::with(
            "garbage.pem",
            b"-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
        );
        let err = client_config(&TlsRoots::CaFile(file.0.clone())).expect_err("bad cert");
        assert!(
            matches!(&err, TlsError::CaFileInvalid { reason, .. } if reason.starts_with("certificate 1")),
            "{err:?}"
        );
    }
}
