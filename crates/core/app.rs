//! Start-up, shutdown, and `check`: turns a [`Config`] into running listeners.
//!
//! Start-up ([`Proxy::start`]), in order:
//! 1. Outbound trust (OS roots, SSL_CERT_FILE/SSL_CERT_DIR, CA files) and the HTTP client for
//!    Entra ID are built once; `credential_timeout` bounds each of its requests and each token
//!    acquisition.
//! 2. Each listener gets a credential and a token cache whose refresher starts at once, so the
//!    first token is usually there before the first client.
//! 3. Listeners are bound one after the other (TCP or Unix sockets); an address in use stops
//!    start-up with an error before the proxy reports ready.
//!    Sessions run on the session threads (`session_threads`, one current-thread runtime
//!    each; see `dbproxy_runtime::workers`), or on this runtime when that is 0.
//!    The admin server (if any) starts last; `/startup` turns 200 once credentials are in.
//!
//! Shutdown, when the future given to [`Proxy::run_until`] resolves (the binary's: the first
//! SIGTERM/SIGINT; only the binary listens to signals):
//! 1. `/readiness` fails at once; listeners keep accepting for `min_shutdown_delay` so load
//!    balancers notice.
//! 2. Listeners stop accepting; open sessions get up to `max_shutdown_delay` to finish.
//! 3. Return (the binary exits 0); the admin server stops; the session threads stop, closing
//!    sessions past the delay; dropping the runtime closes whatever is left (credential
//!    refreshers). An `abort` future
//!    (the binary's: a second signal) skips the waiting.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
};

use anyhow::Context;
use dbproxy_cassandra::{PreparedStatements, SupportedOptions, Topology};
use dbproxy_credentials::{
    CosmosKeySource, CredentialOptions, DEFAULT_KEY_REFRESH, PasswordFile, PasswordSource,
    RefreshPolicy, TokenCache,
};
use dbproxy_runtime::{
    AdminServer, CassandraService, Health, ListenAddr, Listener, LocalTls, LocalTlsMode, Metrics,
    PostgresService, Shutdown, Upstream, Workers, listener::Service, metrics::StatusFn,
};
use dbproxy_tls::Trust;
use rustls_pki_types::ServerName;

use crate::identity::{self, Cluster, PodTableStatus};

use crate::config::{
    CassandraPassword, ClientTlsMode, Config, EnvSnapshot, ListenerConfig, Protocol,
};

/// A listener's service before it is bound.
enum Prepared {
    Postgres(Arc<PostgresService>),
    Cassandra(Arc<CassandraService>),
}

impl Prepared {
    fn password(&self) -> Arc<dyn PasswordSource> {
        match self {
            Prepared::Postgres(s) => s.credential.clone(),
            Prepared::Cassandra(s) => s.credential.clone(),
        }
    }

    fn upstream(&self) -> &Upstream {
        match self {
            Prepared::Postgres(s) => &s.upstream.0,
            Prepared::Cassandra(s) => &s.upstream,
        }
    }

    async fn check(&self) -> Result<String, String> {
        match self {
            Prepared::Postgres(s) => s.check().await,
            Prepared::Cassandra(s) => s.check().await,
        }
    }
}

/// What `check` needs of a prepared listener with pod identity.
pub(crate) trait HasServices {
    /// The pods of the node as the listener would treat them.
    fn seen(
        &self,
        l: &ListenerConfig,
        cx: &identity::Context_<'_>,
    ) -> impl std::future::Future<Output = anyhow::Result<Vec<dbproxy_kubernetes::SeenIdentity>>>;
}

impl HasServices for Prepared {
    async fn seen(
        &self,
        l: &ListenerConfig,
        cx: &identity::Context_<'_>,
    ) -> anyhow::Result<Vec<dbproxy_kubernetes::SeenIdentity>> {
        let ids = dbproxy_runtime::IdentityMetrics::unregistered(&l.name);
        Ok(match self {
            Prepared::Postgres(s) => match identity::gate(l, s.clone(), cx, ids)? {
                Some((_, Some(p))) => p.seen().await,
                _ => Vec::new(),
            },
            Prepared::Cassandra(s) => match identity::gate(l, s.clone(), cx, ids)? {
                Some((_, Some(p))) => p.seen().await,
                _ => Vec::new(),
            },
        })
    }
}

