//! A cluster's life: ports, starting the JVMs one node at a time, waiting until it is ready,
//! log tails for errors, restarting a node, and stopping (SIGTERM, then SIGKILL) and cleaning
//! up on drop.
//!
//! A start that hits a port taken in between is retried with new ports. The JVMs are spawned
//! from one long-lived thread with `PR_SET_PDEATHSIG`, so they die with the test process even
//! when the cluster is never dropped.

use std::{
    collections::HashSet,
    fmt::Write as _,
    io::{Read as _, Seek as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};

use super::{CassandraCluster, CassandraInstall, CassandraOptions, Node};
use crate::{certs::TestCa, util};

static NEXT_CLUSTER: AtomicUsize = AtomicUsize::new(0);

/// Ports handed out in this process, so two clusters started at once never pick the same one.
fn reserved_ports() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(Default::default)
}

/// A port free on every one of `ips` right now, and not handed out before in this process.
fn free_port_on(ips: &[Ipv4Addr]) -> anyhow::Result<u16> {
    let mut reserved = reserved_ports().lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let port = util::free_port()?;
        if reserved.contains(&port) {
            continue;
        }
        let ok = ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok());
        if ok {
            reserved.insert(port);
            return Ok(port);
        }
    }
    bail!("found no port free on {ips:?}")
}

fn node_ip(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, (n + 1) as u8)
}

