//! Many concurrent PostgreSQL sessions through entra-db-proxy: memory per idle session, login
//! latency under bursts, and whether the memory is given back once they close. Used by
//! `bench/scale.sh`; not a test (it asserts nothing about timings).
//!
//! `dbproxy-scale --proxy-bin [LABEL=]PATH [--proxy-bin …] [--sessions N] [--burst B]
//! [--upstream real|standin] [--inspect CMD]`
//!
//! One upstream and one fake Entra ID serve every run: a real PostgreSQL (TLS, `password` auth,
//! `max_connections` raised to fit; the default) or, with `--upstream standin`,
//! [`PgStandin`] (TLS, the cleartext password checked against the fake Entra's tokens), which
//! holds 10,000 sessions in a few MB where PostgreSQL needs about 2 MB per backend. For each proxy binary (several, e.g. builds with different
//! allocators, are measured one after the other against the same server):
//! 1. start it (plaintext loopback listener, TLS upstream), log in once (the token is fetched)
//!    and take the baseline RSS;
//! 2. open N sessions in bursts of B concurrent logins; each login's latency is from the TCP
//!    connect to ReadyForQuery; every session runs `select 1` once it is open;
//! 3. with all N open and idle, sample RSS: (RSS − baseline) / N is the memory per session;
//! 4. close them all and sample RSS every second for 30 s.
//!
//! `--inspect CMD` runs `sh -c CMD` at the baseline and again 30 s after close, with PROXY_PID
//! and PHASE (`baseline`, `after-close`) set: a hook to dump where the memory is (smaps, gdb).
//!
//! Each proxy session holds two descriptors (client and upstream), so one process can hold at
//! most about (hard RLIMIT_NOFILE − 64) / 2 sessions; N is capped there, and the cap is printed.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use dbproxy_testkit::{
    azure::{FakeAzure, FakeAzureConfig},
    certs::TestCa,
    postgres::{PgOptions, PgServer, PgStandin},
    tokens::random_b64url,
    util::unique_temp_dir,
};

const USER: &str = "aad_scale_app";
const DB: &str = "scale";
const RESOURCE: &str = "https://ossrdbms-aad.database.windows.net";

struct Args {
    proxies: Vec<(String, PathBuf)>,
    sessions: usize,
    burst: usize,
    /// A shell command run at the baseline and 30 s after close, with PROXY_PID and PHASE set
    /// (for example a gdb or smaps dump), to see where the memory is.
    inspect: Option<String>,
    /// `real` (PostgreSQL) or `standin` ([`PgStandin`]).
    upstream: String,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut out = Args {
        proxies: Vec::new(),
        sessions: 10_000,
        burst: 500,
        inspect: None,
        upstream: "real".into(),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--proxy-bin" => {
                let v = args.next().context("--proxy-bin [LABEL=]PATH")?;
                let (label, path) = match v.split_once('=') {
                    Some((l, p)) => (l.to_owned(), p.to_owned()),
                    None => ("entra-db-proxy".to_owned(), v),
                };
                out.proxies.push((label, PathBuf::from(path)));
            }
            "--sessions" => out.sessions = args.next().context("--sessions N")?.parse()?,
            "--burst" => out.burst = args.next().context("--burst B")?.parse()?,
            "--inspect" => out.inspect = Some(args.next().context("--inspect CMD")?),
            "--upstream" => out.upstream = args.next().context("--upstream real|standin")?,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    anyhow::ensure!(!out.proxies.is_empty(), "--proxy-bin PATH is required");
    anyhow::ensure!(out.burst > 0, "--burst must be at least 1");
    anyhow::ensure!(
        matches!(out.upstream.as_str(), "real" | "standin"),
        "--upstream is real or standin, not {:?}",
        out.upstream
    );
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let hard = nofile_hard_limit();
    let cap = (hard.saturating_sub(64) / 2) as usize;
    let sessions = if args.sessions > cap {
        println!(
            "note: {} sessions asked; the hard RLIMIT_NOFILE here is {hard} and each session needs \
             two descriptors in the proxy, so this run opens {cap}",
            args.sessions
        );
        cap
    } else {
        args.sessions
    };

