//! [`FakeAzure`]: Azure's identity endpoints (and ARM listKeys) on 127.0.0.1, answering with
//! Azure's exact wire formats and errors.
//!
//! One `FakeAzure` runs two listeners sharing one state:
//! * plain http ([`FakeAzure::imds_url`], [`FakeAzure::identity_endpoint`]): IMDS
//!   (`GET /metadata/identity/oauth2/token`, every JSON value a string) and the App Service
//!   managed-identity endpoint (`GET /MSI/token`, `X-IDENTITY-HEADER`) — see [`managed`] — plus
//!   the helper route the fake `az` script calls ([`cli`]);
//! * https with a certificate from the test CA for `127.0.0.1` and `localhost`
//!   ([`FakeAzure::authority_host`]): the Entra ID v2 token endpoint
//!   (`POST /{tenant}/oauth2/v2.0/token`, client secret, certificate assertion or federated
//!   assertion; `expires_in` an integer) — see [`entra`] — and ARM's Cosmos DB `listKeys` /
//!   `readonlykeys` — see [`arm`].
//!
//! Every issued token is a [`crate::tokens::jwt_like`] token whose `aud` is the resource, logged
//! as a [`TokenIssued`] and handed to the [`FakeAzure::on_issue`] hook *before* the HTTP response
//! is sent, so a test can make the token the PostgreSQL role's password first.
//! [`FakeAzure::set_down`] makes every identity endpoint answer 503 ("Entra down");
//! [`faults`] makes them hang, or ARM answer 429 / 5xx.
//! Dropping the `FakeAzure` stops its listeners and open connections.

pub mod arm;
pub mod cli;
pub mod entra;
pub mod faults;
pub mod federated;
pub mod managed;
mod server;
pub(crate) use server::serve_https;

use std::{
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    certs::{ClientCert, TestCa},
    postgres::PgServer,
    tokens,
};

pub use arm::CosmosKeys;
pub use faults::{ArmFault, Hang};
pub use federated::FederatedCredential;

/// What a [`FakeAzure`] accepts and how it issues tokens.
#[derive(Clone, Debug)]
pub struct FakeAzureConfig {
    /// Length of issued access tokens. Default 1900 (a managed-identity token's size).
    pub token_len: usize,
    /// Lifetime of issued tokens (`expires_in`, `expires_on`). Default 3599 s.
    pub lifetime: Duration,
    /// The one tenant that exists. Other tenants get AADSTS90002.
    pub tenant_id: String,
    /// The service principal's application (client) id.
    pub client_id: String,
    /// The service principal's accepted client secret.
    pub client_secret: String,
    /// The service principal's accepted certificate (RS256/`x5t` or PS256/`x5t#S256` assertions).
    pub client_cert: Option<ClientCert>,
    /// The accepted workload-identity (federated) assertion, compared verbatim.
    pub federated_token: Option<String>,
    /// Federated identity credentials (workload identity federation), each for its own
    /// client id: assertions are checked as Entra checks them (see [`federated`]).
    pub federated_credentials: Vec<FederatedCredential>,
    /// Whether the machine has a system-assigned managed identity. Default true.
    pub system_assigned: bool,
    /// Client id of the system-assigned identity (App Service returns it as `client_id`).
    pub system_assigned_client_id: String,
    /// The user-assigned managed identity that exists (by client id); others get
    /// "Identity not found".
    pub managed_identity_client_id: Option<String>,
    /// Its object (principal) id, for `object_id` / `principal_id` selectors.
    pub managed_identity_object_id: String,
    /// Its ARM resource id, for `msi_res_id` / `mi_res_id` selectors.
    pub managed_identity_resource_id: String,
    /// App Service's `X-IDENTITY-HEADER` secret (`IDENTITY_HEADER`).
    pub identity_header: String,
    /// Subscription of the ARM resources ([`FakeAzure::list_keys_url`]).
    pub subscription_id: String,
    /// Resource group of the ARM resources.
    pub resource_group: String,
    /// If set, the only Cosmos DB account that exists (others: 404 ResourceNotFound); if
    /// `None`, every account name exists.
    pub cosmos_account: Option<String>,
}