/// Builds credentials and services for every listener; credential refreshers start at once,
/// so the first token (or key) is usually there before the first client.
fn prepare(
    config: &Config,
    env: EnvSnapshot,
    metrics: &Metrics,
    cluster: Option<&Cluster>,
) -> anyhow::Result<(Vec<Prepared>, Outbound)> {
    let http_trust = Trust::new(config.ca_file.as_deref()).context("outbound TLS trust")?;
    let http = http_trust
        .http_client_with_timeout(config.credential_timeout)
        .context("HTTP client for Entra ID")?;
    let policy = RefreshPolicy {
        timeout: config.credential_timeout,
        ..RefreshPolicy::default()
    };
    let cred_options = CredentialOptions {
        http: http.clone(),
        authority_host: config.authority_host.clone(),
        imds_endpoint: config.imds_endpoint.clone(),
        env,
        ..CredentialOptions::default()
    };
    let mut prepared = Vec::new();
    for l in &config.listeners {
        let token = || -> anyhow::Result<Arc<TokenCache>> {
            let source = dbproxy_credentials::build(&l.credential, &cred_options)
                .with_context(|| format!("listener {}: credential", l.name))?;
            let cache = TokenCache::new(source, l.scope.clone(), policy.clone());
            cache.spawn_refresher();
            Ok(cache)
        };
        let password: Arc<dyn PasswordSource> = match l.cassandra.as_ref().map(|c| &c.password) {
            // Each pod identity has its own credential (crate::identity).
            _ if l.pod_identity.is_some() => match cluster {
                Some(c) => Arc::new(PodTableStatus(c.table.clone())),
                None => anyhow::bail!("listener {}: pod identity without a cluster", l.name),
            },
            None | Some(CassandraPassword::Token) => token()?,
            Some(CassandraPassword::CosmosKeys { list_keys_url, key }) => {
                let keys = CosmosKeySource::new(
                    token()?,
                    list_keys_url.clone(),
                    *key,
                    http.clone(),
                    DEFAULT_KEY_REFRESH,
                );
                keys.spawn_refresher();
                keys
            }
            Some(CassandraPassword::File(path)) => Arc::new(PasswordFile::new(path.clone())),
        };
        // The listener's CA file adds to the global one (and the OS roots).
        let trust = match &l.tls_ca_file {
            None => http_trust.clone(),
            Some(ca) => {
                Trust::with_ca_files(config.ca_file.as_deref().into_iter().chain([ca.as_path()]))
                    .with_context(|| format!("listener {}: tls.ca_file", l.name))?
            }
        };
        let upstream = upstream(l, config, &trust)?;
        let local_tls = match &l.client_tls {
            Some(t) if t.mode == ClientTlsMode::Disable => None,
            Some(t) => Some(
                LocalTls::new(
                    &t.cert_file,
                    &t.key_file,
                    match t.mode {
                        ClientTlsMode::Require => LocalTlsMode::Require,
                        _ => LocalTlsMode::Offer,
                    },
                )
                .map_err(|e| anyhow::anyhow!("listener {}: client TLS: {e}", l.name))?,
            ),
            None if l.client_tls_self_signed => Some(
                LocalTls::self_signed()
                    .map_err(|e| anyhow::anyhow!("listener {}: client TLS: {e}", l.name))?,
            ),
            None => None,
        };
        let listener_metrics = metrics.listener(&l.name, l.protocol.as_str());
        prepared.push(match (l.protocol, &l.cassandra) {
            (Protocol::Postgres, _) => Prepared::Postgres(Arc::new(PostgresService {
                name: l.name.clone(),
                upstream: dbproxy_runtime::PostgresUpstream(upstream),
                user: l.user.clone(),
                default_database: l.database.clone(),
                credential: password,
                handshake_timeout: config.handshake_timeout,
                idle_timeout: config.idle_timeout,
                metrics: listener_metrics,
                local_tls,
                warm: dbproxy_runtime::WarmPool::new(dbproxy_runtime::WarmSettings {
                    sessions: l.warm_sessions,
                    max_age: l.warm_session_max_age,
                }),
            })),
            (Protocol::Cassandra, Some(c)) => Prepared::Cassandra(Arc::new(CassandraService {
                name: l.name.clone(),
                upstream,
                username: l.user.clone(),
                credential: password,
                handshake_timeout: config.handshake_timeout,
                idle_timeout: config.idle_timeout,
                metrics: listener_metrics,
                max_version: c.max_protocol_version,
                supported: SupportedOptions {
                    compression: c.compression.clone(),
                    ..SupportedOptions::default()
                },
                topology: Topology {
                    // What drivers see as the node's address (a Unix listener shows loopback).
                    listen: match &l.listen {
                        ListenAddr::Tcp(a) => *a,
                        ListenAddr::Unix { .. } => {
                            std::net::SocketAddr::from(([127, 0, 0, 1], 9042))
                        }
                    },
                    // Stable per listener: drivers key their host maps by it.
                    host_id: uuid::Uuid::new_v5(
                        &uuid::Uuid::NAMESPACE_OID,
                        format!("entra-db-proxy/{}/{}", l.name, l.listen).as_bytes(),
                    ),
                    data_center: c.data_center.clone(),
                    rack: None,
                },
                prepared: PreparedStatements::new(),
                local_tls,
                schema: Default::default(),
                max_frame_size: c.max_frame_size,
                cosmos: c.cosmos.then(|| dbproxy_runtime::cassandra::Cosmos {
                    retry: c.cosmos_retry,
                    metrics: metrics.cosmos(&l.name),
                }),
            })),
            (Protocol::Cassandra, None) => {
                anyhow::bail!("listener {}: CQL settings missing", l.name)
            }
        });
    }
    let outbound = Outbound {
        http,
        credentials: cred_options,
        refresh: policy,
    };
    Ok((prepared, outbound))
}