    let ca = TestCa::new("scale");
    let dir = unique_temp_dir("scale")?;
    let ca_file = dir.join("ca.pem");
    ca.write_ca(&ca_file);
    let azure = FakeAzure::start(&ca, FakeAzureConfig::default()).await?;
    // The real server (one backend per session, about 2 MB each) or the stand-in (a few KB),
    // which accepts the tokens the fake Entra issued for the database's resource.
    let (pg, standin) = if args.upstream == "real" {
        let opts = PgOptions {
            extra_conf: vec![
                format!("max_connections = {}", sessions + 20),
                "log_connections = off".into(),
            ],
            ..PgOptions::default()
        };
        eprintln!("starting PostgreSQL (max_connections {})…", sessions + 20);
        let pg = Arc::new(PgServer::start(&ca, opts).await?);
        pg.set_role_password(USER, &random_b64url(24)).await?;
        pg.create_database(DB, USER).await?;
        azure.sync_pg_role_password(pg.clone(), USER, RESOURCE);
        (Some(pg), None)
    } else {
        let tokens = Arc::new(Mutex::new(HashSet::new()));
        let issued = tokens.clone();
        azure.on_issue(move |t| {
            if t.resource.trim_end_matches('/') == RESOURCE {
                lock(&issued).insert(t.token.into_bytes());
            }
            std::future::ready(())
        });
        let check = Arc::new(move |password: &[u8]| lock(&tokens).contains(password));
        (None, Some(PgStandin::start(&ca, check).await?))
    };
    let upstream_port = match (&pg, &standin) {
        (Some(pg), _) => pg.port(),
        (_, Some(s)) => s.port(),
        _ => unreachable!("one upstream is always started"),
    };

