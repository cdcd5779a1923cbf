//! A real Apache Cassandra 5.0 standing in for Azure Cosmos DB for Apache Cassandra.
//!
//! Like Cosmos, the native (CQL) port speaks TLS only and logins go through
//! `PasswordAuthenticator`. The JVMs run from Maven Central's `cassandra-all` jars, which
//! `scripts/install-cassandra.sh` fetches (no tarball, no Docker), on a JDK 17.
//!
//! * [`CassandraCluster::start`] starts 1 or 3 nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (Linux
//!   routes all of 127/8 to `lo`). Every node of a cluster listens on the same native port (drivers
//!   learn peers from `system.peers`, whose `native_port` they then dial). The server certificate
//!   comes from the test's [`TestCa`] and is handed to Cassandra as PEM
//!   (`PEMBasedSslContextFactory`), so clients verify it against that CA, IP SANs included.
//! * The default superuser `cassandra`/`cassandra` does the admin work
//!   ([`CassandraCluster::admin_query`], [`CassandraCluster::set_role_password`]) over TLS
//!   through node 1, as the proxy will connect.
//! * Role, credential and permission caches are off (`*_validity: 0ms`), so a changed password
//!   takes effect at once (key rotation).
//! * Three nodes: balanced tokens (one each), `auto_bootstrap: false`, `system_auth` with RF 3, so
//!   a keyspace with RF 1 spreads over all three nodes and roles are readable through any node.
//!
//! Everything is stopped (SIGTERM, then SIGKILL) and removed on drop (`KEEP_TEST_DIRS=1` keeps
//! the dirs). The JVMs also die with the test process (`PR_SET_PDEATHSIG`), which matters for
//! clusters kept in a `static`, which is never dropped.
//!
//! Environment: `EDP_CASSANDRA_LIB` (the jar folder) and `EDP_JAVA` (a JDK 11/17 `java`), as
//! printed by `scripts/install-cassandra.sh`; without them the script's default cache path and
//! `/usr/lib/jvm/java-17-openjdk-*` are tried.

use std::{
    collections::HashSet,
    fmt::Write as _,
    io::{Read as _, Seek as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use scylla::{
    client::{session::Session, session_builder::SessionBuilder},
    policies::host_filter::AllowListHostFilter,
};

use crate::{certs::TestCa, util};

/// The Cassandra version `scripts/install-cassandra.sh` installs by default.
pub const CASSANDRA_VERSION: &str = "5.0.9";

/// The default superuser Cassandra creates on first start.
pub const SUPERUSER: (&str, &str) = ("cassandra", "cassandra");

/// Balanced Murmur3 tokens for three nodes (as ccm's `balanced_tokens`).
const TOKENS_3: [i64; 3] = [
    -9_223_372_036_854_775_808,
    -3_074_457_345_618_258_603,
    3_074_457_345_618_258_602,
];

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct CassandraOptions {
    /// 1 or 3 nodes.
    pub nodes: usize,
    /// JVM heap per node (`-Xmx`), e.g. `"512M"`.
    pub heap: String,
    /// How long the whole start may take (all nodes listening and the superuser able to log in).
    pub ready_timeout: Duration,
    /// `CassandraAuthorizer` instead of `AllowAllAuthorizer`; roles made by
    /// [`CassandraCluster::set_role_password`] then get ALL PERMISSIONS ON ALL KEYSPACES.
    pub authorizer: bool,
}

impl Default for CassandraOptions {
    fn default() -> Self {
        CassandraOptions {
            nodes: 1,
            heap: "512M".into(),
            ready_timeout: Duration::from_secs(240),
            authorizer: false,
        }
    }
}

impl CassandraOptions {
    /// One node, the defaults.
    pub fn single() -> Self {
        Self::default()
    }

    /// Three nodes, the defaults.
    pub fn three_nodes() -> Self {
        CassandraOptions {
            nodes: 3,
            ..Self::default()
        }
    }
}

/// A running Cassandra cluster (1 or 3 nodes) on loopback. See the [module docs](self).
pub struct CassandraCluster {
    name: String,
    nodes: Vec<Node>,
    native_port: u16,
    storage_port: u16,
    tls: Arc<rustls::ClientConfig>,
    authorizer: bool,
    install: CassandraInstall,
}

impl std::fmt::Debug for CassandraCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CassandraCluster")
            .field("name", &self.name)
            .field("nodes", &self.nodes())
            .field("storage_port", &self.storage_port)
            .finish_non_exhaustive()
    }
}

