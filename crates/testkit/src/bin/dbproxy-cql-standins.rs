//! Local stand-ins for Azure Cosmos DB for Apache Cassandra, for trying entra-db-proxy's CQL
//! listener and for the client compatibility matrix (`scripts/clients.sh cassandra`): a real
//! Cassandra 5.0 cluster (1 or 3 nodes, TLS-only native port, `PasswordAuthenticator`) and a fake
//! Entra ID + ARM whose `listKeys` returns the account key, which is the account role's password.
//!
//! `dbproxy-cql-standins --env-file FILE [--nodes 1|3] [--cosmos [--throttle F] [--token]]` writes the variables a proxy needs
//! (Service Connector's AZURE_COSMOS_* for a service principal, AZURE_AUTHORITY_HOST,
//! AZURE_POD_IDENTITY_AUTHORITY_HOST, SSL_CERT_FILE) plus STANDINS_* for information, then runs
//! until SIGINT/SIGTERM and stops the cluster. With `--cosmos` the contact point is the Cosmos
//! stand-in ([`dbproxy_testkit::cosmos`]) in front of the cluster: v4 only, no compression, a
//! fraction `F` of requests throttled (default 0), request charges on results;
//! `ENTRA_DB_PROXY_CASSANDRA_COSMOS=true` tells the proxy so, and `STANDINS_COSMOS_STATS` names
//! a file holding the stand-in's counters (throttled, forwarded, request units charged). `--token` (with `--cosmos`)
//! disables local auth on the stand-in and configures the proxy's Entra RBAC token mode. Needs `eval "$(scripts/install-deps.sh)"`
//! (EDP_CASSANDRA_LIB, EDP_JAVA). Not for production: the CA, the service principal's secret and
//! the account key are test values.

use std::path::PathBuf;

use anyhow::Context;
use dbproxy_testkit::{
    azure::{FakeAzure, FakeAzureConfig},
    cassandra::{CassandraCluster, CassandraOptions},
    certs::TestCa,
    cosmos::{CosmosConfig, CosmosStandin},
    util::unique_temp_dir,
};

/// The Cosmos account name: Cosmos's CQL user name is the account's.
const ACCOUNT: &str = "compatacct";
/// The data-plane scope of Cosmos DB's Entra RBAC (token mode).
const COSMOS_SCOPE: &str = "https://cosmos.azure.com/.default";
/// What Service Connector puts in AZURE_COSMOS_SCOPE for Cosmos DB for Cassandra (ARM).
const SCOPE: &str = "https://management.azure.com/.default";

