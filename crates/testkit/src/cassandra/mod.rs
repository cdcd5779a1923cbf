//! A real Apache Cassandra 5.0 standing in for Azure Cosmos DB for Apache Cassandra.
//!
//! Like Cosmos, the native (CQL) port speaks TLS only and logins go through
//! `PasswordAuthenticator`. The JVMs run from Maven Central's `cassandra-all` jars, which
//! `scripts/install-cassandra.sh` fetches (no tarball, no Docker), on a JDK 17.
//!
//! * [`CassandraCluster::start`] starts 1 or 3 nodes on 127.0.0.1, 127.0.0.2 and 127.0.0.3 (Linux
//!   routes all of 127/8 to `lo`). Every node of a cluster listens on the same native port (drivers
//!   learn peers from `system.peers`, whose `native_port` they then dial). The server certificate
//!   comes from the test's [`TestCa`](crate::certs::TestCa) and is handed to Cassandra as PEM
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
//!
//! The code: `mod.rs` holds the types, the install lookup and the addresses; `config.rs` writes
//! each node's `cassandra.yaml`, `logback.xml` and JVM command line; `process.rs` picks ports,
//! starts the JVMs, waits until the cluster is ready and stops it; `cql.rs` is the driver side
//! (sessions, admin CQL, schema agreement, roles).

mod config;
mod cql;
mod process;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};

/// The Cassandra version `scripts/install-cassandra.sh` installs by default.
pub const CASSANDRA_VERSION: &str = "5.0.9";

/// The default superuser Cassandra creates on first start.
pub const SUPERUSER: (&str, &str) = ("cassandra", "cassandra");

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
    /// What it was started with (a restarted node starts the same way).
    options: CassandraOptions,
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

impl CassandraCluster {
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
}
