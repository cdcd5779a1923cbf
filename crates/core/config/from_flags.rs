//! The flags (which already include `ENTRA_DB_PROXY_*`) as [`ListenerSettings`].
//!
//! Without `--config`, the flags define at most one PostgreSQL and one CQL listener, each laid
//! over what Service Connector's variables say ([`super::service_connector`]): a flag wins over
//! the variable for the same setting. With `--config`, only the flags that apply to every
//! listener (`--max-connections`, `--unix-socket-mode`, client TLS) are laid over the file's
//! listeners, by [`override_file_listener`].

use anyhow::Context;

use super::{
    ClientTlsConfig, EnvSnapshot, Protocol,
    flags::{CassandraPasswordKind, CredentialKind, Flags},
    listener::{CqlSettings, Credential, CredentialInput, ListenerSettings, Origin},
    service_connector::{self, split_host_port},
};

/// The flags-mode listeners: PostgreSQL, then CQL, each if it has an upstream.
pub fn listeners(flags: &Flags, env: &EnvSnapshot) -> anyhow::Result<Vec<ListenerSettings>> {
    let mut out = Vec::new();
    out.extend(postgres(flags, env)?);
    out.extend(cassandra(flags, env)?);
    Ok(out)
}

/// Lays the flags that apply to every listener over a file listener.
pub fn override_file_listener(flags: &Flags, s: &mut ListenerSettings) {
    s.max_connections = flags.max_connections.or(s.max_connections);
    s.unix_socket_mode = flags.unix_socket_mode.clone().or(s.unix_socket_mode.take());
    // The file's own certificate wins over the flags' (it is the more specific setting).
    s.client_tls = s.client_tls.take().or_else(|| client_tls(flags));
    s.client_tls_mode = flags.client_tls_mode.or(s.client_tls_mode);
    if !flags.allow_uid.is_empty() {
        s.allow_uids = flags.allow_uid.clone();
    }
}

/// `--postgres-*` over `AZURE_POSTGRESQL_*`.
fn postgres(flags: &Flags, env: &EnvSnapshot) -> anyhow::Result<Option<ListenerSettings>> {
    let sc = service_connector::postgres_target(env)?.unwrap_or_default();
    let (host, port) = match &flags.postgres_upstream {
        Some(u) => {
            let (h, p) = split_host_port(u)
                .with_context(|| format!("--postgres-upstream: expected HOST[:PORT], got {u:?}"))?;
            (Some(h), p)
        }
        None => (sc.host, sc.port),
    };
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let pod_identity = super::pod_identity::from_flags(flags)?;
    let user = flags.postgres_user.clone().or(sc.user);
    let user = if pod_identity.is_some() {
        Some(user.unwrap_or_default())
    } else {
        user
    };
    let user = user.with_context(|| {
        format!("no Entra user to log in to {host} as: set --postgres-user (ENTRA_DB_PROXY_POSTGRES_USER) or AZURE_POSTGRESQL_USER")
    })?;
    Ok(Some(ListenerSettings {
        origin: Origin::Flags,
        name: "postgres".into(),
        protocol: Protocol::Postgres,
        listen: flags.postgres_listen.clone(),
        unix_socket_mode: flags.unix_socket_mode.clone(),
        upstream_host: host,
        upstream_port: port,
        user,
        database: flags.postgres_database.clone().or(sc.database),
        credential: credential(flags, "AZURE_POSTGRESQL", env)?,
        scope: flags.scope.clone(),
        tls_ca_file: None,
        tls_server_name: flags.tls_server_name.clone(),
        max_connections: flags.max_connections,
        warm_sessions: flags.postgres_warm_sessions,
        warm_session_max_age: flags.postgres_warm_session_max_age,
        cql: CqlSettings::default(),
        client_tls: client_tls(flags),
        client_tls_mode: flags.client_tls_mode,
        pod_identity,
        allow_uids: flags.allow_uid.clone(),
    }))
}

