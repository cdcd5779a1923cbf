//! Service principals and workload identity: the Entra ID v2 token endpoint.
//!
//! `POST {authority}/{tenant}/oauth2/v2.0/token`, form-encoded, `grant_type=client_credentials`,
//! `client_id`, `scope=<scope>` and one of
//! * `client_secret` (service principal with a secret),
//! * `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and
//!   `client_assertion=<JWT>`, where the JWT is signed by us with the certificate's key
//!   ([`crate::certificate`]) or is the Kubernetes service account token read from
//!   `AZURE_FEDERATED_TOKEN_FILE` (workload identity; re-read on every acquisition because
//!   the kubelet rotates it).
//!
//! The authority is [`CredentialOptions::authority_host`], else `AZURE_AUTHORITY_HOST`, else
//! `https://login.microsoftonline.com`; it must be https (plain http is allowed for loopback
//! addresses only, for local test fakes). Success: `{"access_token","expires_in":3599,…}`
//! (`expires_in` may also be a string). Failure: `{"error","error_description":"AADSTS…"}`,
//! reported as the error code and the description's first line.
//!
//! # Why not `azure_identity`
//! Hand-written with reqwest: `ClientSecretCredential`, `WorkloadIdentityCredential` and
//! `ClientAssertionCredential` each keep an internal per-scope token cache (refreshing only
//! within 300 s of expiry) that would hand a token the database has just rejected back to
//! [`crate::TokenCache`] after `invalidate()`; they read the process environment rather than
//! our [`Env`](crate::Env) snapshot; `ClientCertificateCredential` needs OpenSSL. The protocol
//! is one form POST, so owning it is cheaper than working around the SDK.

use std::{path::PathBuf, time::SystemTime};

use url::Url;

use crate::{
    certificate,
    error::{CredentialError, endpoint_of},
    secret::{AccessToken, Secret},
    source::{CredentialOptions, TokenSource},
    wire::{parse_error_body, parse_token_response},
};

const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the client proves who it is.
enum ClientCredential {
    Secret(Secret),
    Certificate(PathBuf),
    FederatedTokenFile(PathBuf),
    /// A federated assertion from elsewhere (per-pod identity: a TokenRequest).
    Assertion(std::sync::Arc<dyn crate::federated::AssertionSource>),
}

/// A token source backed by the Entra v2 token endpoint.
pub(crate) struct EntraSource {
    http: reqwest::Client,
    token_url: Url,
    tenant_id: String,
    client_id: String,
    credential: ClientCredential,
}

/// The authority host from the options or `AZURE_AUTHORITY_HOST`.
pub(crate) fn authority(opts: &CredentialOptions, who: &str) -> Result<Url, CredentialError> {
    let url = match &opts.authority_host {
        Some(u) => u.clone(),
        None => {
            let raw = opts
                .env
                .get("AZURE_AUTHORITY_HOST")
                .unwrap_or(DEFAULT_AUTHORITY);
            Url::parse(raw).map_err(|e| {
                CredentialError::config(who, format!("AZURE_AUTHORITY_HOST is not a URL: {e}"))
            })?
        }
    };
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(CredentialError::config(
            who,
            format!("the authority host {url} must be an https URL"),
        ));
    }
    Ok(url)
}

/// `v` looks like an Entra id (a GUID or a domain name: letters, digits, `-`, `.`, `_`).
pub(crate) fn check_id(who: &str, what: &str, v: &str) -> Result<(), CredentialError> {
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(CredentialError::config(
            who,
            format!("{what} {v:?} is not a valid id (expected a GUID or a domain name)"),
        ));
    }
    Ok(())
}

impl EntraSource {
    fn new(
        tenant_id: &str,
        client_id: &str,
        credential: ClientCredential,
        opts: &CredentialOptions,
        who: &str,
    ) -> Result<Self, CredentialError> {
        check_id(who, "tenant id", tenant_id)?;
        if client_id.trim().is_empty() {
            return Err(CredentialError::config(who, "the client id is empty"));
        }
        let host = authority(opts, who)?;
        let token_url = Url::parse(&format!(
            "{}/{tenant_id}/oauth2/v2.0/token",
            host.as_str().trim_end_matches('/')
        ))
        .map_err(|e| CredentialError::config(who, format!("token URL: {e}")))?;
        Ok(EntraSource {
            http: opts.http.clone(),
            token_url,
            tenant_id: tenant_id.to_owned(),
            client_id: client_id.trim().to_owned(),
            credential,
        })
    }

    /// Service principal with a client secret.
    pub(crate) fn client_secret(
        tenant_id: &str,
        client_id: &str,
        secret: Secret,
        opts: &CredentialOptions,
    ) -> Result<Self, CredentialError> {
        if secret.is_empty() {
            return Err(CredentialError::config(
                "client secret",
                "the secret is empty",
            ));
        }
        Self::new(
            tenant_id,
            client_id,
            ClientCredential::Secret(secret),
            opts,
            "client secret",
        )
    }

