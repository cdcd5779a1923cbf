//! Azure Service Connector's variables: the lowest-precedence source of the flags-mode
//! listeners (see [`super::from_flags`], which lays the flags over what is read here).
//!
//! # PostgreSQL
//!
//! Service Connector injects the server's coordinates in one of these forms (the form depends
//! on the client type chosen when the connection was created):
//!
//! - `AZURE_POSTGRESQL_CONNECTIONSTRING` as libpq key/values:
//!   `dbname=db host=srv.postgres.database.azure.com port=5432 sslmode=require user=aad_app`
//! - the same variable in .NET form: `Server=srv;Database=db;Port=5432;Ssl Mode=Require;User Id=aad_app;`
//! - the same variable in JDBC form: `jdbc:postgresql://srv:5432/db?sslmode=require&user=aad_app`
//! - separate variables: `AZURE_POSTGRESQL_HOST`, `_USER` (or `_USERNAME`), `_DATABASE`
//!   (or `_NAME`, Django's), `_PORT`.
//!
//! The identity comes from `AZURE_POSTGRESQL_CLIENTID` (user-assigned managed identity) or, with
//! `AZURE_POSTGRESQL_CLIENTSECRET` and `AZURE_POSTGRESQL_TENANTID`, a service principal.
//!
//! # Cosmos DB for Apache Cassandra
//!
//! `AZURE_COSMOS_CONTACTPOINT` (host), `AZURE_COSMOS_PORT`, `AZURE_COSMOS_USERNAME` (the
//! account), `AZURE_COSMOS_LISTKEYURL` (ARM listKeys), `AZURE_COSMOS_SCOPE`; the identity from
//! `AZURE_COSMOS_CLIENTID`, `_CLIENTSECRET`, `_TENANTID` as for PostgreSQL.

use anyhow::{Context, bail};
use dbproxy_credentials::{CredentialSpec, Secret, UserAssignedId};

use super::EnvSnapshot;

/// What Service Connector told us about a Cosmos DB for Apache Cassandra account.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CosmosTarget {
    /// `AZURE_COSMOS_CONTACTPOINT`: host, and port if it names one.
    pub contact_point: Option<(String, Option<u16>)>,
    /// `AZURE_COSMOS_PORT`.
    pub port: Option<u16>,
    /// CQL user (the account name).
    pub user: Option<String>,
    /// ARM listKeys URL.
    pub list_keys_url: Option<String>,
    /// Token scope.
    pub scope: Option<String>,
}

/// Reads the `AZURE_COSMOS_*` variables (all optional).
pub fn cosmos_target(env: &EnvSnapshot) -> anyhow::Result<CosmosTarget> {
    let contact_point = match env.get("AZURE_COSMOS_CONTACTPOINT") {
        Some(h) => Some(split_host_port(h).with_context(|| {
            format!("AZURE_COSMOS_CONTACTPOINT: expected a host name, got {h:?}")
        })?),
        None => None,
    };
    let port =
        match env.get("AZURE_COSMOS_PORT") {
            Some(p) => Some(p.trim().parse().with_context(|| {
                format!("AZURE_COSMOS_PORT: expected a port number, got {p:?}")
            })?),
            None => None,
        };
    let var = |name: &str| env.get(name).map(str::to_owned);
    Ok(CosmosTarget {
        contact_point,
        port,
        user: var("AZURE_COSMOS_USERNAME"),
        list_keys_url: var("AZURE_COSMOS_LISTKEYURL"),
        scope: var("AZURE_COSMOS_SCOPE"),
    })
}

/// The identity Service Connector configured (`prefix` AZURE_POSTGRESQL or AZURE_COSMOS):
/// `<prefix>_CLIENTID` alone is a user-assigned managed identity; with `_CLIENTSECRET` and
/// `_TENANTID`, a service principal. `None` when `_CLIENTID` is not set.
pub fn credential(prefix: &str, env: &EnvSnapshot) -> anyhow::Result<Option<CredentialSpec>> {
    let client_id = env.get(&format!("{prefix}_CLIENTID"));
    let secret = env.get(&format!("{prefix}_CLIENTSECRET"));
    let tenant = env.get(&format!("{prefix}_TENANTID"));
    Ok(match (client_id, secret, tenant) {
        (Some(id), Some(secret), Some(tenant)) => Some(CredentialSpec::ClientSecret {
            tenant_id: tenant.to_owned(),
            client_id: id.to_owned(),
            secret: Secret::new(secret),
        }),
        (Some(_), Some(_), None) => bail!(
            "{prefix}_CLIENTSECRET is set but {prefix}_TENANTID is not: a service principal needs both"
        ),
        (Some(id), None, _) => Some(CredentialSpec::ManagedIdentity {
            id: Some(UserAssignedId::ClientId(id.to_owned())),
        }),
        (None, _, _) => None,
    })
}

