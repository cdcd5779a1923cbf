//! TLS between clients and the proxy (optional): a certificate and key from PEM files,
//! reloaded when the files change (cert-manager and similar rotate them in place).
//!
//! The files are checked at most every few seconds, on a handshake; a failed reload keeps the
//! previous certificate and is logged. PostgreSQL listeners use
//! [`LocalTls::postgres_acceptor`], which also selects the ALPN protocol `postgresql` as
//! PostgreSQL 17 does: a client that offers it gets it (libpq 17 offers it on both
//! negotiations, and direct TLS requires it), one that offers no ALPN is served without, and one
//! that offers only other protocols is refused: rustls queues the alert `no_application_protocol`
//! (RFC 7301, as PostgreSQL sends), though under TLS 1.3, through tokio-rustls, the client may
//! only see the connection end after the ServerHello. The local hop's TLS is separate from the upstream's,
//! which is always on and always verified.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::{
    ServerConfig,
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

/// Whether clients must, or may, use TLS to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalTlsMode {
    /// TLS is offered; plain connections are served too.
    Offer,
    /// Plain connections are refused.
    Require,
}

/// The local TLS settings of a listener.
#[derive(Clone)]
pub struct LocalTls {
    /// Offer or require.
    pub mode: LocalTlsMode,
    /// The acceptor (its certificate reloads itself), with no ALPN.
    pub acceptor: TlsAcceptor,
    /// The same certificate, selecting the ALPN protocol `postgresql`.
    pub postgres_acceptor: TlsAcceptor,
}

/// Both acceptors over `config`.
fn local_tls(mode: LocalTlsMode, config: ServerConfig) -> LocalTls {
    let mut postgres = config.clone();
    postgres.alpn_protocols = vec![dbproxy_postgres::startup::ALPN_PROTOCOL.to_vec()];
    LocalTls {
        mode,
        acceptor: TlsAcceptor::from(Arc::new(config)),
        postgres_acceptor: TlsAcceptor::from(Arc::new(postgres)),
    }
}

impl LocalTls {
    /// TLS with a certificate generated now, valid for `localhost`, 127.0.0.1 and ::1, and
    /// signed by nobody: for clients that want encryption but do not verify (libpq's and lib/pq's
    /// `sslmode=require`, which Service Connector's connection strings carry). Clients that verify
    /// need a configured certificate.
    pub fn self_signed() -> Result<LocalTls, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .map_err(|e| e.to_string())?;
        params.subject_alt_names.extend([
            rcgen::SanType::IpAddress([127, 0, 0, 1].into()),
            rcgen::SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ]);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "entra-db-proxy (self-signed)");
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        let config = ServerConfig::builder_with_provider(dbproxy_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .map_err(|e| e.to_string())?;
        Ok(local_tls(LocalTlsMode::Offer, config))
    }

    /// Loads the certificate and key now (failing start-up if they are unusable).
    pub fn new(cert: &Path, key: &Path, mode: LocalTlsMode) -> Result<LocalTls, String> {
        let resolver = Arc::new(ReloadingCert::new(cert, key)?);
        let config = ServerConfig::builder_with_provider(dbproxy_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        Ok(local_tls(mode, config))
    }
}

const CHECK_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("certificate file {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "certificate file {}: no certificate",
            cert.display()
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("key file {}: {e}", key.display()))?;
    let signing = dbproxy_tls::provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("key file {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    // Rotations replace the two files one after the other: never serve a mismatched pair.
    certified
        .keys_match()
        .map_err(|e| format!("{} and {} do not match: {e}", cert.display(), key.display()))?;
    Ok(Arc::new(certified))
}

impl ReloadingCert {
    fn new(cert: &Path, key: &Path) -> Result<ReloadingCert, String> {
        let current = load(cert, key)?;
        Ok(ReloadingCert {
            cert: cert.to_owned(),
            key: key.to_owned(),
            state: Mutex::new(State {
                current,
                stamps: (mtime(cert), mtime(key)),
                checked: Instant::now(),
            }),
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut state = self.state.lock().ok()?;
        if state.checked.elapsed() >= CHECK_EVERY {
            state.checked = Instant::now();
            let stamps = (mtime(&self.cert), mtime(&self.key));
            if stamps != state.stamps {
                match load(&self.cert, &self.key) {
                    Ok(new) => {
                        state.current = new;
                        state.stamps = stamps;
                        tracing::info!(cert = %self.cert.display(), "local TLS certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "local TLS certificate changed but does not load; keeping the previous one")
                    }
                }
            }
        }
        Some(state.current.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client offering `alpn` that verifies nothing (the certificate is self-signed).
    fn client(alpn: &[&[u8]]) -> rustls::ClientConnection {
        #[derive(Debug)]
        struct Any(Arc<rustls::crypto::CryptoProvider>);
        impl rustls::client::danger::ServerCertVerifier for Any {
            fn verify_server_cert(
                &self,
                _: &CertificateDer<'_>,
                _: &[CertificateDer<'_>],
                _: &rustls_pki_types::ServerName<'_>,
                _: &[u8],
                _: rustls_pki_types::UnixTime,
            ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            fn verify_tls12_signature(
                &self,
                m: &[u8],
                c: &CertificateDer<'_>,
                d: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
            {
                rustls::crypto::verify_tls12_signature(
                    m,
                    c,
                    d,
                    &self.0.signature_verification_algorithms,
                )
            }
            fn verify_tls13_signature(
                &self,
                m: &[u8],
                c: &CertificateDer<'_>,
                d: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
            {
                rustls::crypto::verify_tls13_signature(
                    m,
                    c,
                    d,
                    &self.0.signature_verification_algorithms,
                )
            }
            fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
                self.0.signature_verification_algorithms.supported_schemes()
            }
        }
        let provider = dbproxy_tls::provider();
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Any(provider)))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        rustls::ClientConnection::new(Arc::new(config), name).unwrap()
    }

    /// Runs a handshake in memory; the client's ALPN, or the client's error.
    fn handshake(acceptor: &TlsAcceptor, alpn: &[&[u8]]) -> Result<Option<Vec<u8>>, rustls::Error> {
        let mut client = client(alpn);
        let mut server = rustls::ServerConnection::new(acceptor.config().clone()).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            let server_result = server.process_new_packets();
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).unwrap();
            }
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets()?;
            server_result?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(client.alpn_protocol().map(<[u8]>::to_vec));
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn the_postgres_acceptor_selects_alpn_postgresql_as_postgresql_17_does() {
        let tls = LocalTls::self_signed().unwrap();
        let pg = &tls.postgres_acceptor;
        assert_eq!(
            handshake(pg, &[b"postgresql"]).unwrap(),
            Some(b"postgresql".to_vec())
        );
        assert_eq!(
            handshake(pg, &[b"h2", b"postgresql"]).unwrap(),
            Some(b"postgresql".to_vec())
        );
        // No ALPN offered (libpq 16 and older): served, no protocol selected.
        assert_eq!(handshake(pg, &[]).unwrap(), None);
        // Only other protocols: the fatal alert no_application_protocol (RFC 7301).
        assert_eq!(
            handshake(pg, &[b"h2"]).unwrap_err(),
            rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
        );
        // The plain acceptor (CQL) does no ALPN.
        assert_eq!(handshake(&tls.acceptor, &[b"h2"]).unwrap(), None);
    }
}
