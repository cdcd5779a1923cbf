//! The proxy's configuration: one [`Config`] built from, in order of precedence,
//! the command line, `ENTRA_DB_PROXY_*` variables (both through [`Flags`]), the TOML file, and
//! Azure Service Connector's variables.
//!
//! Everything is validated here, before anything starts: an invalid configuration names the file,
//! the key and what was expected, and the proxy refuses to start.
//!
//! # Layout
//! - [`flags`]: the command line (clap).
//! - [`duration`]: `30s`, `2m`, `500ms`, or bare seconds, in flags, variables and the file.
//! - [`size`]: `16MiB`, `512KiB`, or bare bytes (the CQL `max_frame_size`).
//! - [`file`]: the TOML file (serde types).
//! - [`service_connector`]: the variables Azure Service Connector sets.
//! - [`from_flags`]: flags laid over Service Connector's variables, as listener settings.
//! - [`listener`]: the one builder every source's [`listener::ListenerSettings`] go through.
//! - this module: the validated types and [`Config::load`], which picks the sources and the
//!   global settings.

pub mod duration;
pub mod file;
pub mod flags;
pub mod from_flags;
pub mod listener;
pub mod pod_identity;
pub mod service_connector;
pub mod size;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cosmos;
#[cfg(test)]
mod warm_tests;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use dbproxy_credentials::{CosmosKeyKind, CredentialSpec};
use serde::Deserialize;

pub use dbproxy_runtime::ListenAddr;

pub use flags::Flags;

/// Scope of Azure Database for PostgreSQL tokens.
pub const POSTGRES_SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";
/// Default local address of the PostgreSQL listener.
pub const DEFAULT_POSTGRES_LISTEN: &str = "127.0.0.1:5432";

/// A copy of the environment taken once at start-up, so that configuration is reproducible and
/// tests can inject variables; the credentials read the same copy.
pub use dbproxy_credentials::Env as EnvSnapshot;

/// Protocol spoken by a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// PostgreSQL frontend/backend protocol 3.
    Postgres,
    /// CQL native protocol v3–v5 (Cosmos DB for Apache Cassandra).
    Cassandra,
}

impl Protocol {
    /// The name used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Cassandra => "cassandra",
        }
    }
}

/// Scope of ARM tokens (Cosmos DB listKeys).
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// Cosmos DB's data-plane scope: the audience of the token that is the CQL password in token
/// mode (Entra RBAC).
pub const COSMOS_SCOPE: &str = "https://cosmos.azure.com/.default";

/// True for ARM's scope (either spelling of the management resource).
fn is_arm_scope(s: &str) -> bool {
    let s = s.trim_end_matches("/.default").trim_end_matches('/');
    s.eq_ignore_ascii_case("https://management.azure.com")
        || s.eq_ignore_ascii_case("https://management.core.windows.net")
}
/// Default local address of the CQL listener.
pub const DEFAULT_CASSANDRA_LISTEN: &str = "127.0.0.1:9042";
/// Cosmos DB for Apache Cassandra's port.
pub const COSMOS_CASSANDRA_PORT: u16 = 10350;

/// Where a CQL listener's password comes from.
#[derive(Debug, Clone)]
pub enum CassandraPassword {
    /// The account key from ARM listKeys (POSTed with a token for `scope`).
    CosmosKeys {
        /// The listKeys URL (`…/databaseAccounts/<acct>/listKeys?api-version=…`).
        list_keys_url: url::Url,
        /// Which key.
        key: CosmosKeyKind,
    },
    /// The Entra access token itself.
    Token,
    /// A file's contents (development only).
    File(PathBuf),
}

/// Settings of a CQL listener.
#[derive(Debug, Clone)]
pub struct CassandraSettings {
    /// Password source.
    pub password: CassandraPassword,
    /// Highest protocol version offered to drivers.
    pub max_protocol_version: u8,
    /// `data_center` shown to drivers (None: the upstream's).
    pub data_center: Option<String>,
    /// Compression algorithms offered (none for Cosmos DB).
    pub compression: Vec<String>,
    /// The largest CQL frame, header included, relayed either way (default 16 MiB,
    /// Cassandra's `native_transport_max_frame_size`).
    pub max_frame_size: usize,
    /// The upstream is Cosmos DB: its throttling absorbed, its request units counted.
    pub cosmos: bool,
    /// How throttled requests are retried (None: off, or not Cosmos DB).
    pub cosmos_retry: Option<dbproxy_cassandra::cosmos::RetryPolicy>,
}

fn is_cosmos(host: &str) -> bool {
    dbproxy_cassandra::cosmos::is_cosmos_host(host)
}