/// What Service Connector told us about the server.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PostgresTarget {
    /// Server host name.
    pub host: Option<String>,
    /// Server port.
    pub port: Option<u16>,
    /// Database name.
    pub database: Option<String>,
    /// Entra user name.
    pub user: Option<String>,
}

/// Reads the PostgreSQL target from the environment; `None` when no variable is set.
pub fn postgres_target(env: &EnvSnapshot) -> anyhow::Result<Option<PostgresTarget>> {
    if let Some(cs) = env.get("AZURE_POSTGRESQL_CONNECTIONSTRING") {
        let target = parse_connection_string(cs).context(
            "AZURE_POSTGRESQL_CONNECTIONSTRING is not a libpq, .NET or JDBC connection string",
        )?;
        return Ok(Some(target));
    }
    let Some(host) = env.get("AZURE_POSTGRESQL_HOST") else {
        return Ok(None);
    };
    let port = match env.get("AZURE_POSTGRESQL_PORT") {
        Some(p) => Some(p.trim().parse().with_context(|| {
            format!("AZURE_POSTGRESQL_PORT: expected a port number, got {p:?}")
        })?),
        None => None,
    };
    Ok(Some(PostgresTarget {
        host: Some(host.to_owned()),
        port,
        database: env
            .get("AZURE_POSTGRESQL_DATABASE")
            .or_else(|| env.get("AZURE_POSTGRESQL_NAME"))
            .map(str::to_owned),
        user: env
            .get("AZURE_POSTGRESQL_USER")
            .or_else(|| env.get("AZURE_POSTGRESQL_USERNAME"))
            .map(str::to_owned),
    }))
}

/// Parses any of the three connection-string forms.
pub fn parse_connection_string(s: &str) -> anyhow::Result<PostgresTarget> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix("jdbc:postgresql://") {
        return parse_jdbc(rest);
    }
    if s.contains(';') || s.to_ascii_lowercase().starts_with("server=") {
        return parse_dotnet(s);
    }
    parse_libpq(s)
}

fn parse_port(v: &str) -> anyhow::Result<u16> {
    v.trim()
        .parse()
        .with_context(|| format!("port: expected a number, got {v:?}"))
}

/// `host=… port=… dbname=… user=… sslmode=require`, values optionally single-quoted.
fn parse_libpq(s: &str) -> anyhow::Result<PostgresTarget> {
    let mut target = PostgresTarget::default();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            bail!("expected key=value, found {key:?} without '='");
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                bail!("unterminated quoted value for {key:?}");
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        match key.as_str() {
            "host" | "hostaddr" => target.host = Some(value),
            "port" => target.port = Some(parse_port(&value)?),
            "dbname" => target.database = Some(value),
            "user" => target.user = Some(value),
            _ => {}
        }
    }
    if target.host.is_none() {
        bail!("no host=");
    }
    Ok(target)
}

/// `Server=…;Database=…;Port=…;Ssl Mode=Require;User Id=…;` (keys case-insensitive, spaces ignored).
fn parse_dotnet(s: &str) -> anyhow::Result<PostgresTarget> {
    let mut target = PostgresTarget::default();
    for part in s.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            bail!("expected Key=Value, found {part:?}");
        };
        let key: String = k
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        let v = v.trim().to_owned();
        match key.as_str() {
            "server" | "host" => target.host = Some(v),
            "port" => target.port = Some(parse_port(&v)?),
            "database" => target.database = Some(v),
            "userid" | "user" | "username" | "uid" => target.user = Some(v),
            _ => {}
        }
    }
    if target.host.is_none() {
        bail!("no Server=");
    }
    Ok(target)
}

