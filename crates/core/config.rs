//! The proxy's configuration: one [`Config`] built from, in order of precedence,
//! the command line, `ENTRA_DB_PROXY_*` variables (both through [`Flags`]), the TOML file, and
//! Azure Service Connector's variables.
//!
//! Everything is validated here, before anything starts: an invalid configuration names the file,
//! the key and what was expected, and the proxy refuses to start.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use dbproxy_credentials::{CosmosKeyKind, CredentialSpec, Secret, UserAssignedId};
use serde::Deserialize;

use dbproxy_runtime::ListenAddr;

use crate::{
    flags::{CassandraPasswordKind, CredentialKind, Flags},
    service_connector::{self, split_host_port},
};

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
}

fn is_cosmos(host: &str) -> bool {
    host.to_ascii_lowercase().contains(".cosmos.")
}

impl CassandraSettings {
    fn defaults_for(host: &str, password: CassandraPassword) -> CassandraSettings {
        let cosmos = is_cosmos(host);
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
    /// How long sessions may run on after a shutdown signal.
    pub max_shutdown_delay: Duration,
    /// How long to keep accepting after a shutdown signal.
    pub min_shutdown_delay: Duration,
    /// Admin HTTP server address.
    pub admin_listen: Option<SocketAddr>,
    /// Close sessions idle this long.
    pub idle_timeout: Option<Duration>,
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
    /// CQL settings (protocol = cassandra).
    pub cassandra: Option<CassandraSettings>,
    /// TLS between clients and the proxy with a configured certificate.
    pub client_tls: Option<ClientTlsConfig>,
    /// TLS between clients and the proxy with a self-signed certificate, when none is
    /// configured (unless disabled).
    pub client_tls_self_signed: bool,
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

// ---- The TOML file ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    ca_file: Option<PathBuf>,
    imds_endpoint: Option<String>,
    authority_host: Option<String>,
    handshake_timeout: Option<u64>,
    connect_timeout: Option<u64>,
    max_shutdown_delay: Option<u64>,
    min_shutdown_delay: Option<u64>,
    admin_listen: Option<String>,
    idle_timeout: Option<u64>,
    max_connections: Option<usize>,
    unix_socket_mode: Option<String>,
    #[serde(default, rename = "listener")]
    listeners: Vec<FileListener>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileListener {
    name: Option<String>,
    protocol: Protocol,
    listen: Option<String>,
    upstream: String,
    user: String,
    database: Option<String>,
    scope: Option<String>,
    max_connections: Option<usize>,
    /// cassandra: "cosmos-keys" (default), "token" or "file".
    password: Option<String>,
    list_keys_url: Option<String>,
    key: Option<String>,
    password_file: Option<PathBuf>,
    max_protocol_version: Option<u8>,
    data_center: Option<String>,
    compression: Option<Vec<String>>,
    client_tls: Option<ClientTlsConfig>,
    /// "disable" turns the self-signed TLS offer off when no client_tls is given.
    client_tls_mode: Option<ClientTlsMode>,
    #[serde(default)]
    credential: FileCredential,
    #[serde(default)]
    tls: FileTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca_file: Option<PathBuf>,
    server_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCredential {
    kind: CredentialKind,
    client_id: Option<String>,
    object_id: Option<String>,
    resource_id: Option<String>,
    tenant_id: Option<String>,
    /// Name of the environment variable holding the client secret (default AZURE_CLIENT_SECRET).
    client_secret_env: Option<String>,
    certificate: Option<PathBuf>,
    token_file: Option<PathBuf>,
}

impl Default for FileCredential {
    fn default() -> Self {
        FileCredential {
            kind: CredentialKind::Default,
            client_id: None,
            object_id: None,
            resource_id: None,
            tenant_id: None,
            client_secret_env: None,
            certificate: None,
            token_file: None,
        }
    }
}

/// Credential settings, from a file section or from flags.
struct CredentialInput<'a> {
    kind: CredentialKind,
    client_id: Option<&'a str>,
    object_id: Option<&'a str>,
    resource_id: Option<&'a str>,
    tenant_id: Option<&'a str>,
    client_secret_env: Option<&'a str>,
    certificate: Option<&'a Path>,
    token_file: Option<&'a Path>,
}

impl Config {
    /// Builds the configuration from flags (which already include `ENTRA_DB_PROXY_*`), the
    /// optional file, and the environment.
    pub fn load(flags: &Flags, env: &EnvSnapshot) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => Some((path.clone(), read_file(path)?)),
            None => None,
        };
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
        let secs = |flag: Option<u64>, file: Option<u64>, default: u64| {
            Duration::from_secs(flag.or(file).unwrap_or(default))
        };

        let mut listeners = Vec::new();
        if let Some((path, f)) = &file {
            if flags.postgres_upstream.is_some() {
                bail!(
                    "--postgres-upstream and --config {} both define listeners: use one of them",
                    path.display()
                );
            }
            for (i, l) in f.listeners.iter().enumerate() {
                let ctx = || format!("{}: listener[{i}]", path.display());
                listeners.push(file_listener(l, i, flags, f, env).with_context(ctx)?);
            }
            if listeners.is_empty() {
                bail!(
                    "{}: no [[listener]] defined; expected at least one",
                    path.display()
                );
            }
        } else {
            listeners.extend(flags_listener(flags, env)?);
            listeners.extend(flags_cassandra_listener(flags, env)?);
            if listeners.is_empty() {
                bail!(
                    "nothing to serve: set AZURE_POSTGRESQL_CONNECTIONSTRING or AZURE_COSMOS_CONTACTPOINT \
                     (as Azure Service Connector does), or --postgres-upstream HOST with --postgres-user USER, \
                     or --cassandra-upstream HOST, or --config FILE"
                );
            }
        }
        for l in &listeners {
            let wants_require = flags.client_tls_mode == Some(ClientTlsMode::Require);
            if wants_require && l.client_tls.is_none() {
                bail!(
                    "--client-tls-mode require needs --client-tls-cert and --client-tls-key (listener {})",
                    l.name
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
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

/// `IP:PORT`, or an absolute path for a Unix socket. For PostgreSQL a directory gets the
/// socket libpq looks for, `.s.PGSQL.5432` (so `psql -h DIR` works); name the file yourself
/// (`DIR/.s.PGSQL.6432`) for another port.
pub fn parse_listen(s: &str, protocol: Protocol, unix_mode: u32) -> anyhow::Result<ListenAddr> {
    if let Some(path) = s
        .strip_prefix("unix:")
        .or(Some(s))
        .filter(|p| p.starts_with('/'))
    {
        let path = PathBuf::from(path);
        let is_dir = s.ends_with('/') || path.is_dir();
        let path = match (protocol, is_dir) {
            (Protocol::Postgres, true) => path.join(".s.PGSQL.5432"),
            (Protocol::Cassandra, true) => path.join("cql.sock"),
            (_, false) => path,
        };
        return Ok(ListenAddr::Unix {
            path,
            mode: unix_mode,
        });
    }
    s.parse().map(ListenAddr::Tcp).with_context(|| {
        format!("listen: expected IP:PORT such as 127.0.0.1:5432, or an absolute path for a Unix socket, got {s:?}")
    })
}

fn parse_mode(s: &str) -> anyhow::Result<u32> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| {
            format!("unix_socket_mode: expected octal permissions such as 0600, got {s:?}")
        })
}

fn file_listener(
    l: &FileListener,
    index: usize,
    flags: &Flags,
    file: &FileConfig,
    env: &EnvSnapshot,
) -> anyhow::Result<ListenerConfig> {
    let global_max = file.max_connections;
    let unix_mode = match (&flags.unix_socket_mode, &file.unix_socket_mode) {
        (Some(m), _) | (None, Some(m)) => parse_mode(m)?,
        (None, None) => 0o600,
    };
    let (host, port) = split_host_port(&l.upstream)
        .with_context(|| format!("upstream: expected HOST[:PORT], got {:?}", l.upstream))?;
    if host.is_empty() {
        bail!("upstream: expected HOST[:PORT], got {:?}", l.upstream);
    }
    if l.user.is_empty() {
        bail!("user: expected the Entra user name to log in as");
    }
    let (default_listen, default_port) = match l.protocol {
        Protocol::Postgres => (DEFAULT_POSTGRES_LISTEN, 5432),
        Protocol::Cassandra => (DEFAULT_CASSANDRA_LISTEN, COSMOS_CASSANDRA_PORT),
    };
    let listen = parse_listen(
        l.listen.as_deref().unwrap_or(default_listen),
        l.protocol,
        unix_mode,
    )?;
    if l.client_tls_mode == Some(ClientTlsMode::Require) && l.client_tls.is_none() {
        bail!("client_tls_mode: \"require\" needs client_tls = {{ cert_file, key_file }}");
    }
    let cassandra = match l.protocol {
        Protocol::Postgres => {
            for (key, set) in [
                ("password", l.password.is_some()),
                ("list_keys_url", l.list_keys_url.is_some()),
                ("key", l.key.is_some()),
                ("password_file", l.password_file.is_some()),
                ("max_protocol_version", l.max_protocol_version.is_some()),
                ("data_center", l.data_center.is_some()),
                ("compression", l.compression.is_some()),
            ] {
                if set {
                    bail!("{key}: only for protocol = \"cassandra\" listeners");
                }
            }
            None
        }
        Protocol::Cassandra => {
            if l.database.is_some() {
                bail!(
                    "database: only for protocol = \"postgres\" listeners (CQL clients choose their keyspace)"
                );
            }
            Some(cassandra_settings(
                &host,
                CassandraInputs {
                    password: l.password.as_deref(),
                    list_keys_url: l.list_keys_url.as_deref(),
                    key: l.key.as_deref(),
                    password_file: l.password_file.as_deref(),
                    max_protocol_version: l.max_protocol_version,
                    data_center: l.data_center.as_deref(),
                    compression: l.compression.clone(),
                },
            )?)
        }
    };
    let c = &l.credential;
    let credential = credential_spec(
        &CredentialInput {
            kind: c.kind,
            client_id: c.client_id.as_deref(),
            object_id: c.object_id.as_deref(),
            resource_id: c.resource_id.as_deref(),
            tenant_id: c.tenant_id.as_deref(),
            client_secret_env: c.client_secret_env.as_deref(),
            certificate: c.certificate.as_deref(),
            token_file: c.token_file.as_deref(),
        },
        env,
    )
    .context("credential")?;
    Ok(ListenerConfig {
        name: l.name.clone().unwrap_or_else(|| format!("listener{index}")),
        protocol: l.protocol,
        listen,
        tls_server_name: l.tls.server_name.clone().unwrap_or_else(|| host.clone()),
        upstream_host: host,
        upstream_port: port.unwrap_or(default_port),
        user: l.user.clone(),
        database: l.database.clone(),
        credential,
        scope: match (&l.scope, &cassandra) {
            (Some(scope), _) => scope.clone(),
            (None, None) => POSTGRES_SCOPE.to_owned(),
            (None, Some(c)) => match c.password {
                CassandraPassword::CosmosKeys { .. } | CassandraPassword::File(_) => {
                    ARM_SCOPE.to_owned()
                }
                CassandraPassword::Token => bail!(
                    "scope: required when password = \"token\" (the audience the Cassandra deployment accepts)"
                ),
            },
        },
        cassandra,
        client_tls: l.client_tls.clone().or_else(|| flags_client_tls(flags)),
        client_tls_self_signed: self_signed_tls(flags, l.client_tls_mode),
        tls_ca_file: l.tls.ca_file.clone(),
        max_connections: flags
            .max_connections
            .or(l.max_connections)
            .or(global_max)
            .unwrap_or(0),
    })
}

/// The single PostgreSQL listener of the flags / Service Connector mode.
fn flags_listener(flags: &Flags, env: &EnvSnapshot) -> anyhow::Result<Option<ListenerConfig>> {
    let sc = service_connector::postgres_target(env)?.unwrap_or_default();
    let (host, port) = match &flags.postgres_upstream {
        Some(u) => {
            let (h, p) = split_host_port(u)
                .with_context(|| format!("--postgres-upstream: expected HOST[:PORT], got {u:?}"))?;
            (Some(h), p)
        }
        None => (sc.host.clone(), sc.port),
    };
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let user = flags.postgres_user.clone().or(sc.user.clone()).with_context(|| {
        format!("no Entra user to log in to {host} as: set --postgres-user (ENTRA_DB_PROXY_POSTGRES_USER) or AZURE_POSTGRESQL_USER")
    })?;
    let credential = match flags.credential {
        Some(kind) => credential_spec(&flags_credential(flags, kind), env)?,
        None => service_connector_credential("AZURE_POSTGRESQL", flags, env)?,
    };
    Ok(Some(ListenerConfig {
        name: "postgres".into(),
        protocol: Protocol::Postgres,
        listen: parse_listen(
            flags
                .postgres_listen
                .as_deref()
                .unwrap_or(DEFAULT_POSTGRES_LISTEN),
            Protocol::Postgres,
            flags_unix_mode(flags)?,
        )
        .context("--postgres-listen")?,
        tls_server_name: flags
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host.clone()),
        upstream_host: host,
        upstream_port: port.unwrap_or(5432),
        user,
        database: flags.postgres_database.clone().or(sc.database),
        credential,
        scope: flags
            .scope
            .clone()
            .unwrap_or_else(|| POSTGRES_SCOPE.to_owned()),
        tls_ca_file: None,
        max_connections: flags.max_connections.unwrap_or(0),
        cassandra: None,
        client_tls: flags_client_tls(flags),
        client_tls_self_signed: self_signed_tls(flags, None),
    }))
}

/// Self-signed client TLS is offered unless the mode is `disable` (from the flag, else the file).
fn self_signed_tls(flags: &Flags, file_mode: Option<ClientTlsMode>) -> bool {
    flags.client_tls_mode.or(file_mode) != Some(ClientTlsMode::Disable)
}

fn flags_unix_mode(flags: &Flags) -> anyhow::Result<u32> {
    flags
        .unix_socket_mode
        .as_deref()
        .map(parse_mode)
        .unwrap_or(Ok(0o600))
}

fn flags_client_tls(flags: &Flags) -> Option<ClientTlsConfig> {
    match (&flags.client_tls_cert, &flags.client_tls_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            cert_file: cert.clone(),
            key_file: key.clone(),
            mode: flags.client_tls_mode.unwrap_or_default(),
        }),
        _ => None,
    }
}

