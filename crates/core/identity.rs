//! Glue for listeners that check who connects: per-pod identity (`pod_identity`) and
//! Unix-socket uid allowlists (`allow_uids`). [`gate`] wraps a listener's service in a
//! [`Gated`] whose admission is a [`PodIdentities`] (one service per pod identity, cloned from
//! the listener's with the identity's user and credential) or a [`UidAllowlist`].

use std::{sync::Arc, time::SystemTime};

use anyhow::Context;
use dbproxy_credentials::{
    CacheStatus, CosmosKeySource, CredentialError, CredentialOptions, DEFAULT_KEY_REFRESH,
    PasswordSource, RefreshPolicy, Secret,
};
use dbproxy_kubernetes::{
    CASSANDRA_USER_ANNOTATION, IdentityOptions, KubeClient, KubeConfig, MakeService,
    POSTGRES_USER_ANNOTATION, PodIdentities, PodTable, Policy, WrapCredential,
};
use dbproxy_runtime::{
    CassandraService, Gated, IdentityMetrics, PostgresService, UidAllowlist, gate::Refuse,
};

use crate::config::{CassandraPassword, Config, ListenerConfig, Protocol};

/// The Kubernetes side shared by a process's pod-identity listeners: one pod table.
pub struct Cluster {
    /// The node's pods.
    pub table: Arc<PodTable>,
    /// The API client.
    pub client: Arc<KubeClient>,
}

impl Cluster {
    /// Starts the pod table's list + watch if any listener has pod identity.
    pub fn start(config: &Config) -> anyhow::Result<Option<Cluster>> {
        if !config.listeners.iter().any(|l| l.pod_identity.is_some()) {
            return Ok(None);
        }
        let k = &config.kubernetes;
        let node = k.node_name.clone().context(
            "pod identity needs this node's name: set --node-name (ENTRA_DB_PROXY_NODE_NAME) from the downward API's spec.nodeName",
        )?;
        let kube = KubeConfig::in_cluster(
            &config.env,
            k.api_server.clone(),
            k.token_file.clone(),
            k.ca_file.clone(),
        )?;
        let client = Arc::new(KubeClient::new(kube, config.credential_timeout)?);
        let table = PodTable::new(&node);
        table.spawn(client.clone());
        tracing::info!(node = %node, api_server = %client.api_server(), "pod identity: watching this node's pods");
        Ok(Some(Cluster { table, client }))
    }
}

/// The credential of a pod-identity listener itself: it never logs in (each identity has its
/// own); its status is the pod table's, so `/startup` waits for the first pod list.
pub struct PodTableStatus(pub Arc<PodTable>);

#[async_trait::async_trait]
impl PasswordSource for PodTableStatus {
    fn describe(&self) -> String {
        format!(
            "pod identity (node {}): each pod's service account",
            self.0.node()
        )
    }
    async fn password(&self) -> Result<Secret, CredentialError> {
        Err(CredentialError::assertion_unavailable(
            self.describe(),
            "a pod-identity listener logs in only as its pods' identities",
        ))
    }
    async fn after_rejection(&self, _: &Secret) -> Result<Option<Secret>, CredentialError> {
        Ok(None)
    }
    fn status(&self) -> CacheStatus {
        if self.0.synced() {
            CacheStatus {
                last_success: Some(SystemTime::now()),
                ..CacheStatus::default()
            }
        } else {
            CacheStatus {
                last_error: Some("the pod list has not been read from the Kubernetes API".into()),
                ..CacheStatus::default()
            }
        }
    }
}

/// What per-pod identity needs from the process.
pub struct Context_<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// The cluster.
    pub cluster: Option<&'a Cluster>,
    /// Entra options.
    pub credentials: &'a CredentialOptions,
    /// Token refresh policy.
    pub refresh: &'a RefreshPolicy,
    /// The HTTP client (listKeys).
    pub http: &'a reqwest::Client,
}

/// A service that builds per-identity copies of itself.
pub trait PerIdentity: Refuse + Sized {
    /// A copy logging in as `user` with `credential`.
    fn for_identity(&self, user: String, credential: Arc<dyn PasswordSource>) -> Self;
}

impl PerIdentity for PostgresService {
    /// The listener's service for one identity. No warm sessions: those are logged in ahead
    /// as the listener's own user (the configuration refuses the two together).
    fn for_identity(&self, user: String, credential: Arc<dyn PasswordSource>) -> Self {
        PostgresService {
            name: self.name.clone(),
            upstream: self.upstream.clone(),
            user,
            default_database: self.default_database.clone(),
            credential,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            metrics: self.metrics.clone(),
            local_tls: self.local_tls.clone(),
            warm: Default::default(),
        }
    }
}