/// `srv:5432/db?sslmode=require&user=…` (after `jdbc:postgresql://`).
fn parse_jdbc(rest: &str) -> anyhow::Result<PostgresTarget> {
    let mut target = PostgresTarget::default();
    let (authority_path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = authority_path
        .split_once('/')
        .unwrap_or((authority_path, ""));
    let (host, port) = split_host_port(authority)?;
    if host.is_empty() {
        bail!("no host after jdbc:postgresql://");
    }
    target.host = Some(host);
    target.port = port;
    if !path.is_empty() {
        target.database = Some(percent_decode(path));
    }
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=')
            && k == "user"
        {
            target.user = Some(percent_decode(v));
        }
    }
    Ok(target)
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
pub fn split_host_port(s: &str) -> anyhow::Result<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            bail!("unterminated '[' in {s:?}");
        };
        let port = match after.strip_prefix(':') {
            Some(p) => Some(parse_port(p)?),
            None if after.is_empty() => None,
            None => bail!("unexpected {after:?} after ']' in {s:?}"),
        };
        return Ok((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_owned(), Some(parse_port(p)?))),
        _ => Ok((s.to_owned(), None)),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: Option<u16>, db: Option<&str>, user: Option<&str>) -> PostgresTarget {
        PostgresTarget {
            host: Some(host.into()),
            port,
            database: db.map(Into::into),
            user: user.map(Into::into),
        }
    }

    #[test]
    fn libpq_form() {
        let got = parse_connection_string(
            "dbname=orders host=srv.postgres.database.azure.com port=5432 sslmode=require user=aad_app",
        )
        .unwrap();
        assert_eq!(
            got,
            t(
                "srv.postgres.database.azure.com",
                Some(5432),
                Some("orders"),
                Some("aad_app")
            )
        );
    }

    #[test]
    fn libpq_quoted_values() {
        let got = parse_connection_string("host='a b' user = 'it''s'").unwrap_err();
        // '' is not libpq's escape; a backslash is.
        assert!(got.to_string().contains("key=value"), "{got:#}");
        let got = parse_connection_string(r"host='srv' user='my\'user' dbname=x").unwrap();
        assert_eq!(got, t("srv", None, Some("x"), Some("my'user")));
    }

    #[test]
    fn dotnet_form() {
        let got = parse_connection_string(
            "Server=srv.postgres.database.azure.com;Database=orders;Port=5432;Ssl Mode=Require;User Id=aad_app;",
        )
        .unwrap();
        assert_eq!(
            got,
            t(
                "srv.postgres.database.azure.com",
                Some(5432),
                Some("orders"),
                Some("aad_app")
            )
        );
    }

    #[test]
    fn jdbc_form() {
        let got = parse_connection_string(
            "jdbc:postgresql://srv.postgres.database.azure.com:5432/orders?sslmode=require&user=aad%40app",
        )
        .unwrap();
        assert_eq!(
            got,
            t(
                "srv.postgres.database.azure.com",
                Some(5432),
                Some("orders"),
                Some("aad@app")
            )
        );
    }

    #[test]
    fn separate_variables_django_names() {
        let env = EnvSnapshot::from_pairs([
            ("AZURE_POSTGRESQL_HOST", "srv"),
            ("AZURE_POSTGRESQL_USERNAME", "u"),
            ("AZURE_POSTGRESQL_NAME", "db"),
            ("AZURE_POSTGRESQL_PORT", "6432"),
        ]);
        assert_eq!(
            postgres_target(&env).unwrap(),
            Some(t("srv", Some(6432), Some("db"), Some("u")))
        );
    }

    #[test]
    fn bad_port_is_named() {
        let env = EnvSnapshot::from_pairs([
            ("AZURE_POSTGRESQL_HOST", "srv"),
            ("AZURE_POSTGRESQL_PORT", "x"),
        ]);
        let e = postgres_target(&env).unwrap_err();
        assert!(format!("{e:#}").contains("AZURE_POSTGRESQL_PORT"), "{e:#}");
    }

    #[test]
    fn nothing_set() {
        assert_eq!(postgres_target(&EnvSnapshot::default()).unwrap(), None);
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("h").unwrap(), ("h".into(), None));
        assert_eq!(split_host_port("h:1").unwrap(), ("h".into(), Some(1)));
        assert_eq!(split_host_port("[::1]:5").unwrap(), ("::1".into(), Some(5)));
        assert!(split_host_port("h:x").is_err());
    }
}