/// What a CQL listener's settings come from (file keys or flags / environment).
struct CassandraInputs<'a> {
    password: Option<&'a str>,
    list_keys_url: Option<&'a str>,
    key: Option<&'a str>,
    password_file: Option<&'a Path>,
    max_protocol_version: Option<u8>,
    data_center: Option<&'a str>,
    compression: Option<Vec<String>>,
}

fn cassandra_settings(host: &str, i: CassandraInputs<'_>) -> anyhow::Result<CassandraSettings> {
    let kind = match i.password {
        Some(k) => k.to_owned(),
        None if i.password_file.is_some() && i.list_keys_url.is_none() => "file".to_owned(),
        None => "cosmos-keys".to_owned(),
    };
    let password = match kind.as_str() {
        "cosmos-keys" => {
            let url = i.list_keys_url.context(
                "list_keys_url: the Cosmos DB account's ARM listKeys URL is required (AZURE_COSMOS_LISTKEYURL: https://management.azure.com/subscriptions/…/databaseAccounts/<account>/listKeys?api-version=2021-04-15)",
            )?;
            let list_keys_url = url::Url::parse(url)
                .with_context(|| format!("list_keys_url: expected a URL, got {url:?}"))?;
            let key = match i.key {
                Some(k) => k
                    .parse::<CosmosKeyKind>()
                    .map_err(|e| anyhow::anyhow!("key: {e}"))?,
                None => CosmosKeyKind::default(),
            };
            CassandraPassword::CosmosKeys { list_keys_url, key }
        }
        "token" => CassandraPassword::Token,
        "file" => CassandraPassword::File(
            i.password_file
                .context("password_file: required with password = \"file\"")?
                .to_owned(),
        ),
        other => bail!("password: expected \"cosmos-keys\", \"token\" or \"file\", got {other:?}"),
    };
    let mut settings = CassandraSettings::defaults_for(host, password);
    if let Some(v) = i.max_protocol_version {
        if !(3..=5).contains(&v) {
            bail!("max_protocol_version: expected 3, 4 or 5, got {v}");
        }
        settings.max_protocol_version = v;
    }
    settings.data_center = i.data_center.map(str::to_owned);
    if let Some(c) = i.compression {
        for algo in &c {
            if algo != "lz4" && algo != "snappy" {
                bail!("compression: expected \"lz4\" and/or \"snappy\", got {algo:?}");
            }
        }
        settings.compression = c;
    }
    Ok(settings)
}

