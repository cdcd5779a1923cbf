//! The command line (clap). Every option can also be set through the environment variable shown in
//! `--help`; flags win over the environment, which wins over the TOML file.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use dbproxy_credentials::CosmosKeyKind;

use super::duration;
use crate::logging::LogFormat;

const ABOUT: &str = "\
A local proxy that lets unmodified PostgreSQL and CQL clients reach Azure Database for \
PostgreSQL and Azure Cosmos DB for Apache Cassandra with an Entra ID identity: the application \
connects to localhost with no password; the proxy obtains an access token (managed identity, \
workload identity, service principal or Azure CLI), derives the password (the token, or the \
Cosmos DB account key from ARM listKeys), logs in upstream over verified TLS, and relays the \
session.";

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("EDP_GIT_COMMIT"),
    "\ntarget: ",
    env!("EDP_TARGET"),
    "\nprofile: ",
    env!("EDP_PROFILE"),
    "\ntls: rustls with aws-lc-rs (no OpenSSL)",
);

const AFTER: &str = "\
With no options, the proxy reads the variables that Azure Service Connector sets \
(AZURE_POSTGRESQL_CONNECTIONSTRING, or AZURE_POSTGRESQL_HOST with _USER/_USERNAME, \
_DATABASE/_NAME and _PORT; AZURE_POSTGRESQL_CLIENTID, _CLIENTSECRET, _TENANTID for the \
identity) and serves that server on 127.0.0.1:5432. Use --config FILE for several listeners \
(see proxy.toml.example). With AZURE_COSMOS_CONTACTPOINT, AZURE_COSMOS_USERNAME and \
AZURE_COSMOS_LISTKEYURL (and AZURE_COSMOS_SCOPE, AZURE_COSMOS_CLIENTID, _CLIENTSECRET, _TENANTID) \
it also serves Cosmos DB for Apache Cassandra on 127.0.0.1:9042; both sets give both listeners.";

/// entra-db-proxy's command line.
#[derive(Debug, Parser)]
#[command(name = "entra-db-proxy", version, long_version = LONG_VERSION, about = ABOUT, after_help = AFTER)]
pub struct Flags {
    /// TOML configuration file with any number of listeners (see proxy.toml.example).
    #[arg(long, env = "ENTRA_DB_PROXY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Local address of the PostgreSQL listener: IP:PORT, or a directory for a Unix socket (`psql -h DIR`) [default: 127.0.0.1:5432].
    #[arg(long, env = "ENTRA_DB_PROXY_POSTGRES_LISTEN", value_name = "ADDR|DIR")]
    pub postgres_listen: Option<String>,