struct Node {
    ip: Ipv4Addr,
    dir: PathBuf,
    jmx_port: u16,
    child: Mutex<Option<Child>>,
}

/// Where the JDK and the jars are.
#[derive(Clone, Debug)]
pub struct CassandraInstall {
    /// `java` of a JDK 11 or 17.
    pub java: PathBuf,
    /// The folder of `cassandra-all-*.jar` and its dependencies.
    pub lib: PathBuf,
}

impl CassandraInstall {
    /// Finds them from `EDP_JAVA` / `EDP_CASSANDRA_LIB`, else the install script's defaults.
    pub fn locate() -> anyhow::Result<CassandraInstall> {
        const HINT: &str = "run `eval \"$(scripts/install-cassandra.sh)\"` first";
        let lib = match std::env::var_os("EDP_CASSANDRA_LIB").filter(|v| !v.is_empty()) {
            Some(v) => PathBuf::from(v),
            None => {
                let cache = std::env::var_os("ENTRA_DB_PROXY_CACHE")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .map(|h| PathBuf::from(h).join(".cache/entra-db-proxy"))
                    })
                    .context("neither ENTRA_DB_PROXY_CACHE nor HOME is set")?;
                cache.join(format!("cassandra-{CASSANDRA_VERSION}/lib"))
            }
        };
        if !lib.join(".complete").is_file() || find_jar(&lib, "jamm-").is_none() {
            bail!(
                "no Cassandra jars in {} (EDP_CASSANDRA_LIB): {HINT}",
                lib.display()
            );
        }
        let java = match std::env::var_os("EDP_JAVA").filter(|v| !v.is_empty()) {
            Some(v) => PathBuf::from(v),
            None => {
                let mut found = None;
                if let Ok(rd) = std::fs::read_dir("/usr/lib/jvm") {
                    let mut dirs: Vec<PathBuf> = rd
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| {
                            p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with("java-17-openjdk-"))
                        })
                        .collect();
                    dirs.sort();
                    found = dirs
                        .into_iter()
                        .map(|d| d.join("bin/java"))
                        .find(|j| j.is_file());
                }
                found.with_context(|| {
                    format!("no JDK 17 in /usr/lib/jvm/java-17-openjdk-* (EDP_JAVA): {HINT}")
                })?
            }
        };
        let out = Command::new(&java)
            .arg("-version")
            .output()
            .with_context(|| format!("running {} -version ({HINT})", java.display()))?;
        let version = String::from_utf8_lossy(&out.stderr);
        if !(version.contains("version \"17.") || version.contains("version \"11.")) {
            bail!(
                "{} is not a JDK 11 or 17, which Cassandra 5.0 needs ({HINT}): {}",
                java.display(),
                version.lines().next().unwrap_or("")
            );
        }
        Ok(CassandraInstall { java, lib })
    }
}

fn find_jar(lib: &Path, prefix: &str) -> Option<PathBuf> {
    let mut jars: Vec<PathBuf> = std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".jar"))
        })
        .collect();
    jars.sort();
    jars.pop()
}

// Tests share clusters through statics.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<CassandraCluster>();
};

static NEXT_CLUSTER: AtomicUsize = AtomicUsize::new(0);

/// Ports handed out in this process, so two clusters started at once never pick the same one.
fn reserved_ports() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(Default::default)
}

/// A port free on every one of `ips` right now, and not handed out before in this process.
fn free_port_on(ips: &[Ipv4Addr]) -> anyhow::Result<u16> {
    let mut reserved = reserved_ports().lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let port = util::free_port()?;
        if reserved.contains(&port) {
            continue;
        }
        let ok = ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok());
        if ok {
            reserved.insert(port);
            return Ok(port);
        }
    }
    bail!("found no port free on {ips:?}")
}

fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, (n + 1) as u8)
}

