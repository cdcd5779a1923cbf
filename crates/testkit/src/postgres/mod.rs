//! A real PostgreSQL server per test, configured like Azure Database for PostgreSQL.
//!
//! [`PgServer::start`] makes a temp dir, runs `initdb`, and starts `postgres` with:
//! * TLS on (`ssl=on`), with a certificate for [`PgOptions::server_names`] signed by the test's
//!   [`TestCa`](crate::certs::TestCa); TLS 1.2 minimum;
//! * `listen_addresses='127.0.0.1'` on a free port, `unix_socket_directories=<tempdir>`;
//! * `pg_hba.conf`:
//!   ```text
//!   local   all postgres              trust      # admin, over the unix socket only
//!   hostssl all all      127.0.0.1/32 password   # or scram-sha-256 / md5 (PgOptions::auth)
//!   ```
//!   No rule matches a non-TLS TCP login, so it fails with Azure's message
//!   `no pg_hba.conf entry for host "127.0.0.1", user "…", database "…", no encryption`.
//!   [`PasswordAuth::Password`] is what Azure does for Entra logins: the server asks for the
//!   password in cleartext (AuthenticationCleartextPassword) and compares it with the stored
//!   verifier.
//! * `fsync=off` and friends for speed, `max_connections=100`, `log_connections=on`.
//!
//! Admin SQL ([`PgServer::admin_execute`], [`PgServer::set_role_password`]) goes over the unix
//! socket as the `postgres` superuser. Tests log in like an app with [`PgServer::connect_tls`],
//! which uses [`MakeRustlsConnect`], a small tokio-postgres ↔ tokio-rustls adapter that is also
//! usable on its own (e.g. to talk TLS to the proxy).
//!
//! When the test process runs as root, `initdb` and `postgres` run as the `postgres` system user
//! (PostgreSQL refuses root) and the temp dir is handed to that user. Drop stops the server
//! (SIGQUIT = `pg_ctl stop -m immediate`) and removes the dir unless `KEEP_TEST_DIRS` is set.
//! Errors carry the server log so failures are debuggable.
//!
//! The code: `mod.rs` holds the options, the binaries lookup, the server handle with its
//! addresses and app logins, and error text; `server.rs` sets the server up, starts and stops
//! it; `admin.rs` is the superuser side (admin SQL, roles, databases); `tls.rs` is the
//! tokio-postgres TLS adapter.

mod admin;
mod server;
pub mod standin;
mod tls;

use std::{
    path::{Path, PathBuf},
    process::Child,
    sync::Arc,
    time::Duration,
};
use tokio_postgres::config::SslMode;

use anyhow::Context as _;

use crate::util;

pub use standin::PgStandin;
pub use tls::{MakeRustlsConnect, RustlsConnect, RustlsStream};

/// How the server checks role passwords on TLS TCP logins (the `hostssl` rule's method).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PasswordAuth {
    /// `password`: the client sends the cleartext password (what Azure asks of Entra logins).
    /// Passwords are stored as SCRAM verifiers.
    #[default]
    Password,
    /// `scram-sha-256` (stored as SCRAM verifiers).
    Scram,
    /// `md5` (stored as md5 hashes; `password_encryption=md5`).
    Md5,
}

impl PasswordAuth {
    /// The pg_hba.conf method.
    pub fn hba_method(self) -> &'static str {
        match self {
            PasswordAuth::Password => "password",
            PasswordAuth::Scram => "scram-sha-256",
            PasswordAuth::Md5 => "md5",
        }
    }

    /// The `password_encryption` setting.
    pub fn password_encryption(self) -> &'static str {
        match self {
            PasswordAuth::Md5 => "md5",
            _ => "scram-sha-256",
        }
    }

    /// All modes, for tests that run one body in each.
    pub const ALL: [PasswordAuth; 3] = [
        PasswordAuth::Password,
        PasswordAuth::Scram,
        PasswordAuth::Md5,
    ];
}