    /// PostgreSQL server to proxy to, HOST[:PORT] (port 5432 by default). Overrides Service Connector's variables.
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_POSTGRES_UPSTREAM",
        value_name = "HOST[:PORT]"
    )]
    pub postgres_upstream: Option<String>,

    /// Entra user (role) to log in as upstream, e.g. the managed identity's name.
    #[arg(long, env = "ENTRA_DB_PROXY_POSTGRES_USER", value_name = "USER")]
    pub postgres_user: Option<String>,

    /// Database used when a client names none.
    #[arg(long, env = "ENTRA_DB_PROXY_POSTGRES_DATABASE", value_name = "DB")]
    pub postgres_database: Option<String>,

    /// Upstream sessions the PostgreSQL listener keeps logged in ahead of clients, so that a client connecting to the default database is served at once (for apps that connect per request); each is a server connection, counting against max_connections [default: 0, off].
    #[arg(long, env = "ENTRA_DB_PROXY_POSTGRES_WARM_SESSIONS", value_name = "N")]
    pub postgres_warm_sessions: Option<usize>,

    /// Warm sessions are closed unused before this age, and replaced: 5m, 1h, or seconds as a bare number (300) [default: 5m].
    #[arg(long, env = "ENTRA_DB_PROXY_POSTGRES_WARM_SESSION_MAX_AGE", value_name = "DURATION", value_parser = duration::parse)]
    pub postgres_warm_session_max_age: Option<Duration>,

    /// Local address of the CQL listener: IP:PORT or a Unix socket path [default: 127.0.0.1:9042].
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CASSANDRA_LISTEN",
        value_name = "ADDR|PATH"
    )]
    pub cassandra_listen: Option<String>,

    /// Permissions of Unix sockets the proxy creates, in octal [default: 0600, owner only].
    #[arg(long, env = "ENTRA_DB_PROXY_UNIX_SOCKET_MODE", value_name = "MODE")]
    pub unix_socket_mode: Option<String>,

    /// PEM certificate for TLS between clients and the proxy (with --client-tls-key; reloaded when it changes).
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CLIENT_TLS_CERT",
        value_name = "FILE",
        requires = "client_tls_key"
    )]
    pub client_tls_cert: Option<PathBuf>,

    /// PEM private key for TLS between clients and the proxy.
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CLIENT_TLS_KEY",
        value_name = "FILE",
        requires = "client_tls_cert"
    )]
    pub client_tls_key: Option<PathBuf>,

    /// Offer TLS to clients (plain ones are served too; without --client-tls-cert a self-signed certificate, for sslmode=require clients), require it, or disable it [default: offer].
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CLIENT_TLS_MODE",
        value_enum,
        value_name = "MODE"
    )]
    pub client_tls_mode: Option<super::ClientTlsMode>,

    /// Cosmos DB for Apache Cassandra contact point, HOST[:PORT] (port 10350 by default). Overrides AZURE_COSMOS_CONTACTPOINT.
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CASSANDRA_UPSTREAM",
        value_name = "HOST[:PORT]"
    )]
    pub cassandra_upstream: Option<String>,

    /// CQL login name: the Cosmos DB account name [default: AZURE_COSMOS_USERNAME].
    #[arg(long, env = "ENTRA_DB_PROXY_CASSANDRA_USER", value_name = "USER")]
    pub cassandra_user: Option<String>,

    /// Where the CQL password comes from [default: cosmos-keys].
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CASSANDRA_PASSWORD",
        value_enum,
        value_name = "SOURCE"
    )]
    pub cassandra_password: Option<CassandraPasswordKind>,

    /// ARM listKeys URL of the Cosmos DB account [default: AZURE_COSMOS_LISTKEYURL].
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CASSANDRA_LIST_KEYS_URL",
        value_name = "URL"
    )]
    pub cassandra_list_keys_url: Option<String>,

    /// Which account key: primary, secondary, readonly-primary, readonly-secondary [default: primary].
    #[arg(long, env = "ENTRA_DB_PROXY_CASSANDRA_KEY", value_name = "KEY", value_parser = parse_cosmos_key)]
    pub cassandra_key: Option<CosmosKeyKind>,

    /// File holding the CQL password (--cassandra-password file; development only).
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CASSANDRA_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub cassandra_password_file: Option<PathBuf>,

    /// data_center shown to drivers, e.g. the name an app passes as its local datacenter [default: the upstream's].
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CASSANDRA_DATA_CENTER",
        value_name = "NAME"
    )]
    pub cassandra_data_center: Option<String>,

    /// Highest CQL protocol version offered to drivers [default: 4 for *.cosmos.azure.com, else 5].
    #[arg(long, env = "ENTRA_DB_PROXY_CASSANDRA_MAX_PROTOCOL_VERSION", value_name = "N", value_parser = clap::value_parser!(u8).range(3..=5))]
    pub cassandra_max_protocol_version: Option<u8>,

    /// Largest CQL frame relayed either way, header included, e.g. 16MiB: a bigger request gets Cassandra's "Request is too big" ERROR, a bigger response closes the session [default: 16MiB, Cassandra's native_transport_max_frame_size].
    #[arg(long, env = "ENTRA_DB_PROXY_CASSANDRA_MAX_FRAME_SIZE", value_name = "SIZE", value_parser = super::size::parse)]
    pub cassandra_max_frame_size: Option<usize>,

    /// Treat the CQL upstream as Cosmos DB (throttling absorbed, request units counted) [default: true for *.cosmos.azure.com].
    #[arg(long, env = "ENTRA_DB_PROXY_CASSANDRA_COSMOS", value_name = "BOOL")]
    pub cassandra_cosmos: Option<bool>,

    /// Resend requests Cosmos DB throttles after its RetryAfterMs [default: true on Cosmos DB].
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CASSANDRA_COSMOS_RETRY",
        value_name = "BOOL"
    )]
    pub cassandra_cosmos_retry: Option<bool>,

    /// Retries per throttled request [default: 9].
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CASSANDRA_COSMOS_MAX_RETRIES",
        value_name = "N"
    )]
    pub cassandra_cosmos_max_retries: Option<u32>,

    /// Longest total wait of a throttled request across its retries [default: 5s].
    #[arg(long, env = "ENTRA_DB_PROXY_CASSANDRA_COSMOS_MAX_RETRY_WAIT", value_name = "DURATION", value_parser = duration::parse)]
    pub cassandra_cosmos_max_retry_wait: Option<Duration>,

    /// How the proxy gets its Entra ID token [default: from Service Connector's variables, else the default chain].
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_CREDENTIAL",
        value_enum,
        value_name = "KIND"
    )]
    pub credential: Option<CredentialKind>,

    /// Client (application) id: of a user-assigned managed identity, a service principal or a workload identity.
    #[arg(long, env = "ENTRA_DB_PROXY_CLIENT_ID", value_name = "ID")]
    pub client_id: Option<String>,

    /// Object (principal) id of a user-assigned managed identity.
    #[arg(long, env = "ENTRA_DB_PROXY_OBJECT_ID", value_name = "ID")]
    pub object_id: Option<String>,

    /// Azure resource id of a user-assigned managed identity.
    #[arg(long, env = "ENTRA_DB_PROXY_RESOURCE_ID", value_name = "ID")]
    pub resource_id: Option<String>,

    /// Tenant id (service principal, workload identity, Azure CLI).
    #[arg(long, env = "ENTRA_DB_PROXY_TENANT_ID", value_name = "ID")]
    pub tenant_id: Option<String>,

    /// PEM file with the service principal's certificate and private key (--credential client-certificate).
    #[arg(long, env = "ENTRA_DB_PROXY_CLIENT_CERTIFICATE", value_name = "FILE")]
    pub client_certificate: Option<PathBuf>,

    /// Federated token file for workload identity [default: AZURE_FEDERATED_TOKEN_FILE].
    #[arg(long, env = "ENTRA_DB_PROXY_FEDERATED_TOKEN_FILE", value_name = "FILE")]
    pub federated_token_file: Option<PathBuf>,

    /// Token scope [default: https://ossrdbms-aad.database.windows.net/.default].
    #[arg(long, env = "ENTRA_DB_PROXY_SCOPE", value_name = "SCOPE")]
    pub scope: Option<String>,

    /// Extra CA certificates (PEM) trusted for the database and for Entra ID, on top of the OS roots.
    #[arg(long, env = "ENTRA_DB_PROXY_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// Name the database server's certificate must be valid for [default: the upstream host].
    #[arg(long, env = "ENTRA_DB_PROXY_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Managed identity (IMDS) endpoint, e.g. a node-local identity agent [default: AZURE_POD_IDENTITY_AUTHORITY_HOST, else http://169.254.169.254].
    #[arg(long, env = "ENTRA_DB_PROXY_IMDS_ENDPOINT", value_name = "URL")]
    pub imds_endpoint: Option<String>,

    /// Entra ID authority [default: AZURE_AUTHORITY_HOST, else https://login.microsoftonline.com].
    #[arg(long, env = "ENTRA_DB_PROXY_AUTHORITY_HOST", value_name = "URL")]
    pub authority_host: Option<String>,

    /// How long a client has to send its startup message, may wait for the credential, and the upstream has to complete a login: 30s, 1m, 1m30s, or seconds as a bare number (30) [default: 30s].
    #[arg(long, env = "ENTRA_DB_PROXY_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)]
    pub handshake_timeout: Option<Duration>,

    /// How long a TCP connection to the upstream may take: 10s, 500ms, or seconds as a bare number (10) [default: 10s].
    #[arg(long, env = "ENTRA_DB_PROXY_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)]
    pub connect_timeout: Option<Duration>,

    /// How long one credential acquisition may take, every HTTP request to Entra ID, managed identity (IMDS, App Service) or ARM listKeys included; a client waiting for it gets the credential error after at most this and the handshake timeout: 30s, 5s, or seconds as a bare number (30) [default: 30s].
    #[arg(long, env = "ENTRA_DB_PROXY_CREDENTIAL_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)]
    pub credential_timeout: Option<Duration>,

    /// How long open sessions get to finish after SIGTERM/SIGINT before they are closed: 30s, 2m, or seconds as a bare number (30) [default: 30s].
    #[arg(long, env = "ENTRA_DB_PROXY_MAX_SHUTDOWN_DELAY", value_name = "DURATION", value_parser = duration::parse)]
    pub max_shutdown_delay: Option<Duration>,

    /// Serve /startup, /liveness, /readiness and /metrics over HTTP on this address (off by default).
    #[arg(long, env = "ENTRA_DB_PROXY_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Most client connections each listener serves at once; more get a "too many connections" error [default: 0, no cap].
    #[arg(long, env = "ENTRA_DB_PROXY_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Threads that run the client sessions, each with its own single-threaded runtime (a session's sockets, task and timers stay on one thread); 0 runs sessions on the shared multi-threaded runtime instead [default: the number of CPUs].
    #[arg(long, env = "ENTRA_DB_PROXY_SESSION_THREADS", value_name = "N")]
    pub session_threads: Option<usize>,

    /// Close sessions that moved no byte for this long: 15m, 1h, or seconds as a bare number (900) [default: 0, never].
    #[arg(long, env = "ENTRA_DB_PROXY_IDLE_TIMEOUT", value_name = "DURATION", value_parser = duration::parse)]
    pub idle_timeout: Option<Duration>,

    /// How long to keep accepting after SIGTERM/SIGINT (readiness fails at once), so load balancers notice: 5s, 500ms, or seconds as a bare number (5) [default: 0s].
    #[arg(long, env = "ENTRA_DB_PROXY_MIN_SHUTDOWN_DELAY", value_name = "DURATION", value_parser = duration::parse)]
    pub min_shutdown_delay: Option<Duration>,

    /// Per-pod identity (DaemonSet): the service accounts that may use the flags' listeners, NAMESPACE/SERVICEACCOUNT or NAMESPACE/*, comma-separated; setting it turns the mode on. Each pod is identified by its source IP among this node's pods and logs in as its service account's Entra identity (annotation azure.workload.identity/client-id) and database user (annotation entra-db-proxy.io/postgres-user or entra-db-proxy.io/cassandra-user, or --pod-identity-user).
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_POD_IDENTITY_ALLOW",
        value_name = "NS/SA,…",
        value_delimiter = ','
    )]
    pub pod_identity_allow: Vec<String>,

    /// Per-pod identity: the database user of a service account, NAMESPACE/SERVICEACCOUNT=USER (comma-separated or repeated); wins over its annotation.
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_POD_IDENTITY_USER",
        value_name = "NS/SA=USER",
        value_delimiter = ','
    )]
    pub pod_identity_user: Vec<String>,

    /// Per-pod identity: the tenant of service accounts without the annotation azure.workload.identity/tenant-id [default: AZURE_TENANT_ID].
    #[arg(long, env = "ENTRA_DB_PROXY_POD_IDENTITY_TENANT_ID", value_name = "ID")]
    pub pod_identity_tenant_id: Option<String>,

    /// Per-pod identity: at most this many identities (token caches) per listener; the least recently used goes first [default: 256].
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_POD_IDENTITY_MAX_IDENTITIES",
        value_name = "N"
    )]
    pub pod_identity_max_identities: Option<usize>,

    /// Per-pod identity: this node's name (the downward API's spec.nodeName); only this node's pods are admitted.
    #[arg(long, env = "ENTRA_DB_PROXY_NODE_NAME", value_name = "NODE")]
    pub node_name: Option<String>,

    /// Per-pod identity: the Kubernetes API server [default: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT].
    #[arg(long, env = "ENTRA_DB_PROXY_KUBERNETES_API", value_name = "URL")]
    pub kubernetes_api: Option<String>,

    /// Per-pod identity: the proxy's own service-account token, re-read on each request [default: /var/run/secrets/kubernetes.io/serviceaccount/token].
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_KUBERNETES_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub kubernetes_token_file: Option<PathBuf>,

    /// Per-pod identity: the cluster CA [default: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt].
    #[arg(long, env = "ENTRA_DB_PROXY_KUBERNETES_CA_FILE", value_name = "FILE")]
    pub kubernetes_ca_file: Option<PathBuf>,

    /// Unix-socket listeners: only these client uids (SO_PEERCRED) are admitted, comma-separated; others are refused with an authentication error.
    #[arg(
        long,
        env = "ENTRA_DB_PROXY_ALLOW_UID",
        value_name = "UID,…",
        value_delimiter = ','
    )]
    pub allow_uid: Vec<u32>,

    /// Log format; the level comes from RUST_LOG (e.g. `info`, `debug`, `entra_db_proxy=trace`).
    #[arg(long, env = "ENTRA_DB_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// What to do [default: serve].
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Acquire each listener's credential and log in upstream once, print a table, and exit
    /// non-zero if any failed (for init containers, CI, and first-run debugging).
    Check,
}

fn parse_cosmos_key(s: &str) -> Result<CosmosKeyKind, String> {
    s.parse()
}

/// Where a CQL listener's password comes from (`--cassandra-password`, the file's `password`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CassandraPasswordKind {
    /// The Cosmos DB account key, from ARM listKeys with the Entra token.
    CosmosKeys,
    /// The Entra access token itself (for deployments that accept tokens).
    Token,
    /// A file's contents (development only).
    File,
}

/// Where the token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    /// Environment service principal → workload identity → managed identity → Azure CLI; the first that answers is kept.
    #[default]
    Default,
    /// Managed identity (IMDS, or App Service / Container Apps via IDENTITY_ENDPOINT); user-assigned with --client-id, --object-id or --resource-id.
    ManagedIdentity,
    /// AKS workload identity (AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID).
    WorkloadIdentity,
    /// Service principal with a secret (read from AZURE_CLIENT_SECRET; never a flag).
    ClientSecret,
    /// Service principal with a certificate (--client-certificate PEM).
    ClientCertificate,
    /// The signed-in Azure CLI user (`az login`), for development.
    AzureCli,
}
