//! [`PodIdentities`]: the admission of per-pod identity, and each identity's credential.
//!
//! For a client at a source IP: the pod ([`crate::PodTable`]), the [`crate::Policy`], the
//! service account's annotations (read through the API, cached for
//! [`IdentityOptions::sa_refresh`], so a changed annotation applies within that time without a
//! restart; if the API fails, the last answer is used for up to 5 minutes), then a service for
//! the key (namespace, service account, client id, tenant, user). A key's service is built
//! once by the listener's [`MakeService`] with its own [`TokenCache`] (refresh-ahead,
//! single-flight, backoff: the shared refresher) over [`TokenRequestAssertion`]. At most
//! [`IdentityOptions::max_identities`] are kept (the least recently used goes first); every
//! 15 s, those whose service account has no running pod left on the node are dropped, which
//! stops their refreshers. Sessions already open keep their service until they end.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dbproxy_credentials::{
    AssertionSource, CredentialError, CredentialOptions, PasswordSource, RefreshPolicy, Secret,
    TokenCache,
};
use dbproxy_runtime::{Admission, Admitted, NotAdmitted, Peer};

use crate::{
    client::{KubeClient, ServiceAccount},
    pods::{Lookup, PodTable},
    policy::Policy,
};

/// The service-account annotation naming the Entra identity (AKS workload identity's).
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// The service-account annotation naming its tenant (else the proxy's default tenant).
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// The service-account annotation naming the PostgreSQL role to log in as.
pub const POSTGRES_USER_ANNOTATION: &str = "entra-db-proxy.io/postgres-user";
/// The service-account annotation naming the CQL user to log in as.
pub const CASSANDRA_USER_ANNOTATION: &str = "entra-db-proxy.io/cassandra-user";
/// The audience Entra accepts for federated assertions.
pub const TOKEN_EXCHANGE_AUDIENCE: &str = "api://AzureADTokenExchange";
/// Lifetime asked for each TokenRequest (Kubernetes' minimum): it is used once, at once.
pub const TOKEN_REQUEST_SECONDS: u64 = 600;

const SA_STALE_LIMIT: Duration = Duration::from_secs(300);

/// Builds a listener's service for one identity: its database user and credential.
pub type MakeService<S> = Arc<dyn Fn(String, Arc<dyn PasswordSource>) -> Arc<S> + Send + Sync>;

/// Turns an identity's token cache into the listener's password source (Cosmos DB: the
/// account key from listKeys with that token); `None`: the token is the password.
pub type WrapCredential = Arc<dyn Fn(Arc<TokenCache>) -> Arc<dyn PasswordSource> + Send + Sync>;

/// Settings of one listener's per-pod identity.
#[derive(Clone)]
pub struct IdentityOptions {
    /// The listener's name (messages).
    pub listener: String,
    /// Which annotation names the database user.
    pub user_annotation: &'static str,
    /// Who may come in.
    pub policy: Policy,
    /// Tenant for service accounts without [`TENANT_ID_ANNOTATION`].
    pub default_tenant: Option<String>,
    /// The scope of the Entra tokens (the database's, or ARM's for listKeys).
    pub scope: String,
    /// HTTP client and authority host for Entra.
    pub credentials: CredentialOptions,
    /// Refresh policy of each token cache.
    pub refresh: RefreshPolicy,
    /// At most this many identities (token caches) at once.
    pub max_identities: usize,
    /// How long a service account's annotations are trusted before they are read again.
    pub sa_refresh: Duration,
}

/// What `check` shows of one pod.
#[derive(Debug, Clone)]
pub struct SeenIdentity {
    /// `namespace/name`.
    pub pod: String,
    /// `namespace/serviceaccount`.
    pub service_account: String,
    /// Its IPs.
    pub ips: String,
    /// `user X, client id Y` or why it would be refused.
    pub verdict: Result<String, String>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    service_account: String,
    client_id: String,
    tenant: String,
    user: String,
}

/// A service account's answer and when it came.
type Fetched = (Instant, Arc<ServiceAccount>);

struct Entry<S> {
    service: Arc<S>,
    last_used: Instant,
}

/// Per-pod identity for one listener (see the module docs).
pub struct PodIdentities<S> {
    opts: IdentityOptions,
    table: Arc<PodTable>,
    client: Arc<KubeClient>,
    make: MakeService<S>,
    wrap: Option<WrapCredential>,
    accounts: Mutex<HashMap<(String, String), Fetched>>,
    services: Mutex<HashMap<Key, Entry<S>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn refuse(reason: &'static str, identity: Option<String>, message: String) -> NotAdmitted {
    NotAdmitted {
        message: format!("entra-db-proxy: {message}"),
        identity,
        reason,
    }
}

impl<S: Send + Sync + 'static> PodIdentities<S> {
    /// Per-pod identity over `table` and `client`; `make` builds a service per identity.
    pub fn new(
        opts: IdentityOptions,
        table: Arc<PodTable>,
        client: Arc<KubeClient>,
        make: MakeService<S>,
        wrap: Option<WrapCredential>,
    ) -> Arc<Self> {
        Arc::new(PodIdentities {
            opts,
            table,
            client,
            make,
            wrap,
            accounts: Mutex::new(HashMap::new()),
            services: Mutex::new(HashMap::new()),
        })
    }