/// The CQL listener of the flags / Service Connector mode (AZURE_COSMOS_*).
fn flags_cassandra_listener(
    flags: &Flags,
    env: &EnvSnapshot,
) -> anyhow::Result<Option<ListenerConfig>> {
    let (host, port) = match (
        &flags.cassandra_upstream,
        env.get("AZURE_COSMOS_CONTACTPOINT"),
    ) {
        (Some(u), _) => split_host_port(u)
            .with_context(|| format!("--cassandra-upstream: expected HOST[:PORT], got {u:?}"))?,
        (None, Some(h)) => split_host_port(h).with_context(|| {
            format!("AZURE_COSMOS_CONTACTPOINT: expected a host name, got {h:?}")
        })?,
        (None, None) => return Ok(None),
    };
    if host.is_empty() {
        return Ok(None);
    }
    let port = match (port, env.get("AZURE_COSMOS_PORT")) {
        (Some(p), _) => p,
        (None, Some(p)) => p
            .trim()
            .parse()
            .with_context(|| format!("AZURE_COSMOS_PORT: expected a port number, got {p:?}"))?,
        (None, None) => COSMOS_CASSANDRA_PORT,
    };
    let user = flags
        .cassandra_user
        .clone()
        .or_else(|| env.get("AZURE_COSMOS_USERNAME").map(str::to_owned))
        .or_else(|| host.split('.').next().map(str::to_owned))
        .filter(|u| !u.is_empty())
        .context("no CQL user: set --cassandra-user or AZURE_COSMOS_USERNAME (the account name)")?;
    let list_keys_url = flags
        .cassandra_list_keys_url
        .clone()
        .or_else(|| env.get("AZURE_COSMOS_LISTKEYURL").map(str::to_owned));
    let settings = cassandra_settings(
        &host,
        CassandraInputs {
            password: flags.cassandra_password.map(|k| match k {
                CassandraPasswordKind::CosmosKeys => "cosmos-keys",
                CassandraPasswordKind::Token => "token",
                CassandraPasswordKind::File => "file",
            }),
            list_keys_url: list_keys_url.as_deref(),
            key: flags.cassandra_key.as_deref(),
            password_file: flags.cassandra_password_file.as_deref(),
            max_protocol_version: flags.cassandra_max_protocol_version,
            data_center: flags.cassandra_data_center.as_deref(),
            compression: None,
        },
    )?;
    let credential = match flags.credential {
        Some(kind) => credential_spec(&flags_credential(flags, kind), env)?,
        None => service_connector_credential("AZURE_COSMOS", flags, env)?,
    };
    let scope = match (env.get("AZURE_COSMOS_SCOPE"), &settings.password) {
        (Some(s), _) => s.to_owned(),
        (None, CassandraPassword::Token) => flags.scope.clone().context(
            "--cassandra-password token needs a scope: set AZURE_COSMOS_SCOPE or --scope",
        )?,
        (None, _) => ARM_SCOPE.to_owned(),
    };
    Ok(Some(ListenerConfig {
        name: "cassandra".into(),
        protocol: Protocol::Cassandra,
        listen: parse_listen(
            flags
                .cassandra_listen
                .as_deref()
                .unwrap_or(DEFAULT_CASSANDRA_LISTEN),
            Protocol::Cassandra,
            flags_unix_mode(flags)?,
        )
        .context("--cassandra-listen")?,
        tls_server_name: flags
            .tls_server_name
            .clone()
            .unwrap_or_else(|| host.clone()),
        upstream_host: host,
        upstream_port: port,
        user,
        database: None,
        credential,
        scope,
        tls_ca_file: None,
        max_connections: flags.max_connections.unwrap_or(0),
        cassandra: Some(settings),
        client_tls: flags_client_tls(flags),
        client_tls_self_signed: self_signed_tls(flags, None),
    }))
}