/// What credentials built later (per pod identity) share with the listeners'.
struct Outbound {
    http: reqwest::Client,
    credentials: CredentialOptions,
    refresh: RefreshPolicy,
}

impl Outbound {
    fn context<'a>(
        &'a self,
        config: &'a Config,
        cluster: Option<&'a Cluster>,
    ) -> identity::Context_<'a> {
        identity::Context_ {
            config,
            cluster,
            credentials: &self.credentials,
            refresh: &self.refresh,
            http: &self.http,
        }
    }
}

fn upstream(l: &ListenerConfig, config: &Config, trust: &Trust) -> anyhow::Result<Upstream> {
    let server_name = ServerName::try_from(l.tls_server_name.clone()).with_context(|| {
        format!(
            "listener {}: {:?} is not a valid TLS server name",
            l.name, l.tls_server_name
        )
    })?;
    Ok(Upstream {
        host: l.upstream_host.clone(),
        port: l.upstream_port,
        server_name,
        tls: trust.client_config()?,
        connect_timeout: config.connect_timeout,
    })
}

/// A proxy whose listeners are bound and accepting (and whose admin server, if any, is
/// serving): what [`Proxy::start`] returns, before [`Proxy::run_until`] waits for shutdown.
pub struct Proxy {
    config: Config,
    health: Arc<Health>,
    shutdown: Shutdown,
    listen_addrs: Vec<(String, ListenAddr)>,
    admin: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// The session threads (None: sessions on this runtime); dropped last, which closes
    /// sessions still open.
    workers: Option<Arc<Workers>>,
}

impl Proxy {
    /// Builds credentials and services, binds every listener and the admin server, and
    /// reports ready. An address in use, or any other start-up error, is returned before
    /// anything is ready.
    pub async fn start(config: Config) -> anyhow::Result<Proxy> {
        start(config).await
    }

    /// Each listener's name and bound address (port 0 resolved), in configuration order.
    pub fn listen_addrs(&self) -> &[(String, ListenAddr)] {
        &self.listen_addrs
    }

    /// The admin server's bound address, if it was configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(a, _)| *a)
    }

    /// Serves until `stop` resolves, then shuts down gracefully (see the module docs) and
    /// returns.
    pub async fn run_until(self, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.run_until_or_abort(stop, std::future::pending()).await
    }

    /// Like [`Proxy::run_until`]; `abort` resolving during the shutdown delays skips the rest
    /// of the waiting (the binary passes a second signal).
    pub async fn run_until_or_abort(
        self,
        stop: impl Future<Output = ()>,
        abort: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        // Whatever way this returns, the admin server stops with it.
        let _admin = self.admin.map(|(_, task)| AbortOnDrop(task));
        let _workers = self.workers;
        shut_down(self.config, self.health, self.shutdown, stop, abort).await
    }
}

