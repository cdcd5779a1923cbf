//! The Cassandra path: CQL drivers with no credentials reach a real Cassandra 5.0 (TLS-only
//! native port, PasswordAuthenticator — standing in for Cosmos DB) through the proxy, which
//! gets an Entra token, POSTs the fake ARM listKeys URL, and logs in with the account key.
//! One 1-node and one 3-node cluster are shared by the tests of this module.

use std::time::Duration;

use dbproxy_testkit::{
    azure::{CosmosKeys, FakeAzure, FakeAzureConfig},
    cassandra::{CassandraCluster, CassandraOptions},
    certs::TestCa,
    util::unique_temp_dir,
};
use futures_util::TryStreamExt;
use scylla::client::{session::Session, session_builder::SessionBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    stack::FAILED_SESSION,
    util::{Proxy, ProxyCmd},
};

/// A CA shared by the clusters (they are started once per test binary).
pub(crate) fn ca() -> &'static TestCa {
    static CA: std::sync::OnceLock<TestCa> = std::sync::OnceLock::new();
    CA.get_or_init(|| TestCa::new("entra-db-proxy cassandra tests"))
}

pub(crate) async fn cluster(nodes: usize) -> &'static CassandraCluster {
    static ONE: tokio::sync::OnceCell<CassandraCluster> = tokio::sync::OnceCell::const_new();
    static THREE: tokio::sync::OnceCell<CassandraCluster> = tokio::sync::OnceCell::const_new();
    let (cell, opts) = match nodes {
        1 => (&ONE, CassandraOptions::single()),
        _ => (&THREE, CassandraOptions::three_nodes()),
    };
    cell.get_or_init(|| async move {
        CassandraCluster::start(ca(), opts)
            .await
            .unwrap_or_else(|e| panic!("starting a {nodes}-node Cassandra: {e:#}"))
    })
    .await
}

/// A Cosmos-like account on a cluster: a role named like the account whose password is the
/// fake ARM's primary key, and a proxy configured the way Service Connector would.
pub(crate) struct Account {
    pub(crate) name: String,
    pub(crate) azure: FakeAzure,
    pub(crate) cluster: &'static CassandraCluster,
    pub(crate) dir: std::path::PathBuf,
}

impl Account {
    pub(crate) async fn new(nodes: usize, tag: &str) -> Account {
        let cluster = cluster(nodes).await;
        let name = format!("acct_{tag}_{}", std::process::id());
        let azure = FakeAzure::start(ca(), FakeAzureConfig::default())
            .await
            .unwrap();
        cluster
            .set_role_password(&name, &azure.keys().primary_master_key)
            .await
            .unwrap();
        cluster
            .admin_query(&format!("GRANT ALL PERMISSIONS ON ALL KEYSPACES TO {name}"))
            .await
            .ok();
        let dir = unique_temp_dir("cql").unwrap();
        std::fs::write(dir.join("ca.pem"), ca().ca_pem()).unwrap();
        Account {
            name,
            azure,
            cluster,
            dir,
        }
    }

