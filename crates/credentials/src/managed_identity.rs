//! Managed identity: a token for the identity Azure attached to this VM, VMSS, AKS node,
//! App Service, Container App or Function.
//!
//! # Endpoint selection (from the [`Env`] snapshot)
//! * `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` → App Service / Container Apps / Functions:
//!   `GET {IDENTITY_ENDPOINT}?resource=<scope without /.default>&api-version=2019-08-01`
//!   with header `X-IDENTITY-HEADER: {IDENTITY_HEADER}`; user-assigned selectors
//!   `client_id` / `principal_id` / `mi_res_id`. Retries 429 and 5xx.
//! * otherwise IMDS: `GET {imds}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=…`
//!   with `Metadata: true`; selectors `client_id` / `object_id` / `msi_res_id`. `{imds}` is
//!   [`CredentialOptions::imds_endpoint`], else `AZURE_POD_IDENTITY_AUTHORITY_HOST`, else
//!   `http://169.254.169.254`. Retries 404, 410, 429 and 5xx with exponential backoff
//!   (about 15 s in all; the cache retries further). 400 ("Identity not found") is final.
//! * Service Fabric (`IDENTITY_SERVER_THUMBPRINT`), Azure Arc (`IMDS_ENDPOINT`) and the
//!   legacy `MSI_ENDPOINT` are not supported and reported as such.
//!
//! Values in the answers are strings (`"expires_on":"1506484173"`); numbers are accepted too.
//!
//! In the default chain, IMDS is probed first (one request without the `Metadata` header,
//! answered 400 by a real IMDS) with a short timeout, so that a machine without IMDS moves on
//! to the next source within about a second instead of waiting for connection timeouts.
//!
//! # Why not `azure_identity::ManagedIdentityCredential`
//! Hand-written with reqwest: the SDK hard-codes `169.254.169.254` (no override, so neither
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` nor tests work without faking the transport), reads
//! the process environment rather than our snapshot, retries IMDS for up to 72 s (stalling
//! the default chain), fails when `expires_on` is a JSON number, and keeps its own per-scope
//! cache that would hand back a token the database has just rejected.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use reqwest::StatusCode;
use url::Url;

use crate::{
    env::Env,
    error::{CredentialError, describe_reqwest, endpoint_of},
    secret::{AccessToken, Secret},
    source::{CredentialOptions, TokenSource, UserAssignedId},
    wire::{parse_error_body, parse_token_response, retry_after, scope_to_resource},
};

const DEFAULT_IMDS: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";
const WHO: &str = "managed identity";

/// Where the token comes from.
enum Flavor {
    Imds { url: Url },
    AppService { url: Url, header: Secret },
}

/// Retry schedule for transient answers.
#[derive(Clone, Debug)]
pub(crate) struct Retry {
    /// Total attempts (≥ 1).
    pub(crate) attempts: u32,
    /// First delay; doubles each time.
    pub(crate) base: Duration,
    /// Longest single delay (also caps `Retry-After`).
    pub(crate) max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            base: Duration::from_millis(500),
            max: Duration::from_secs(8),
        }
    }
}

/// A managed identity token source.
pub(crate) struct ManagedIdentity {
    http: reqwest::Client,
    flavor: Flavor,
    id: Option<UserAssignedId>,
    pub(crate) retry: Retry,
    /// In the default chain: probe IMDS with this timeout before the first real request.
    probe: Option<Duration>,
    probed: AtomicBool,
}

impl ManagedIdentity {
    /// Selects the endpoint from `opts.env`. `probe`: check quickly that IMDS answers before
    /// using it (the default chain).
    pub(crate) fn from_env(
        id: Option<UserAssignedId>,
        opts: &CredentialOptions,
        probe: bool,
    ) -> Result<Self, CredentialError> {
        let env = &opts.env;
        let flavor = select(env, opts.imds_endpoint.as_ref())?;
        Ok(ManagedIdentity {
            http: opts.http.clone(),
            flavor,
            id,
            retry: Retry::default(),
            probe: probe.then_some(opts.imds_probe_timeout),
            probed: AtomicBool::new(false),
        })
    }

    fn is_imds(&self) -> bool {
        matches!(self.flavor, Flavor::Imds { .. })
    }

    fn endpoint(&self) -> &Url {
        match &self.flavor {
            Flavor::Imds { url } | Flavor::AppService { url, .. } => url,
        }
    }

    fn request(&self, resource: &str, with_metadata: bool) -> reqwest::RequestBuilder {
        match &self.flavor {
            Flavor::Imds { url } => {
                let mut q = vec![("api-version", "2018-02-01"), ("resource", resource)];
                match &self.id {
                    Some(UserAssignedId::ClientId(v)) => q.push(("client_id", v)),
                    Some(UserAssignedId::ObjectId(v)) => q.push(("object_id", v)),
                    Some(UserAssignedId::ResourceId(v)) => q.push(("msi_res_id", v)),
                    None => {}
                }
                let rb = self.http.get(with_query(url, &q));
                if with_metadata {
                    rb.header("Metadata", "true")
                } else {
                    rb
                }
            }
            Flavor::AppService { url, header } => {
                let mut q = vec![("resource", resource), ("api-version", "2019-08-01")];
                match &self.id {
                    Some(UserAssignedId::ClientId(v)) => q.push(("client_id", v)),
                    Some(UserAssignedId::ObjectId(v)) => q.push(("principal_id", v)),
                    Some(UserAssignedId::ResourceId(v)) => q.push(("mi_res_id", v)),
                    None => {}
                }
                self.http
                    .get(with_query(url, &q))
                    .header("X-IDENTITY-HEADER", header.expose())
            }
        }
    }

    fn not_answering(&self, detail: &str) -> CredentialError {
        let base = self.endpoint().origin().ascii_serialization();
        CredentialError::unavailable(
            self.describe(),
            format!("no IMDS endpoint answered at {base} ({detail}); not running on Azure?"),
        )
    }

    /// One quick request without the `Metadata` header: any HTTP answer means IMDS is there.
    async fn probe(&self, resource: &str, timeout: Duration) -> Result<(), CredentialError> {
        match self.request(resource, false).timeout(timeout).send().await {
            Ok(resp) => {
                tracing::debug!(status = resp.status().as_u16(), "IMDS probe answered");
                self.probed.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.not_answering(&format!(
                "probe within {}ms: {}",
                timeout.as_millis(),
                describe_reqwest(e)
            ))),
        }
    }

    fn retryable(&self, status: StatusCode) -> bool {
        let code = status.as_u16();
        code == 429 || status.is_server_error() || (self.is_imds() && (code == 404 || code == 410))
    }

    fn hint(&self, status: u16) -> String {
        let which = match &self.id {
            None => "a system-assigned identity".to_owned(),
            Some(id) => format!("the user-assigned identity {id}"),
        };
        match (status, self.is_imds()) {
            (400 | 404, _) => format!(
                "check that {which} is assigned to this resource (VM/VMSS/node pool/app) and that the id is right"
            ),
            (401 | 403, false) => "check IDENTITY_HEADER (the platform sets it)".to_owned(),
            _ => String::new(),
        }
    }
}

fn select(env: &Env, imds: Option<&Url>) -> Result<Flavor, CredentialError> {
    let bad_url = |var: &str, e: url::ParseError| {
        CredentialError::config(WHO, format!("{var} is not a valid URL: {e}"))
    };
    match (env.get("IDENTITY_ENDPOINT"), env.get("IDENTITY_HEADER")) {
        (Some(_), Some(_)) if env.get("IDENTITY_SERVER_THUMBPRINT").is_some() => {
            return Err(CredentialError::config(
                WHO,
                "Service Fabric managed identity (IDENTITY_SERVER_THUMBPRINT is set) is not supported; use a service principal or workload identity",
            ));
        }
        (Some(ep), Some(header)) => {
            let url = Url::parse(ep).map_err(|e| bad_url("IDENTITY_ENDPOINT", e))?;
            return Ok(Flavor::AppService {
                url,
                header: Secret::new(header),
            });
        }
        (Some(_), None) if env.get("IMDS_ENDPOINT").is_some() => {
            return Err(CredentialError::config(
                WHO,
                "Azure Arc managed identity (IDENTITY_ENDPOINT + IMDS_ENDPOINT) is not supported; use a service principal",
            ));
        }
        _ => {}
    }
    if env.get("MSI_ENDPOINT").is_some() {
        return Err(CredentialError::config(
            WHO,
            "the legacy MSI_ENDPOINT managed identity (Cloud Shell, old App Service) is not supported; use the Azure CLI credential there",
        ));
    }
    let base = match imds {
        Some(u) => u.as_str().to_owned(),
        None => env
            .get("AZURE_POD_IDENTITY_AUTHORITY_HOST")
            .unwrap_or(DEFAULT_IMDS)
            .to_owned(),
    };
    let url = Url::parse(&format!("{}{IMDS_PATH}", base.trim_end_matches('/')))
        .map_err(|e| bad_url("the IMDS endpoint", e))?;
    Ok(Flavor::Imds { url })
}

/// `url` with the pairs appended to its query string.
fn with_query(url: &Url, pairs: &[(&str, &str)]) -> Url {
    let mut u = url.clone();
    u.query_pairs_mut().extend_pairs(pairs);
    u
}

#[async_trait::async_trait]
impl TokenSource for ManagedIdentity {
    fn describe(&self) -> String {
        let ep = endpoint_of(self.endpoint());
        let kind = if self.is_imds() {
            format!("IMDS at {ep}")
        } else {
            format!("App Service endpoint {ep}")
        };
        match &self.id {
            None => format!("managed identity ({kind}, system-assigned)"),
            Some(id) => format!("managed identity ({kind}, {id})"),
        }
    }

    async fn get_token(&self, scope: &str) -> Result<AccessToken, CredentialError> {
        let resource = scope_to_resource(scope);
        if let Some(timeout) = self.probe {
            if self.is_imds() && !self.probed.load(Ordering::Relaxed) {
                self.probe(resource, timeout).await?;
            }
        }
        let endpoint = endpoint_of(self.endpoint());
        let secrets: Vec<&str> = match &self.flavor {
            Flavor::AppService { header, .. } => vec![header.expose()],
            Flavor::Imds { .. } => vec![],
        };
        let mut delay = self.retry.base;
        let attempts = self.retry.attempts.max(1);
        for attempt in 1..=attempts {
            let last = attempt == attempts;
            let now = SystemTime::now();
            let resp = match self.request(resource, true).send().await {
                Ok(r) => r,
                Err(e) => {
                    if e.is_connect() && self.is_imds() {
                        return Err(self.not_answering(&describe_reqwest(e)));
                    }
                    if last || !(e.is_timeout() || e.is_connect()) {
                        return Err(CredentialError::transport(self.describe(), endpoint, e));
                    }
                    tracing::debug!(attempt, error = %describe_reqwest(e), "managed identity request failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(self.retry.max);
                    continue;
                }
            };
            let status = resp.status();
            if status.is_success() {
                let body = resp
                    .bytes()
                    .await
                    .map_err(|e| CredentialError::transport(self.describe(), &endpoint, e))?;
                return parse_token_response(&body, now, &self.describe(), &endpoint);
            }
            if self.retryable(status) && !last {
                let wait = retry_after(resp.headers())
                    .map(|d| d.min(self.retry.max))
                    .unwrap_or(delay);
                tracing::debug!(
                    attempt,
                    status = status.as_u16(),
                    wait_ms = wait.as_millis() as u64,
                    "managed identity endpoint answered a transient error; retrying"
                );
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(self.retry.max);
                continue;
            }
            let body = resp.bytes().await.unwrap_or_default();
            let (error, mut description) = parse_error_body(&body, &secrets);
            if self.retryable(status) {
                description = format!(
                    "{description}{}still failing after {attempts} attempts",
                    if description.is_empty() { "" } else { "; " }
                );
            }
            return Err(CredentialError::rejected(
                self.describe(),
                endpoint,
                status,
                error,
                description,
                self.hint(status.as_u16()),
            ));
        }
        // The loop always returns on its last attempt.
        Err(self.not_answering("no attempt was made"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{FakeHttp, Reply, opts_with};

    const SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

    fn fast(mut mi: ManagedIdentity) -> ManagedIdentity {
        mi.retry = Retry {
            attempts: 4,
            base: Duration::from_millis(5),
            max: Duration::from_millis(20),
        };
        mi
    }

    #[tokio::test]
    async fn imds_system_assigned_string_values() {
        let fake = FakeHttp::start(vec![Reply::json(
            200,
            r#"{"access_token":"imds-token","refresh_token":"","expires_in":"3599","expires_on":"1906484173","not_before":"1506480273","resource":"https://ossrdbms-aad.database.windows.net","token_type":"Bearer"}"#,
        )])
        .await;
        let mut opts = opts_with(&[]);
        opts.imds_endpoint = Some(fake.url());
        let mi = ManagedIdentity::from_env(None, &opts, false).unwrap();
        assert!(mi.describe().contains("IMDS"), "{}", mi.describe());
        let t = mi.get_token(SCOPE).await.unwrap();
        assert_eq!(t.token.expose(), "imds-token");
        assert!(
            t.remaining() > Duration::from_secs(3500) && t.remaining() <= Duration::from_secs(3599)
        );
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r.method, "GET");
        assert_eq!(r.path(), "/metadata/identity/oauth2/token");
        assert_eq!(r.query("api-version").as_deref(), Some("2018-02-01"));
        assert_eq!(
            r.query("resource").as_deref(),
            Some("https://ossrdbms-aad.database.windows.net")
        );
        assert_eq!(r.header("metadata").as_deref(), Some("true"));
        assert_eq!(r.query("client_id"), None);
    }

    #[tokio::test]
    async fn imds_user_assigned_selectors_and_numbers() {
        for (id, key) in [
            (UserAssignedId::ClientId("cid".into()), "client_id"),
            (UserAssignedId::ObjectId("oid".into()), "object_id"),
            (UserAssignedId::ResourceId("/subs/x".into()), "msi_res_id"),
        ] {
            let fake = FakeHttp::start(vec![Reply::json(
                200,
                r#"{"access_token":"t","expires_on":1906484173}"#,
            )])
            .await;
            // AZURE_POD_IDENTITY_AUTHORITY_HOST as the override.
            let opts = opts_with(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", fake.url().as_str())]);
            let mi = ManagedIdentity::from_env(Some(id.clone()), &opts, false).unwrap();
            mi.get_token(SCOPE).await.unwrap();
            let want = match &id {
                UserAssignedId::ClientId(v)
                | UserAssignedId::ObjectId(v)
                | UserAssignedId::ResourceId(v) => v.clone(),
            };
            assert_eq!(fake.requests()[0].query(key), Some(want));
        }
    }

    #[tokio::test]
    async fn imds_retries_transient_then_succeeds() {
        let fake = FakeHttp::start(vec![
            Reply::json(503, "{}"),
            Reply::json(410, "{}"),
            Reply::json(429, "{}").with_header("Retry-After", "0"),
            Reply::json(200, r#"{"access_token":"t","expires_on":"1906484173"}"#),
        ])
        .await;
        let mut opts = opts_with(&[]);
        opts.imds_endpoint = Some(fake.url());
        let mi = fast(ManagedIdentity::from_env(None, &opts, false).unwrap());
        mi.get_token(SCOPE).await.unwrap();
        assert_eq!(fake.requests().len(), 4);
    }

    #[tokio::test]
    async fn imds_identity_not_found_is_not_retried() {
        let fake = FakeHttp::start(vec![Reply::json(
            400,
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
        )])
        .await;
        let mut opts = opts_with(&[]);
        opts.imds_endpoint = Some(fake.url());
        let mi = fast(
            ManagedIdentity::from_env(Some(UserAssignedId::ClientId("abc".into())), &opts, false)
                .unwrap(),
        );
        let e = mi.get_token(SCOPE).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Rejected);
        let msg = e.to_string();
        assert!(msg.contains("Identity not found"), "{msg}");
        assert!(msg.contains("client_id=abc"), "{msg}");
        assert_eq!(fake.requests().len(), 1);
    }

    #[tokio::test]
    async fn imds_gives_up_after_retries() {
        let fake = FakeHttp::start(vec![Reply::json(500, "{}"); 10]).await;
        let mut opts = opts_with(&[]);
        opts.imds_endpoint = Some(fake.url());
        let mi = fast(ManagedIdentity::from_env(None, &opts, false).unwrap());
        let e = mi.get_token(SCOPE).await.unwrap_err();
        assert!(e.to_string().contains("after 4 attempts"), "{e}");
        assert_eq!(fake.requests().len(), 4);
    }

    #[tokio::test]
    async fn imds_absent_is_unavailable_quickly() {
        // A port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        drop(l);
        let mut opts = opts_with(&[]);
        opts.imds_endpoint = Some(url);
        let mi = ManagedIdentity::from_env(None, &opts, true).unwrap();
        let e = mi.get_token(SCOPE).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable);
        assert!(
            e.to_string()
                .contains("no IMDS endpoint answered at http://127.0.0.1"),
            "{e}"
        );
        assert!(e.to_string().contains("not running on Azure?"), "{e}");
    }

    #[tokio::test]
    async fn imds_probe_times_out_on_silent_endpoint() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let keep = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                conns.push(s);
            }
        });
        let mut opts = opts_with(&[]);
        opts.imds_endpoint = Some(Url::parse(&format!("http://{addr}")).unwrap());
        opts.imds_probe_timeout = Duration::from_millis(200);
        let mi = ManagedIdentity::from_env(None, &opts, true).unwrap();
        let started = std::time::Instant::now();
        let e = mi.get_token(SCOPE).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable, "{e}");
        keep.abort();
    }

    #[tokio::test]
    async fn probe_then_token() {
        let fake = FakeHttp::start(vec![
            Reply::json(
                400,
                r#"{"error":"bad_request_102","error_description":"Required metadata header not specified"}"#,
            ),
            Reply::json(200, r#"{"access_token":"t","expires_on":"1906484173"}"#),
        ])
        .await;
        let mut opts = opts_with(&[]);
        opts.imds_endpoint = Some(fake.url());
        let mi = ManagedIdentity::from_env(None, &opts, true).unwrap();
        mi.get_token(SCOPE).await.unwrap();
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].header("metadata"), None);
        assert_eq!(reqs[1].header("metadata").as_deref(), Some("true"));
    }

    #[tokio::test]
    async fn app_service() {
        let fake = FakeHttp::start(vec![
            Reply::json(
                200,
                r#"{"access_token":"app-token","expires_on":"1906484173","resource":"https://ossrdbms-aad.database.windows.net","token_type":"Bearer","client_id":"c"}"#,
            ),
            Reply::json(
                400,
                r#"{"statusCode":400,"message":"No Managed Identity found for specified ClientId/ResourceId/PrincipalId.","correlationId":"x"}"#,
            ),
        ])
        .await;
        let ep = format!("{}MSI/token", fake.url());
        let opts = opts_with(&[
            ("IDENTITY_ENDPOINT", ep.as_str()),
            ("IDENTITY_HEADER", "hdr-secret-value"),
        ]);
        let mi =
            ManagedIdentity::from_env(Some(UserAssignedId::ObjectId("oid".into())), &opts, true)
                .unwrap();
        assert!(mi.describe().contains("App Service"));
        assert!(!mi.describe().contains("hdr-secret-value"));
        let t = mi.get_token(SCOPE).await.unwrap();
        assert_eq!(t.token.expose(), "app-token");
        let e = mi.get_token(SCOPE).await.unwrap_err();
        assert!(e.to_string().contains("No Managed Identity found"), "{e}");
        let reqs = fake.requests();
        assert_eq!(reqs.len(), 2, "no probe for App Service");
        let r = &reqs[0];
        assert_eq!(r.path(), "/MSI/token");
        assert_eq!(r.query("api-version").as_deref(), Some("2019-08-01"));
        assert_eq!(
            r.query("resource").as_deref(),
            Some("https://ossrdbms-aad.database.windows.net")
        );
        assert_eq!(r.query("principal_id").as_deref(), Some("oid"));
        assert_eq!(
            r.header("x-identity-header").as_deref(),
            Some("hdr-secret-value")
        );
    }

    #[test]
    fn unsupported_flavors_are_named() {
        let opts = opts_with(&[
            (
                "IDENTITY_ENDPOINT",
                "http://localhost:40342/metadata/identity/oauth2/token",
            ),
            ("IMDS_ENDPOINT", "http://localhost:40342"),
        ]);
        let e = ManagedIdentity::from_env(None, &opts, false).err().unwrap();
        assert!(e.to_string().contains("Azure Arc"), "{e}");
        let opts = opts_with(&[("MSI_ENDPOINT", "http://localhost:50342/oauth2/token")]);
        let e = ManagedIdentity::from_env(None, &opts, false).err().unwrap();
        assert!(e.to_string().contains("MSI_ENDPOINT"), "{e}");
    }
}