/// Runs the proxy until `stop` resolves, then shuts down gracefully: readiness fails at once,
/// listeners keep accepting for `min_shutdown_delay`, then stop, and open sessions get up to
/// `max_shutdown_delay` to finish. `Proxy::start(config)` then `run_until(stop)`.
pub async fn run(config: Config, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    Proxy::start(config).await?.run_until(stop).await
}

/// [`run`] with [`Proxy::run_until_or_abort`]'s `abort`.
pub async fn run_with_abort(
    config: Config,
    stop: impl Future<Output = ()>,
    abort: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Proxy::start(config)
        .await?
        .run_until_or_abort(stop, abort)
        .await
}

async fn start(config: Config) -> anyhow::Result<Proxy> {
    dbproxy_tls::install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let cluster = Cluster::start(&config)?;
    let (prepared, outbound) = prepare(&config, config.env.clone(), &metrics, cluster.as_ref())?;
    let cx = outbound.context(&config, cluster.as_ref());

    let shutdown = Shutdown::default();
    let workers = match config.session_threads {
        0 => None,
        n => Some(Workers::start(n).context("cannot start the session threads")?),
    };
    let mut listen_addrs = Vec::new();
    for (p, l) in prepared.iter().zip(&config.listeners) {
        let status: StatusFn = {
            let password = p.password();
            Arc::new(move || password.status())
        };
        metrics.credential(&l.name, status.clone());
        health.add_credential(&l.name, status);
        let ids = metrics.identities(&l.name);
        let gated = l.pod_identity.is_some() || !l.allow_uids.is_empty();
        let addr = match p {
            Prepared::Postgres(s) => match identity::gate(l, s.clone(), &cx, ids)? {
                Some((g, _)) => bind(l, g, s.metrics.clone(), &health, &shutdown, &workers).await?,
                None => {
                    let addr = bind(
                        l,
                        s.clone(),
                        s.metrics.clone(),
                        &health,
                        &shutdown,
                        &workers,
                    )
                    .await?;
                    s.spawn_warm(shutdown.stop_accepting.clone());
                    addr
                }
            },
            Prepared::Cassandra(s) => match identity::gate(l, s.clone(), &cx, ids)? {
                Some((g, _)) => bind(l, g, s.metrics.clone(), &health, &shutdown, &workers).await?,
                None => {
                    bind(
                        l,
                        s.clone(),
                        s.metrics.clone(),
                        &health,
                        &shutdown,
                        &workers,
                    )
                    .await?
                }
            },
        };
        tracing::info!(
            listener = %l.name,
            protocol = l.protocol.as_str(),
            addr = %addr,
            upstream = %p.upstream(),
            user = %l.user,
            credential = %p.password().describe(),
            max_connections = l.max_connections,
            warm_sessions = l.warm_sessions,
            "listening"
        );
        if !gated && matches!(addr, ListenAddr::Tcp(a) if !a.ip().is_loopback()) {
            tracing::warn!(listener = %l.name, addr = %addr, "listening beyond loopback: anyone who can reach this address uses the database as {}", l.user);
        }
        listen_addrs.push((l.name.clone(), addr));
    }
    health.listening.store(true, Ordering::SeqCst);
    let mut admin_task = None;
    if let Some(addr) = config.admin_listen {
        let admin = AdminServer::bind(addr, health.clone(), metrics.clone())
            .await
            .with_context(|| format!("admin server: cannot listen on {addr}"))?;
        let local = admin.local_addr()?;
        tracing::info!(addr = %local, "admin server listening (/startup /liveness /readiness /metrics)");
        admin_task = Some((local, tokio::spawn(admin.run())));
    }
    tracing::info!(
        listeners = config.listeners.len(),
        session_threads = workers.as_ref().map_or(0, |w| w.threads()),
        "entra-db-proxy ready"
    );
    Ok(Proxy {
        config,
        health,
        shutdown,
        listen_addrs,
        admin: admin_task,
        workers,
    })
}