    /// The proxy with Service Connector's AZURE_COSMOS_* variables (service principal).
    ///
    /// On three nodes sharing two cores, gossip can take longer than the proxy's 10 s bound to
    /// spread a new schema version after DDL; the proxy then warns and lets the result through,
    /// as drivers do. That is the machine's load, not a fault: the warning is allowed there (the
    /// schema-agreement test counts the agreements it needs).
    pub(crate) fn proxy(&self) -> ProxyCmd {
        let c = self.azure.config();
        let slow_gossip: &[&str] = if self.cluster.nodes().len() > 1 {
            &["did not agree on the schema within"]
        } else {
            &[]
        };
        ProxyCmd::new()
            .expect_warnings(slow_gossip)
            .env("ENTRA_DB_PROXY_CASSANDRA_LISTEN", "127.0.0.1:0")
            .env("AZURE_COSMOS_CONTACTPOINT", "127.0.0.1")
            .env("AZURE_COSMOS_PORT", self.cluster.native_port().to_string())
            .env("AZURE_COSMOS_USERNAME", &self.name)
            .env(
                "AZURE_COSMOS_LISTKEYURL",
                self.azure.list_keys_url(&self.name),
            )
            .env(
                "AZURE_COSMOS_SCOPE",
                "https://management.azure.com/.default",
            )
            .env("AZURE_COSMOS_CLIENTID", &c.client_id)
            .env("AZURE_COSMOS_CLIENTSECRET", &c.client_secret)
            .env("AZURE_COSMOS_TENANTID", &c.tenant_id)
            .env("AZURE_AUTHORITY_HOST", self.azure.authority_host())
            .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")
            .env("SSL_CERT_FILE", self.dir.join("ca.pem").to_str().unwrap())
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A scylla session through the proxy: no credentials, no TLS.
pub(crate) async fn session(proxy: &Proxy, lz4: bool) -> Session {
    let mut b = SessionBuilder::new().known_node(proxy.addrs["cassandra"].to_string());
    if lz4 {
        b = b.compression(Some(scylla::frame::Compression::Lz4));
    }
    b.build()
        .await
        .unwrap_or_else(|e| panic!("session through the proxy: {e}\n{}", proxy.log()))
}

async fn write_and_read(s: &Session, ks: &str, rows: i32) {
    s.query_unpaged(
        format!("CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"),
        &[],
    )
    .await
    .unwrap();
    s.query_unpaged(
        format!("CREATE TABLE IF NOT EXISTS {ks}.items (id int PRIMARY KEY, name text)"),
        &[],
    )
    .await
    .unwrap();
    s.await_schema_agreement().await.unwrap();
    let insert = s
        .prepare(format!("INSERT INTO {ks}.items (id, name) VALUES (?, ?)"))
        .await
        .unwrap();
    let mut pending = futures_util::stream::FuturesUnordered::new();
    for i in 0..rows {
        pending.push(s.execute_unpaged(&insert, (i, format!("item {i}"))));
        if pending.len() >= 64 {
            pending.try_next().await.unwrap();
        }
    }
    while pending.try_next().await.unwrap().is_some() {}

    // Read back with paging (small pages).
    let mut select = s
        .prepare(format!("SELECT id, name FROM {ks}.items"))
        .await
        .unwrap();
    select.set_page_size(500);
    let mut stream = s
        .execute_iter(select, &[])
        .await
        .unwrap()
        .rows_stream::<(i32, String)>()
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while let Some((id, name)) = stream.try_next().await.unwrap() {
        assert_eq!(name, format!("item {id}"));
        seen.insert(id);
    }
    assert_eq!(seen.len(), rows as usize);
}

#[tokio::test(flavor = "multi_thread")]
async fn scylla_driver_through_the_proxy_v4() {
    let a = Account::new(1, "scylla").await;
    let proxy = a.proxy().spawn();
    let s = session(&proxy, false).await;
    write_and_read(&s, "ks_scylla", 10_000).await;
    // The driver sees one node: the proxy.
    let state = s.get_cluster_state();
    let nodes: Vec<_> = state
        .get_nodes_info()
        .iter()
        .map(|n| n.address.ip())
        .collect();
    assert_eq!(nodes, vec![proxy.addrs["cassandra"].ip()]);
}

/// v4 body compression with snappy, and a driver configured with credentials of its own (a
/// dummy password): the proxy never asks for them, and the session works.
#[tokio::test(flavor = "multi_thread")]
async fn scylla_driver_with_snappy_and_dummy_credentials() {
    let a = Account::new(1, "snappy").await;
    let proxy = a.proxy().spawn();
    let s = SessionBuilder::new()
        .known_node(proxy.addrs["cassandra"].to_string())
        .compression(Some(scylla::frame::Compression::Snappy))
        .user("app", "dummy-password")
        .build()
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    write_and_read(&s, "ks_snappy", 1_000).await;
}

/// A TCP relay between a driver and the proxy that keeps every byte of each connection, both
/// ways, to check what was negotiated on the wire (the proxy logs no STARTUP options, and the
/// scylla driver silently falls back to no compression when the SUPPORTED answer lacks lz4).
struct Tap {
    addr: std::net::SocketAddr,
    /// Per connection: (driver → proxy, proxy → driver).
    conns: std::sync::Arc<std::sync::Mutex<Vec<TapConn>>>,
}

type TapConn = (
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
);

impl Tap {
    async fn start(to: std::net::SocketAddr) -> Tap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TapConn>::new()));
        let all = conns.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let conn: TapConn = Default::default();
                all.lock().unwrap().push(conn.clone());
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::spawn(Tap::pump(cr, uw, conn.0));
                tokio::spawn(Tap::pump(ur, cw, conn.1));
            }
        });
        Tap { addr, conns }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        record: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown().await;
    }

    /// Each connection's frames so far: (driver → proxy, proxy → driver).
    fn frames(&self) -> Vec<(Vec<Frame>, Vec<Frame>)> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|(up, down)| (frames(&up.lock().unwrap()), frames(&down.lock().unwrap())))
            .collect()
    }
}

