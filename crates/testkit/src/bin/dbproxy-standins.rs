//! Local stand-ins for Azure, for trying entra-db-proxy and for benchmarks: a real PostgreSQL
//! with TLS and `password` authentication (as Azure Database for PostgreSQL asks Entra users),
//! and a fake Entra ID whose issued tokens become the Entra role's password; with `--cassandra`
//! also a real 1-node Cassandra 5.0 (TLS-only native port, `PasswordAuthenticator`) standing in
//! for Cosmos DB for Apache Cassandra, whose account key (from the fake's ARM listKeys) is the
//! account role's password.
//!
//! `dbproxy-standins --env-file FILE [--token-lifetime SECS] [--cassandra]` writes the variables
//! a proxy needs (Service Connector's AZURE_POSTGRESQL_* and, with `--cassandra`,
//! AZURE_COSMOS_*; AZURE_AUTHORITY_HOST, SSL_CERT_FILE) plus STANDINS_* for direct connections,
//! then runs until SIGINT/SIGTERM. `--token-lifetime` sets the `expires_in` of every issued
//! token (default 3599 s, as Entra ID's). With `--cassandra`, SIGUSR1 performs one step of
//! Azure's documented Cosmos DB key rotation (`regenerateKey`: the primary key, then the
//! secondary, alternately) and prints it to stderr; see [`rotate_keys`]. `--cassandra` needs
//! `eval "$(scripts/install-deps.sh)"` (EDP_CASSANDRA_LIB, EDP_JAVA). Not for production: the
//! CA, the service principal's secret, the keys and the `bench` role's password are test values.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use dbproxy_testkit::{
    azure::{FakeAzure, FakeAzureConfig, arm::random_key},
    cassandra::{CassandraCluster, CassandraOptions},
    certs::TestCa,
    postgres::{PgOptions, PgServer},
    tokens::random_b64url,
    util::unique_temp_dir,
};

const USER: &str = "aad_demo_app";
const DB: &str = "orders";
const RESOURCE: &str = "https://ossrdbms-aad.database.windows.net";
/// A password role for direct (proxy-less) comparison runs; member of USER.
const BENCH_ROLE: &str = "bench";
const BENCH_PASSWORD: &str = "bench-password";
/// The Cosmos account name: Cosmos's CQL user name is the account's.
const ACCOUNT: &str = "standinacct";
/// What Service Connector puts in AZURE_COSMOS_SCOPE for Cosmos DB for Cassandra (ARM).
const COSMOS_SCOPE: &str = "https://management.azure.com/.default";