/// The shutdown sequence, from `stop` on.
async fn shut_down(
    config: Config,
    health: Arc<Health>,
    shutdown: Shutdown,
    stop: impl Future<Output = ()>,
    abort: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(abort);
    stop.await;
    health.shutting_down.store(true, Ordering::SeqCst);
    tracing::info!(
        min_shutdown_delay = %humantime::format_duration(config.min_shutdown_delay),
        max_shutdown_delay = %humantime::format_duration(config.max_shutdown_delay),
        "shutting down: readiness now fails"
    );
    let mut interrupted = false;
    if !config.min_shutdown_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(config.min_shutdown_delay) => {}
            _ = &mut abort => { tracing::warn!("shutdown aborted; exiting now"); interrupted = true; }
        }
    }
    shutdown.stop_accepting.cancel();
    shutdown.sessions.close();
    if interrupted {
        return Ok(());
    }
    tracing::info!(
        open = shutdown.sessions.len(),
        "no new connections; waiting for open sessions"
    );
    tokio::select! {
        _ = shutdown.sessions.wait() => tracing::info!("all sessions finished"),
        _ = tokio::time::sleep(config.max_shutdown_delay) => {
            tracing::warn!(open = shutdown.sessions.len(), "max shutdown delay reached; closing open sessions")
        }
        _ = &mut abort => tracing::warn!("shutdown aborted; exiting now"),
    }
    Ok(())
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds a listener and starts accepting (every listener is bound before the proxy reports
/// ready, so an address in use stops start-up).
async fn bind<S: Service>(
    l: &ListenerConfig,
    service: Arc<S>,
    metrics: dbproxy_runtime::ListenerMetrics,
    health: &Health,
    shutdown: &Shutdown,
    workers: &Option<Arc<Workers>>,
) -> anyhow::Result<ListenAddr> {
    health.add_listener(&l.name, metrics.active.clone(), l.max_connections);
    let mut listener = Listener::bind(&l.name, &l.listen, service, l.max_connections, metrics)
        .await
        .with_context(|| format!("listener {}: cannot listen on {}", l.name, l.listen))?;
    if let Some(w) = workers {
        listener = listener.on_workers(w.clone());
    }
    let addr = listener.local_addr()?;
    tokio::spawn(listener.run(shutdown.clone()));
    Ok(addr)
}

/// `entra-db-proxy check`: one credential acquisition and one upstream login per listener.
/// Prints a table to stdout; `Ok(false)` if any failed.
pub async fn check(config: Config) -> anyhow::Result<bool> {
    dbproxy_tls::install_crypto_provider();
    let metrics = Metrics::new();
    let cluster = Cluster::start(&config)?;
    let (prepared, outbound) = prepare(&config, config.env.clone(), &metrics, cluster.as_ref())?;
    let cx = outbound.context(&config, cluster.as_ref());
    let mut rows = Vec::new();
    let mut seen = Vec::new();
    let mut all_ok = true;
    for (p, l) in prepared.iter().zip(&config.listeners) {
        let result = match (&cluster, l.pod_identity.is_some()) {
            (Some(c), true) => {
                let found = identity::check(l, p, c, &cx, &config).await;
                match found {
                    Ok(mut rows) => {
                        let n = rows.len();
                        seen.append(&mut rows);
                        Ok(format!("{n} pods seen on node {}", c.table.node()))
                    }
                    Err(e) => Err(e),
                }
            }
            _ => p.check().await,
        };
        all_ok &= result.is_ok();
        rows.push([
            l.name.clone(),
            l.protocol.as_str().to_owned(),
            p.upstream().to_string(),
            p.password().describe(),
            match result {
                Ok(what) => format!("ok: {what}"),
                Err(why) => format!("FAILED: {why}"),
            },
        ]);
    }
    print_table(
        &["LISTENER", "PROTOCOL", "UPSTREAM", "CREDENTIAL", "RESULT"],
        &rows,
    );
    if !seen.is_empty() {
        println!();
        print_table(
            &["LISTENER", "POD", "SERVICE ACCOUNT", "IP", "IDENTITY"],
            &seen,
        );
    }
    Ok(all_ok)
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