/// A protocol v3/v4 frame as seen on the wire.
struct Frame {
    version: u8,
    flags: u8,
    opcode: u8,
    body: Vec<u8>,
}

/// The complete v3/v4 frames at the start of `bytes` (9-byte headers, no v5 segments).
fn frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) as usize;
        if bytes.len() < 9 + len {
            break;
        }
        out.push(Frame {
            version: bytes[0],
            flags: bytes[1],
            opcode: bytes[4],
            body: bytes[9..9 + len].to_vec(),
        });
        bytes = &bytes[9 + len..];
    }
    out
}

/// A STARTUP body (a CQL [string map]) as pairs.
fn string_map(body: &[u8]) -> Vec<(String, String)> {
    let short = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]) as usize;
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..short(body, 0) {
        let mut pair = Vec::new();
        for _ in 0..2 {
            let n = short(body, at);
            pair.push(String::from_utf8_lossy(&body[at + 2..at + 2 + n]).into_owned());
            at += 2 + n;
        }
        out.push((pair[0].clone(), pair[1].clone()));
    }
    out
}

const OPCODE_STARTUP: u8 = 0x01;
const OPCODE_READY: u8 = 0x02;
const FLAG_COMPRESSION: u8 = 0x01;

/// lz4 as the driver asked for it: its STARTUP says COMPRESSION=lz4, the proxy answers READY,
/// and from then on every frame of that connection, both ways, carries the compression flag.
#[tokio::test(flavor = "multi_thread")]
async fn scylla_driver_with_lz4() {
    let a = Account::new(1, "lz4").await;
    let proxy = a.proxy().spawn();
    let tap = Tap::start(proxy.addrs["cassandra"]).await;
    let s = SessionBuilder::new()
        .known_node_addr(tap.addr)
        .compression(Some(scylla::frame::Compression::Lz4))
        .build()
        .await
        .unwrap_or_else(|e| panic!("session through the tap: {e}\n{}", proxy.log()));
    write_and_read(&s, "ks_lz4", 2_000).await;
    s.query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();

    let conns = tap.frames();
    assert!(!conns.is_empty(), "the driver never came through the tap");
    let mut compressed = (0, 0);
    for (i, (up, down)) in conns.iter().enumerate() {
        let startup = up
            .iter()
            .position(|f| f.opcode == OPCODE_STARTUP)
            .unwrap_or_else(|| panic!("connection {i}: no STARTUP"));
        let options = string_map(&up[startup].body);
        assert!(
            options
                .iter()
                .any(|(k, v)| k == "COMPRESSION" && v == "lz4"),
            "connection {i}: the driver did not ask for lz4 (the proxy's SUPPORTED lacks it?): {options:?}"
        );
        assert_eq!(up[startup].version, 0x04, "connection {i}: protocol v4");
        let ready = down
            .iter()
            .position(|f| f.opcode == OPCODE_READY)
            .unwrap_or_else(|| panic!("connection {i}: no READY"));
        for (dir, list) in [
            ("driver → proxy", &up[startup + 1..]),
            ("proxy → driver", &down[ready + 1..]),
        ] {
            for f in list {
                assert_ne!(
                    f.flags & FLAG_COMPRESSION,
                    0,
                    "connection {i}, {dir}: an uncompressed frame (opcode {:#04x}) after lz4 was negotiated",
                    f.opcode
                );
            }
        }
        compressed.0 += up.len() - startup - 1;
        compressed.1 += down.len() - ready - 1;
    }
    assert!(
        compressed.0 > 0 && compressed.1 > 0,
        "no compressed frames at all: {compressed:?}"
    );
}