impl CassandraSettings {
    /// The defaults for a Cosmos DB upstream (`cosmos`) or another Cassandra.
    fn defaults_for(cosmos: bool, password: CassandraPassword) -> CassandraSettings {
        CassandraSettings {
            password,
            // Cosmos DB speaks v4 only and refuses compression.
            max_protocol_version: if cosmos { 4 } else { 5 },
            data_center: None,
            compression: if cosmos {
                Vec::new()
            } else {
                vec!["lz4".into(), "snappy".into()]
            },
            max_frame_size: dbproxy_runtime::cassandra::DEFAULT_MAX_FRAME_SIZE,
            cosmos,
            cosmos_retry: cosmos.then(dbproxy_cassandra::cosmos::RetryPolicy::default),
        }
    }
}

/// The whole validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Listeners, at least one.
    pub listeners: Vec<ListenerConfig>,
    /// Extra CA for Entra ID / ARM HTTPS (and added to every listener's upstream trust).
    pub ca_file: Option<PathBuf>,
    /// IMDS override.
    pub imds_endpoint: Option<url::Url>,
    /// Entra authority override.
    pub authority_host: Option<url::Url>,
    /// Client startup / upstream login bound.
    pub handshake_timeout: Duration,
    /// Upstream TCP connect bound.
    pub connect_timeout: Duration,
    /// Bound on one credential acquisition and on each of its HTTP requests.
    pub credential_timeout: Duration,
    /// How long sessions may run on after a shutdown signal.
    pub max_shutdown_delay: Duration,
    /// How long to keep accepting after a shutdown signal.
    pub min_shutdown_delay: Duration,
    /// Admin HTTP server address.
    pub admin_listen: Option<SocketAddr>,
    /// Close sessions idle this long.
    pub idle_timeout: Option<Duration>,
    /// Session threads (each a current-thread runtime); 0: sessions on the main runtime.
    pub session_threads: usize,
    /// The Kubernetes API, for listeners with pod identity.
    pub kubernetes: pod_identity::KubernetesConfig,
    /// The environment the configuration was read from; the credentials read it too
    /// (`Debug` shows variable names only).
    pub env: EnvSnapshot,
}

/// One listener.
#[derive(Debug)]
pub struct ListenerConfig {
    /// Name used in logs.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Local address: TCP, or a Unix socket.
    pub listen: ListenAddr,
    /// Upstream host.
    pub upstream_host: String,
    /// Upstream port.
    pub upstream_port: u16,
    /// Entra user to log in as.
    pub user: String,
    /// Database when the client names none.
    pub database: Option<String>,
    /// Where the token comes from.
    pub credential: CredentialSpec,
    /// Token scope.
    pub scope: String,
    /// Extra CA for this upstream.
    pub tls_ca_file: Option<PathBuf>,
    /// Name the certificate must match.
    pub tls_server_name: String,
    /// Connection cap (0: none).
    pub max_connections: usize,
    /// Warm upstream sessions kept ready (PostgreSQL; 0: off).
    pub warm_sessions: usize,
    /// Warm sessions are closed unused before this age.
    pub warm_session_max_age: Duration,
    /// CQL settings (protocol = cassandra).
    pub cassandra: Option<CassandraSettings>,
    /// TLS between clients and the proxy with a configured certificate.
    pub client_tls: Option<ClientTlsConfig>,
    /// TLS between clients and the proxy with a self-signed certificate, when none is
    /// configured (unless disabled).
    pub client_tls_self_signed: bool,
    /// Per-pod identity (off: `None`).
    pub pod_identity: Option<pod_identity::PodIdentityConfig>,
    /// Unix socket: the uids admitted (empty: everyone who can open the socket).
    pub allow_uids: Vec<u32>,
}

/// TLS between clients and the proxy (files are reloaded when they change).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// "offer" (default) or "require".
    #[serde(default)]
    pub mode: ClientTlsMode,
}

/// Whether clients may or must use TLS to the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// TLS for clients that ask; plain for the others. Without a certificate file, a
    /// self-signed one generated at start (for `sslmode=require` clients, which do not verify).
    #[default]
    Offer,
    /// Plain connections are refused (needs a certificate file).
    Require,
    /// Never TLS between clients and the proxy (PostgreSQL's SSLRequest is answered 'N').
    Disable,
}

impl Config {
    /// Builds the configuration from flags (which already include `ENTRA_DB_PROXY_*`), the
    /// optional file, and the environment.
    pub fn load(flags: &Flags, env: &EnvSnapshot) -> anyhow::Result<Config> {
        let text = match &flags.config {
            Some(path) => Some((path.as_path(), file::read(path)?)),
            None => None,
        };
        Config::from_text(flags, env, text.as_ref().map(|(p, t)| (*p, t.as_str())))
    }