const USAGE: &str =
    "usage: dbproxy-cql-standins --env-file FILE [--nodes 1|3] [--cosmos [--throttle F] [--token]]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut env_file, mut nodes) = (None, 1usize);
    let (mut cosmos, mut throttle, mut token) = (false, 0.0f64, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--env-file" => env_file = args.next().map(PathBuf::from),
            "--nodes" => nodes = args.next().context(USAGE)?.parse().context("--nodes 1|3")?,
            "--cosmos" => cosmos = true,
            "--token" => token = true,
            "--throttle" => {
                throttle = args
                    .next()
                    .context(USAGE)?
                    .parse()
                    .context("--throttle 0.0..1.0")?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let env_file = env_file.context(USAGE)?;
    let opts = match nodes {
        1 => CassandraOptions::single(),
        3 => CassandraOptions::three_nodes(),
        n => anyhow::bail!("--nodes {n}: 1 or 3"),
    };
    // Like Cosmos: the account may do anything on every keyspace (CassandraAuthorizer + GRANT
    // ALL, so that what drivers see of permissions is not AllowAll's).
    let opts = CassandraOptions {
        authorizer: true,
        ..opts
    };

    let ca = TestCa::new("entra-db-proxy CQL stand-ins");
    let dir = unique_temp_dir("cql-standins")?;
    let ca_file = dir.join("ca.pem");
    ca.write_ca(&ca_file);
    eprintln!("starting Cassandra ({nodes} node(s))…");
    let cluster = CassandraCluster::start(&ca, opts).await?;
    let azure = FakeAzure::start(&ca, FakeAzureConfig::default()).await?;
    let key = azure.keys().primary_master_key;
    cluster.set_role_password(ACCOUNT, &key).await?;
    let cfg = azure.config();
    let standin = if cosmos {
        Some(
            CosmosStandin::start(
                &ca,
                CosmosConfig {
                    upstream: cluster.contact_point(),
                    upstream_tls: Some(cluster.tls_config()),
                    upstream_login: (ACCOUNT.to_owned(), key.clone()),
                    login: azure.cosmos_login_check(ACCOUNT, !token),
                    throttle,
                    retry_after_ms: 20,
                },
            )
            .await?,
        )
    } else {
        None
    };
    let standin = standin.map(std::sync::Arc::new);
    let contact = standin
        .as_ref()
        .map_or(cluster.contact_point(), |s| s.addr());

    let mut vars = vec![
        ("AZURE_COSMOS_CONTACTPOINT", contact.ip().to_string()),
        ("AZURE_COSMOS_PORT", contact.port().to_string()),
        ("AZURE_COSMOS_USERNAME", ACCOUNT.to_owned()),
        ("AZURE_COSMOS_LISTKEYURL", azure.list_keys_url(ACCOUNT)),
        (
            "AZURE_COSMOS_SCOPE",
            if token { COSMOS_SCOPE } else { SCOPE }.to_owned(),
        ),
        ("AZURE_COSMOS_CLIENTID", cfg.client_id.clone()),
        ("AZURE_COSMOS_CLIENTSECRET", cfg.client_secret.clone()),
        ("AZURE_COSMOS_TENANTID", cfg.tenant_id.clone()),
        ("AZURE_AUTHORITY_HOST", azure.authority_host()),
        // No IMDS here: point managed identity at a closed loopback port, never 169.254.169.254.
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "http://127.0.0.1:9".to_owned(),
        ),
        ("SSL_CERT_FILE", ca_file.display().to_string()),
        ("STANDINS_CQL_NODES", nodes.to_string()),
        (
            "STANDINS_CQL_NODE_ADDRS",
            cluster
                .nodes()
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
        ("STANDINS_CQL_ACCOUNT", ACCOUNT.to_owned()),
    ];
    // The Cosmos stand-in's counters, rewritten every 100 ms as one line of shell variables
    // (the client matrix compares them with the proxy's metrics around each stack).
    let stats_file = dir.join("cosmos-stats.env");
    let stats_task = standin.as_ref().map(|s| {
        let (s, path) = (s.clone(), stats_file.clone());
        tokio::spawn(async move {
            loop {
                let line = format!(
                    "COSMOS_THROTTLED={} COSMOS_FORWARDED={} COSMOS_CHARGED={}\n",
                    s.throttled(),
                    s.forwarded(),
                    s.charged()
                );
                let tmp = path.with_extension("tmp");
                if std::fs::write(&tmp, line).is_ok() {
                    let _ = std::fs::rename(&tmp, &path);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    });
    if cosmos {
        vars.push(("ENTRA_DB_PROXY_CASSANDRA_COSMOS", "true".to_owned()));
        vars.push(("STANDINS_COSMOS_STATS", stats_file.display().to_string()));
    }
    if token {
        vars.push(("ENTRA_DB_PROXY_CASSANDRA_PASSWORD", "token".to_owned()));
    }
    dbproxy_testkit::util::write_env_file(&env_file, &vars)?;
    eprintln!(
        "stand-ins ready: Cassandra {} node(s) {:?} (TLS, PasswordAuthenticator, role {ACCOUNT}){}, fake Entra ID + ARM {}; variables in {}",
        nodes,
        cluster.nodes(),
        standin.as_ref().map_or(String::new(), |s| format!(
            " behind the Cosmos stand-in {} (throttling {throttle}{})",
            s.addr(),
            if token { ", Entra RBAC only" } else { "" }
        )),
        azure.authority_host(),
        env_file.display()
    );

    dbproxy_testkit::util::stop_signal().await?;
    eprintln!("stopping Cassandra…");
    if let Some(t) = stats_task {
        t.abort();
    }
    drop(standin);
    drop(azure);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
