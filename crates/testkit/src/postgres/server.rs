//! Setting a server up and running it: certificates, `initdb`, `pg_hba.conf` and
//! `postgresql.conf` as the module docs describe, the start (retried on a port clash) and the
//! wait until it accepts connections, a restart (fast shutdown, then start), and the stop
//! (SIGQUIT) and cleanup on drop.
//!
//! As root, the binaries run as the `postgres` system user, which PostgreSQL requires.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{PgOptions, PgServer, find_bin_dir};
use crate::{certs::TestCa, util};

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
            child: std::sync::Mutex::new(None),
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
        self.spawn_postmaster()?;
        self.wait_ready(timeout).await
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<std::process::Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_postmaster(&self) -> anyhow::Result<()> {
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
        *self.child() = Some(child);
        Ok(())
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = {
                let mut guard = self.child();
                match guard.as_mut().map(|c| c.try_wait()) {
                    Some(Ok(Some(status))) => {
                        *guard = None;
                        Some(status)
                    }
                    _ => None,
                }
            };
            if let Some(status) = exited {
                anyhow::bail!(
                    "postgres exited ({status}) during startup; log {}:\n{}",
                    self.log_path.display(),
                    self.log_contents()
                );
            }
            match self.admin_client().await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    self.stop_with(libc::SIGQUIT);
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

    /// Restarts the server on the same port and data: a fast shutdown (`pg_ctl stop -m fast`,
    /// SIGINT: every session gets FATAL 57P01 "terminating connection due to administrator
    /// command" and is closed), then a start; returns once it accepts connections again.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop_with(libc::SIGINT);
        self.spawn_postmaster()?;
        self.wait_ready(Duration::from_secs(60)).await
    }

    /// Stops the server now (immediate shutdown). Idempotent.
    pub fn stop(&mut self) {
        self.stop_with(libc::SIGQUIT);
    }

    /// Sends `signal` to the postmaster (SIGQUIT: immediate, SIGINT: fast shutdown) and waits
    /// up to 10 s for it to exit (then kills it). Idempotent.
    fn stop_with(&self, signal: libc::c_int) {
        let Some(mut child) = self.child().take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain syscall on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(pid, signal);
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
