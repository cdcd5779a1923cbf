//! Outbound TLS trust, shared by every connection the proxy makes: to the database
//! (PostgreSQL, Cassandra) and to Entra ID / ARM over HTTPS.
//!
//! # Trust
//! A [`Trust`] is built once at start-up from
//! 1. the operating system's roots, read by `rustls-native-certs`, which honours
//!    `SSL_CERT_FILE` and `SSL_CERT_DIR` the way OpenSSL does, and
//! 2. an optional extra CA file (PEM, one or more certificates).
//!
//! Server names are always verified (webpki): there is no "skip verify" switch.
//!
//! # One crypto provider
//! The whole tree uses rustls with aws-lc-rs (azure_core and reqwest default to it too);
//! [`install_crypto_provider`] makes it the process default so that no library has to guess.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{ClientConfig, RootCertStore, crypto::CryptoProvider};
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// Why a [`Trust`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The extra CA file could not be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The configured path.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// Neither the OS store nor a CA file gave a single trusted root.
    #[error(
        "no trusted root certificates: the OS store is empty and no CA file was given (set SSL_CERT_FILE, SSL_CERT_DIR or the listener's tls.ca_file)"
    )]
    NoRoots,
    /// rustls refused the configuration (should not happen with the built-in provider).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider of the whole process (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process-wide default rustls provider. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A set of trusted roots, and the client configurations derived from it.
#[derive(Clone)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    /// How many roots came from the OS store and from the CA file (for logs).
    counts: (usize, usize),
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("os_roots", &self.counts.0)
            .field("ca_file_roots", &self.counts.1)
            .finish()
    }
}

impl Trust {
    /// OS roots (honouring `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus the certificates in `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<Trust, TlsError> {
        Trust::with_ca_files(ca_file)
    }

    /// OS roots plus the certificates of every file in `ca_files`.
    pub fn with_ca_files<'a>(
        ca_files: impl IntoIterator<Item = &'a Path>,
    ) -> Result<Trust, TlsError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for err in &native.errors {
            tracing::debug!(error = %err, "skipping an unreadable OS root certificate source");
        }
        let (os, _ignored) = roots.add_parsable_certificates(native.certs);
        let mut extra = 0;
        for path in ca_files {
            let certs = load_pem_certs(path)?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::CaFile {
                    path: path.to_owned(),
                    reason: "holds no usable certificate".into(),
                });
            }
            extra += added;
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        tracing::debug!(
            os_roots = os,
            ca_file_roots = extra,
            "outbound TLS trust loaded"
        );
        Ok(Trust {
            roots: Arc::new(roots),
            counts: (os, extra),
        })
    }

    /// The trusted roots.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// A rustls client configuration (TLS 1.2 and 1.3, server name verified, no ALPN).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// An HTTP client for Entra ID, managed identity and ARM that trusts the same roots, with
    /// a 30 s bound on each request ([`Trust::http_client_with_timeout`]).
    pub fn http_client(&self) -> Result<reqwest::Client, TlsError> {
        self.http_client_with_timeout(std::time::Duration::from_secs(30))
    }

    /// [`Trust::http_client`] whose requests each take at most `timeout` in all (connect,
    /// TLS, headers and the whole body; the connect itself at most 10 s).
    pub fn http_client_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Result<reqwest::Client, TlsError> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .no_proxy()
            .connect_timeout(timeout.min(std::time::Duration::from_secs(10)))
            .timeout(timeout)
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))
    }
}

/// Reads every certificate of a PEM file.
pub fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_is_named() {
        let e = Trust::new(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn ca_file_without_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("dbproxy-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let e = Trust::new(Some(&path)).unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }
}