fn flags_credential(flags: &Flags, kind: CredentialKind) -> CredentialInput<'_> {
    CredentialInput {
        kind,
        client_id: flags.client_id.as_deref(),
        object_id: flags.object_id.as_deref(),
        resource_id: flags.resource_id.as_deref(),
        tenant_id: flags.tenant_id.as_deref(),
        client_secret_env: None,
        certificate: flags.client_certificate.as_deref(),
        token_file: flags.federated_token_file.as_deref(),
    }
}

/// No `--credential`: follow Service Connector (`<prefix>_CLIENTID` alone → user-assigned
/// managed identity; with `_CLIENTSECRET` and `_TENANTID` → service principal; prefix
/// AZURE_POSTGRESQL or AZURE_COSMOS), then the id flags, else the default chain.
fn service_connector_credential(
    prefix: &str,
    flags: &Flags,
    env: &EnvSnapshot,
) -> anyhow::Result<CredentialSpec> {
    let client_id = env.get(&format!("{prefix}_CLIENTID"));
    let secret = env.get(&format!("{prefix}_CLIENTSECRET"));
    let tenant = env.get(&format!("{prefix}_TENANTID"));
    match (client_id, secret, tenant) {
        (Some(id), Some(secret), Some(tenant)) => {
            return Ok(CredentialSpec::ClientSecret {
                tenant_id: tenant.to_owned(),
                client_id: id.to_owned(),
                secret: Secret::new(secret),
            });
        }
        (Some(_), Some(_), None) => bail!(
            "{prefix}_CLIENTSECRET is set but {prefix}_TENANTID is not: a service principal needs both"
        ),
        (Some(id), None, _) => {
            return Ok(CredentialSpec::ManagedIdentity {
                id: Some(UserAssignedId::ClientId(id.to_owned())),
            });
        }
        _ => {}
    }
    if flags.client_id.is_some() || flags.object_id.is_some() || flags.resource_id.is_some() {
        return credential_spec(
            &flags_credential(flags, CredentialKind::ManagedIdentity),
            env,
        );
    }
    Ok(CredentialSpec::Default)
}

