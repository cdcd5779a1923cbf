//! A real PostgreSQL server per test, configured like Azure Database for PostgreSQL.
//!
//! [`PgServer::start`] makes a temp dir, runs `initdb`, and starts `postgres` with:
//! * TLS on (`ssl=on`), with a certificate for [`PgOptions::server_names`] signed by the test's
//!   [`TestCa`]; TLS 1.2 minimum;
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

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    process::{Child, Stdio},
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};
use tokio_postgres::config::SslMode;

use anyhow::Context as _;
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::{certs::TestCa, util};

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
    child: Option<Child>,
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

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl PgServer {
    /// Starts a server (see the module docs). Takes ~1 s (initdb dominates).
    pub async fn start(ca: &TestCa, opts: PgOptions) -> anyhow::Result<PgServer> {
        let t0 = Instant::now();
        let bin_dir = find_bin_dir()?;
        let owner = if util::is_root() {
            Some(util::lookup_user("postgres")?)
        } else {
            None
        };
        let dir = util::unique_temp_dir("pg")?;
        // From here on, Drop cleans the dir.
        let mut server = PgServer {
            data_dir: dir.join("data"),
            log_path: dir.join("postgres.log"),
            ca_file: dir.join("root.crt"),
            dir,
            bin_dir,
            host: "127.0.0.1".into(),
            port: 0,
            auth: opts.auth,
            tls: ca.rustls_client_config(),
            child: None,
            started_in: Duration::ZERO,
        };
        util::chown(&server.dir, owner)?;

        // Certificates.
        let names: Vec<&str> = opts.server_names.iter().map(String::as_str).collect();
        let pair = ca.try_server_cert(&names)?;
        let crt = server.dir.join("server.crt");
        let key = server.dir.join("server.key");
        util::write_file(&crt, &pair.cert_pem, 0o644, owner)?;
        util::write_file(&key, &pair.key_pem, 0o600, owner)?;
        util::write_file(&server.ca_file, ca.ca_pem(), 0o644, owner)?;
        util::write_file(&server.log_path, "", 0o644, owner)?;

        // initdb.
        let mut cmd = server.command("initdb");
        cmd.arg("-D")
            .arg(&server.data_dir)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        let out = tokio::process::Command::from(cmd)
            .output()
            .await
            .context("running initdb")?;
        if !out.status.success() {
            anyhow::bail!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // Configuration.
        let extra_hba: String = opts.extra_hba.iter().map(|l| format!("{l}\n")).collect();
        let hba = format!(
            "# written by dbproxy-testkit\n\
             local   all  postgres                 trust\n\
             {extra_hba}\
             hostssl all  all       127.0.0.1/32   {}\n",
            opts.auth.hba_method()
        );
        util::write_file(&server.data_dir.join("pg_hba.conf"), hba, 0o600, owner)?;
        let mut conf = format!(
            "\n# dbproxy-testkit\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{dir}'\n\
             ssl = on\n\
             ssl_cert_file = '{crt}'\n\
             ssl_key_file = '{key}'\n\
             ssl_min_protocol_version = 'TLSv1.2'\n\
             password_encryption = '{enc}'\n\
             max_connections = 100\n\
             shared_buffers = 16MB\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             wal_level = minimal\n\
             max_wal_senders = 0\n\
             autovacuum = off\n\
             logging_collector = off\n\
             log_destination = 'stderr'\n\
             log_connections = on\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             log_min_error_statement = panic\n",
            dir = server.dir.display(),
            crt = crt.display(),
            key = key.display(),
            enc = opts.auth.password_encryption(),
        );
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = server.data_dir.join("postgresql.conf");
        let mut full = std::fs::read_to_string(&conf_path).context("reading postgresql.conf")?;
        full.push_str(&conf);
        util::write_file(&conf_path, full, 0o600, owner)?;

        // Start, retrying when another process took the port in between.
        let mut attempt = 0;
        loop {
            attempt += 1;
            server.port = util::free_port()?;
            match server.spawn_and_wait(opts.ready_timeout).await {
                Ok(()) => break,
                Err(e) if attempt < 5 && server.log_contents().contains("could not bind") => {
                    tracing::debug!("postgres port clash, retrying: {e:#}");
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        server.started_in = t0.elapsed();
        tracing::debug!(port = server.port, dir = %server.dir.display(), took = ?server.started_in, "PostgreSQL up");
        Ok(server)
    }

    /// A command for a server binary, run as the `postgres` user when we are root.
    fn command(&self, bin: &str) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.bin_dir.join(bin));
        cmd.current_dir(&self.dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        if util::is_root()
            && let Ok((uid, gid)) = util::lookup_user("postgres")
        {
            use std::os::unix::process::CommandExt as _;
            cmd.uid(uid)
                .gid(gid)
                .env("HOME", &self.dir)
                .env("USER", "postgres");
        }
        cmd
    }

    async fn spawn_and_wait(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .context("opening the log file")?;
        let log2 = log.try_clone().context("dup log fd")?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-c")
            .arg(format!("port={}", self.port))
            .stdout(log)
            .stderr(log2);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin_dir.join("postgres").display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                anyhow::bail!(
                    "postgres exited ({status}) during startup; log {}:\n{}",
                    self.log_path.display(),
                    self.log_contents()
                );
            }
            match self.admin_client().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    self.stop();
                    anyhow::bail!(
                        "postgres not ready after {timeout:?} ({e:#}); log {}:\n{}",
                        self.log_path.display(),
                        self.log_contents()
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

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

    /// A superuser client over the unix socket.
    pub async fn admin_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.admin_client_db("postgres").await
    }

    /// A superuser client over the unix socket, to database `dbname`.
    pub async fn admin_client_db(&self, dbname: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname(dbname)
            .application_name("dbproxy-testkit-admin")
            .connect(tokio_postgres::NoTls)
            .await
            .context("admin connection over the unix socket")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs SQL (one or more statements, simple protocol) as the superuser.
    pub async fn admin_execute(&self, sql: &str) -> anyhow::Result<()> {
        let client = self.admin_client().await.with_context(|| self.log_tail())?;
        client
            .batch_execute(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}", pg_error_text(&e)))
            .with_context(|| format!("admin SQL failed: {sql}\n{}", self.log_tail()))
    }

    /// Runs a query as the superuser and returns the rows (simple protocol, text values).
    pub async fn admin_query(&self, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let client = self.admin_client().await.with_context(|| self.log_tail())?;
        let msgs = client
            .simple_query(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}", pg_error_text(&e)))
            .with_context(|| format!("admin query failed: {sql}\n{}", self.log_tail()))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// Creates the LOGIN role if missing and sets its password (hashed per the auth mode: md5 for
    /// [`PasswordAuth::Md5`], SCRAM otherwise). Also grants it CREATE/CONNECT on database
    /// `postgres` and all on schema `public` there. The password is never logged or put in errors.
    pub async fn set_role_password(&self, role: &str, password: &str) -> anyhow::Result<()> {
        anyhow::ensure!(!password.contains('\0'), "a password cannot contain NUL");
        let ctx = || {
            format!(
                "setting the password of role {role:?} (password of {} chars, redacted)\n{}",
                password.len(),
                self.log_tail()
            )
        };
        let client = self.admin_client().await.with_context(ctx)?;
        let run = |sql: String| {
            let client = &client;
            async move {
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", pg_error_text(&e)))
            }
        };
        run(format!(
            "SET log_min_error_statement = panic; SET log_statement = 'none'; SET password_encryption = '{}'",
            self.auth.password_encryption()
        ))
        .await
        .with_context(ctx)?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .map_err(|e| anyhow::anyhow!("{}", pg_error_text(&e)))
            .with_context(ctx)?
            .is_some();
        if !exists && let Err(e) = run(format!("CREATE ROLE {} LOGIN", quote_ident(role))).await {
            // Another task may have created it just now.
            if !e.to_string().contains("already exists") {
                return Err(e).with_context(ctx);
            }
        }
        run(format!(
            "ALTER ROLE {} WITH LOGIN PASSWORD {}",
            quote_ident(role),
            quote_literal(password)
        ))
        .await
        .with_context(ctx)?;
        run(format!(
            "GRANT CREATE, CONNECT ON DATABASE postgres TO {r}; GRANT ALL ON SCHEMA public TO {r}",
            r = quote_ident(role)
        ))
        .await
        .with_context(ctx)?;
        Ok(())
    }

    /// Creates database `name` owned by `owner` (the role must exist), if it does not exist.
    pub async fn create_database(&self, name: &str, owner: &str) -> anyhow::Result<()> {
        let exists = !self
            .admin_query(&format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                quote_literal(name)
            ))
            .await?
            .is_empty();
        if !exists {
            self.admin_execute(&format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(name),
                quote_ident(owner)
            ))
            .await?;
        }
        Ok(())
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

    /// Stops the server now (immediate shutdown). Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SIGQUIT to the postmaster is `pg_ctl stop -m immediate`.
        // SAFETY: plain syscall on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGQUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        if util::keep_test_dirs() {
            eprintln!(
                "KEEP_TEST_DIRS: PostgreSQL dir kept at {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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

/// tokio-postgres TLS over tokio-rustls (aws-lc-rs). Verifies the server name it is given
/// (the `host`), so with an IP host the certificate needs that IP SAN. Offers
/// `tls-server-end-point` channel binding for SCRAM-SHA-256-PLUS.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<rustls::ClientConfig>,
}

impl MakeRustlsConnect {
    /// Uses this rustls config.
    pub fn new(config: Arc<rustls::ClientConfig>) -> Self {
        MakeRustlsConnect { config }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = rustls_pki_types::ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            name,
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
        })
    }
}

/// One TLS connection attempt (see [`MakeRustlsConnect`]).
pub struct RustlsConnect {
    name: rustls_pki_types::ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(s))
        })
    }
}

/// A TLS stream for tokio-postgres.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        match self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
        {
            // The test CA signs with ECDSA-SHA256, so the hash is SHA-256 (RFC 5929).
            Some(cert) => ChannelBinding::tls_server_end_point(sha2::Sha256::digest(cert).to_vec()),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
