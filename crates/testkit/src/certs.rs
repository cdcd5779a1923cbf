//! A throw-away certificate authority and the certificates tests need.
//!
//! * [`TestCa`] is an ECDSA P-256 CA made fresh per test. It signs the leaf certificates of the
//!   test PostgreSQL server and of the fake Entra endpoint, and clients are told to trust it
//!   (`ca_pem`, [`TestCa::write_ca`], [`TestCa::rustls_client_config`], [`TestCa::reqwest_client`]).
//! * [`client_rsa_cert`] makes the RSA-2048 self-signed certificate that a service principal
//!   authenticates with (`AZURE_CLIENT_CERTIFICATE_PATH`). The fake Entra endpoint is configured
//!   with the same [`ClientCert`] and verifies the RS256/PS256 client assertion against it.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_RSA_SHA256,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha1::Digest as _;

/// A PEM certificate and its PKCS#8 private key.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
    /// The leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

impl CertPair {
    /// A rustls server config presenting this certificate (aws-lc-rs provider).
    pub fn rustls_server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("rustls protocol versions")?
            .with_no_client_auth()
            .with_single_cert(vec![CertificateDer::from(self.cert_der.clone())], key)
            .context("rustls server certificate")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The one rustls crypto provider of this project.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate authority for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA whose subject CN is `name`.
    ///
    /// # Panics
    /// Only if key generation fails, which does not happen with aws-lc-rs.
    pub fn new(name: &str) -> TestCa {
        Self::try_new(name).expect("generating a test CA")
    }

    /// Like [`TestCa::new`], returning errors.
    pub fn try_new(name: &str) -> anyhow::Result<TestCa> {
        let key = KeyPair::generate().context("CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "entra-db-proxy tests");
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(TestCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// A leaf certificate for these DNS names and/or IP addresses (strings that parse as an IP
    /// become IP SANs), signed by this CA. The first name is also the subject CN.
    ///
    /// # Panics
    /// If a name is not a valid DNS name or IP address.
    pub fn server_cert(&self, names: &[&str]) -> CertPair {
        self.try_server_cert(names)
            .expect("issuing a test server certificate")
    }

    /// Like [`TestCa::server_cert`], returning errors.
    pub fn try_server_cert(&self, names: &[&str]) -> anyhow::Result<CertPair> {
        let key = KeyPair::generate().context("leaf key")?;
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).context("leaf SANs")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the leaf")?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }

    /// Writes the CA certificate (PEM) to `path`.
    ///
    /// # Panics
    /// If the file cannot be written.
    pub fn write_ca(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem)
            .unwrap_or_else(|e| panic!("writing CA to {}: {e}", path.display()));
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.cert_der.clone()))
            .expect("test CA is a valid trust anchor");
        roots
    }

    /// A rustls client config (aws-lc-rs) trusting only this CA.
    pub fn rustls_client_config(&self) -> Arc<rustls::ClientConfig> {
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("aws-lc-rs supports the default protocol versions")
                .with_root_certificates(self.root_store())
                .with_no_client_auth(),
        )
    }

    /// A reqwest client trusting this CA (and nothing else).
    pub fn reqwest_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_backend_preconfigured((*self.rustls_client_config()).clone())
            .no_proxy()
            .build()
            .expect("building a reqwest client")
    }
}

/// The RSA certificate of a service principal (self-signed, like `az ad sp create-for-rbac
/// --create-cert`).
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Certificate, DER.
    pub cert_der: Vec<u8>,
    /// Private key, PKCS#8 DER.
    pub key_der: Vec<u8>,
    /// The public key as an RSAPublicKey (PKCS#1) DER, as aws-lc-rs' `UnparsedPublicKey` takes it.
    pub public_key_pkcs1_der: Vec<u8>,
    /// The public key as a SubjectPublicKeyInfo DER.
    pub public_key_spki_der: Vec<u8>,
}