/// Three nodes behind the proxy: every driver connection lands on the proxy, and the data of
/// all three nodes is reachable.
#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_driver_connects_only_to_the_proxy() {
    let a = Account::new(3, "three").await;
    let proxy = a.proxy().spawn();
    let s = session(&proxy, false).await;
    write_and_read(&s, "ks_three", 3_000).await;
    let state = s.get_cluster_state();
    let nodes: Vec<_> = state
        .get_nodes_info()
        .iter()
        .map(|n| std::net::SocketAddr::new(n.address.ip(), n.address.port()))
        .collect();
    assert_eq!(
        nodes,
        vec![proxy.addrs["cassandra"]],
        "the driver learnt another host"
    );
    // From the proxy's side: every upstream login was through this listener, and the upstream
    // does have peers (which the driver never saw).
    let logins = proxy
        .lines()
        .iter()
        .filter(|l| l.contains("logged in upstream"))
        .count();
    assert!(logins >= 1);
    let admin = a.cluster.admin_session().await.unwrap();
    let peers = admin
        .query_unpaged("SELECT peer FROM system.peers", &[])
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num();
    assert_eq!(peers, 2);
}

/// DDL through the proxy on three nodes: the driver is shown no peers, so it cannot wait for
/// schema agreement itself; the proxy holds each SCHEMA_CHANGE result until the upstream nodes
/// agree. So when a CREATE returns, every node (asked directly, not through the proxy) already
/// knows the new table, and the proxy logged the agreement.
#[tokio::test(flavor = "multi_thread")]
async fn ddl_results_wait_for_schema_agreement_on_three_nodes() {
    use dbproxy_testkit::cassandra::SUPERUSER;
    let a = Account::new(3, "agree").await;
    let proxy = a.proxy().spawn();
    // The driver's own wait is off: what is checked is the proxy's.
    let s = SessionBuilder::new()
        .known_node(proxy.addrs["cassandra"].to_string())
        .auto_await_schema_agreement(false)
        .build()
        .await
        .unwrap_or_else(|e| panic!("session through the proxy: {e}\n{}", proxy.log()));
    let mut nodes = Vec::new();
    for n in 1..=3 {
        nodes.push(
            a.cluster
                .session_builder(n)
                .user(SUPERUSER.0, SUPERUSER.1)
                .build()
                .await
                .unwrap_or_else(|e| panic!("direct session to node {n}: {e}")),
        );
    }
    let ks = "ks_agree";
    let count_agreements = |p: &Proxy| {
        p.lines()
            .iter()
            .filter(|l| l.contains("upstream schema in agreement"))
            .count()
    };
    let mut ddl = vec![format!(
        "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 3}}"
    )];
    // Without the hold, a node lagged in about 1 of 20 such checks here (a direct session to
    // node 1, measured once): five tables make a regression likely to show, the log lines below
    // make a missing wait certain to.
    let tables = 5;
    ddl.extend((0..tables).map(|t| format!("CREATE TABLE {ks}.t{t} (id int PRIMARY KEY, v text)")));
    for (i, stmt) in ddl.iter().enumerate() {
        s.query_unpaged(stmt.as_str(), &[])
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}\n{}", proxy.log()));
        // At once (all nodes concurrently), no retry: each node answers from its own schema tables.
        let checks = nodes.iter().enumerate().map(|(n, node)| async move {
            let (cql, what) = if i == 0 {
                (
                    format!(
                        "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = '{ks}'"
                    ),
                    ks.to_string(),
                )
            } else {
                let t = format!("t{}", i - 1);
                (
                    format!(
                        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = '{ks}' AND table_name = '{t}'"
                    ),
                    format!("{ks}.{t}"),
                )
            };
            let rows = node
                .query_unpaged(cql, &[])
                .await
                .unwrap()
                .into_rows_result()
                .unwrap()
                .rows_num();
            (n + 1, what, rows)
        });
        for (n, what, rows) in futures_util::future::join_all(checks).await {
            assert_eq!(
                rows, 1,
                "`{stmt}` returned through the proxy but node {n} does not know {what} yet"
            );
        }
    }
    // One agreement per DDL result (the line is logged before the result is forwarded; the log
    // reader may lag a little behind).
    let start = std::time::Instant::now();
    while count_agreements(&proxy) < ddl.len() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} DDL results but {} 'upstream schema in agreement' lines:\n{}",
            ddl.len(),
            count_agreements(&proxy),
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Cleaned up directly: dropping the keyspace can take a loaded 3-node cluster longer
    // than the proxy's 10 s agreement bound, which is not what this test is about.
    nodes[0]
        .query_unpaged(format!("DROP KEYSPACE {ks}"), &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_is_transparent() {
    let a = Account::new(1, "rotate").await;
    let mut proxy = a
        .proxy()
        .expect_warnings(&["the upstream refused the credential"])
        .spawn();
    let s = session(&proxy, false).await;
    s.query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();
    // Rotate: ARM now answers new keys and the role's password is the new primary key.
    let new = CosmosKeys::random();
    a.azure.set_keys(new.clone());
    a.cluster
        .set_role_password(&a.name, &new.primary_master_key)
        .await
        .unwrap();
    let s2 = session(&proxy, false).await;
    s2.query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();
    proxy.wait_for_line(
        |l| l.contains("the upstream refused the credential"),
        Duration::from_secs(5),
    );
    // Then the secondary key becomes the only valid one: the proxy falls back to it.
    a.cluster
        .set_role_password(&a.name, &new.secondary_master_key)
        .await
        .unwrap();
    let s3 = session(&proxy, false).await;
    s3.query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn arm_forbidden_names_the_missing_permission() {
    let a = Account::new(1, "forbidden").await;
    a.azure.set_arm_forbidden(true);
    let proxy = a
        .proxy()
        .expect_warnings(&[
            "listing the Cosmos DB keys failed",
            "Cosmos DB account key fetch failed",
            FAILED_SESSION,
        ])
        .spawn();
    let err = SessionBuilder::new()
        .known_node(proxy.addrs["cassandra"].to_string())
        .build()
        .await
        .expect_err("no key, no session");
    let text = format!("{err:?}");
    assert!(
        text.contains("Microsoft.DocumentDB/databaseAccounts/listKeys/action"),
        "{text}"
    );
}

/// A v5 client against a listener capped at v4 (as for Cosmos DB) is told to downgrade.
#[tokio::test(flavor = "multi_thread")]
async fn protocol_v5_is_refused_when_capped_at_v4() {
    let a = Account::new(1, "cap").await;
    let proxy = a
        .proxy()
        .env("ENTRA_DB_PROXY_CASSANDRA_MAX_PROTOCOL_VERSION", "4")
        .spawn();
    let mut c = tokio::net::TcpStream::connect(proxy.addrs["cassandra"])
        .await
        .unwrap();
    // v5 OPTIONS, stream 0.
    c.write_all(&[0x05, 0, 0, 0, 0x05, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..1], &[0x84], "an ERROR at v4: {reply:?}");
    assert_eq!(reply[4], 0x00, "opcode ERROR");
    assert_eq!(&reply[9..13], &[0, 0, 0, 0x0A], "protocol error code");
    assert!(
        String::from_utf8_lossy(&reply).contains("Invalid or unsupported protocol version (5)")
    );
    // And the scylla driver (v4) works on the same listener.
    let s = session(&proxy, false).await;
    s.query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_gets_an_error_and_a_close_while_others_work() {
    let a = Account::new(1, "garbage").await;
    let proxy = a
        .proxy()
        .expect_warnings(&["garbage from the client", FAILED_SESSION])
        .spawn();
    let good = session(&proxy, false).await;
    let addr = proxy.addrs["cassandra"];
    // A frame header whose length is absurd.
    let mut bad = tokio::net::TcpStream::connect(addr).await.unwrap();
    bad.write_all(&[0x04, 0, 0, 1, 0x05, 0x7f, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), bad.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.get(4), Some(&0x00), "an ERROR frame: {reply:?}");
    // HTTP instead of CQL.
    let mut http = tokio::net::TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), http.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    // Truncated: half a header, then close.
    let mut trunc = tokio::net::TcpStream::connect(addr).await.unwrap();
    trunc.write_all(&[0x04, 0]).await.unwrap();
    drop(trunc);
    good.query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();
}

/// Over the connection cap a driver gets CQL Overloaded (0x1001) on its first request.
#[tokio::test(flavor = "multi_thread")]
async fn over_the_cap_clients_get_overloaded() {
    let a = Account::new(1, "cap1").await;
    let proxy = a
        .proxy()
        .env("ENTRA_DB_PROXY_MAX_CONNECTIONS", "1")
        .expect_warnings(&["connection cap reached"])
        .spawn();
    let addr = proxy.addrs["cassandra"];
    // One session: STARTUP → READY.
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    dbproxy_cassandra::messages::startup_frame(4, 1, &[("CQL_VERSION", "3.0.0")]).encode(&mut out);
    first.write_all(&out).await.unwrap();
    let mut ready = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(20), first.read_exact(&mut ready))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready[4], 0x02, "READY: {ready:?}");
    // A second one is over the cap.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second
        .write_all(&[0x04, 0, 0, 7, 0x05, 0, 0, 0, 0])
        .await
        .unwrap(); // OPTIONS, stream 7
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), second.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        &reply[..5],
        &[0x84, 0, 0, 7, 0x00],
        "an ERROR on stream 7: {reply:?}"
    );
    assert_eq!(&reply[9..13], &[0, 0, 0x10, 0x01], "Overloaded");
    assert!(String::from_utf8_lossy(&reply).contains("too many connections"));
    drop(first);
}