impl CassandraCluster {
    /// Starts a cluster and waits until the superuser can log in (through node 1) and, with
    /// three nodes, node 1 sees both peers. The native port is TLS-only with a certificate from
    /// `ca` for 127.0.0.1–3 and `localhost`.
    pub async fn start(ca: &TestCa, opts: CassandraOptions) -> anyhow::Result<CassandraCluster> {
        if opts.nodes != 1 && opts.nodes != 3 {
            bail!("CassandraOptions::nodes must be 1 or 3, not {}", opts.nodes);
        }
        let install = CassandraInstall::locate()?;
        let cert = ca
            .try_server_cert(&["127.0.0.1", "127.0.0.2", "127.0.0.3", "localhost"])
            .context("Cassandra server certificate")?;
        let bundle = format!("{}{}", cert.key_pem, cert.cert_pem);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let cluster = Self::launch(&install, ca, &bundle, &opts)?;
            match cluster.wait_ready(&opts, started).await {
                Ok(()) => {
                    tracing::info!(
                        cluster = %cluster.name,
                        nodes = opts.nodes,
                        secs = started.elapsed().as_secs_f64(),
                        "Cassandra ready"
                    );
                    return Ok(cluster);
                }
                Err(e) if attempt < 3 && cluster.port_clash() => {
                    tracing::warn!("Cassandra start hit a port in use, retrying: {e:#}");
                }
                Err(e) => {
                    let mut msg = format!("{e:#}");
                    for n in 0..cluster.nodes.len() {
                        let _ = write!(
                            msg,
                            "\n--- node {} ({}) log tail ---\n{}",
                            n + 1,
                            cluster.nodes[n].dir.display(),
                            cluster.log_tail(n + 1, 30)
                        );
                    }
                    return Err(anyhow!(msg));
                }
            }
        }
    }

    /// Picks ports and writes every node's files (`wait_ready` starts the nodes).
    fn launch(
        install: &CassandraInstall,
        ca: &TestCa,
        bundle: &str,
        opts: &CassandraOptions,
    ) -> anyhow::Result<CassandraCluster> {
        let ips: Vec<Ipv4Addr> = (0..opts.nodes).map(node_ip).collect();
        let native_port = free_port_on(&ips)?;
        let storage_port = free_port_on(&ips)?;
        let name = format!(
            "edp-{}-{}",
            std::process::id(),
            NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut nodes = Vec::new();
        for (n, ip) in ips.iter().enumerate() {
            let dir = util::unique_temp_dir(&format!("cassandra-n{}", n + 1))?;
            nodes.push(Node {
                ip: *ip,
                dir,
                jmx_port: free_port_on(&[Ipv4Addr::LOCALHOST])?,
                child: Mutex::new(None),
            });
        }
        let cluster = CassandraCluster {
            name,
            nodes,
            native_port,
            storage_port,
            tls: ca.rustls_client_config(),
            authorizer: opts.authorizer,
            install: install.clone(),
            options: opts.clone(),
        };
        for n in 0..cluster.nodes.len() {
            cluster.write_node_files(n, bundle, opts)?;
        }
        Ok(cluster)
    }

    fn spawn_node(&self, n: usize, opts: &CassandraOptions) -> anyhow::Result<()> {
        let install = &self.install;
        let node = &self.nodes[n];
        let d = &node.dir;
        let args = self.jvm_args(n, opts)?;
        let out = std::fs::File::create(d.join("logs/stdout.log")).context("stdout.log")?;
        let err = out.try_clone().context("stdout.log")?;
        let mut cmd = Command::new(&install.java);
        cmd.args(&args)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = spawn_tied_to_process(cmd)
            .with_context(|| format!("starting {}", install.java.display()))?;
        tracing::debug!(node = n + 1, pid = child.id(), dir = %d.display(), "Cassandra node started");
        *node.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    async fn wait_ready(&self, opts: &CassandraOptions, started: Instant) -> anyhow::Result<()> {
        let deadline = started + opts.ready_timeout;
        // One at a time, the seed (node 1) first.
        for n in 0..self.nodes.len() {
            self.spawn_node(n, opts)?;
            self.wait_listening(n, deadline).await?;
            tracing::debug!(
                node = n + 1,
                secs = started.elapsed().as_secs_f64(),
                "Cassandra node listening"
            );
        }
        // The superuser exists superuser_setup_delay_ms after start (on the last node): retry.
        let session = loop {
            match self.admin_session().await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    self.check_alive()?;
                    tracing::trace!("superuser login not yet possible: {e:#}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.context("superuser login never worked")),
            }
        };
        if self.nodes.len() > 1 {
            loop {
                let peers = session
                    .query_unpaged("SELECT peer FROM system.peers", &[])
                    .await
                    .context("reading system.peers")?
                    .into_rows_result()
                    .context("system.peers rows")?
                    .rows_num();
                if peers == self.nodes.len() - 1 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node 1 sees {peers} peers, not {}", self.nodes.len() - 1);
                }
                self.check_alive()?;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Ok(())
    }

    /// Waits until node `n` (0-based) accepts TCP on the native port.
    async fn wait_listening(&self, n: usize, deadline: Instant) -> anyhow::Result<()> {
        let addr = SocketAddr::new(IpAddr::V4(self.nodes[n].ip), self.native_port);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!("Cassandra node {} not listening on {addr} in time", n + 1);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// An error if a started node has exited.
    fn check_alive(&self) -> anyhow::Result<()> {
        for (n, node) in self.nodes.iter().enumerate() {
            let mut guard = node.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(child) = guard.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("Cassandra node {} exited: {status}", n + 1);
            }
        }
        Ok(())
    }

    /// Whether a node's log says a port was taken (the start is then retried with new ports).
    fn port_clash(&self) -> bool {
        (1..=self.nodes.len()).any(|n| {
            let t = self.log_tail(n, 200);
            t.contains("Address already in use") || t.contains("BindException")
        })
    }

    /// The last `lines` lines of node `n`'s (1-based) `system.log` (its stdout if that is
    /// empty).
    pub fn log_tail(&self, node: usize, lines: usize) -> String {
        let Some(node) = node.checked_sub(1).and_then(|i| self.nodes.get(i)) else {
            return String::new();
        };
        let read = |name: &str| read_tail(&node.dir.join("logs").join(name), 256 * 1024);
        let mut text = read("system.log");
        if text.trim().is_empty() {
            text = read("stdout.log");
        } else {
            // JVM start errors (bad flags, module access) only reach stdout.
            let out = read("stdout.log");
            if out.contains("Error") || out.contains("Exception") {
                text = format!("{out}\n{text}");
            }
        }
        util::tail(&text, lines)
    }

    /// Restarts node `node` (1-based) on the same addresses and data: SIGTERM (Cassandra's
    /// orderly shutdown: its client connections are closed), SIGKILL if it is still running
    /// after `grace`, then a start; returns once the superuser can log in through node 1
    /// again. Returns how long the node was down.
    ///
    /// # Panics
    /// If there is no node `node`.
    pub async fn restart_node(&self, node: usize, grace: Duration) -> anyhow::Result<Duration> {
        let n = node - 1;
        let child = self.nodes[n]
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let stopped = Instant::now();
        if let Some(child) = child {
            stop_children(vec![child], grace);
        }
        let deadline = Instant::now() + self.options.ready_timeout;
        self.spawn_node(n, &self.options)?;
        self.wait_listening(n, deadline).await?;
        loop {
            match self.admin_session().await {
                Ok(_) => return Ok(stopped.elapsed()),
                Err(e) if Instant::now() < deadline => {
                    self.check_alive()?;
                    tracing::trace!("superuser login not yet possible after the restart: {e:#}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.context("superuser login never worked after the restart")),
            }
        }
    }

    /// Stops every node: SIGTERM, then SIGKILL for those still running after `grace`.
    pub fn stop(&self, grace: Duration) {
        let children: Vec<Child> = self
            .nodes
            .iter()
            .filter_map(|n| n.child.lock().unwrap_or_else(|e| e.into_inner()).take())
            .collect();
        stop_children(children, grace);
    }
}

/// SIGTERM to each, then SIGKILL for those still running after `grace`; reaps them all.
fn stop_children(mut children: Vec<Child>, grace: Duration) {
    for c in &children {
        // SAFETY: kill(2) on a pid this process spawned and has not reaped yet.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let until = Instant::now() + grace;
    while Instant::now() < until
        && children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(None)))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in &mut children {
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
}

impl Drop for CassandraCluster {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
        for node in &self.nodes {
            if util::keep_test_dirs() {
                eprintln!(
                    "KEEP_TEST_DIRS: kept Cassandra node dir {}",
                    node.dir.display()
                );
            } else {
                let _ = std::fs::remove_dir_all(&node.dir);
            }
        }
        let mut reserved = reserved_ports().lock().unwrap_or_else(|e| e.into_inner());
        reserved.remove(&self.native_port);
        reserved.remove(&self.storage_port);
        for node in &self.nodes {
            reserved.remove(&node.jmx_port);
        }
    }
}

/// The last `max` bytes of a file, lossily decoded.
fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(std::io::SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Spawns `cmd` from a thread that lives as long as the process, with `PR_SET_PDEATHSIG =
/// SIGKILL`: the JVM dies with the test process even when nothing drops the cluster (a
/// `static`, an abort). The signal follows the spawning *thread*, hence the dedicated thread: a
/// test's own thread ends with the test, which would kill a cluster shared by later tests.
fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("cassandra-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the cassandra-spawner thread");
        Mutex::new(tx)
    });
    {
        use std::os::unix::process::CommandExt as _;
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe; nothing allocates here.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("cassandra-spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("cassandra-spawner thread is gone"))?
}
