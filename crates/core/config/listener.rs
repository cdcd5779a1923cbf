//! The one place a [`ListenerConfig`] is built.
//!
//! The TOML file ([`super::file`]), the flags and Service Connector's variables
//! ([`super::from_flags`]) each describe a listener as [`ListenerSettings`]: what they were told,
//! already merged in order of precedence, with nothing defaulted and nothing checked.
//! [`build`] applies the defaults (listen address and upstream port by protocol, scope by
//! password source, Cosmos DB quirks) and validates everything, so every source gets the same
//! rules and the same error messages (worded with the source's own key names, see [`Origin`]).

use std::path::PathBuf;

use anyhow::{Context, bail};
use dbproxy_credentials::{CosmosKeyKind, CredentialSpec, Secret, UserAssignedId};
use dbproxy_runtime::ListenAddr;

use super::{
    ARM_SCOPE, COSMOS_CASSANDRA_PORT, COSMOS_SCOPE, CassandraPassword, CassandraSettings,
    ClientTlsConfig, ClientTlsMode, DEFAULT_CASSANDRA_LISTEN, DEFAULT_POSTGRES_LISTEN, EnvSnapshot,
    ListenerConfig, POSTGRES_SCOPE, Protocol,
    flags::{CassandraPasswordKind, CredentialKind},
};

/// Where a listener's settings came from; error messages use that source's key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `[[listener]]` of the TOML file (keys such as `listen`, `scope`).
    File,
    /// The command line, `ENTRA_DB_PROXY_*` and Service Connector's variables (keys such as
    /// `--postgres-listen`).
    Flags,
}

/// A listener as a source describes it: merged in order of precedence, not yet defaulted or
/// validated. `None` means "not given", so that [`build`] applies the defaults.
#[derive(Debug)]
pub struct ListenerSettings {
    /// Which key names errors use.
    pub origin: Origin,
    /// Name used in logs.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// `IP:PORT` or a Unix socket path (default by protocol).
    pub listen: Option<String>,
    /// Octal permissions of a Unix socket (default 0600).
    pub unix_socket_mode: Option<String>,
    /// Upstream host.
    pub upstream_host: String,
    /// Upstream port (default by protocol).
    pub upstream_port: Option<u16>,
    /// Entra user to log in as.
    pub user: String,
    /// Database when the client names none (PostgreSQL only).
    pub database: Option<String>,
    /// Where the token comes from.
    pub credential: Credential,
    /// Token scope (default by protocol and CQL password source).
    pub scope: Option<String>,
    /// Extra CA for this upstream.
    pub tls_ca_file: Option<PathBuf>,
    /// Name the upstream certificate must match (default: the upstream host).
    pub tls_server_name: Option<String>,
    /// Connection cap (default 0: none).
    pub max_connections: Option<usize>,
    /// Warm upstream sessions kept ready (PostgreSQL only; default 0: off).
    pub warm_sessions: Option<usize>,
    /// Warm sessions are closed unused before this age (default 5 minutes).
    pub warm_session_max_age: Option<std::time::Duration>,
    /// CQL settings (must all be unset for PostgreSQL).
    pub cql: CqlSettings,
    /// TLS between clients and the proxy with a configured certificate.
    pub client_tls: Option<ClientTlsConfig>,
    /// `disable` turns the self-signed offer off; `require` needs `client_tls`.
    pub client_tls_mode: Option<ClientTlsMode>,
    /// Per-pod identity.
    pub pod_identity: Option<super::pod_identity::PodIdentityConfig>,
    /// Unix socket: uids admitted.
    pub allow_uids: Vec<u32>,
}

/// The CQL part of [`ListenerSettings`].
#[derive(Debug, Default)]
pub struct CqlSettings {
    /// Password source (default: `file` when only a password file is given, else `cosmos-keys`).
    pub password: Option<CassandraPasswordKind>,
    /// ARM listKeys URL (cosmos-keys).
    pub list_keys_url: Option<String>,
    /// Which account key (cosmos-keys; default primary).
    pub key: Option<CosmosKeyKind>,
    /// Password file (file).
    pub password_file: Option<PathBuf>,
    /// Highest protocol version offered (default 4 for Cosmos DB, else 5).
    pub max_protocol_version: Option<u8>,
    /// `data_center` shown to drivers.
    pub data_center: Option<String>,
    /// Compression algorithms offered (default none for Cosmos DB, else lz4 and snappy).
    pub compression: Option<Vec<String>>,
    /// The largest frame relayed, in bytes, header included (default 16 MiB).
    pub max_frame_size: Option<usize>,
    /// The upstream is Cosmos DB (default: a `*.cosmos.azure.com` host).
    pub cosmos: Option<bool>,
    /// Throttled requests resent (Cosmos DB; default on).
    pub cosmos_retry: Option<bool>,
    /// Retries per throttled request.
    pub cosmos_max_retries: Option<u32>,
    /// Longest total wait of a throttled request.
    pub cosmos_max_retry_wait: Option<std::time::Duration>,
}