impl Default for FakeAzureConfig {
    fn default() -> Self {
        FakeAzureConfig {
            token_len: 1900,
            lifetime: Duration::from_secs(3599),
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            client_id: "5b4a8a3e-7c62-4f0e-9d2a-1c3b5e7f9a01".into(),
            client_secret: "Fk8Q~testkit.secret_3f9a1c7e5b2d4f6a8c0e".into(),
            client_cert: None,
            federated_token: None,
            federated_credentials: Vec::new(),
            system_assigned: true,
            system_assigned_client_id: "9e1d2c3b-4a59-4687-8796-a5b4c3d2e1f0".into(),
            managed_identity_client_id: None,
            managed_identity_object_id: "0f1e2d3c-4b5a-4968-8778-695a4b3c2d1e".into(),
            managed_identity_resource_id: "/subscriptions/4f3e2d1c-0b9a-4887-8665-544332211000/resourcegroups/rg-test/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-test".into(),
            identity_header: "a3c1f5e7-testkit-identity-header".into(),
            subscription_id: "4f3e2d1c-0b9a-4887-8665-544332211000".into(),
            resource_group: "rg-test".into(),
            cosmos_account: None,
        }
    }
}

/// Which endpoint / credential a token was issued through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// IMDS (VM / AKS node managed identity).
    Imds,
    /// App Service / Container Apps / Functions managed identity.
    AppService,
    /// Entra v2 token endpoint, client secret.
    ClientSecret,
    /// Entra v2 token endpoint, certificate assertion.
    ClientCertificate,
    /// Entra v2 token endpoint, federated (workload identity) assertion.
    Federated,
    /// The fake `az account get-access-token`.
    AzCli,
}

/// One issued token.
#[derive(Clone, Debug)]
pub struct TokenIssued {
    /// Where it was issued.
    pub source: TokenSource,
    /// The scope or resource as the client asked for it (`…/.default` for Entra and az,
    /// the bare resource for managed identity).
    pub scope: String,
    /// The resource (the scope without `/.default`): the token's `aud`.
    pub resource: String,
    /// The client id of the principal: the service principal, or the managed identity.
    pub client_id: Option<String>,
    /// The access token.
    pub token: String,
    /// Expiry, seconds since the epoch.
    pub expires_on: u64,
}

/// A request the fake received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// Headers (name lower-case, value lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// The [`FakeAzure::on_issue`] hook.
pub type IssueHook =
    Arc<dyn Fn(TokenIssued) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

pub(crate) struct Shared {
    pub(crate) config: Mutex<FakeAzureConfig>,
    pub(crate) down: AtomicBool,
    pub(crate) hang: Mutex<Hang>,
    pub(crate) hung: AtomicUsize,
    pub(crate) az_logged_in: AtomicBool,
    pub(crate) request_count: AtomicUsize,
    pub(crate) requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) issued: Mutex<Vec<TokenIssued>>,
    pub(crate) hook: Mutex<Option<IssueHook>>,
    pub(crate) authority: String,
    pub(crate) https_port: u16,
    pub(crate) arm: Mutex<arm::ArmState>,
    /// Object ids of the principals, for the `oid` claim.
    pub(crate) sp_object_id: String,
    pub(crate) system_object_id: String,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn config(&self) -> FakeAzureConfig {
        lock(&self.config).clone()
    }

    /// Mints a token, logs it, runs the hook, and returns it.
    pub(crate) async fn issue(
        &self,
        source: TokenSource,
        scope: &str,
        resource: &str,
        client_id: Option<String>,
        object_id: &str,
    ) -> TokenIssued {
        let cfg = self.config();
        let expires_on = tokens::now_epoch() + cfg.lifetime.as_secs();
        let token = tokens::jwt_with_claims(
            cfg.token_len,
            resource,
            expires_on,
            &cfg.tenant_id,
            object_id,
        );
        let issued = TokenIssued {
            source,
            scope: scope.to_owned(),
            resource: resource.to_owned(),
            client_id,
            token,
            expires_on,
        };
        lock(&self.issued).push(issued.clone());
        let hook = lock(&self.hook).clone();
        if let Some(hook) = hook {
            hook(issued.clone()).await;
        }
        issued
    }
}