    println!(
        "| proxy | sessions | baseline RSS | RSS, all open | per session | login p50 / p99 (bursts of {}) | RSS after close: 1 s / 10 s / 30 s | 30 s ÷ baseline |",
        args.burst
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (label, bin) in &args.proxies {
        let proxy = Proxy::start(bin, &dir, &ca_file, upstream_port, &azure)?;
        let r = measure(&proxy, sessions, args.burst, args.inspect.as_deref()).await;
        drop(proxy);
        let r = r.with_context(|| format!("measuring {label}"))?;
        let mb = |kb: u64| format!("{:.1} MB", kb as f64 / 1024.0);
        println!(
            "| {label} | {} | {} | {} | {:.1} KB | {:.1} / {:.1} ms | {} / {} / {} | {:.2} |",
            r.opened,
            mb(r.baseline_kb),
            mb(r.open_kb),
            r.open_kb.saturating_sub(r.baseline_kb) as f64 / r.opened.max(1) as f64,
            r.p50_ms,
            r.p99_ms,
            mb(r.after_close_kb[0]),
            mb(r.after_close_kb[1]),
            mb(r.after_close_kb[2]),
            r.after_close_kb[2] as f64 / r.baseline_kb.max(1) as f64,
        );
    }
    drop(azure);
    drop((pg, standin));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

struct Proxy {
    child: Child,
    port: u16,
}

impl Proxy {
    fn start(
        bin: &Path,
        dir: &Path,
        ca_file: &Path,
        upstream_port: u16,
        azure: &FakeAzure,
    ) -> anyhow::Result<Proxy> {
        let c = azure.config();
        // A file, not a pipe: a pipe nobody drains would block the proxy's logging.
        let log = dir.join(format!("proxy-{}.log", random_b64url(6)));
        let child = Command::new(bin)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn,entra_db_proxy=info")
            .env("ENTRA_DB_PROXY_POSTGRES_LISTEN", "127.0.0.1:0")
            .env(
                "AZURE_POSTGRESQL_CONNECTIONSTRING",
                format!(
                    "dbname={DB} host=127.0.0.1 port={} sslmode=require user={USER}",
                    upstream_port
                ),
            )
            .env("AZURE_POSTGRESQL_CLIENTID", &c.client_id)
            .env("AZURE_POSTGRESQL_CLIENTSECRET", &c.client_secret)
            .env("AZURE_POSTGRESQL_TENANTID", &c.tenant_id)
            .env("AZURE_AUTHORITY_HOST", azure.authority_host())
            .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")
            .env("SSL_CERT_FILE", ca_file)
            // A burst of concurrent logins queues at PostgreSQL's postmaster (one fork each):
            // generous timeouts, so the run measures latency instead of failing on it.
            .args(["--log-format", "json", "--connect-timeout", "120s"])
            .args(["--handshake-timeout", "300s"])
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut proxy = Proxy { child, port: 0 };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut ready = false;
            for v in text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            {
                if v["message"] == "listening" {
                    if let Some(a) = v["addr"].as_str() {
                        proxy.port = a.rsplit(':').next().unwrap_or("0").parse()?;
                    }
                }
                ready |= v["message"] == "entra-db-proxy ready";
            }
            if ready && proxy.port != 0 {
                return Ok(proxy);
            }
            if let Some(status) = proxy.child.try_wait()? {
                anyhow::bail!("the proxy exited ({status}):\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "the proxy did not report ready within 30 s (log: {})",
            log.display()
        )
    }

    /// Runs the `--inspect` command, if any, with PROXY_PID and PHASE in its environment.
    fn inspect(&self, cmd: Option<&str>, phase: &str) -> anyhow::Result<()> {
        let Some(cmd) = cmd else { return Ok(()) };
        let status = Command::new("sh")
            .args(["-c", cmd])
            .env("PROXY_PID", self.child.id().to_string())
            .env("PHASE", phase)
            .status()
            .with_context(|| format!("running --inspect {cmd:?}"))?;
        anyhow::ensure!(status.success(), "--inspect {cmd:?} failed: {status}");
        Ok(())
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Measured {
    opened: usize,
    baseline_kb: u64,
    open_kb: u64,
    p50_ms: f64,
    p99_ms: f64,
    after_close_kb: [u64; 3],
}

type Session = (tokio_postgres::Client, tokio::task::JoinHandle<()>);

async fn login(port: u16) -> anyhow::Result<(Session, Duration)> {
    let started = Instant::now();
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("anyone")
        .dbname(DB)
        .connect(tokio_postgres::NoTls)
        .await?;
    let took = started.elapsed();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    client.simple_query("select 1").await?;
    Ok(((client, task), took))
}

async fn measure(
    proxy: &Proxy,
    sessions: usize,
    burst: usize,
    inspect: Option<&str>,
) -> anyhow::Result<Measured> {
    // The first login fetches the token; the baseline is taken after it, idle.
    drop(login(proxy.port).await.context("first login")?);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline_kb = proxy.rss_kb();
    proxy.inspect(inspect, "baseline")?;

    let mut open: Vec<Session> = Vec::with_capacity(sessions);
    let mut latencies = Vec::with_capacity(sessions);
    while open.len() < sessions {
        let n = burst.min(sessions - open.len());
        let logins: Vec<_> = (0..n).map(|_| tokio::spawn(login(proxy.port))).collect();
        for l in logins {
            let (session, took) = l.await?.context("a login in the burst failed")?;
            open.push(session);
            latencies.push(took);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open_kb = proxy.rss_kb();
    let opened = open.len();

    for (client, task) in open {
        drop(client);
        let _ = task.await;
    }
    let closed = Instant::now();
    let mut after_close_kb = [0; 3];
    for (i, at) in [1u64, 10, 30].into_iter().enumerate() {
        let wait = Duration::from_secs(at).saturating_sub(closed.elapsed());
        tokio::time::sleep(wait).await;
        after_close_kb[i] = proxy.rss_kb();
    }
    proxy.inspect(inspect, "after-close")?;

    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    Ok(Measured {
        opened,
        baseline_kb,
        open_kb,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        after_close_kb,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn nofile_hard_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and has no other effect.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        1024
    }
}