    /// Service principal with a certificate (checked now, re-read on every acquisition).
    pub(crate) fn client_certificate(
        tenant_id: &str,
        client_id: &str,
        path: PathBuf,
        opts: &CredentialOptions,
    ) -> Result<Self, CredentialError> {
        certificate::load_pem_file(&path)?;
        Self::new(
            tenant_id,
            client_id,
            ClientCredential::Certificate(path),
            opts,
            "client certificate",
        )
    }

    /// Workload identity; missing values come from the environment snapshot.
    pub(crate) fn workload_identity(
        tenant_id: Option<String>,
        client_id: Option<String>,
        token_file: Option<PathBuf>,
        opts: &CredentialOptions,
    ) -> Result<Self, CredentialError> {
        let who = "workload identity";
        let env = &opts.env;
        let tenant = tenant_id.or_else(|| env.get("AZURE_TENANT_ID").map(str::to_owned));
        let client = client_id.or_else(|| env.get("AZURE_CLIENT_ID").map(str::to_owned));
        let file = token_file.or_else(|| env.get("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from));
        let mut missing = Vec::new();
        if tenant.is_none() {
            missing.push("AZURE_TENANT_ID");
        }
        if client.is_none() {
            missing.push("AZURE_CLIENT_ID");
        }
        if file.is_none() {
            missing.push("AZURE_FEDERATED_TOKEN_FILE");
        }
        match (tenant, client, file) {
            (Some(t), Some(c), Some(f)) => {
                Self::new(&t, &c, ClientCredential::FederatedTokenFile(f), opts, who)
            }
            _ => Err(CredentialError::config(
                who,
                format!(
                    "{} not set (is the pod labelled azure.workload.identity/use=true and its service account annotated with the client id?)",
                    missing.join(", ")
                ),
            )),
        }
    }

    /// Workload identity with the assertion from `assertion` (fetched on every acquisition).
    pub(crate) fn federated(
        tenant_id: &str,
        client_id: &str,
        assertion: std::sync::Arc<dyn crate::federated::AssertionSource>,
        opts: &CredentialOptions,
    ) -> Result<Self, CredentialError> {
        let c = ClientCredential::Assertion(assertion);
        Self::new(tenant_id, client_id, c, opts, "workload identity")
    }

    fn label(&self) -> &'static str {
        match self.credential {
            ClientCredential::Secret(_) => "client secret",
            ClientCredential::Certificate(_) => "client certificate",
            ClientCredential::FederatedTokenFile(_) | ClientCredential::Assertion(_) => {
                "workload identity"
            }
        }
    }

    fn hint(&self) -> &'static str {
        match self.credential {
            ClientCredential::Secret(_) => {
                "check the tenant id, the client id and the client secret (it may have expired)"
            }
            ClientCredential::Certificate(_) => {
                "check the tenant id, the client id and that this certificate is registered on the app"
            }
            ClientCredential::FederatedTokenFile(_) | ClientCredential::Assertion(_) => {
                "check the tenant id, the client id and the identity's federated credential (issuer and subject system:serviceaccount:<namespace>:<name>)"
            }
        }
    }

    /// The assertion or secret to send (read fresh every time).
    async fn proof(&self, now: SystemTime) -> Result<(&'static str, Secret), CredentialError> {
        match &self.credential {
            ClientCredential::Secret(s) => Ok(("client_secret", s.clone())),
            ClientCredential::Certificate(path) => {
                let cert = certificate::load_pem_file(path)?;
                let jwt = certificate::build_assertion(
                    &cert,
                    &self.client_id,
                    self.token_url.as_str(),
                    now,
                )?;
                Ok(("client_assertion", jwt))
            }
            ClientCredential::FederatedTokenFile(path) => {
                let raw = std::fs::read_to_string(path).map_err(|e| {
                    CredentialError::config(
                        self.describe(),
                        format!("cannot read the federated token file: {e}"),
                    )
                })?;
                let token = raw.trim();
                if token.is_empty() {
                    return Err(CredentialError::config(
                        self.describe(),
                        "the federated token file is empty",
                    ));
                }
                Ok(("client_assertion", Secret::new(token)))
            }
            ClientCredential::Assertion(a) => Ok(("client_assertion", a.assertion().await?)),
        }
    }
}

#[async_trait::async_trait]
impl TokenSource for EntraSource {
    fn describe(&self) -> String {
        let extra = match &self.credential {
            ClientCredential::Secret(_) => String::new(),
            ClientCredential::Certificate(p) => format!(", certificate={}", p.display()),
            ClientCredential::FederatedTokenFile(p) => format!(", token_file={}", p.display()),
            ClientCredential::Assertion(a) => format!(", assertion={}", a.describe()),
        };
        format!(
            "{} (tenant={}, client_id={}{extra})",
            self.label(),
            self.tenant_id,
            self.client_id
        )
    }