    /// Starts the task that drops identities whose pods left the node; it ends with `self`.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let Some(me) = weak.upgrade() else { return };
                me.sweep();
            }
        })
    }

    /// Drops identities whose service account has no running pod on the node (only while
    /// the pod table is current), and service-account answers past their stale limit.
    pub fn sweep(&self) {
        if self.table.synced() {
            lock(&self.services).retain(|k, _| {
                let keep = self.table.pod_of(&k.namespace, &k.service_account, None).is_some();
                if !keep {
                    tracing::info!(listener = %self.opts.listener, service_account = %format!("{}/{}", k.namespace, k.service_account), "no pod of this service account left on the node; dropping its credential");
                }
                keep
            });
        }
        lock(&self.accounts).retain(|_, (at, _)| at.elapsed() < SA_STALE_LIMIT);
    }

    /// How many identities are held.
    pub fn len(&self) -> usize {
        lock(&self.services).len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn account(&self, namespace: &str, name: &str) -> Result<Arc<ServiceAccount>, String> {
        let key = (namespace.to_owned(), name.to_owned());
        let cached = lock(&self.accounts).get(&key).cloned();
        if let Some((at, sa)) = &cached
            && at.elapsed() < self.opts.sa_refresh
        {
            return Ok(sa.clone());
        }
        match self.client.service_account(namespace, name).await {
            Ok(sa) => {
                let sa = Arc::new(sa);
                lock(&self.accounts).insert(key, (Instant::now(), sa.clone()));
                Ok(sa)
            }
            Err(e) => match cached {
                Some((at, sa)) if at.elapsed() < SA_STALE_LIMIT => {
                    tracing::info!(error = %e, "cannot re-read the service account; using its last answer");
                    Ok(sa)
                }
                _ => Err(e.to_string()),
            },
        }
    }

    /// The key for a pod's identity, or why it is refused.
    async fn key_for(&self, namespace: &str, sa_name: &str) -> Result<Key, NotAdmitted> {
        let who = format!("{namespace}/{sa_name}");
        let sa = self.account(namespace, sa_name).await.map_err(|e| {
            refuse(
                "api_unavailable",
                Some(who.clone()),
                format!("cannot read service account {who}: {e}; the proxy needs get on serviceaccounts in namespace {namespace}"),
            )
        })?;
        let client_id = sa.annotations.get(CLIENT_ID_ANNOTATION).filter(|v| !v.is_empty()).ok_or_else(|| {
            refuse(
                "no_client_id",
                Some(who.clone()),
                format!("service account {who} has no {CLIENT_ID_ANNOTATION} annotation: annotate it with the client id of the Entra identity that has a federated credential for system:serviceaccount:{namespace}:{sa_name}"),
            )
        })?;
        let tenant = sa
            .annotations
            .get(TENANT_ID_ANNOTATION)
            .filter(|v| !v.is_empty())
            .or(self.opts.default_tenant.as_ref())
            .ok_or_else(|| {
                refuse(
                    "no_tenant",
                    Some(who.clone()),
                    format!("service account {who} has no {TENANT_ID_ANNOTATION} annotation and the proxy has no default tenant (--tenant-id or AZURE_TENANT_ID)"),
                )
            })?;
        let user = self
            .opts
            .policy
            .user(namespace, sa_name)
            .or(sa.annotations.get(self.opts.user_annotation).map(String::as_str))
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                refuse(
                    "no_user",
                    Some(who.clone()),
                    format!(
                        "service account {who} names no database user: annotate it with {}=<user>, or map \"{who}\" in the listener's pod_identity users",
                        self.opts.user_annotation
                    ),
                )
            })?;
        Ok(Key {
            namespace: namespace.to_owned(),
            service_account: sa_name.to_owned(),
            client_id: client_id.clone(),
            tenant: tenant.clone(),
            user: user.to_owned(),
        })
    }

    fn service(&self, key: Key) -> Result<Arc<S>, NotAdmitted> {
        let mut services = lock(&self.services);
        if let Some(e) = services.get_mut(&key) {
            e.last_used = Instant::now();
            return Ok(e.service.clone());
        }
        let who = format!("{}/{}", key.namespace, key.service_account);
        let assertion = Arc::new(TokenRequestAssertion {
            client: self.client.clone(),
            table: self.table.clone(),
            namespace: key.namespace.clone(),
            service_account: key.service_account.clone(),
        });
        let source = dbproxy_credentials::federated(
            &key.tenant,
            &key.client_id,
            assertion,
            &self.opts.credentials,
        )
        .map_err(|e| {
            refuse(
                "no_client_id",
                Some(who.clone()),
                format!("service account {who}: {e}"),
            )
        })?;
        let cache = TokenCache::new(source, self.opts.scope.clone(), self.opts.refresh.clone());
        cache.spawn_refresher();
        let credential: Arc<dyn PasswordSource> = match &self.wrap {
            Some(wrap) => wrap(cache),
            None => cache,
        };
        let service = (self.make)(key.user.clone(), credential);
        while services.len() >= self.opts.max_identities.max(1) {
            let Some(oldest) = services
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            services.remove(&oldest);
        }
        tracing::info!(listener = %self.opts.listener, service_account = %who, user = %key.user, client_id = %key.client_id, "new pod identity");
        services.insert(
            key,
            Entry {
                service: service.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(service)
    }

    /// What `check` shows: every pod of the node and how it would be treated.
    pub async fn seen(&self) -> Vec<SeenIdentity> {
        let mut out = Vec::new();
        for p in self.table.pods() {
            let verdict = if p.phase != "Running" {
                Err(format!("not running ({})", p.phase))
            } else if p.host_network {
                Err("refused: host network".into())
            } else if !self.opts.policy.allows(&p.namespace, &p.service_account) {
                Err("refused: not in pod_identity allow".into())
            } else {
                match self.key_for(&p.namespace, &p.service_account).await {
                    Ok(k) => Ok(format!("user {}, client id {}", k.user, k.client_id)),
                    Err(n) => Err(format!("refused: {}", n.reason)),
                }
            };
            out.push(SeenIdentity {
                pod: p.pod(),
                service_account: p.service_account_ref(),
                ips: p
                    .ips
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                verdict,
            });
        }
        out
    }

    /// The pod table.
    pub fn table(&self) -> &Arc<PodTable> {
        &self.table
    }
}

#[async_trait::async_trait]
impl<S: Send + Sync + 'static> Admission<S> for PodIdentities<S> {
    async fn admit(&self, peer: &Peer) -> Result<Admitted<S>, NotAdmitted> {
        let Peer::Tcp(addr) = peer else {
            return Err(refuse(
                "unknown_pod",
                None,
                format!(
                    "pod identity identifies TCP clients by source IP; {peer} cannot be identified (use allow_uids on a Unix-socket listener)"
                ),
            ));
        };
        let ip = addr.ip().to_canonical();
        let node = self.table.node();
        let pod = match self.table.lookup(ip) {
            Lookup::Pod(p) => p,
            Lookup::NotSynced(why) => {
                return Err(refuse(
                    "api_unavailable",
                    None,
                    format!(
                        "cannot identify the client at {ip}: the list of pods on node {node} is not current ({why}); everyone is refused until the Kubernetes API answers again"
                    ),
                ));
            }
            Lookup::HostNetwork => {
                return Err(refuse(
                    "host_network",
                    None,
                    format!(
                        "the connection comes from {ip}, the address of host-network pods on node {node}: it is shared, so it identifies no pod; run the client without hostNetwork (or use a Unix-socket listener with allow_uids)"
                    ),
                ));
            }
            Lookup::Unknown => {
                return Err(refuse(
                    "unknown_pod",
                    None,
                    format!(
                        "no running pod on node {node} has the address {ip}: pod identity admits only pods of this node (a pod on another node must use its own node's proxy)"
                    ),
                ));
            }
        };
        let who = pod.service_account_ref();
        if !self
            .opts
            .policy
            .allows(&pod.namespace, &pod.service_account)
        {
            return Err(refuse(
                "policy",
                Some(who.clone()),
                format!(
                    "pod {} (service account {who}) may not use listener \"{}\": its pod_identity allow list is [{}]; add \"{who}\" or \"{}/*\" to it",
                    pod.pod(),
                    self.opts.listener,
                    self.opts.policy.describe(),
                    pod.namespace
                ),
            ));
        }
        let key = self.key_for(&pod.namespace, &pod.service_account).await?;
        let service = self.service(key)?;
        Ok(Admitted {
            service,
            client: pod.pod(),
            identity: who,
        })
    }
}