/// Checks that the settings fit the kind and builds the spec.
fn credential_spec(c: &CredentialInput<'_>, env: &EnvSnapshot) -> anyhow::Result<CredentialSpec> {
    let owned = |s: Option<&str>| s.map(str::to_owned);
    let tenant = || {
        owned(c.tenant_id)
            .or_else(|| owned(env.get("AZURE_TENANT_ID")))
            .context("tenant_id: required for this credential kind (or set AZURE_TENANT_ID)")
    };
    let client = || {
        owned(c.client_id)
            .or_else(|| owned(env.get("AZURE_CLIENT_ID")))
            .context("client_id: required for this credential kind (or set AZURE_CLIENT_ID)")
    };
    Ok(match c.kind {
        CredentialKind::Default => CredentialSpec::Default,
        CredentialKind::ManagedIdentity => {
            let ids = [
                c.client_id.map(|v| UserAssignedId::ClientId(v.into())),
                c.object_id.map(|v| UserAssignedId::ObjectId(v.into())),
                c.resource_id.map(|v| UserAssignedId::ResourceId(v.into())),
            ];
            let mut given = ids.into_iter().flatten();
            let id = given.next();
            if given.next().is_some() {
                bail!("managed identity: give at most one of client_id, object_id, resource_id");
            }
            CredentialSpec::ManagedIdentity { id }
        }
        CredentialKind::WorkloadIdentity => CredentialSpec::WorkloadIdentity {
            tenant_id: owned(c.tenant_id),
            client_id: owned(c.client_id),
            token_file: c.token_file.map(Path::to_owned),
        },
        CredentialKind::ClientSecret => {
            let var = c.client_secret_env.unwrap_or("AZURE_CLIENT_SECRET");
            let secret = env
                .get(var)
                .with_context(|| format!("client secret: environment variable {var} is not set"))?;
            CredentialSpec::ClientSecret {
                tenant_id: tenant()?,
                client_id: client()?,
                secret: Secret::new(secret),
            }
        }
        CredentialKind::ClientCertificate => {
            let certificate = c
                .certificate
                .map(Path::to_owned)
                .or_else(|| env.get("AZURE_CLIENT_CERTIFICATE_PATH").map(PathBuf::from))
                .context("certificate: a PEM file with the certificate and its private key is required (or set AZURE_CLIENT_CERTIFICATE_PATH)")?;
            CredentialSpec::ClientCertificate {
                tenant_id: tenant()?,
                client_id: client()?,
                certificate,
            }
        }
        CredentialKind::AzureCli => CredentialSpec::AzureCli {
            tenant_id: owned(c.tenant_id),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn flags(args: &[&str]) -> Flags {
        let mut v = vec!["entra-db-proxy"];
        v.extend_from_slice(args);
        Flags::try_parse_from(v).unwrap()
    }

    #[test]
    fn service_connector_zero_config() {
        let env = EnvSnapshot::from_pairs([
            (
                "AZURE_POSTGRESQL_CONNECTIONSTRING",
                "dbname=app host=srv.postgres.database.azure.com port=5432 sslmode=require user=aad_app",
            ),
            ("AZURE_POSTGRESQL_CLIENTID", "11111111-2222"),
        ]);
        let c = Config::load(&flags(&[]), &env).unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.listen.to_string(), "127.0.0.1:5432");
        assert_eq!(l.upstream_host, "srv.postgres.database.azure.com");
        assert_eq!(l.user, "aad_app");
        assert_eq!(l.database.as_deref(), Some("app"));
        assert_eq!(l.tls_server_name, "srv.postgres.database.azure.com");
        assert!(
            matches!(&l.credential, CredentialSpec::ManagedIdentity { id: Some(UserAssignedId::ClientId(id)) } if id == "11111111-2222")
        );
    }

    #[test]
    fn service_connector_service_principal() {
        let env = EnvSnapshot::from_pairs([
            ("AZURE_POSTGRESQL_HOST", "srv"),
            ("AZURE_POSTGRESQL_USER", "sp"),
            ("AZURE_POSTGRESQL_CLIENTID", "cid"),
            ("AZURE_POSTGRESQL_CLIENTSECRET", "s3cr3t-value"),
            ("AZURE_POSTGRESQL_TENANTID", "tid"),
        ]);
        let c = Config::load(&flags(&["--postgres-listen", "127.0.0.1:6000"]), &env).unwrap();
        assert_eq!(c.listeners[0].listen.to_string(), "127.0.0.1:6000");
        assert!(
            matches!(&c.listeners[0].credential, CredentialSpec::ClientSecret { tenant_id, client_id, .. } if tenant_id == "tid" && client_id == "cid")
        );
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn unix_socket_listen_addresses() {
        let unix = |s: &str, p: Protocol| match parse_listen(s, p, 0o600).unwrap() {
            ListenAddr::Unix { path, mode } => (path.display().to_string(), mode),
            other => panic!("{other}"),
        };
        assert_eq!(
            unix("/run/edp/", Protocol::Postgres).0,
            "/run/edp/.s.PGSQL.5432"
        );
        assert_eq!(
            unix("/run/edp/.s.PGSQL.6432", Protocol::Postgres).0,
            "/run/edp/.s.PGSQL.6432"
        );
        assert_eq!(
            unix("unix:/run/cql.sock", Protocol::Cassandra),
            ("/run/cql.sock".into(), 0o600)
        );
        assert!(parse_listen("localhost:5432", Protocol::Postgres, 0o600).is_err());
        assert_eq!(parse_mode("0660").unwrap(), 0o660);
        assert!(parse_mode("999").is_err());
    }

    #[test]
    fn nothing_to_serve_says_what_to_set() {
        let e = Config::load(&flags(&[]), &EnvSnapshot::default()).unwrap_err();
        assert!(
            format!("{e:#}").contains("AZURE_POSTGRESQL_CONNECTIONSTRING"),
            "{e:#}"
        );
    }

    #[test]
    fn flags_need_a_user() {
        let e = Config::load(
            &flags(&["--postgres-upstream", "db.example:5432"]),
            &EnvSnapshot::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("--postgres-user"), "{e:#}");
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edp-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn the_example_file_parses_with_every_listener_uncommented() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml.example"))
                .unwrap();
        // Uncomment the example listeners: commented lines that are TOML ("# [[listener]]",
        // "# key = value") after the first commented [[listener]].
        let looks_like_toml = |l: &str| {
            l == "[[listener]]"
                || l.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
        };
        let mut out = String::new();
        let mut in_listener = false;
        for line in text.lines() {
            let uncommented = line.strip_prefix("# ").filter(|l| looks_like_toml(l));
            in_listener |= uncommented == Some("[[listener]]");
            match uncommented {
                Some(l) if in_listener => out.push_str(l),
                _ => out.push_str(line),
            }
            out.push('\n');
        }
        let p = write("example-all.toml", &out);
        let env = EnvSnapshot::from_pairs([("ORDERS_SP_SECRET", "x")]);
        let c = Config::load(&flags(&["--config", p.to_str().unwrap()]), &env)
            .unwrap_or_else(|e| panic!("{e:#}\n{out}"));
        let protocols: Vec<_> = c.listeners.iter().map(|l| l.protocol).collect();
        assert_eq!(
            protocols,
            [Protocol::Postgres, Protocol::Postgres, Protocol::Cassandra]
        );
    }

    #[test]
    fn toml_listeners() {
        let p = write(
            "ok.toml",
            r#"
            handshake_timeout = 5
            [[listener]]
            name = "orders"
            protocol = "postgres"
            listen = "127.0.0.1:15432"
            upstream = "orders.postgres.database.azure.com"
            user = "aad_orders"
            database = "orders"
            credential = { kind = "managed-identity", resource_id = "/subscriptions/x" }
            tls = { server_name = "other.example" }
            [[listener]]
            protocol = "postgres"
            listen = "127.0.0.1:15433"
            upstream = "b:6432"
            user = "u"
            "#,
        );
        let c = Config::load(
            &flags(&["--config", p.to_str().unwrap()]),
            &EnvSnapshot::default(),
        )
        .unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.handshake_timeout, Duration::from_secs(5));
        assert_eq!(c.listeners[0].tls_server_name, "other.example");
        assert_eq!(c.listeners[1].upstream_port, 6432);
        assert_eq!(c.listeners[1].name, "listener1");
        assert!(matches!(c.listeners[1].credential, CredentialSpec::Default));
    }

    /// The error (with its context chain) of loading `text` as the file `name`.
    fn file_error(name: &str, text: &str) -> String {
        let p = write(name, text);
        let flags = flags(&["--config", p.to_str().unwrap()]);
        format!(
            "{:#}",
            Config::load(&flags, &EnvSnapshot::default()).unwrap_err()
        )
    }

    #[test]
    fn toml_errors_name_file_and_key() {
        let e = file_error(
            "bad.toml",
            "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\nlisten = 5\n",
        );
        assert!(e.contains("bad.toml") && e.contains("listen"), "{e}");

        let e = file_error(
            "typo.toml",
            "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\nlistn = \"x\"\n",
        );
        assert!(e.contains("typo.toml") && e.contains("listn"), "{e}");

        let e = file_error(
            "addr.toml",
            "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\nlisten = \"localhost\"\n",
        );
        assert!(
            e.contains("addr.toml") && e.contains("listener[0]") && e.contains("IP:PORT"),
            "{e}"
        );

        let e = file_error(
            "proto.toml",
            "[[listener]]\nprotocol = \"mysql\"\nupstream = \"h\"\nuser = \"u\"\n",
        );
        assert!(e.contains("proto.toml") && e.contains("postgres"), "{e}");
    }

    #[test]
    fn cassandra_listeners() {
        let p = write(
            "cql.toml",
            r#"
            [[listener]]
            name = "catalog"
            protocol = "cassandra"
            upstream = "acct.cassandra.cosmos.azure.com"
            user = "acct"
            list_keys_url = "https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/acct/listKeys?api-version=2021-04-15"
            key = "secondary"
            data_center = "datacenter1"
            [[listener]]
            protocol = "cassandra"
            listen = "127.0.0.1:9043"
            upstream = "127.0.0.1:9142"
            user = "dev"
            password = "file"
            password_file = "/run/secrets/cql"
            "#,
        );
        let c = Config::load(
            &flags(&["--config", p.to_str().unwrap()]),
            &EnvSnapshot::default(),
        )
        .unwrap();
        let cosmos = &c.listeners[0];
        assert_eq!(cosmos.listen.to_string(), "127.0.0.1:9042");
        assert_eq!(cosmos.upstream_port, 10350);
        assert_eq!(cosmos.scope, ARM_SCOPE);
        let cql = cosmos.cassandra.as_ref().unwrap();
        assert_eq!(cql.max_protocol_version, 4, "Cosmos DB speaks v4 only");
        assert!(cql.compression.is_empty(), "Cosmos DB refuses compression");
        assert_eq!(cql.data_center.as_deref(), Some("datacenter1"));
        assert!(matches!(
            cql.password,
            CassandraPassword::CosmosKeys {
                key: CosmosKeyKind::Secondary,
                ..
            }
        ));
        let dev = c.listeners[1].cassandra.as_ref().unwrap();
        assert_eq!(dev.max_protocol_version, 5);
        assert!(matches!(dev.password, CassandraPassword::File(_)));

        let e = file_error(
            "cql-bad.toml",
            "[[listener]]\nprotocol = \"cassandra\"\nupstream = \"h\"\nuser = \"u\"\n",
        );
        assert!(
            e.contains("cql-bad.toml") && e.contains("list_keys_url"),
            "{e}"
        );
        let e = file_error(
            "pg-cql-key.toml",
            "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\ndata_center = \"x\"\n",
        );
        assert!(e.contains("data_center") && e.contains("cassandra"), "{e}");
    }

    #[test]
    fn service_connector_cosmos_and_postgres_together() {
        let env = EnvSnapshot::from_pairs([
            (
                "AZURE_POSTGRESQL_CONNECTIONSTRING",
                "host=pg.postgres.database.azure.com dbname=d user=u",
            ),
            (
                "AZURE_COSMOS_CONTACTPOINT",
                "acct.cassandra.cosmos.azure.com",
            ),
            ("AZURE_COSMOS_PORT", "10350"),
            ("AZURE_COSMOS_USERNAME", "acct"),
            (
                "AZURE_COSMOS_LISTKEYURL",
                "https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/acct/listKeys?api-version=2021-04-15",
            ),
            (
                "AZURE_COSMOS_SCOPE",
                "https://management.azure.com/.default",
            ),
            ("AZURE_COSMOS_CLIENTID", "mi-client"),
        ]);
        let c = Config::load(&flags(&["--cassandra-listen", "127.0.0.1:19042"]), &env).unwrap();
        assert_eq!(c.listeners.len(), 2);
        let cql = &c.listeners[1];
        assert_eq!(
            (cql.protocol, cql.listen.to_string(), cql.upstream_port),
            (Protocol::Cassandra, "127.0.0.1:19042".to_owned(), 10350)
        );
        assert!(
            matches!(&cql.credential, CredentialSpec::ManagedIdentity { id: Some(UserAssignedId::ClientId(id)) } if id == "mi-client")
        );
        assert!(matches!(c.listeners[0].credential, CredentialSpec::Default));
    }

    #[test]
    fn client_secret_comes_from_the_environment() {
        let text = "[[listener]]\nprotocol = \"postgres\"\nupstream = \"h\"\nuser = \"u\"\ncredential = { kind = \"client-secret\", tenant_id = \"t\", client_id = \"c\" }\n";
        let e = file_error("sp.toml", text);
        assert!(e.contains("AZURE_CLIENT_SECRET"), "{e}");
        let p = write("sp.toml", text);
        let env = EnvSnapshot::from_pairs([("AZURE_CLIENT_SECRET", "x")]);
        Config::load(&flags(&["--config", p.to_str().unwrap()]), &env).unwrap();
    }

    #[test]
    fn one_managed_identity_selector() {
        let e = Config::load(
            &flags(&[
                "--postgres-upstream",
                "h",
                "--postgres-user",
                "u",
                "--credential",
                "managed-identity",
                "--client-id",
                "a",
                "--object-id",
                "b",
            ]),
            &EnvSnapshot::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("at most one"), "{e:#}");
    }
}