/// The fake (see the module docs).
pub struct FakeAzure {
    shared: Arc<Shared>,
    http_addr: SocketAddr,
    https_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeAzure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAzure")
            .field("http", &self.http_addr)
            .field("https", &self.https_addr)
            .finish_non_exhaustive()
    }
}

impl FakeAzure {
    /// Starts both listeners on free ports of 127.0.0.1.
    pub async fn start(ca: &TestCa, config: FakeAzureConfig) -> anyhow::Result<FakeAzure> {
        let http = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake's http port")?;
        let https = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake's https port")?;
        let http_addr = http.local_addr()?;
        let https_addr = https.local_addr()?;
        let tls = ca
            .try_server_cert(&["127.0.0.1", "localhost"])?
            .rustls_server_config()?;
        let shared = Arc::new(Shared {
            config: Mutex::new(config),
            down: AtomicBool::new(false),
            hang: Mutex::new(Hang::No),
            hung: AtomicUsize::new(0),
            az_logged_in: AtomicBool::new(true),
            request_count: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            issued: Mutex::new(Vec::new()),
            hook: Mutex::new(None),
            authority: format!("https://127.0.0.1:{}", https_addr.port()),
            https_port: https_addr.port(),
            arm: Mutex::new(arm::ArmState::default()),
            sp_object_id: tokens::random_guid(),
            system_object_id: tokens::random_guid(),
        });
        let app = server::router(shared.clone());
        let tasks = vec![
            tokio::spawn(server::serve(http, None, app.clone())),
            tokio::spawn(server::serve(
                https,
                Some(tokio_rustls::TlsAcceptor::from(tls)),
                app,
            )),
        ];
        Ok(FakeAzure {
            shared,
            http_addr,
            https_addr,
            tasks,
        })
    }

    /// `http://127.0.0.1:PORT`: the IMDS base (the SDKs append
    /// `/metadata/identity/oauth2/token`).
    pub fn imds_url(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The full IMDS token URL, `http://127.0.0.1:PORT/metadata/identity/oauth2/token`.
    pub fn imds_token_url(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.imds_url())
    }

    /// `http://127.0.0.1:PORT/MSI/token`: App Service's `IDENTITY_ENDPOINT`.
    pub fn identity_endpoint(&self) -> String {
        format!("http://{}/MSI/token", self.http_addr)
    }

    /// App Service's `IDENTITY_HEADER`.
    pub fn identity_header(&self) -> String {
        self.shared.config().identity_header
    }

    /// `https://127.0.0.1:PORT`: `AZURE_AUTHORITY_HOST` (the client must trust the test CA).
    pub fn authority_host(&self) -> String {
        self.shared.authority.clone()
    }