impl CassandraCluster {
    /// Starts a cluster and waits until the superuser can log in (through node 1) and, with
    /// three nodes, node 1 sees both peers. The native port is TLS-only with a certificate from
    /// `ca` for 127.0.0.1–3 and `localhost`.
    pub async fn start(ca: &TestCa, opts: CassandraOptions) -> anyhow::Result<CassandraCluster> {
        if opts.nodes != 1 && opts.nodes != 3 {
            bail!("CassandraOptions::nodes must be 1 or 3, not {}", opts.nodes);
        }
        let install = CassandraInstall::locate()?;
        let cert = ca
            .try_server_cert(&["127.0.0.1", "127.0.0.2", "127.0.0.3", "localhost"])
            .context("Cassandra server certificate")?;
        let bundle = format!("{}{}", cert.key_pem, cert.cert_pem);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let cluster = Self::launch(&install, ca, &bundle, &opts)?;
            match cluster.wait_ready(&opts, started).await {
                Ok(()) => {
                    tracing::info!(
                        cluster = %cluster.name,
                        nodes = opts.nodes,
                        secs = started.elapsed().as_secs_f64(),
                        "Cassandra ready"
                    );
                    return Ok(cluster);
                }
                Err(e) if attempt < 3 && cluster.port_clash() => {
                    tracing::warn!("Cassandra start hit a port in use, retrying: {e:#}");
                }
                Err(e) => {
                    let mut msg = format!("{e:#}");
                    for n in 0..cluster.nodes.len() {
                        let _ = write!(
                            msg,
                            "\n--- node {} ({}) log tail ---\n{}",
                            n + 1,
                            cluster.nodes[n].dir.display(),
                            cluster.log_tail(n + 1, 30)
                        );
                    }
                    return Err(anyhow!(msg));
                }
            }
        }
    }

    /// Picks ports and writes every node's files (`wait_ready` starts the nodes).
    fn launch(
        install: &CassandraInstall,
        ca: &TestCa,
        bundle: &str,
        opts: &CassandraOptions,
    ) -> anyhow::Result<CassandraCluster> {
        let ips: Vec<Ipv4Addr> = (0..opts.nodes).map(node_ip).collect();
        let native_port = free_port_on(&ips)?;
        let storage_port = free_port_on(&ips)?;
        let name = format!(
            "edp-{}-{}",
            std::process::id(),
            NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut nodes = Vec::new();
        for (n, ip) in ips.iter().enumerate() {
            let dir = util::unique_temp_dir(&format!("cassandra-n{}", n + 1))?;
            nodes.push(Node {
                ip: *ip,
                dir,
                jmx_port: free_port_on(&[Ipv4Addr::LOCALHOST])?,
                child: Mutex::new(None),
            });
        }
        let cluster = CassandraCluster {
            name,
            nodes,
            native_port,
            storage_port,
            tls: ca.rustls_client_config(),
            authorizer: opts.authorizer,
            install: install.clone(),
        };
        for n in 0..cluster.nodes.len() {
            cluster.write_node_files(n, bundle, opts)?;
        }
        Ok(cluster)
    }

    fn write_node_files(
        &self,
        n: usize,
        bundle: &str,
        opts: &CassandraOptions,
    ) -> anyhow::Result<()> {
        let node = &self.nodes[n];
        let d = &node.dir;
        for sub in [
            "data",
            "commitlog",
            "saved_caches",
            "hints",
            "cdc_raw",
            "logs",
            "tmp",
            "triggers",
        ] {
            std::fs::create_dir_all(d.join(sub))
                .with_context(|| format!("creating {}/{sub}", d.display()))?;
        }
        util::write_file(&d.join("node.pem"), bundle, 0o600, None)?;
        let token = if opts.nodes == 3 {
            format!("initial_token: '{}'\n", TOKENS_3[n])
        } else {
            String::new()
        };
        let authorizer = if opts.authorizer {
            "CassandraAuthorizer"
        } else {
            "AllowAllAuthorizer"
        };
        let yaml = format!(
            r#"cluster_name: '{name}'
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
num_tokens: 1
{token}auto_bootstrap: false
authenticator:
  class_name: org.apache.cassandra.auth.PasswordAuthenticator
authorizer: {authorizer}
role_manager: CassandraRoleManager
roles_validity: 0ms
permissions_validity: 0ms
credentials_validity: 0ms
listen_address: {ip}
rpc_address: {ip}
storage_port: {storage}
native_transport_port: {native}
start_native_transport: true
client_encryption_options:
  enabled: true
  optional: false
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: {dir}/node.pem
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{storage}"
data_file_directories:
  - {dir}/data
commitlog_directory: {dir}/commitlog
saved_caches_directory: {dir}/saved_caches
hints_directory: {dir}/hints
cdc_raw_directory: {dir}/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10s
auto_snapshot: false
memtable_allocation_type: heap_buffers
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 4
concurrent_compactors: 1
"#,
            name = self.name,
            ip = node.ip,
            storage = self.storage_port,
            native = self.native_port,
            dir = d.display(),
        );
        util::write_file(&d.join("cassandra.yaml"), yaml, 0o600, None)?;
        util::write_file(
            &d.join("logback.xml"),
            r#"<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"#,
            0o600,
            None,
        )
    }

    fn spawn_node(&self, n: usize, opts: &CassandraOptions) -> anyhow::Result<()> {
        let install = &self.install;
        let node = &self.nodes[n];
        let d = &node.dir;
        let jamm = find_jar(&install.lib, "jamm-").context("no jamm jar")?;
        // Only the last node of three creates the default superuser: by then the ring is
        // complete, so the row goes to the replicas that keep owning it (auto_bootstrap is off,
        // nothing would move it later).
        let superuser_delay = if opts.nodes == 3 && n + 1 < opts.nodes {
            3_600_000
        } else {
            100
        };
        let mut args: Vec<String> = vec![
            format!("-Xms{}", opts.heap),
            format!("-Xmx{}", opts.heap),
            "-Xss256k".into(),
            "-XX:+UseThreadPriorities".into(),
            "-XX:+PerfDisableSharedMem".into(),
            "-XX:+ExitOnOutOfMemoryError".into(),
            "-XX:+UseG1GC".into(),
            "-XX:+ParallelRefProcEnabled".into(),
            "-XX:MaxTenuringThreshold=1".into(),
            "-XX:G1HeapRegionSize=16m".into(),
            "-XX:ParallelGCThreads=2".into(),
            "-XX:ConcGCThreads=1".into(),
            // C1 only: starts much faster on 2 cores; tests need no peak throughput.
            "-XX:TieredStopAtLevel=1".into(),
            "-Djava.net.preferIPv4Stack=true".into(),
            "-Djdk.attach.allowAttachSelf=true".into(),
        ];
        for (flag, what) in JDK17_MODULE_FLAGS {
            args.push(format!("--{flag}"));
            args.push(format!("{what}=ALL-UNNAMED"));
        }
        args.extend([
            "-Dio.netty.tryReflectionSetAccessible=true".into(),
            "-Dio.netty.allocator.useCacheForAllThreads=true".into(),
            "-Dio.netty.allocator.maxOrder=11".into(),
            format!("-javaagent:{}", jamm.display()),
            format!("-Dcassandra.jmx.local.port={}", node.jmx_port),
            "-Dcom.sun.management.jmxremote.authenticate=false".into(),
            format!("-Dcassandra.config=file://{}/cassandra.yaml", d.display()),
            "-Dcassandra-foreground=yes".into(),
            format!("-Dcassandra.storagedir={}", d.display()),
            format!("-Dcassandra.logdir={}/logs", d.display()),
            format!("-Dcassandra.triggers_dir={}/triggers", d.display()),
            format!("-Dlogback.configurationFile={}/logback.xml", d.display()),
            format!("-Djava.io.tmpdir={}/tmp", d.display()),
            "-Dcassandra.available_processors=2".into(),
            format!("-Dcassandra.superuser_setup_delay_ms={superuser_delay}"),
            format!("-Dcassandra.system_auth.default_rf={}", opts.nodes),
            "-Dcassandra.skip_wait_for_gossip_to_settle=0".into(),
            // 5.0 refuses a second password change of a role within 5 s; key rotation tests
            // change them back to back.
            "-Dcassandra.role_password_update_min_interval_in_ms=0".into(),
            "-Dcassandra.unsafesystem=true".into(),
            "-cp".into(),
            format!("{}/*", install.lib.display()),
            "org.apache.cassandra.service.CassandraDaemon".into(),
        ]);
        let out = std::fs::File::create(d.join("logs/stdout.log")).context("stdout.log")?;
        let err = out.try_clone().context("stdout.log")?;
        let mut cmd = Command::new(&install.java);
        cmd.args(&args)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = spawn_tied_to_process(cmd)
            .with_context(|| format!("starting {}", install.java.display()))?;
        tracing::debug!(node = n + 1, pid = child.id(), dir = %d.display(), "Cassandra node started");
        *node.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    async fn wait_ready(&self, opts: &CassandraOptions, started: Instant) -> anyhow::Result<()> {
        let deadline = started + opts.ready_timeout;
        // One at a time, the seed (node 1) first.
        for n in 0..self.nodes.len() {
            self.spawn_node(n, opts)?;
            self.wait_listening(n, deadline).await?;
            tracing::debug!(
                node = n + 1,
                secs = started.elapsed().as_secs_f64(),
                "Cassandra node listening"
            );
        }
        // The superuser exists superuser_setup_delay_ms after start (on the last node): retry.
        let session = loop {
            match self.admin_session().await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    self.check_alive()?;
                    tracing::trace!("superuser login not yet possible: {e:#}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.context("superuser login never worked")),
            }
        };
        if self.nodes.len() > 1 {
            loop {
                let peers = session
                    .query_unpaged("SELECT peer FROM system.peers", &[])
                    .await
                    .context("reading system.peers")?
                    .into_rows_result()
                    .context("system.peers rows")?
                    .rows_num();
                if peers == self.nodes.len() - 1 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node 1 sees {peers} peers, not {}", self.nodes.len() - 1);
                }
                self.check_alive()?;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    /// Waits until node `n` (0-based) accepts TCP on the native port.
    async fn wait_listening(&self, n: usize, deadline: Instant) -> anyhow::Result<()> {
        let addr = SocketAddr::new(IpAddr::V4(self.nodes[n].ip), self.native_port);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("Cassandra node {} not listening on {addr} in time", n + 1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An error if a started node has exited.
    fn check_alive(&self) -> anyhow::Result<()> {
        for (n, node) in self.nodes.iter().enumerate() {
            let mut guard = node.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(child) = guard.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("Cassandra node {} exited: {status}", n + 1);
            }
        }
        Ok(())
    }

    /// Whether a node's log says a port was taken (the start is then retried with new ports).
    fn port_clash(&self) -> bool {
        (1..=self.nodes.len()).any(|n| {
            let t = self.log_tail(n, 200);
            t.contains("Address already in use") || t.contains("BindException")
        })
    }

    /// Node 1's native (TLS) address: where the proxy connects.
    pub fn contact_point(&self) -> SocketAddr {
        self.node_addr(1)
    }

    /// Every node's native address, node 1 first.
    pub fn nodes(&self) -> Vec<SocketAddr> {
        (1..=self.nodes.len()).map(|n| self.node_addr(n)).collect()
    }

    /// Node `n`'s (1-based) native address.
    ///
    /// # Panics
    /// If there is no node `n`.
    pub fn node_addr(&self, n: usize) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.nodes[n - 1].ip), self.native_port)
    }

    /// The native port, the same on every node.
    pub fn native_port(&self) -> u16 {
        self.native_port
    }

    /// The cluster name (unique per cluster in this process).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Node `n`'s (1-based) directory (data, `cassandra.yaml`, `logs/`).
    ///
    /// # Panics
    /// If there is no node `n`.
    pub fn node_dir(&self, n: usize) -> &Path {
        &self.nodes[n - 1].dir
    }

    /// A rustls client config trusting only the test CA (aws-lc-rs), for drivers.
    pub fn tls_config(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
    }

    /// A scylla session builder for node `n` (1-based) only: TLS verified against the test CA
    /// (including the IP SAN), no schema metadata fetch, no other node used. Add `.user(..)`.
    ///
    /// # Panics
    /// If there is no node `n`.
    pub fn session_builder(&self, n: usize) -> SessionBuilder {
        let addr = self.node_addr(n);
        SessionBuilder::new()
            .known_node_addr(addr)
            .tls_context(Some(self.tls.clone()))
            .host_filter(Arc::new(
                AllowListHostFilter::new([addr]).expect("a socket address resolves to itself"),
            ))
            .fetch_schema_metadata(false)
            .connection_timeout(Duration::from_secs(10))
    }

    /// A session through node 1 as the superuser.
    pub async fn admin_session(&self) -> anyhow::Result<Session> {
        self.session_builder(1)
            .user(SUPERUSER.0, SUPERUSER.1)
            .build()
            .await
            .context("superuser session through node 1")
    }

    /// Runs one CQL statement as the superuser over TLS through node 1.
    pub async fn admin_query(&self, cql: &str) -> anyhow::Result<()> {
        let session = self.admin_session().await?;
        session
            .query_unpaged(cql, &[])
            .await
            .with_context(|| format!("CQL as superuser: {cql}"))?;
        drop(session);
        self.wait_schema_agreement().await
    }

    /// Waits until every node reports node 1's schema version (as node 1 sees them in
    /// `system.peers`). A session from [`CassandraCluster::session_builder`] knows only one node,
    /// so the driver's own schema agreement wait covers only that node: call this after DDL
    /// before writing through a 3-node cluster ([`CassandraCluster::admin_query`] does).
    pub async fn wait_schema_agreement(&self) -> anyhow::Result<()> {
        if self.nodes.len() == 1 {
            return Ok(());
        }
        let session = self.admin_session().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut versions = HashSet::new();
            for cql in [
                "SELECT CAST(schema_version AS text) FROM system.local",
                "SELECT CAST(schema_version AS text) FROM system.peers",
            ] {
                let rows = session
                    .query_unpaged(cql, &[])
                    .await
                    .with_context(|| cql.to_string())?
                    .into_rows_result()
                    .with_context(|| cql.to_string())?;
                for row in rows.rows::<(Option<String>,)>().context("schema_version")? {
                    versions.insert(row.context("schema_version")?.0);
                }
            }
            if versions.len() == 1 && !versions.contains(&None) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no schema agreement after 60 s: {versions:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates a login role with this password, or sets the password of the existing role
    /// (never a superuser; with the authorizer on, it gets ALL PERMISSIONS ON ALL KEYSPACES).
    /// The password is never logged nor put in an error.
    pub async fn set_role_password(&self, role: &str, password: &str) -> anyhow::Result<()> {
        let session = self.admin_session().await?;
        let r = role.replace('"', "\"\"");
        let p = password.replace('\'', "''");
        let exists = session
            .query_unpaged("SELECT role FROM system_auth.roles WHERE role = ?", (role,))
            .await
            .context("reading system_auth.roles")?
            .into_rows_result()
            .context("system_auth.roles rows")?
            .rows_num()
            > 0;
        let cql = if exists {
            format!("ALTER ROLE \"{r}\" WITH PASSWORD = '{p}' AND LOGIN = true")
        } else {
            format!(
                "CREATE ROLE IF NOT EXISTS \"{r}\" WITH PASSWORD = '{p}' AND LOGIN = true AND SUPERUSER = false"
            )
        };
        if let Err(e) = session.query_unpaged(cql, &[]).await {
            let msg = e.to_string().replace(password, "<redacted>");
            bail!("setting the password of role {role:?}: {msg}");
        }
        if self.authorizer {
            session
                .query_unpaged(
                    format!("GRANT ALL PERMISSIONS ON ALL KEYSPACES TO \"{r}\""),
                    &[],
                )
                .await
                .with_context(|| format!("granting permissions to {role:?}"))?;
        }
        Ok(())
    }

    /// The last `lines` lines of node `n`'s (1-based) `system.log` (its stdout if that is
    /// empty).
    pub fn log_tail(&self, node: usize, lines: usize) -> String {
        let Some(node) = node.checked_sub(1).and_then(|i| self.nodes.get(i)) else {
            return String::new();
        };
        let read = |name: &str| read_tail(&node.dir.join("logs").join(name), 256 * 1024);
        let mut text = read("system.log");
        if text.trim().is_empty() {
            text = read("stdout.log");
        } else {
            // JVM start errors (bad flags, module access) only reach stdout.
            let out = read("stdout.log");
            if out.contains("Error") || out.contains("Exception") {
                text = format!("{out}\n{text}");
            }
        }
        util::tail(&text, lines)
    }

    /// Stops every node: SIGTERM, then SIGKILL for those still running after `grace`.
    pub fn stop(&self, grace: Duration) {
        let mut children: Vec<Child> = self
            .nodes
            .iter()
            .filter_map(|n| n.child.lock().unwrap_or_else(|e| e.into_inner()).take())
            .collect();
        for c in &children {
            // SAFETY: kill(2) on a pid this process spawned and has not reaped yet.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let until = Instant::now() + grace;
        while Instant::now() < until
            && children
                .iter_mut()
                .any(|c| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for c in &mut children {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for CassandraCluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
        for node in &self.nodes {
            if util::keep_test_dirs() {
                eprintln!(
                    "KEEP_TEST_DIRS: kept Cassandra node dir {}",
                    node.dir.display()
                );
            } else {
                let _ = std::fs::remove_dir_all(&node.dir);
            }
        }
        let mut reserved = reserved_ports().lock().unwrap_or_else(|e| e.into_inner());
        reserved.remove(&self.native_port);
        reserved.remove(&self.storage_port);
        for node in &self.nodes {
            reserved.remove(&node.jmx_port);
        }
    }
}

/// The last `max` bytes of a file, lossily decoded.
fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Spawns `cmd` from a thread that lives as long as the process, with `PR_SET_PDEATHSIG =
/// SIGKILL`: the JVM dies with the test process even when nothing drops the cluster (a
/// `static`, an abort). The signal follows the spawning *thread*, hence the dedicated thread: a
/// test's own thread ends with the test, which would kill a cluster shared by later tests.
fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cassandra-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the cassandra-spawner thread");
        Mutex::new(tx)
    });
    {
        use std::os::unix::process::CommandExt as _;
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe; nothing allocates here.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("cassandra-spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("cassandra-spawner thread is gone"))?
}

/// JDK 17 module access Cassandra 5.0 needs (conf/jvm17-server.options).
const JDK17_MODULE_FLAGS: &[(&str, &str)] = &[
    ("add-exports", "java.base/jdk.internal.misc"),
    ("add-exports", "java.base/jdk.internal.ref"),
    ("add-exports", "java.base/sun.nio.ch"),
    ("add-exports", "java.base/java.lang.ref"),
    (
        "add-exports",
        "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    ),
    ("add-exports", "java.management/com.sun.jmx.remote.security"),
    ("add-exports", "java.rmi/sun.rmi.registry"),
    ("add-exports", "java.rmi/sun.rmi.server"),
    ("add-exports", "java.sql/java.sql"),
    ("add-exports", "jdk.unsupported/sun.misc"),
    ("add-exports", "jdk.compiler/com.sun.tools.javac.file"),
    ("add-exports", "jdk.attach/sun.tools.attach"),
    ("add-opens", "java.base/java.lang.module"),
    ("add-opens", "java.base/jdk.internal.loader"),
    ("add-opens", "java.base/jdk.internal.ref"),
    ("add-opens", "java.base/jdk.internal.reflect"),
    ("add-opens", "java.base/jdk.internal.math"),
    ("add-opens", "java.base/jdk.internal.module"),
    ("add-opens", "java.base/jdk.internal.util.jar"),
    ("add-opens", "jdk.management/com.sun.management.internal"),
    ("add-opens", "java.base/sun.nio.ch"),
    ("add-opens", "java.base/java.io"),
    ("add-opens", "java.base/java.lang.reflect"),
    ("add-opens", "java.base/java.lang"),
    ("add-opens", "java.base/java.util"),
    ("add-opens", "java.base/java.nio"),
    ("add-opens", "jdk.compiler/com.sun.tools.javac"),
];