impl ClientCert {
    /// `x5t`: base64url (no padding) of the SHA-1 of the certificate DER.
    pub fn x5t(&self) -> String {
        b64url(&sha1::Sha1::digest(&self.cert_der))
    }

    /// `x5t#S256`: base64url (no padding) of the SHA-256 of the certificate DER.
    pub fn x5t_s256(&self) -> String {
        b64url(&sha2::Sha256::digest(&self.cert_der))
    }

    /// Certificate and key in one PEM (the form `AZURE_CLIENT_CERTIFICATE_PATH` takes).
    pub fn combined_pem(&self) -> String {
        format!("{}{}", self.key_pem, self.cert_pem)
    }

    /// Writes [`ClientCert::combined_pem`] to `path`.
    pub fn write_combined_pem(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.combined_pem())
            .with_context(|| format!("writing client certificate to {}", path.display()))
    }

    /// Signs `message` with RSASSA-PKCS1-v1_5 SHA-256 (RS256).
    pub fn sign_rs256(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, message)
    }

    /// Signs `message` with RSASSA-PSS SHA-256 (PS256).
    pub fn sign_ps256(&self, message: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.sign(&aws_lc_rs::signature::RSA_PSS_SHA256, message)
    }

    fn sign(
        &self,
        alg: &'static dyn aws_lc_rs::signature::RsaEncoding,
        message: &[u8],
    ) -> anyhow::Result<Vec<u8>> {
        let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(&self.key_der)
            .map_err(|e| anyhow::anyhow!("client key: {e}"))?;
        let mut sig = vec![0u8; key.public_modulus_len()];
        key.sign(
            alg,
            &aws_lc_rs::rand::SystemRandom::new(),
            message,
            &mut sig,
        )
        .map_err(|e| anyhow::anyhow!("RSA signing: {e}"))?;
        Ok(sig)
    }

    /// A client assertion as MSAL / the Azure SDKs make it for `token_url`
    /// (`{authority}/{tenant}/oauth2/v2.0/token`): header `{"alg":"RS256","typ":"JWT","x5t":…}`,
    /// claims aud = token URL, iss = sub = client_id, jti, nbf, iat, exp (+10 min).
    pub fn client_assertion(&self, token_url: &str, client_id: &str) -> anyhow::Result<String> {
        let now = crate::tokens::now_epoch();
        self.client_assertion_with(
            serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": self.x5t()}),
            serde_json::json!({
                "aud": token_url, "iss": client_id, "sub": client_id,
                "jti": crate::tokens::random_guid(), "nbf": now, "iat": now, "exp": now + 600,
            }),
        )
    }

    /// A client assertion with any header and claims; signed with PS256 when the header's `alg`
    /// is `PS256`, RS256 otherwise.
    pub fn client_assertion_with(
        &self,
        header: serde_json::Value,
        claims: serde_json::Value,
    ) -> anyhow::Result<String> {
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let sig = if header["alg"] == "PS256" {
            self.sign_ps256(signing_input.as_bytes())?
        } else {
            self.sign_rs256(signing_input.as_bytes())?
        };
        Ok(format!("{signing_input}.{}", b64url(&sig)))
    }
}

/// An RSA-2048 self-signed certificate + key for the service-principal-with-certificate
/// credential.
///
/// # Panics
/// Only if RSA key generation fails.
pub fn client_rsa_cert(cn: &str) -> ClientCert {
    try_client_rsa_cert(cn).expect("generating an RSA client certificate")
}

/// Like [`client_rsa_cert`], returning errors.
pub fn try_client_rsa_cert(cn: &str) -> anyhow::Result<ClientCert> {
    use rcgen::PublicKeyData as _;
    let key = KeyPair::generate_for(&PKCS_RSA_SHA256).context("RSA-2048 key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("params")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key).context("self-signing")?;
    Ok(ClientCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
        key_der: key.serialize_der(),
        public_key_pkcs1_der: key.public_key_raw().to_vec(),
        public_key_spki_der: key.subject_public_key_info(),
    })
}

pub(crate) fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}