impl CqlSettings {
    /// The password source, with its default applied.
    pub fn password_kind(&self) -> CassandraPasswordKind {
        match self.password {
            Some(k) => k,
            None if self.password_file.is_some() && self.list_keys_url.is_none() => {
                CassandraPasswordKind::File
            }
            None => CassandraPasswordKind::CosmosKeys,
        }
    }
}

/// Where a listener's token comes from.
#[derive(Debug)]
pub enum Credential {
    /// A kind and its settings, checked by [`build`].
    Input(CredentialInput),
    /// Complete already (Service Connector's variables).
    Resolved(CredentialSpec),
}

/// Credential settings, from flags or a file's `credential = { kind = …, … }` (deserialized
/// straight from the file).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput {
    /// Kind.
    pub kind: CredentialKind,
    /// Client id (user-assigned managed identity, service principal, workload identity).
    pub client_id: Option<String>,
    /// Object id of a user-assigned managed identity.
    pub object_id: Option<String>,
    /// Resource id of a user-assigned managed identity.
    pub resource_id: Option<String>,
    /// Tenant id.
    pub tenant_id: Option<String>,
    /// Variable holding the client secret (default AZURE_CLIENT_SECRET).
    pub client_secret_env: Option<String>,
    /// PEM certificate and key of a service principal.
    pub certificate: Option<PathBuf>,
    /// Federated token file (workload identity).
    pub token_file: Option<PathBuf>,
}