/// Reads one v4 frame: (stream, opcode, body).
async fn read_v4_frame(c: &mut tokio::net::TcpStream) -> (i16, u8, Vec<u8>) {
    let mut header = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut header))
        .await
        .expect("a frame in time")
        .expect("a frame header");
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0; len];
    c.read_exact(&mut body).await.unwrap();
    (i16::from_be_bytes([header[2], header[3]]), header[4], body)
}

/// A QUERY over Cassandra's default native_transport_max_frame_size (16 MiB) gets the ERROR
/// Cassandra 5.0 sends (0x2200 "Request is too big: …") on its stream, without the proxy
/// holding it; the session goes on, and another session on the listener is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_query_gets_cassandras_error_while_others_work() {
    let a = Account::new(1, "bigframe").await;
    let proxy = a.proxy().spawn();
    let good = session(&proxy, false).await;
    let addr = proxy.addrs["cassandra"];
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = bytes::BytesMut::new();
    dbproxy_cassandra::messages::startup_frame(4, 1, &[("CQL_VERSION", "3.0.0")]).encode(&mut out);
    c.write_all(&out).await.unwrap();
    let (stream, op, _) = read_v4_frame(&mut c).await;
    assert_eq!((stream, op), (1, 0x02), "READY");

    // QUERY on stream 2 announcing 20 MiB; the first 8 MiB of it.
    let announced: u32 = 20 << 20;
    let mut header = vec![0x04, 0, 0, 2, 0x07];
    header.extend_from_slice(&announced.to_be_bytes());
    c.write_all(&header).await.unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..8 {
        c.write_all(&chunk).await.unwrap();
    }
    // Meanwhile the other session works.
    good.query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();
    for _ in 8..20 {
        c.write_all(&chunk).await.unwrap();
    }
    let (stream, op, body) = read_v4_frame(&mut c).await;
    assert_eq!((stream, op), (2, 0x00), "an ERROR on stream 2");
    let (code, message) = dbproxy_cassandra::messages::parse_error(&body).unwrap();
    assert_eq!(code, 0x2200, "Invalid, as Cassandra answers: {message}");
    assert_eq!(
        message,
        "Request is too big: length 20971529 exceeds maximum allowed length 16777216."
    );
    // The same connection carries on, as with Cassandra.
    let mut out = bytes::BytesMut::new();
    dbproxy_cassandra::schema::query_frame(4, 3, "SELECT release_version FROM system.local")
        .encode(&mut out);
    c.write_all(&out).await.unwrap();
    let (stream, op, _) = read_v4_frame(&mut c).await;
    assert_eq!((stream, op), (3, 0x08), "RESULT\n{}", proxy.log());
    good.query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();
}
