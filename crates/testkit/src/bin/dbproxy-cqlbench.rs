//! CQL throughput directly (TLS + PasswordAuthenticator) and through entra-db-proxy, in one run,
//! against a local Cassandra 5.0 and a fake Entra ID / ARM listKeys. Prints operations per second
//! and the proxy/direct ratio. Used by `bench/cql.sh`; not a test (no assertions on timings).
//!
//! `dbproxy-cqlbench --proxy-bin PATH [--ops N] [--concurrency C]`

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use dbproxy_testkit::{
    azure::{FakeAzure, FakeAzureConfig},
    cassandra::{CassandraCluster, CassandraOptions},
    certs::TestCa,
    util::unique_temp_dir,
};
use scylla::client::{session::Session, session_builder::SessionBuilder};

const ACCOUNT: &str = "benchacct";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut proxy_bin, mut ops, mut concurrency) = (None, 20_000usize, 32usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--proxy-bin" => proxy_bin = args.next(),
            "--ops" => ops = args.next().context("--ops N")?.parse()?,
            "--concurrency" => concurrency = args.next().context("--concurrency C")?.parse()?,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let proxy_bin =
        proxy_bin.context("--proxy-bin PATH (the entra-db-proxy binary) is required")?;

    let ca = TestCa::new("cqlbench");
    let dir = unique_temp_dir("cqlbench")?;
    let ca_file = dir.join("ca.pem");
    ca.write_ca(&ca_file);
    eprintln!("starting Cassandra…");
    let cluster = CassandraCluster::start(&ca, CassandraOptions::single()).await?;
    let azure = FakeAzure::start(&ca, FakeAzureConfig::default()).await?;
    let key = azure.keys().primary_master_key;
    cluster.set_role_password(ACCOUNT, &key).await?;
    let c = azure.config();

    let mut child = Command::new(&proxy_bin)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn,entra_db_proxy=info")
        .env("ENTRA_DB_PROXY_CASSANDRA_LISTEN", "127.0.0.1:0")
        .env("AZURE_COSMOS_CONTACTPOINT", "127.0.0.1")
        .env("AZURE_COSMOS_PORT", cluster.native_port().to_string())
        .env("AZURE_COSMOS_USERNAME", ACCOUNT)
        .env("AZURE_COSMOS_LISTKEYURL", azure.list_keys_url(ACCOUNT))
        .env("AZURE_COSMOS_CLIENTID", &c.client_id)
        .env("AZURE_COSMOS_CLIENTSECRET", &c.client_secret)
        .env("AZURE_COSMOS_TENANTID", &c.tenant_id)
        .env("AZURE_AUTHORITY_HOST", azure.authority_host())
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")
        .env("SSL_CERT_FILE", &ca_file)
        .args(["--log-format", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {proxy_bin}"))?;
    let stderr = child.stderr.take().context("proxy stderr")?;
    let mut addr = None;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
            if v["message"] == "listening" {
                addr = v["addr"].as_str().map(str::to_owned);
            }
            if v["message"] == "entra-db-proxy ready" {
                break;
            }
        }
    }
    let addr = addr.context("the proxy did not report its address")?;

    let direct = cluster
        .session_builder(1)
        .user(ACCOUNT, &key)
        .build()
        .await?;
    let proxied = SessionBuilder::new().known_node(&addr).build().await?;
    direct
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS bench WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
            &[],
        )
        .await?;
    direct
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS bench.kv (k int PRIMARY KEY, v text)",
            &[],
        )
        .await?;

    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        format!("workload ({ops} ops, {concurrency} in flight)"),
        "direct op/s",
        "proxy op/s",
        "ratio"
    );
    for (name, write) in [
        ("write (prepared INSERT)", true),
        ("read (prepared SELECT)", false),
    ] {
        // Alternate the two paths and keep each one's best of two, so that neither pays alone
        // for Cassandra's background work (flushes, compactions).
        let (mut d, mut p) = (0f64, 0f64);
        for _ in 0..2 {
            d = d.max(run(&direct, write, ops, concurrency).await?);
            p = p.max(run(&proxied, write, ops, concurrency).await?);
        }
        println!("{name:<28} {d:>12.0} {p:>12.0} {:>8.2}", p / d);
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `ops` prepared statements with `concurrency` in flight; returns operations per second.
async fn run(s: &Session, write: bool, ops: usize, concurrency: usize) -> anyhow::Result<f64> {
    let stmt = if write {
        s.prepare("INSERT INTO bench.kv (k, v) VALUES (?, ?)")
            .await?
    } else {
        s.prepare("SELECT v FROM bench.kv WHERE k = ?").await?
    };
    let stmt = Arc::new(stmt);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (stmt, next) = (stmt.clone(), next.clone());
        tasks.push(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= ops {
                    return Ok::<(), anyhow::Error>(());
                }
                let k = (i % 10_000) as i32;
                if write {
                    s.execute_unpaged(&stmt, (k, "value")).await?;
                } else {
                    s.execute_unpaged(&stmt, (k,)).await?;
                }
            }
        });
    }
    futures_util::future::try_join_all(tasks).await?;
    Ok(ops as f64
        / started
            .elapsed()
            .max(Duration::from_millis(1))
            .as_secs_f64())
}