/// `--cassandra-*` over `AZURE_COSMOS_*`.
fn cassandra(flags: &Flags, env: &EnvSnapshot) -> anyhow::Result<Option<ListenerSettings>> {
    if flags.cassandra_upstream.is_none() && env.get("AZURE_COSMOS_CONTACTPOINT").is_none() {
        // No CQL listener: the other AZURE_COSMOS_* variables are not even read.
        return Ok(None);
    }
    let sc = service_connector::cosmos_target(env)?;
    let (host, port) = match &flags.cassandra_upstream {
        Some(u) => split_host_port(u)
            .with_context(|| format!("--cassandra-upstream: expected HOST[:PORT], got {u:?}"))?,
        None => match sc.contact_point {
            Some(cp) => cp,
            None => return Ok(None),
        },
    };
    if host.is_empty() {
        return Ok(None);
    }
    let user = flags
        .cassandra_user
        .clone()
        .or(sc.user)
        .or_else(|| host.split('.').next().map(str::to_owned))
        .filter(|u| !u.is_empty())
        .context("no CQL user: set --cassandra-user or AZURE_COSMOS_USERNAME (the account name)")?;
    let cql = CqlSettings {
        password: flags.cassandra_password,
        list_keys_url: flags.cassandra_list_keys_url.clone().or(sc.list_keys_url),
        key: flags.cassandra_key,
        password_file: flags.cassandra_password_file.clone(),
        max_protocol_version: flags.cassandra_max_protocol_version,
        data_center: flags.cassandra_data_center.clone(),
        compression: None,
        max_frame_size: flags.cassandra_max_frame_size,
        cosmos: flags.cassandra_cosmos,
        cosmos_retry: flags.cassandra_cosmos_retry,
        cosmos_max_retries: flags.cassandra_cosmos_max_retries,
        cosmos_max_retry_wait: flags.cassandra_cosmos_max_retry_wait,
    };
    // --scope is the PostgreSQL listener's; the CQL listener takes it only when its password
    // is the token itself (its default, ARM's scope, is right for listKeys).
    // In token mode the token is the password: Service Connector's AZURE_COSMOS_SCOPE, ARM's
    // (for listKeys), is not its audience; --scope, else Cosmos DB's data-plane scope.
    let scope = if cql.password_kind() == CassandraPasswordKind::Token {
        flags
            .scope
            .clone()
            .or(sc.scope.filter(|s| !super::is_arm_scope(s)))
    } else {
        sc.scope
    };
    Ok(Some(ListenerSettings {
        origin: Origin::Flags,
        name: "cassandra".into(),
        protocol: Protocol::Cassandra,
        listen: flags.cassandra_listen.clone(),
        unix_socket_mode: flags.unix_socket_mode.clone(),
        upstream_host: host,
        upstream_port: port.or(sc.port),
        user,
        database: None,
        credential: credential(flags, "AZURE_COSMOS", env)?,
        scope,
        tls_ca_file: None,
        tls_server_name: flags.tls_server_name.clone(),
        max_connections: flags.max_connections,
        warm_sessions: None,
        warm_session_max_age: None,
        cql,
        client_tls: client_tls(flags),
        client_tls_mode: flags.client_tls_mode,
        pod_identity: super::pod_identity::from_flags(flags)?,
        allow_uids: flags.allow_uid.clone(),
    }))
}

/// `--credential KIND` with the id flags; without it, Service Connector's identity (`prefix`
/// AZURE_POSTGRESQL or AZURE_COSMOS), then a user-assigned managed identity if an id flag is
/// given, else the default chain.
fn credential(flags: &Flags, prefix: &str, env: &EnvSnapshot) -> anyhow::Result<Credential> {
    if let Some(kind) = flags.credential {
        return Ok(Credential::Input(flags_credential(flags, kind)));
    }
    if let Some(spec) = service_connector::credential(prefix, env)? {
        return Ok(Credential::Resolved(spec));
    }
    let any_id =
        flags.client_id.is_some() || flags.object_id.is_some() || flags.resource_id.is_some();
    Ok(Credential::Input(if any_id {
        flags_credential(flags, CredentialKind::ManagedIdentity)
    } else {
        CredentialInput::default()
    }))
}

fn flags_credential(flags: &Flags, kind: CredentialKind) -> CredentialInput {
    CredentialInput {
        kind,
        client_id: flags.client_id.clone(),
        object_id: flags.object_id.clone(),
        resource_id: flags.resource_id.clone(),
        tenant_id: flags.tenant_id.clone(),
        client_secret_env: None,
        certificate: flags.client_certificate.clone(),
        token_file: flags.federated_token_file.clone(),
    }
}

fn client_tls(flags: &Flags) -> Option<ClientTlsConfig> {
    match (&flags.client_tls_cert, &flags.client_tls_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            cert_file: cert.clone(),
            key_file: key.clone(),
            mode: flags.client_tls_mode.unwrap_or_default(),
        }),
        _ => None,
    }
}