    async fn get_token(&self, scope: &str) -> Result<AccessToken, CredentialError> {
        let now = SystemTime::now();
        let (field, proof) = self.proof(now).await?;
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", &self.client_id),
            ("grant_type", "client_credentials"),
            ("scope", scope),
        ];
        if field == "client_assertion" {
            form.push(("client_assertion_type", JWT_BEARER));
        }
        form.push((field, proof.expose()));
        let endpoint = endpoint_of(&self.token_url);
        let resp = self
            .http
            .post(self.token_url.clone())
            .header("Accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| CredentialError::transport(self.describe(), &endpoint, e))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| CredentialError::transport(self.describe(), &endpoint, e))?;
        if status.is_success() {
            return parse_token_response(&body, now, &self.describe(), &endpoint);
        }
        let (error, description) = parse_error_body(&body, &[proof.expose()]);
        Err(CredentialError::rejected(
            self.describe(),
            endpoint,
            status,
            error,
            description,
            self.hint(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeHttp, Reply, opts_with};
    use std::time::Duration;

    const SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

    #[tokio::test]
    async fn client_secret_request_and_response() {
        let fake = FakeHttp::start(vec![Reply::json(
            200,
            r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"sp-token"}"#,
        )])
        .await;
        let mut opts = opts_with(&[]);
        opts.authority_host = Some(fake.url());
        let src =
            EntraSource::client_secret("tenant-1", "client-1", Secret::new("s3cr3t!&="), &opts)
                .unwrap();
        let before = SystemTime::now();
        let t = src.get_token(SCOPE).await.unwrap();
        assert_eq!(t.token.expose(), "sp-token");
        assert!(t.expires_on >= before + Duration::from_secs(3598));
        let r = &fake.requests()[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path(), "/tenant-1/oauth2/v2.0/token");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(r.form("client_id").as_deref(), Some("client-1"));
        assert_eq!(r.form("client_secret").as_deref(), Some("s3cr3t!&="));
        assert_eq!(r.form("grant_type").as_deref(), Some("client_credentials"));
        assert_eq!(r.form("scope").as_deref(), Some(SCOPE));
        assert!(!src.describe().contains("s3cr3t"));
    }

    #[tokio::test]
    async fn client_secret_error_is_explained_without_secret() {
        let fake = FakeHttp::start(vec![Reply::json(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret is provided. s3cr3t-value\r\nTrace ID: abc\r\nCorrelation ID: def","error_codes":[7000215],"timestamp":"2020-04-07 16:28:05Z","trace_id":"abc","correlation_id":"def"}"#,
        )])
        .await;
        let mut opts = opts_with(&[]);
        opts.authority_host = Some(fake.url());
        let src = EntraSource::client_secret("t", "c", Secret::new("s3cr3t-value"), &opts).unwrap();
        let e = src.get_token(SCOPE).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("invalid_client"), "{msg}");
        assert!(
            msg.contains("AADSTS7000215: Invalid client secret is provided."),
            "{msg}"
        );
        assert!(msg.contains("HTTP 401"), "{msg}");
        assert!(!msg.contains("Trace ID"), "{msg}");
        assert!(!msg.contains("s3cr3t-value"), "{msg}");
        assert!(!format!("{e:?}").contains("s3cr3t-value"));
    }

    #[tokio::test]
    async fn expires_in_as_string() {
        let fake = FakeHttp::start(vec![Reply::json(
            200,
            r#"{"access_token":"x","expires_in":"100"}"#,
        )])
        .await;
        let mut opts = opts_with(&[]);
        opts.authority_host = Some(fake.url());
        let src = EntraSource::client_secret("t", "c", Secret::new("s"), &opts).unwrap();
        let t = src.get_token(SCOPE).await.unwrap();
        assert!(t.remaining() <= Duration::from_secs(100));
        assert!(t.remaining() >= Duration::from_secs(90));
    }

    #[tokio::test]
    async fn workload_identity_rereads_file() {
        let fake = FakeHttp::start(vec![Reply::json(
            200,
            r#"{"access_token":"wi","expires_in":3599}"#,
        )])
        .await;
        let dir = std::env::temp_dir().join(format!("dbproxy-wi-{}", certificate::uuid_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "federated-1\n").unwrap();
        let opts = opts_with(&[
            ("AZURE_TENANT_ID", "tenant-w"),
            ("AZURE_CLIENT_ID", "client-w"),
            ("AZURE_FEDERATED_TOKEN_FILE", file.to_str().unwrap()),
            ("AZURE_AUTHORITY_HOST", fake.url().as_str()),
        ]);
        let src = EntraSource::workload_identity(None, None, None, &opts).unwrap();
        assert!(src.describe().contains("client_id=client-w"));
        src.get_token(SCOPE).await.unwrap();
        std::fs::write(&file, "federated-2").unwrap();
        src.get_token(SCOPE).await.unwrap();
        let reqs = fake.requests();
        assert_eq!(reqs[0].path(), "/tenant-w/oauth2/v2.0/token");
        assert_eq!(
            reqs[0].form("client_assertion").as_deref(),
            Some("federated-1")
        );
        assert_eq!(
            reqs[1].form("client_assertion").as_deref(),
            Some("federated-2")
        );
        assert_eq!(
            reqs[0].form("client_assertion_type").as_deref(),
            Some(JWT_BEARER)
        );
        assert_eq!(reqs[0].form("client_secret"), None);
        std::fs::remove_file(&file).unwrap();
        let e = src.get_token(SCOPE).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot read the federated token file"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn workload_identity_missing_env() {
        let e = EntraSource::workload_identity(None, None, None, &opts_with(&[]))
            .err()
            .unwrap();
        let m = e.to_string();
        assert!(
            m.contains("AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE not set"),
            "{m}"
        );
    }

    #[tokio::test]
    async fn client_certificate_posts_signed_assertion() {
        let fake = FakeHttp::start(vec![Reply::json(
            200,
            r#"{"access_token":"cert-token","expires_in":3599}"#,
        )])
        .await;
        let (pem, _der, _pk) = certificate::tests::rsa_cert();
        let dir = std::env::temp_dir().join(format!("dbproxy-cert-{}", certificate::uuid_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sp.pem");
        std::fs::write(&path, pem).unwrap();
        let mut opts = opts_with(&[]);
        opts.authority_host = Some(fake.url());
        let src = EntraSource::client_certificate("t", "c", path, &opts).unwrap();
        assert_eq!(
            src.get_token(SCOPE).await.unwrap().token.expose(),
            "cert-token"
        );
        let r = &fake.requests()[0];
        let jwt = r.form("client_assertion").unwrap();
        assert_eq!(jwt.split('.').count(), 3);
        assert_eq!(r.form("client_assertion_type").as_deref(), Some(JWT_BEARER));
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                jwt.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], format!("{}t/oauth2/v2.0/token", fake.url()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Over real TLS: an https authority with a test CA trusted through `dbproxy_tls::Trust`.
    #[tokio::test]
    async fn client_secret_over_https_with_test_ca() {
        use std::io::{Read, Write};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let dir = std::env::temp_dir().join(format!("dbproxy-tls-{}", certificate::uuid_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();

        let config = rustls::ServerConfig::builder_with_provider(dbproxy_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(std::sync::Arc::new(config)).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = tls.read(&mut buf).unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let body = r#"{"token_type":"Bearer","expires_in":3599,"access_token":"tls-token"}"#;
            write!(
                tls,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            tls.flush().unwrap();
            String::from_utf8_lossy(&req).to_string()
        });

        let trust = dbproxy_tls::Trust::new(Some(&ca_file)).unwrap();
        let mut opts = opts_with(&[]);
        opts.http = trust.http_client().unwrap();
        opts.authority_host = Some(Url::parse(&format!("https://localhost:{port}")).unwrap());
        let src = EntraSource::client_secret("tenant", "client", Secret::new("pw"), &opts).unwrap();
        let t = src.get_token(SCOPE).await.unwrap();
        assert_eq!(t.token.expose(), "tls-token");
        let req = server.join().unwrap();
        assert!(
            req.starts_with("POST /tenant/oauth2/v2.0/token HTTP/1.1"),
            "{req}"
        );
        assert!(req.contains("client_secret=pw"), "{req}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn authority_must_be_https() {
        let mut opts = opts_with(&[("AZURE_AUTHORITY_HOST", "http://login.example.com")]);
        let e = EntraSource::client_secret("t", "c", Secret::new("s"), &opts)
            .err()
            .unwrap();
        assert!(e.to_string().contains("must be an https URL"), "{e}");
        opts.env = crate::Env::from_pairs([("AZURE_AUTHORITY_HOST", "https://login.example.com/")]);
        let src = EntraSource::client_secret("t", "c", Secret::new("s"), &opts).unwrap();
        assert_eq!(
            src.token_url.as_str(),
            "https://login.example.com/t/oauth2/v2.0/token"
        );
        let e = EntraSource::client_secret("../evil", "c", Secret::new("s"), &opts)
            .err()
            .unwrap();
        assert!(e.to_string().contains("tenant id"), "{e}");
        let default =
            EntraSource::client_secret("t", "c", Secret::new("s"), &opts_with(&[])).unwrap();
        assert_eq!(
            default.token_url.as_str(),
            "https://login.microsoftonline.com/t/oauth2/v2.0/token"
        );
    }
}
