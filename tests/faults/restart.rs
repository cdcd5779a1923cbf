//! The database restarted under live sessions: the session ends cleanly (the client is told,
//! then the connection closes; no garbage, no hang), the proxy logs it as the upstream's
//! close and counts it, and new sessions work once the database is back.
//!
//! PostgreSQL restarts in about a second. Cassandra needs a node of its own (restarting the
//! shared one would break the other tests): its start and restart make that test take about a
//! minute (figures in docs/RELIABILITY.md), within the budget of a CI test.

use std::time::{Duration, Instant};

use dbproxy_testkit::{
    azure::{FakeAzure, FakeAzureConfig},
    cassandra::{CassandraCluster, CassandraOptions},
    certs::TestCa,
};
use scylla::client::session_builder::SessionBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{metric, poll};
use crate::hostile::cql_wire;
use crate::{
    stack::{self, DB, Stack},
    util::ProxyCmd,
};

const ENDED: &str = "entra_db_proxy_sessions_ended_total";

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_under_a_live_session_ends_it_with_57p01() {
    let s = Stack::start().await;
    let mut proxy = s.proxy_sp().args(["--admin-listen", "127.0.0.1:0"]).spawn();
    let admin = proxy.admin.unwrap();
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(proxy.port())
        .user("app")
        .dbname(DB)
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    client.simple_query("select 1").await.unwrap();

    let restarting = Instant::now();
    s.pg.restart().await.unwrap();
    eprintln!("postgres restart took {:?}", restarting.elapsed());
    // The server's FATAL reaches the client, then the close.
    let ended = tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("the connection ends, no hang")
        .unwrap();
    let err = ended.expect_err("the restart ends the session with an error");
    let db = err.as_db_error().unwrap_or_else(|| panic!("{err:#}"));
    assert_eq!(db.code().code(), "57P01", "{db:?}");
    assert!(
        db.message()
            .contains("terminating connection due to administrator command"),
        "{db:?}"
    );
    assert!(client.simple_query("select 1").await.is_err());

    // Logged as the upstream's close (INFO: not the proxy's failure), and counted.
    proxy.wait_for_line(
        |l| {
            l.contains(r#""message":"session ended""#)
                && l.contains(r#""outcome":"upstream closed""#)
        },
        Duration::from_secs(10),
    );
    let labels = r#"listener="postgres",protocol="postgres",cause="upstream_closed""#;
    assert_eq!(metric(admin, ENDED, labels).await, 1.0);

    // A new session works (the token is still cached; nothing else changed).
    let c = stack::connect(proxy.port()).await.unwrap();
    c.simple_query("select 1").await.unwrap();
}

/// What a raw CQL connection reads until the proxy closes it: (bytes, whether they are whole
/// frames).
async fn read_until_closed(c: &mut tokio::net::TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    tokio::time::timeout(within, c.read_to_end(&mut out))
        .await
        .expect("the connection is closed, no hang")
        .expect("a clean close, not a reset");
    let mut rest = &out[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) as usize;
        if rest[0] != 0x84 || rest.len() < 9 + len {
            return (out, false);
        }
        rest = &rest[9 + len..];
    }
    let whole = rest.is_empty();
    (out, whole)
}

/// A v4 frame: version, flags 0, `stream`, `opcode`, `body`.
#[tokio::test(flavor = "multi_thread")]
async fn cassandra_restarted_under_a_live_session() {
    let ca = TestCa::new("entra-db-proxy cassandra restart");
    let t0 = Instant::now();
    let cluster = CassandraCluster::start(&ca, CassandraOptions::single())
        .await
        .unwrap();
    let started_in = t0.elapsed();
    let azure = FakeAzure::start(&ca, FakeAzureConfig::default())
        .await
        .unwrap();
    let account = format!("acct_restart_{}", std::process::id());
    cluster
        .set_role_password(&account, &azure.keys().primary_master_key)
        .await
        .unwrap();
    let dir = dbproxy_testkit::util::unique_temp_dir("cql-restart").unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let c = azure.config();
    let mut proxy = ProxyCmd::new()
        .env("ENTRA_DB_PROXY_CASSANDRA_LISTEN", "127.0.0.1:0")
        .env("AZURE_COSMOS_CONTACTPOINT", "127.0.0.1")
        .env("AZURE_COSMOS_PORT", cluster.native_port().to_string())
        .env("AZURE_COSMOS_USERNAME", &account)
        .env("AZURE_COSMOS_LISTKEYURL", azure.list_keys_url(&account))
        .env(
            "AZURE_COSMOS_SCOPE",
            "https://management.azure.com/.default",
        )
        .env("AZURE_COSMOS_CLIENTID", &c.client_id)
        .env("AZURE_COSMOS_CLIENTSECRET", &c.client_secret)
        .env("AZURE_COSMOS_TENANTID", &c.tenant_id)
        .env("AZURE_AUTHORITY_HOST", azure.authority_host())
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")
        .env("SSL_CERT_FILE", ca_file.to_str().unwrap())
        .args(["--admin-listen", "127.0.0.1:0"])
        // While the node is down, the driver's reconnection attempts fail upstream.
        .expect_warnings(&[crate::stack::FAILED_SESSION])
        .spawn();
    let addr = proxy.addrs["cassandra"];
    let admin = proxy.admin.unwrap();

    // A raw live session (STARTUP, READY, a query), and a driver session.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(&cql_wire::startup_v(4, 1)).await.unwrap();
    let mut header = [0u8; 9];
    raw.read_exact(&mut header).await.unwrap();
    assert_eq!(header[4], 0x02, "READY");
    raw.write_all(&cql_wire::query(
        4,
        2,
        "SELECT release_version FROM system.local",
    ))
    .await
    .unwrap();
    raw.read_exact(&mut header).await.unwrap();
    assert_eq!(header[4], 0x08, "RESULT");
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0; len];
    raw.read_exact(&mut body).await.unwrap();
    let driver = SessionBuilder::new()
        .known_node(addr.to_string())
        .build()
        .await
        .unwrap();
    driver
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();

    // Restart the node; the live raw session sees a clean close, nothing else.
    let stopping = Instant::now();
    let restart = tokio::spawn(async move {
        let down = cluster.restart_node(1, Duration::from_secs(30)).await;
        (cluster, down)
    });
    let (bytes, whole) = read_until_closed(&mut raw, Duration::from_secs(60)).await;
    assert!(whole, "only whole frames before the close: {bytes:?}");
    let closed_after = stopping.elapsed();
    // While the node is down (a JVM takes well over a second to start listening again), a new
    // session is told the upstream cannot be reached.
    let (code, message) = super::arm::startup(addr)
        .await
        .expect_err("no session while the node is down");
    assert_eq!(code, 0x0000, "{message}");
    // Refused once the node stopped listening; reset if it accepted just before it went.
    assert!(
        message.contains("Connection refused") || message.contains("Connection reset by peer"),
        "{message}"
    );
    eprintln!("while down: {code:#06x} {message}");
    let line = proxy.wait_for_line(
        |l| {
            l.contains(r#""message":"session ended""#)
                && l.contains(r#""outcome":"upstream closed""#)
        },
        Duration::from_secs(30),
    );
    assert!(line.contains(r#""level":"INFO""#), "{line}");
    let labels = r#"listener="cassandra",protocol="cassandra",cause="upstream_closed""#;
    assert!(metric(admin, ENDED, labels).await >= 1.0);
    let (cluster, down) = restart.await.unwrap();
    let down = down.unwrap();

    // After the restart: a new session works, and the driver's session reconnects.
    let fresh = SessionBuilder::new()
        .known_node(addr.to_string())
        .build()
        .await
        .unwrap();
    fresh
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();
    poll(
        "the driver's session working again",
        Duration::from_secs(60),
        || async {
            driver
                .query_unpaged("SELECT release_version FROM system.local", &[])
                .await
                .ok()
        },
    )
    .await;
    eprintln!(
        "cassandra restart figures: first start {:.1}s, live session closed {:.1}s after SIGTERM ({} bytes before the close), node down (SIGTERM to CQL logins again) {:.1}s, whole test {:.1}s",
        started_in.as_secs_f64(),
        closed_after.as_secs_f64(),
        bytes.len(),
        down.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(dir);
}