/// A federated assertion from the Kubernetes TokenRequest API: a token of the service
/// account, audience [`TOKEN_EXCHANGE_AUDIENCE`], valid [`TOKEN_REQUEST_SECONDS`], bound to a
/// running pod of that service account on this node.
pub struct TokenRequestAssertion {
    client: Arc<KubeClient>,
    table: Arc<PodTable>,
    namespace: String,
    service_account: String,
}

#[async_trait::async_trait]
impl AssertionSource for TokenRequestAssertion {
    fn describe(&self) -> String {
        format!(
            "TokenRequest for {}/{}",
            self.namespace, self.service_account
        )
    }

    async fn assertion(&self) -> Result<Secret, CredentialError> {
        let pod = self
            .table
            .pod_of(&self.namespace, &self.service_account, None)
            .ok_or_else(|| {
                CredentialError::assertion_unavailable(
                    self.describe(),
                    "no running pod of this service account on the node (or the pod list is not current)",
                )
            })?;
        self.client
            .token_request(
                &self.namespace,
                &self.service_account,
                TOKEN_EXCHANGE_AUDIENCE,
                TOKEN_REQUEST_SECONDS,
                &pod.name,
                &pod.uid,
            )
            .await
            .map_err(|e| CredentialError::assertion_unavailable(self.describe(), e.to_string()))
    }
}