const USAGE: &str = "usage: dbproxy-standins --env-file FILE [--token-lifetime SECS] [--cassandra]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut env_file, mut lifetime, mut cassandra) = (None, None, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--env-file" => env_file = args.next().map(PathBuf::from),
            "--token-lifetime" => {
                let secs: u64 = args
                    .next()
                    .context(USAGE)?
                    .parse()
                    .context("--token-lifetime SECS")?;
                anyhow::ensure!(secs >= 10, "--token-lifetime: at least 10 s");
                lifetime = Some(Duration::from_secs(secs));
            }
            "--cassandra" => cassandra = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let env_file = env_file.context(USAGE)?;

    let ca = TestCa::new("entra-db-proxy stand-ins");
    let dir = unique_temp_dir("standins")?;
    let ca_file = dir.join("ca.pem");
    ca.write_ca(&ca_file);
    let pg = Arc::new(PgServer::start(&ca, PgOptions::default()).await?);
    pg.set_role_password(USER, &random_b64url(24)).await?;
    pg.create_database(DB, USER).await?;
    pg.admin_execute(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{BENCH_ROLE}') THEN \
         CREATE ROLE {BENCH_ROLE} LOGIN PASSWORD '{BENCH_PASSWORD}'; END IF; END $$; \
         GRANT {USER} TO {BENCH_ROLE}"
    ))
    .await?;
    let mut cfg = FakeAzureConfig::default();
    if let Some(l) = lifetime {
        cfg.lifetime = l;
    }
    let azure = FakeAzure::start(&ca, cfg).await?;
    azure.sync_pg_role_password(pg.clone(), USER, RESOURCE);
    let cfg = azure.config();
    let cluster = if cassandra {
        eprintln!("starting Cassandra…");
        let opts = CassandraOptions {
            authorizer: true,
            ..CassandraOptions::single()
        };
        let cluster = CassandraCluster::start(&ca, opts).await?;
        cluster
            .set_role_password(ACCOUNT, &azure.keys().primary_master_key)
            .await?;
        Some(cluster)
    } else {
        None
    };

    let mut vars = vec![
        (
            "AZURE_POSTGRESQL_CONNECTIONSTRING",
            format!(
                "dbname={DB} host=127.0.0.1 port={} sslmode=require user={USER}",
                pg.port()
            ),
        ),
        ("AZURE_POSTGRESQL_CLIENTID", cfg.client_id.clone()),
        ("AZURE_POSTGRESQL_CLIENTSECRET", cfg.client_secret.clone()),
        ("AZURE_POSTGRESQL_TENANTID", cfg.tenant_id.clone()),
        ("AZURE_AUTHORITY_HOST", azure.authority_host()),
        // No IMDS here: point managed identity at a closed loopback port, never 169.254.169.254.
        (
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            "http://127.0.0.1:9".to_owned(),
        ),
        ("SSL_CERT_FILE", ca_file.display().to_string()),
        ("STANDINS_PG_PORT", pg.port().to_string()),
        (
            "STANDINS_PG_SOCKET_DIR",
            pg.socket_dir().display().to_string(),
        ),
        ("STANDINS_DB", DB.to_owned()),
        ("STANDINS_ENTRA_USER", USER.to_owned()),
        ("STANDINS_BENCH_USER", BENCH_ROLE.to_owned()),
        ("STANDINS_BENCH_PASSWORD", BENCH_PASSWORD.to_owned()),
        (
            "STANDINS_TOKEN_LIFETIME",
            cfg.lifetime.as_secs().to_string(),
        ),
    ];
    if let Some(c) = &cluster {
        vars.extend([
            (
                "AZURE_COSMOS_CONTACTPOINT",
                c.contact_point().ip().to_string(),
            ),
            ("AZURE_COSMOS_PORT", c.native_port().to_string()),
            ("AZURE_COSMOS_USERNAME", ACCOUNT.to_owned()),
            ("AZURE_COSMOS_LISTKEYURL", azure.list_keys_url(ACCOUNT)),
            ("AZURE_COSMOS_SCOPE", COSMOS_SCOPE.to_owned()),
            ("AZURE_COSMOS_CLIENTID", cfg.client_id.clone()),
            ("AZURE_COSMOS_CLIENTSECRET", cfg.client_secret.clone()),
            ("AZURE_COSMOS_TENANTID", cfg.tenant_id.clone()),
            ("STANDINS_CQL_ACCOUNT", ACCOUNT.to_owned()),
            (
                "STANDINS_CQL_SYSTEM_LOG",
                c.node_dir(1).join("logs/system.log").display().to_string(),
            ),
        ]);
    }
    dbproxy_testkit::util::write_env_file(&env_file, &vars)?;
    eprintln!(
        "stand-ins ready: PostgreSQL 127.0.0.1:{} (TLS, password auth), {}fake Entra ID {} (tokens for {} s); variables in {}",
        pg.port(),
        match &cluster {
            Some(c) => format!(
                "Cassandra {} (TLS, PasswordAuthenticator, role {ACCOUNT}), ",
                c.contact_point()
            ),
            None => String::new(),
        },
        azure.authority_host(),
        cfg.lifetime.as_secs(),
        env_file.display()
    );

    let stop = dbproxy_testkit::util::stop_signal();
    tokio::pin!(stop);
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    let mut step = 0u32;
    loop {
        tokio::select! {
            r = &mut stop => { r?; break; }
            _ = usr1.recv() => match &cluster {
                Some(c) => {
                    step += 1;
                    if let Err(e) = rotate_keys(&azure, c, step).await {
                        eprintln!("cosmos key rotation {step} failed: {e:#}");
                    }
                }
                None => eprintln!("SIGUSR1 ignored: no --cassandra"),
            },
        }
    }
    azure.clear_on_issue();
    drop(azure);
    if let Some(c) = cluster {
        eprintln!("stopping Cassandra…");
        drop(c);
    }
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One step of the key rotation Azure documents for Cosmos DB (switch the apps to the
/// secondary key, regenerate the primary; switch back to the primary, regenerate the
/// secondary): odd steps regenerate the primary key, even steps the secondary. listKeys answers
/// the new pair at once. Cassandra has one password per role, so the stand-in is stricter than
/// Cosmos DB (which accepts both keys of the pair): from the step on, only the key that was
/// *not* regenerated logs in — the secondary after an odd step, the (new) primary after an even
/// one. A proxy holding the regenerated key is refused and must re-fetch and move to the other.
async fn rotate_keys(azure: &FakeAzure, c: &CassandraCluster, step: u32) -> anyhow::Result<()> {
    let mut keys = azure.keys();
    let (regenerated, valid) = if step % 2 == 1 {
        keys.primary_master_key = random_key();
        (keys_name(true), keys.secondary_master_key.clone())
    } else {
        keys.secondary_master_key = random_key();
        (keys_name(false), keys.primary_master_key.clone())
    };
    c.set_role_password(ACCOUNT, &valid).await?;
    azure.set_keys(keys);
    eprintln!(
        "cosmos key rotation {step}: regenerated the {regenerated} key; the account now accepts only the {} key",
        keys_name(step % 2 == 0)
    );
    Ok(())
}

fn keys_name(primary: bool) -> &'static str {
    if primary { "primary" } else { "secondary" }
}
