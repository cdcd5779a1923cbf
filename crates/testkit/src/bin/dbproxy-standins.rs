//! Local stand-ins for Azure, for trying entra-db-proxy and for benchmarks: a real PostgreSQL
//! with TLS and `password` authentication (as Azure Database for PostgreSQL asks Entra users),
//! and a fake Entra ID whose issued tokens become the Entra role's password.
//!
//! `dbproxy-standins --env-file FILE` writes the variables a proxy needs (Service Connector's
//! AZURE_POSTGRESQL_*, AZURE_AUTHORITY_HOST, SSL_CERT_FILE) plus STANDINS_* for direct
//! connections, then runs until SIGINT/SIGTERM. Not for production: the CA, the service
//! principal's secret and the `bench` role's password are test values.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use dbproxy_testkit::{
    azure::{FakeAzure, FakeAzureConfig},
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut env_file = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--env-file" => env_file = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("usage: dbproxy-standins --env-file FILE");
                return Ok(());
            }
            other => {
                anyhow::bail!("unknown argument {other:?}; usage: dbproxy-standins --env-file FILE")
            }
        }
    }
    let env_file = env_file.context("--env-file FILE is required")?;

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
    let azure = FakeAzure::start(&ca, FakeAzureConfig::default()).await?;
    azure.sync_pg_role_password(pg.clone(), USER, RESOURCE);
    let cfg = azure.config();

    let vars = [
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
    ];
    dbproxy_testkit::util::write_env_file(&env_file, &vars)?;
    eprintln!(
        "stand-ins ready: PostgreSQL 127.0.0.1:{} (TLS, password auth), fake Entra ID {}; variables in {}",
        pg.port(),
        azure.authority_host(),
        env_file.display()
    );

    dbproxy_testkit::util::stop_signal().await?;
    azure.clear_on_issue();
    drop(azure);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