impl PerIdentity for CassandraService {
    fn for_identity(&self, user: String, credential: Arc<dyn PasswordSource>) -> Self {
        CassandraService {
            username: user,
            credential,
            schema: Default::default(),
            ..self.clone()
        }
    }
}

/// The pod identities of listener `l`, if it has pod identity (for `check`).
pub type Identities<S> = Arc<PodIdentities<S>>;

/// A gated service, and its pod identities if it has them.
pub type GatedService<S> = (Arc<Gated<S>>, Option<Identities<S>>);

/// `service` behind the listener's identity check, or `None` when it has none.
pub fn gate<S: PerIdentity>(
    l: &ListenerConfig,
    service: Arc<S>,
    cx: &Context_<'_>,
    metrics: IdentityMetrics,
) -> anyhow::Result<Option<GatedService<S>>> {
    if !l.allow_uids.is_empty() {
        let admission = Arc::new(UidAllowlist {
            service: service.clone(),
            uids: l.allow_uids.clone(),
        });
        return Ok(Some((
            Arc::new(Gated {
                fallback: service,
                admission,
                metrics,
            }),
            None,
        )));
    }
    let Some(p) = &l.pod_identity else {
        return Ok(None);
    };
    let cluster = cx.cluster.context("pod identity without a cluster")?;
    let policy = Policy::new(&p.allow, &p.users).map_err(anyhow::Error::msg)?;
    let wrap: Option<WrapCredential> = match l.cassandra.as_ref().map(|c| &c.password) {
        None | Some(CassandraPassword::Token) => None,
        Some(CassandraPassword::CosmosKeys { list_keys_url, key }) => {
            let (url, key, http) = (list_keys_url.clone(), *key, cx.http.clone());
            Some(Arc::new(move |cache| {
                let keys = CosmosKeySource::new(
                    cache,
                    url.clone(),
                    key,
                    http.clone(),
                    DEFAULT_KEY_REFRESH,
                );
                keys.spawn_refresher();
                keys as Arc<dyn PasswordSource>
            }))
        }
        Some(CassandraPassword::File(_)) => {
            anyhow::bail!(
                "listener {}: pod_identity needs password = \"cosmos-keys\" or \"token\", not a password file",
                l.name
            )
        }
    };
    let opts = IdentityOptions {
        listener: l.name.clone(),
        user_annotation: match l.protocol {
            Protocol::Postgres => POSTGRES_USER_ANNOTATION,
            Protocol::Cassandra => CASSANDRA_USER_ANNOTATION,
        },
        policy,
        default_tenant: cx
            .config
            .kubernetes
            .tenant_id
            .clone()
            .or_else(|| cx.config.env.get("AZURE_TENANT_ID").map(str::to_owned)),
        scope: l.scope.clone(),
        credentials: cx.credentials.clone(),
        refresh: cx.refresh.clone(),
        max_identities: cx.config.kubernetes.max_identities,
        sa_refresh: std::time::Duration::from_secs(5),
    };
    let base = service.clone();
    let make: MakeService<S> =
        Arc::new(move |user, credential| Arc::new(base.for_identity(user, credential)));
    let identities = PodIdentities::new(
        opts,
        cluster.table.clone(),
        cluster.client.clone(),
        make,
        wrap,
    );
    identities.spawn_sweeper();
    Ok(Some((
        Arc::new(Gated {
            fallback: service,
            admission: identities.clone(),
            metrics,
        }),
        Some(identities),
    )))
}

/// `check` for a pod-identity listener: waits (up to the credential timeout) for the pod
/// list, then one row per pod of the node: how it would be treated.
pub async fn check<P>(
    l: &ListenerConfig,
    prepared: &P,
    cluster: &Cluster,
    cx: &Context_<'_>,
    config: &Config,
) -> Result<Vec<[String; 5]>, String>
where
    P: crate::app::HasServices,
{
    let deadline = tokio::time::Instant::now() + config.credential_timeout;
    while !cluster.table.synced() {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the pods of node {} could not be listed from the Kubernetes API within {} s (RBAC: pods list/watch?)",
                cluster.table.node(),
                config.credential_timeout.as_secs()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let seen = prepared.seen(l, cx).await.map_err(|e| format!("{e:#}"))?;
    Ok(seen
        .into_iter()
        .map(|s| {
            [
                l.name.clone(),
                s.pod,
                s.service_account,
                s.ips,
                match s.verdict {
                    Ok(v) => v,
                    Err(v) => v,
                },
            ]
        })
        .collect())
}