/// Keys that only CQL listeners take, with their value, as the file calls them.
fn cql_only_keys(c: &CqlSettings) -> [(&'static str, bool); 12] {
    [
        ("password", c.password.is_some()),
        ("list_keys_url", c.list_keys_url.is_some()),
        ("key", c.key.is_some()),
        ("password_file", c.password_file.is_some()),
        ("max_protocol_version", c.max_protocol_version.is_some()),
        ("data_center", c.data_center.is_some()),
        ("compression", c.compression.is_some()),
        ("max_frame_size", c.max_frame_size.is_some()),
        ("cosmos", c.cosmos.is_some()),
        ("cosmos_retry", c.cosmos_retry.is_some()),
        ("cosmos_max_retries", c.cosmos_max_retries.is_some()),
        ("cosmos_max_retry_wait", c.cosmos_max_retry_wait.is_some()),
    ]
}

/// Applies the defaults and validates: the only way to a [`ListenerConfig`].
pub fn build(s: ListenerSettings, env: &EnvSnapshot) -> anyhow::Result<ListenerConfig> {
    let origin = s.origin;
    let flag = |name: &str| match s.protocol {
        Protocol::Postgres => format!("--postgres-{name}"),
        Protocol::Cassandra => format!("--cassandra-{name}"),
    };
    if s.upstream_host.is_empty() {
        match origin {
            Origin::File => bail!("upstream: expected HOST[:PORT], got an empty host"),
            Origin::Flags => bail!(
                "{}: expected HOST[:PORT], got an empty host",
                flag("upstream")
            ),
        }
    }
    if s.user.is_empty() && s.pod_identity.is_none() {
        match origin {
            Origin::File => bail!("user: expected the Entra user name to log in as"),
            Origin::Flags => bail!("{}: expected the user name to log in as", flag("user")),
        }
    }
    let unix_mode = s
        .unix_socket_mode
        .as_deref()
        .map(parse_mode)
        .unwrap_or(Ok(0o600))?;
    let (default_listen, default_port) = match s.protocol {
        Protocol::Postgres => (DEFAULT_POSTGRES_LISTEN, 5432),
        Protocol::Cassandra => (DEFAULT_CASSANDRA_LISTEN, COSMOS_CASSANDRA_PORT),
    };
    let listen = parse_listen(
        s.listen.as_deref().unwrap_or(default_listen),
        s.protocol,
        unix_mode,
    );
    let listen = match origin {
        Origin::File => listen?,
        Origin::Flags => listen.with_context(|| flag("listen"))?,
    };
    if s.client_tls_mode == Some(ClientTlsMode::Require) && s.client_tls.is_none() {
        match origin {
            Origin::File => bail!(
                "client_tls_mode: \"require\" needs client_tls = {{ cert_file, key_file }} (or --client-tls-cert and --client-tls-key)"
            ),
            Origin::Flags => bail!(
                "--client-tls-mode require needs --client-tls-cert and --client-tls-key (listener {})",
                s.name
            ),
        }
    }
    let (warm_key, warm_age_key) = match origin {
        Origin::File => ("warm_sessions", "warm_session_max_age"),
        Origin::Flags => (
            "--postgres-warm-sessions",
            "--postgres-warm-session-max-age",
        ),
    };
    if let Some(n) = s.warm_sessions
        && n > MAX_WARM_SESSIONS
    {
        bail!("{warm_key}: expected 0 to {MAX_WARM_SESSIONS}, got {n}");
    }
    if let Some(age) = s.warm_session_max_age
        && age < std::time::Duration::from_secs(1)
    {
        bail!(
            "{warm_age_key}: expected at least 1s, got {}",
            humantime::format_duration(age)
        );
    }
    if s.warm_sessions.unwrap_or(0) > 0 && s.pod_identity.is_some() {
        bail!(
            "{warm_key}: warm sessions are logged in ahead as the listener's one user; with pod \
             identity each client logs in as its own, so the two cannot be combined"
        );
    }
    super::pod_identity::validate(&listen, s.pod_identity.as_ref(), &s.allow_uids)?;
    let cassandra = match s.protocol {
        Protocol::Postgres => {
            for (key, set) in cql_only_keys(&s.cql) {
                if set {
                    bail!("{key}: only for protocol = \"cassandra\" listeners");
                }
            }
            None
        }
        Protocol::Cassandra => {
            if s.warm_sessions.is_some() || s.warm_session_max_age.is_some() {
                bail!("{warm_key}: only for protocol = \"postgres\" listeners");
            }
            if s.database.is_some() {
                bail!(
                    "database: only for protocol = \"postgres\" listeners (CQL clients choose their keyspace)"
                );
            }
            Some(cassandra_settings(&s.upstream_host, s.cql)?)
        }
    };
    let scope = match (s.scope, &cassandra) {
        (Some(scope), _) => scope,
        (None, None) => POSTGRES_SCOPE.to_owned(),
        (None, Some(c)) => match c.password {
            CassandraPassword::CosmosKeys { .. } | CassandraPassword::File(_) => {
                ARM_SCOPE.to_owned()
            }
            CassandraPassword::Token if c.cosmos => COSMOS_SCOPE.to_owned(),
            CassandraPassword::Token => match origin {
                Origin::File => bail!(
                    "scope: required when password = \"token\" (the audience the Cassandra deployment accepts)"
                ),
                Origin::Flags => bail!(
                    "--cassandra-password token needs a scope: set AZURE_COSMOS_SCOPE or --scope"
                ),
            },
        },
    };
    let credential = match s.credential {
        Credential::Resolved(spec) => spec,
        Credential::Input(c) => match origin {
            Origin::File => credential_spec(&c, env).context("credential")?,
            Origin::Flags => credential_spec(&c, env)?,
        },
    };
    Ok(ListenerConfig {
        name: s.name,
        protocol: s.protocol,
        listen,
        tls_server_name: s.tls_server_name.unwrap_or_else(|| s.upstream_host.clone()),
        upstream_host: s.upstream_host,
        upstream_port: s.upstream_port.unwrap_or(default_port),
        user: s.user,
        database: s.database,
        credential,
        scope,
        tls_ca_file: s.tls_ca_file,
        max_connections: s.max_connections.unwrap_or(0),
        warm_sessions: s.warm_sessions.unwrap_or(0),
        warm_session_max_age: s
            .warm_session_max_age
            .unwrap_or(dbproxy_runtime::postgres::warm::DEFAULT_MAX_AGE),
        cassandra,
        client_tls_self_signed: s.client_tls_mode != Some(ClientTlsMode::Disable),
        pod_identity: s.pod_identity,
        allow_uids: s.allow_uids,
        client_tls: s.client_tls,
    })
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

/// Octal permissions such as `0600` (or `0o600`).
pub fn parse_mode(s: &str) -> anyhow::Result<u32> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| {
            format!("unix_socket_mode: expected octal permissions such as 0600, got {s:?}")
        })
}

/// The most warm sessions a listener keeps (each is a server connection).
const MAX_WARM_SESSIONS: usize = 1000;

/// The smallest `max_frame_size` accepted: what the client handshake itself allows.
const MIN_FRAME_SIZE: usize = 64 * 1024;
/// The largest: the protocol's own bound on a body (256 MB) plus the header.
const MAX_FRAME_SIZE: usize = 256 * 1024 * 1024 + 9;

