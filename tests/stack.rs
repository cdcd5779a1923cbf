//! The fixture most tests share: a test CA, a real PostgreSQL whose Entra role's password is
//! whatever token the fake Entra last issued (as Azure validates tokens), and the fake Azure.

use std::{path::PathBuf, sync::Arc};

use dbproxy_testkit::{
    azure::{FakeAzure, FakeAzureConfig},
    certs::TestCa,
    postgres::{PasswordAuth, PgOptions, PgServer},
    util::unique_temp_dir,
};

use crate::util::ProxyCmd;

/// The Entra principal the proxy logs in as.
pub const ENTRA_USER: &str = "aad_orders-app";
/// The database the tests use (owned by ENTRA_USER).
pub const DB: &str = "orders";
/// The resource (audience) of Azure Database for PostgreSQL tokens.
pub const PG_RESOURCE: &str = "https://ossrdbms-aad.database.windows.net";

pub struct Stack {
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    pub pg: Arc<PgServer>,
    pub azure: FakeAzure,
    /// A loopback address that accepts TCP but never answers: a "no IMDS here" stand-in that
    /// behaves like the unroutable 169.254.169.254 on a laptop (tests must never dial that).
    pub silent_imds: std::net::TcpListener,
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::with(PasswordAuth::Password, FakeAzureConfig::default()).await
    }

    pub async fn with(auth: PasswordAuth, config: FakeAzureConfig) -> Stack {
        Stack::with_pg(PgOptions::with_auth(auth), config).await
    }

    pub async fn with_pg(options: PgOptions, config: FakeAzureConfig) -> Stack {
        let ca = TestCa::new("entra-db-proxy tests");
        let dir = unique_temp_dir("it").unwrap();
        let ca_file = dir.join("ca.pem");
        ca.write_ca(&ca_file);
        let pg = Arc::new(PgServer::start(&ca, options).await.unwrap());
        // The role exists from the start with a password nobody knows; tokens replace it.
        pg.set_role_password(ENTRA_USER, &dbproxy_testkit::tokens::random_b64url(24))
            .await
            .unwrap();
        pg.create_database(DB, ENTRA_USER).await.unwrap();
        let azure = FakeAzure::start(&ca, config).await.unwrap();
        azure.sync_pg_role_password(pg.clone(), ENTRA_USER, PG_RESOURCE);
        let silent_imds = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Stack {
            dir,
            ca_file,
            pg,
            azure,
            silent_imds,
        }
    }

    /// A CA of its own for the proxy's client side, a certificate for localhost/127.0.0.1 it
    /// signed: (certificate file, key file, CA file).
    pub fn local_tls_files(&self) -> (PathBuf, PathBuf, PathBuf) {
        let local_ca = TestCa::new("proxy local ca");
        let pair = local_ca.server_cert(&["localhost", "127.0.0.1"]);
        let (cert, key, ca) = (
            self.dir.join("local.crt"),
            self.dir.join("local.key"),
            self.dir.join("local-ca.pem"),
        );
        std::fs::write(&cert, &pair.cert_pem).unwrap();
        std::fs::write(&key, &pair.key_pem).unwrap();
        local_ca.write_ca(&ca);
        (cert, key, ca)
    }

    pub fn silent_imds_url(&self) -> String {
        format!("http://{}", self.silent_imds.local_addr().unwrap())
    }

    /// The proxy pointed at this stack's PostgreSQL with flags, trusting the test CA through
    /// SSL_CERT_FILE, Entra at the fake, no IMDS. Add a credential.
    pub fn proxy(&self) -> ProxyCmd {
        ProxyCmd::new()
            .args(["--postgres-listen", "127.0.0.1:0"])
            .args([
                "--postgres-upstream",
                &format!("127.0.0.1:{}", self.pg.port()),
            ])
            .args(["--postgres-user", ENTRA_USER])
            .args(["--postgres-database", DB])
            .env("SSL_CERT_FILE", self.ca_file.to_str().unwrap())
            .env("AZURE_AUTHORITY_HOST", self.azure.authority_host())
            .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", self.silent_imds_url())
    }

    /// [`Stack::proxy`] with the service principal (client secret) credential, the way Service
    /// Connector passes it.
    pub fn proxy_sp(&self) -> ProxyCmd {
        let cfg = self.azure.config();
        self.proxy()
            .env("AZURE_POSTGRESQL_CLIENTID", cfg.client_id)
            .env("AZURE_POSTGRESQL_CLIENTSECRET", cfg.client_secret)
            .env("AZURE_POSTGRESQL_TENANTID", cfg.tenant_id)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.azure.clear_on_issue();
        if !dbproxy_testkit::util::keep_test_dirs() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A substring of the proxy's WARN line for a client session that failed (for
/// [`crate::util::ProxyCmd::expect_warnings`]).
pub const FAILED_SESSION: &str = r#""outcome":"failed""#;

/// Waits (at most 20 s) until PostgreSQL itself shows `query` running, in `pg_stat_activity`
/// queried over the superuser's socket.
pub async fn wait_until_running(s: &Stack, query: &str) {
    let admin = s.pg.admin_client().await.unwrap();
    let start = std::time::Instant::now();
    loop {
        let n: i64 = admin
            .query_one(
                "select count(*) from pg_stat_activity \
                 where state = 'active' and query = $1 and pid <> pg_backend_pid()",
                &[&query],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "`{query}` never showed up as active in pg_stat_activity"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Connects with tokio-postgres through the proxy, no TLS on the local hop, no password, and a
/// user name unrelated to the Entra user.
pub async fn connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("someone-else")
        .dbname(DB)
        .application_name("it-tokio-postgres")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The SQLSTATE and message of a failed connect, for assertions.
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(d) => (
            d.code().code().to_owned(),
            format!("{} (hint: {:?})", d.message(), d.hint()),
        ),
        None => (String::new(), format!("{e:#}")),
    }
}

/// `psql -c SQL` through the proxy as an unrelated user with no password; returns stdout or panics.
pub fn psql(port: u16, sql: &str) -> String {
    let (ok, out, err) = psql_result(port, sql);
    assert!(ok, "psql failed: {err}");
    out
}

pub fn psql_result(port: u16, sql: &str) -> (bool, String, String) {
    let mut cmd = std::process::Command::new("psql");
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PGCONNECT_TIMEOUT", "20")
        .env("PGAPPNAME", "it-psql")
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "someone-else",
            "-d",
            DB,
        ])
        .args(["-c", sql]);
    crate::util::run(&mut cmd)
}