    /// `{authority_host}/{tenant_id}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.shared.authority,
            self.shared.config().tenant_id
        )
    }

    /// The effective configuration.
    pub fn config(&self) -> FakeAzureConfig {
        self.shared.config()
    }

    /// Changes the configuration (e.g. rotates the client secret or the federated token).
    pub fn update_config(&self, f: impl FnOnce(&mut FakeAzureConfig)) {
        f(&mut lock(&self.shared.config));
    }

    /// Sets the hook called with every issued token before its HTTP response is sent
    /// (replacing any previous hook).
    pub fn on_issue<F, Fut>(&self, f: F)
    where
        F: Fn(TokenIssued) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let hook: IssueHook = Arc::new(move |t| Box::pin(f(t)));
        *lock(&self.shared.hook) = Some(hook);
    }

    /// Removes the hook.
    pub fn clear_on_issue(&self) {
        *lock(&self.shared.hook) = None;
    }

    /// Hook: every token issued for `resource` (the scope without `/.default`, e.g.
    /// `https://ossrdbms-aad.database.windows.net`) becomes `role`'s password on `pg` before the
    /// client gets it — what Azure's server-side token validation amounts to. A failure is
    /// printed to stderr (the client then fails to log in).
    pub fn sync_pg_role_password(&self, pg: Arc<PgServer>, role: &str, resource: &str) {
        let role = role.to_owned();
        let resource = resource.trim_end_matches('/').to_owned();
        self.on_issue(move |t| {
            let (pg, role, resource) = (pg.clone(), role.clone(), resource.clone());
            async move {
                if t.resource.trim_end_matches('/') == resource
                    && let Err(e) = pg.set_role_password(&role, &t.token).await
                {
                    eprintln!("FakeAzure hook: setting {role}'s password failed: {e:#}");
                }
            }
        });
    }

    /// Every token issued so far, oldest first.
    pub fn issued(&self) -> Vec<TokenIssued> {
        lock(&self.shared.issued).clone()
    }

    /// The most recently issued token.
    pub fn last_token(&self) -> Option<String> {
        lock(&self.shared.issued).last().map(|t| t.token.clone())
    }

    /// While down, every identity endpoint answers 503 (the token endpoint and az with an
    /// Azure-shaped error). ARM is not affected.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_lifetime(&self, d: Duration) {
        lock(&self.shared.config).lifetime = d;
    }

    /// Length of tokens issued from now on.
    pub fn set_token_len(&self, n: usize) {
        lock(&self.shared.config).token_len = n;
    }

    /// Number of HTTP requests received (all endpoints).
    pub fn request_count(&self) -> usize {
        self.shared.request_count.load(Ordering::SeqCst)
    }

    /// The HTTP requests received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Writes a fake `az` into `dir` (put `dir` first on PATH); see [`cli`].
    pub fn install_fake_az(&self, dir: &Path) -> anyhow::Result<()> {
        cli::install(dir, self.http_addr.port())
    }

    /// Whether the fake `az` is logged in (default true). Logged out, it fails like
    /// `Please run 'az login' to setup account.`
    pub fn set_az_logged_in(&self, yes: bool) {
        self.shared.az_logged_in.store(yes, Ordering::SeqCst);
    }

    /// `{authority_host}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/databaseAccounts/{account}/listKeys?api-version=2021-04-15`
    /// (what Service Connector puts in `AZURE_COSMOS_LISTKEYURL`).
    pub fn list_keys_url(&self, account: &str) -> String {
        format!(
            "{}?api-version=2021-04-15",
            self.account_url(account, "listKeys")
        )
    }

    /// Like [`FakeAzure::list_keys_url`] for `readonlykeys`.
    pub fn readonly_keys_url(&self, account: &str) -> String {
        format!(
            "{}?api-version=2021-04-15",
            self.account_url(account, "readonlykeys")
        )
    }

    fn account_url(&self, account: &str, action: &str) -> String {
        let cfg = self.shared.config();
        format!(
            "{}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.DocumentDB/databaseAccounts/{account}/{action}",
            self.shared.authority, cfg.subscription_id, cfg.resource_group
        )
    }

    /// A [`LoginCheck`](crate::cosmos::LoginCheck) for the Cosmos stand-in's account
    /// `account`: the user must be the account name; the password an account key (only with
    /// `local_auth`; without it Cosmos's "Local Authorization is disabled" refusal) or an
    /// unexpired token this fake issued for `https://cosmos.azure.com` (Entra RBAC).
    pub fn cosmos_login_check(&self, account: &str, local_auth: bool) -> crate::cosmos::LoginCheck {
        let (shared, account) = (self.shared.clone(), account.to_owned());
        std::sync::Arc::new(move |user: &str, password: &str| {
            if user != account {
                return Err(format!(
                    "Provided username {user} and/or password are incorrect"
                ));
            }
            let keys = lock(&shared.arm).keys.clone();
            let is_key = [
                &keys.primary_master_key,
                &keys.secondary_master_key,
                &keys.primary_readonly_master_key,
                &keys.secondary_readonly_master_key,
            ]
            .iter()
            .any(|k| k.as_str() == password);
            if is_key {
                return if local_auth {
                    Ok(())
                } else {
                    Err("Local Authorization is disabled. Use an AAD token to authorize all requests.".into())
                };
            }
            let issued = lock(&shared.issued)
                .iter()
                .find(|t| t.token == password)
                .cloned();
            match issued {
                None => Err(format!(
                    "Provided username {user} and/or password are incorrect"
                )),
                Some(t) if t.resource.trim_end_matches('/') != "https://cosmos.azure.com" => {
                    Err(format!(
                        "Authentication failed: the access token's audience '{}' is not valid for this account; request a token for https://cosmos.azure.com/.default",
                        t.resource
                    ))
                }
                Some(t) if t.expires_on <= crate::tokens::now_epoch() => {
                    Err("Authentication failed: the access token has expired".into())
                }
                Some(_) => Ok(()),
            }
        })
    }

    /// The Cosmos DB keys listKeys returns.
    pub fn keys(&self) -> CosmosKeys {
        lock(&self.shared.arm).keys.clone()
    }

    /// Replaces the Cosmos DB keys (key rotation).
    pub fn set_keys(&self, keys: CosmosKeys) {
        lock(&self.shared.arm).keys = keys;
    }

    /// When true, listKeys answers 403 AuthorizationFailed.
    pub fn set_arm_forbidden(&self, yes: bool) {
        lock(&self.shared.arm).forbidden = yes;
    }

    /// Only these client ids may list the keys (their role assignments); `None`: any.
    pub fn set_arm_authorized(&self, client_ids: Option<&[&str]>) {
        lock(&self.shared.arm).authorized =
            client_ids.map(|ids| ids.iter().map(|s| (*s).to_owned()).collect());
    }

    /// The next `n` ARM requests answer 429 with `Retry-After: 1`.
    pub fn set_arm_throttle(&self, n: usize) {
        self.queue_arm_faults(&vec![
            ArmFault::Throttled {
                retry_after_secs: 1
            };
            n
        ]);
    }

    /// The next ARM requests answer these faults, in order (after those already queued).
    pub fn queue_arm_faults(&self, faults: &[ArmFault]) {
        lock(&self.shared.arm).queued.extend(faults.iter().copied());
    }

    /// Every ARM request answers `fault` until this is called with `None` (queued faults
    /// come first).
    pub fn set_arm_failing(&self, fault: Option<ArmFault>) {
        lock(&self.shared.arm).failing = fault;
    }

    /// The ARM (listKeys / readonlykeys) requests received, oldest first.
    pub fn arm_requests(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.uri.contains("/providers/Microsoft.DocumentDB/"))
            .collect()
    }

    /// Makes the token endpoints (IMDS, App Service, Entra v2) hang from the next request on
    /// ([`Hang::No`] lifts it; requests already hung stay hung). See [`faults`].
    pub fn set_identity_hang(&self, how: Hang) {
        *lock(&self.shared.hang) = how;
    }

    /// Requests that hung so far (answered never, or with a body that never ends).
    pub fn hung_requests(&self) -> usize {
        self.shared.hung.load(Ordering::SeqCst)
    }
}

impl Drop for FakeAzure {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A JSON string value (serialized).
pub(crate) fn s(v: &str) -> String {
    serde_json::Value::from(v).to_string()
}

/// A JSON object with keys in the given order (Azure's order), values already serialized.
pub(crate) fn obj(pairs: &[(&str, String)]) -> String {
    let fields: Vec<String> = pairs.iter().map(|(k, v)| format!("{}:{v}", s(k))).collect();
    format!("{{{}}}", fields.join(","))
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Query string pairs, decoded.
pub(crate) fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The resource of a `…/.default` scope.
pub(crate) fn resource_of_scope(scope: &str) -> String {
    scope.strip_suffix("/.default").unwrap_or(scope).to_owned()
}

/// UTC now as Entra's `timestamp` (`2020-04-07 16:28:05Z`).
pub(crate) fn entra_timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second]Z"
        ))
        .unwrap_or_default()
}