/// Options for [`PgServer::start`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Password check on TLS logins.
    pub auth: PasswordAuth,
    /// SANs of the server certificate. Default `["localhost", "127.0.0.1"]`.
    pub server_names: Vec<String>,
    /// Extra `postgresql.conf` lines, appended last.
    pub extra_conf: Vec<String>,
    /// Extra `pg_hba.conf` lines, matched before the `hostssl all all` line (e.g. a `reject`
    /// for one database).
    pub extra_hba: Vec<String>,
    /// How long to wait for the server to accept connections. Default 60 s.
    pub ready_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            auth: PasswordAuth::Password,
            server_names: vec!["localhost".into(), "127.0.0.1".into()],
            extra_conf: Vec::new(),
            extra_hba: Vec::new(),
            ready_timeout: Duration::from_secs(60),
        }
    }
}

impl PgOptions {
    /// Default options with this auth mode.
    pub fn with_auth(auth: PasswordAuth) -> Self {
        PgOptions {
            auth,
            ..Default::default()
        }
    }
}

/// A running PostgreSQL server; stopped and cleaned up on drop.
#[derive(Debug)]
pub struct PgServer {
    dir: PathBuf,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    log_path: PathBuf,
    ca_file: PathBuf,
    host: String,
    port: u16,
    auth: PasswordAuth,
    tls: Arc<rustls::ClientConfig>,
    /// The postmaster (a mutex so that a shared server can be restarted).
    child: std::sync::Mutex<Option<Child>>,
    started_in: Duration,
}

/// The PostgreSQL server binaries: `$PG_BIN_DIR`, else `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("PG_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let has_postgres = |d: &Path| d.join("postgres").is_file() && d.join("initdb").is_file();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        && out.status.success()
    {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_postgres(&d) {
            return Ok(d);
        }
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in rd.flatten() {
            let v: u32 = match e.file_name().to_string_lossy().parse() {
                Ok(v) => v,
                Err(_) => continue,
            };
            let bin = e.path().join("bin");
            if has_postgres(&bin) && best.as_ref().is_none_or(|(b, _)| v > *b) {
                best = Some((v, bin));
            }
        }
    }
    best.map(|(_, p)| p).context(
        "no PostgreSQL server binaries: set PG_BIN_DIR, or install postgresql (Debian: apt-get install postgresql)",
    )
}

impl PgServer {
    /// The TCP port (on [`PgServer::host`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The unix socket directory (admin access as `postgres`, trust).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The PostgreSQL binaries used.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server's temp dir (holds data/, the log, certificates).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM) that signed the server certificate, for `sslrootcert` /
    /// `PGSSLROOTCERT`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The auth mode the server was started with.
    pub fn auth(&self) -> PasswordAuth {
        self.auth
    }

    /// How long [`PgServer::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.started_in
    }

    /// A libpq connection string for TLS logins with full verification (no password).
    pub fn conn_str(&self, user: &str, dbname: &str) -> String {
        format!(
            "host={} port={} user={user} dbname={dbname} sslmode=verify-full sslrootcert={}",
            self.host,
            self.port,
            self.ca_file.display()
        )
    }

    /// The server log so far.
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log_path.display()))
    }

    fn log_tail(&self) -> String {
        format!(
            "server log (last lines of {}):\n{}",
            self.log_path.display(),
            util::tail(&self.log_contents(), 30)
        )
    }

    /// The TLS connector (trusting the test CA) used by [`PgServer::connect_tls`].
    pub fn tls_connector(&self) -> MakeRustlsConnect {
        MakeRustlsConnect::new(self.tls.clone())
    }

    /// Logs in over TCP as an app would, with `ssl_mode`; spawns the connection task.
    async fn login<T>(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
        ssl_mode: SslMode,
        tls: T,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error>
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
        T::Stream: Send + 'static,
    {
        let (client, conn) = tokio_postgres::Config::new()
            .host(&self.host)
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(dbname)
            .ssl_mode(ssl_mode)
            .connect(tls)
            .await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Logs in over TCP + TLS (verify-full against the test CA) as an app would; the
    /// connection task is spawned. The error is tokio-postgres' (e.g. the server's FATAL).
    pub async fn connect_tls(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let tls = self.tls_connector();
        self.login(user, password, dbname, SslMode::Require, tls)
            .await
    }

    /// Logs in over TCP without TLS (which the server rejects, like Azure).
    pub async fn connect_plain(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.login(
            user,
            password,
            dbname,
            SslMode::Disable,
            tokio_postgres::NoTls,
        )
        .await
    }
}

/// A tokio-postgres error with the server's message, severity and SQLSTATE when there is one.
pub fn pg_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => format!("{e:#}"),
    }
}