fn cassandra_settings(host: &str, c: CqlSettings) -> anyhow::Result<CassandraSettings> {
    let password = match c.password_kind() {
        CassandraPasswordKind::CosmosKeys => {
            let url = c.list_keys_url.as_deref().context(
                "list_keys_url: the Cosmos DB account's ARM listKeys URL is required (AZURE_COSMOS_LISTKEYURL: https://management.azure.com/subscriptions/…/databaseAccounts/<account>/listKeys?api-version=2021-04-15)",
            )?;
            let list_keys_url = url::Url::parse(url)
                .with_context(|| format!("list_keys_url: expected a URL, got {url:?}"))?;
            CassandraPassword::CosmosKeys {
                list_keys_url,
                key: c.key.unwrap_or_default(),
            }
        }
        CassandraPasswordKind::Token => CassandraPassword::Token,
        CassandraPasswordKind::File => CassandraPassword::File(
            c.password_file
                .context("password_file: required with password = \"file\"")?,
        ),
    };
    let cosmos = c.cosmos.unwrap_or_else(|| super::is_cosmos(host));
    let mut settings = CassandraSettings::defaults_for(cosmos, password);
    if let Some(v) = c.max_protocol_version {
        if !(3..=5).contains(&v) {
            bail!("max_protocol_version: expected 3, 4 or 5, got {v}");
        }
        settings.max_protocol_version = v;
    }
    settings.data_center = c.data_center;
    if let Some(algos) = c.compression {
        for algo in &algos {
            if algo != "lz4" && algo != "snappy" {
                bail!("compression: expected \"lz4\" and/or \"snappy\", got {algo:?}");
            }
        }
        settings.compression = algos;
    }
    if let Some(size) = c.max_frame_size {
        if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&size) {
            bail!(
                "max_frame_size: expected 64KiB to 256MiB (Cassandra's default is 16MiB), got {size} bytes"
            );
        }
        settings.max_frame_size = size;
    }
    let retry_set = c.cosmos_retry.is_some()
        || c.cosmos_max_retries.is_some()
        || c.cosmos_max_retry_wait.is_some();
    if retry_set && !settings.cosmos {
        bail!(
            "cosmos_retry, cosmos_max_retries, cosmos_max_retry_wait: only for Cosmos DB upstreams (*.cosmos.azure.com, or cosmos = true)"
        );
    }
    settings.cosmos_retry = match (settings.cosmos, c.cosmos_retry) {
        (false, _) | (true, Some(false)) => None,
        (true, _) => {
            let mut p = dbproxy_cassandra::cosmos::RetryPolicy::default();
            if let Some(n) = c.cosmos_max_retries {
                p.max_retries = n;
            }
            if let Some(w) = c.cosmos_max_retry_wait {
                p.max_wait = w;
            }
            Some(p)
        }
    };
    Ok(settings)
}

/// Checks that the settings fit the kind and builds the spec.
fn credential_spec(c: &CredentialInput, env: &EnvSnapshot) -> anyhow::Result<CredentialSpec> {
    let tenant = || {
        c.tenant_id
            .clone()
            .or_else(|| env.get("AZURE_TENANT_ID").map(str::to_owned))
            .context("tenant_id: required for this credential kind (or set AZURE_TENANT_ID)")
    };
    let client = || {
        c.client_id
            .clone()
            .or_else(|| env.get("AZURE_CLIENT_ID").map(str::to_owned))
            .context("client_id: required for this credential kind (or set AZURE_CLIENT_ID)")
    };
    Ok(match c.kind {
        CredentialKind::Default => CredentialSpec::Default,
        CredentialKind::ManagedIdentity => {
            let ids = [
                c.client_id.clone().map(UserAssignedId::ClientId),
                c.object_id.clone().map(UserAssignedId::ObjectId),
                c.resource_id.clone().map(UserAssignedId::ResourceId),
            ];
            let mut given = ids.into_iter().flatten();
            let id = given.next();
            if given.next().is_some() {
                bail!("managed identity: give at most one of client_id, object_id, resource_id");
            }
            CredentialSpec::ManagedIdentity { id }
        }
        CredentialKind::WorkloadIdentity => CredentialSpec::WorkloadIdentity {
            tenant_id: c.tenant_id.clone(),
            client_id: c.client_id.clone(),
            token_file: c.token_file.clone(),
        },
        CredentialKind::ClientSecret => {
            let var = c
                .client_secret_env
                .as_deref()
                .unwrap_or("AZURE_CLIENT_SECRET");
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
                .clone()
                .or_else(|| env.get("AZURE_CLIENT_CERTIFICATE_PATH").map(PathBuf::from))
                .context("certificate: a PEM file with the certificate and its private key is required (or set AZURE_CLIENT_CERTIFICATE_PATH)")?;
            CredentialSpec::ClientCertificate {
                tenant_id: tenant()?,
                client_id: client()?,
                certificate,
            }
        }
        CredentialKind::AzureCli => CredentialSpec::AzureCli {
            tenant_id: c.tenant_id.clone(),
        },
    })
}