    /// [`load`](Config::load) with the configuration file already read: `file` is its path
    /// (named in messages) and its text, in place of reading `flags.config`. The fuzz target
    /// `config_toml` calls this, so it runs the loader's own path without the filesystem.
    pub fn from_text(
        flags: &Flags,
        env: &EnvSnapshot,
        file: Option<(&Path, &str)>,
    ) -> anyhow::Result<Config> {
        let mut file = match file {
            Some((path, text)) => Some((path, file::parse(path, text)?)),
            None => None,
        };
        let mut listeners = Vec::new();
        if let Some((path, f)) = &mut file {
            if flags.postgres_upstream.is_some() {
                bail!(
                    "--postgres-upstream and --config {} both define listeners: use one of them",
                    path.display()
                );
            }
            for (i, settings) in f.take_listeners() {
                let ctx = || format!("{}: listener[{i}]", path.display());
                let mut settings = settings.with_context(ctx)?;
                from_flags::override_file_listener(flags, &mut settings);
                listeners.push(listener::build(settings, env).with_context(ctx)?);
            }
            if listeners.is_empty() {
                bail!(
                    "{}: no [[listener]] defined; expected at least one",
                    path.display()
                );
            }
        } else {
            for settings in from_flags::listeners(flags, env)? {
                listeners.push(listener::build(settings, env)?);
            }
            if listeners.is_empty() {
                bail!(
                    "nothing to serve: set AZURE_POSTGRESQL_CONNECTIONSTRING or AZURE_COSMOS_CONTACTPOINT \
                     (as Azure Service Connector does), or --postgres-upstream HOST with --postgres-user USER, \
                     or --cassandra-upstream HOST, or --config FILE"
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for l in &listeners {
            let port_zero = matches!(l.listen, ListenAddr::Tcp(a) if a.port() == 0);
            if !port_zero && !seen.insert(l.listen.clone()) {
                bail!("two listeners use the same address {}", l.listen);
            }
        }

        let file_cfg = file.as_ref().map(|(_, f)| f);
        let pick_url = |flag: &Option<String>,
                        file: Option<&String>,
                        what: &str|
         -> anyhow::Result<Option<url::Url>> {
            match flag.as_ref().or(file) {
                Some(s) => {
                    Ok(Some(url::Url::parse(s).with_context(|| {
                        format!("{what}: expected a URL, got {s:?}")
                    })?))
                }
                None => Ok(None),
            }
        };
        let secs = |flag: Option<Duration>, file: Option<Duration>, default: u64| {
            flag.or(file).unwrap_or(Duration::from_secs(default))
        };
        Ok(Config {
            listeners,
            ca_file: flags
                .ca_file
                .clone()
                .or_else(|| file_cfg.and_then(|f| f.ca_file.clone())),
            imds_endpoint: pick_url(
                &flags.imds_endpoint,
                file_cfg.and_then(|f| f.imds_endpoint.as_ref()),
                "imds_endpoint",
            )?,
            authority_host: pick_url(
                &flags.authority_host,
                file_cfg.and_then(|f| f.authority_host.as_ref()),
                "authority_host",
            )?,
            handshake_timeout: secs(
                flags.handshake_timeout,
                file_cfg.and_then(|f| f.handshake_timeout),
                30,
            ),
            connect_timeout: secs(
                flags.connect_timeout,
                file_cfg.and_then(|f| f.connect_timeout),
                10,
            ),
            credential_timeout: secs(
                flags.credential_timeout,
                file_cfg.and_then(|f| f.credential_timeout),
                30,
            )
            .max(Duration::from_millis(100)),
            max_shutdown_delay: secs(
                flags.max_shutdown_delay,
                file_cfg.and_then(|f| f.max_shutdown_delay),
                30,
            ),
            min_shutdown_delay: secs(
                flags.min_shutdown_delay,
                file_cfg.and_then(|f| f.min_shutdown_delay),
                0,
            ),
            admin_listen: match (
                flags.admin_listen,
                file_cfg.and_then(|f| f.admin_listen.as_deref()),
            ) {
                (Some(a), _) => Some(a),
                (None, Some(s)) => Some(s.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "{}: admin_listen: expected IP:PORT such as 127.0.0.1:9801, got {s:?}",
                        file.as_ref()
                            .map(|(p, _)| p.display().to_string())
                            .unwrap_or_default()
                    )
                })?),
                (None, None) => None,
            },
            idle_timeout: Some(secs(
                flags.idle_timeout,
                file_cfg.and_then(|f| f.idle_timeout),
                0,
            ))
            .filter(|d| !d.is_zero()),
            session_threads: flags
                .session_threads
                .or(file_cfg.and_then(|f| f.session_threads))
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            kubernetes: pod_identity::KubernetesConfig::merge(
                flags,
                file_cfg.and_then(|f| f.kubernetes.as_ref()),
            )?,
            env: env.clone(),
        })
    }
}
