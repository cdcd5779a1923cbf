//! The TOML file (`--config FILE`, see `proxy.toml.example`): serde types that mirror its keys,
//! and their translation into [`ListenerSettings`].
//!
//! Everything that can be checked by type is checked by serde while reading, so a wrong value
//! or an unknown key is reported by `toml` with the file, the line and the key (enums such as
//! `protocol`, `password` and `credential.kind` are deserialized directly). The rest is checked
//! by [`super::listener::build`], with the listener's index as context.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use dbproxy_credentials::CosmosKeyKind;
use serde::{Deserialize, Deserializer};

use super::{
    ClientTlsConfig, ClientTlsMode, Protocol, duration,
    flags::CassandraPasswordKind,
    listener::{CqlSettings, Credential, CredentialInput, ListenerSettings, Origin},
    service_connector::split_host_port,
    size,
};

/// The file's top level. Durations are TOML integers (seconds) or strings such as "30s".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub ca_file: Option<PathBuf>,
    pub imds_endpoint: Option<String>,
    pub authority_host: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize")]
    pub handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize")]
    pub connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize")]
    pub credential_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize")]
    pub max_shutdown_delay: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize")]
    pub min_shutdown_delay: Option<Duration>,
    pub admin_listen: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize")]
    pub idle_timeout: Option<Duration>,
    pub max_connections: Option<usize>,
    pub session_threads: Option<usize>,
    pub unix_socket_mode: Option<String>,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<FileListener>,
    pub kubernetes: Option<super::pod_identity::FileKubernetes>,
}

/// One `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    name: Option<String>,
    protocol: Protocol,
    listen: Option<String>,
    upstream: String,
    /// Optional with pod_identity (the user then comes from the service account).
    #[serde(default)]
    user: String,
    database: Option<String>,
    scope: Option<String>,
    max_connections: Option<usize>,
    /// postgres: upstream sessions logged in ahead of clients (default 0: off).
    warm_sessions: Option<usize>,
    /// postgres: warm sessions are closed unused before this age (default "5m").
    #[serde(default, deserialize_with = "duration::deserialize")]
    warm_session_max_age: Option<Duration>,
    /// cassandra: "cosmos-keys" (default), "token" or "file".
    password: Option<CassandraPasswordKind>,
    list_keys_url: Option<String>,
    #[serde(default, deserialize_with = "cosmos_key")]
    key: Option<CosmosKeyKind>,
    password_file: Option<PathBuf>,
    max_protocol_version: Option<u8>,
    data_center: Option<String>,
    compression: Option<Vec<String>>,
    /// cassandra: the largest frame relayed, e.g. "16MiB" or 16777216.
    #[serde(default, deserialize_with = "size::deserialize")]
    max_frame_size: Option<usize>,
    /// cassandra: the upstream is Cosmos DB (default: a *.cosmos.azure.com host).
    cosmos: Option<bool>,
    /// cassandra, Cosmos DB: resend throttled requests (default true).
    cosmos_retry: Option<bool>,
    cosmos_max_retries: Option<u32>,
    #[serde(default, deserialize_with = "duration::deserialize")]
    cosmos_max_retry_wait: Option<Duration>,
    client_tls: Option<ClientTlsConfig>,
    /// "disable" turns the self-signed TLS offer off when no client_tls is given.
    client_tls_mode: Option<ClientTlsMode>,
    #[serde(default)]
    credential: CredentialInput,
    #[serde(default)]
    tls: FileTls,
    pod_identity: Option<super::pod_identity::PodIdentityConfig>,
    #[serde(default)]
    allow_uids: Vec<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca_file: Option<PathBuf>,
    server_name: Option<String>,
}

/// `key = "secondary"` etc., with [`CosmosKeyKind`]'s own spellings.
fn cosmos_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CosmosKeyKind>, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// Reads the file's text; the error names the file.
pub fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))
}

/// Deserializes the text of the file at `path`; errors name the file (and `toml`'s the line
/// and key).
pub fn parse(path: &Path, text: &str) -> anyhow::Result<FileConfig> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
}

impl FileConfig {
    /// Takes the `[[listener]]`s out as settings, each with the file's global defaults
    /// (`max_connections`, `unix_socket_mode`) under the listener's own keys, and its index.
    pub fn take_listeners(
        &mut self,
    ) -> impl Iterator<Item = (usize, anyhow::Result<ListenerSettings>)> + use<> {
        let max_connections = self.max_connections;
        let unix_socket_mode = self.unix_socket_mode.clone();
        std::mem::take(&mut self.listeners)
            .into_iter()
            .enumerate()
            .map(move |(i, l)| (i, l.settings(i, max_connections, unix_socket_mode.clone())))
    }
}

impl FileListener {
    fn settings(
        self,
        index: usize,
        max_connections: Option<usize>,
        unix_socket_mode: Option<String>,
    ) -> anyhow::Result<ListenerSettings> {
        let (host, port) = split_host_port(&self.upstream)
            .with_context(|| format!("upstream: expected HOST[:PORT], got {:?}", self.upstream))?;
        if host.is_empty() {
            bail!("upstream: expected HOST[:PORT], got {:?}", self.upstream);
        }
        Ok(ListenerSettings {
            origin: Origin::File,
            name: self.name.unwrap_or_else(|| format!("listener{index}")),
            protocol: self.protocol,
            listen: self.listen,
            unix_socket_mode,
            upstream_host: host,
            upstream_port: port,
            user: self.user,
            database: self.database,
            credential: Credential::Input(self.credential),
            scope: self.scope,
            tls_ca_file: self.tls.ca_file,
            tls_server_name: self.tls.server_name,
            max_connections: self.max_connections.or(max_connections),
            warm_sessions: self.warm_sessions,
            warm_session_max_age: self.warm_session_max_age,
            cql: CqlSettings {
                password: self.password,
                list_keys_url: self.list_keys_url,
                key: self.key,
                password_file: self.password_file,
                max_protocol_version: self.max_protocol_version,
                data_center: self.data_center,
                compression: self.compression,
                max_frame_size: self.max_frame_size,
                cosmos: self.cosmos,
                cosmos_retry: self.cosmos_retry,
                cosmos_max_retries: self.cosmos_max_retries,
                cosmos_max_retry_wait: self.cosmos_max_retry_wait,
            },
            client_tls: self.client_tls,
            client_tls_mode: self.client_tls_mode,
            pod_identity: self.pod_identity,
            allow_uids: self.allow_uids,
        })
    }
}
