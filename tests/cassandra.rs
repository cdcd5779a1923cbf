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

use crate::util::{Proxy, ProxyCmd};

/// A CA shared by the clusters (they are started once per test binary).
fn ca() -> &'static TestCa {
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
    pub(crate) fn proxy(&self) -> ProxyCmd {
        let c = self.azure.config();
        ProxyCmd::new()
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
async fn session(proxy: &Proxy, lz4: bool) -> Session {
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

#[tokio::test(flavor = "multi_thread")]
async fn scylla_driver_with_lz4() {
    let a = Account::new(1, "lz4").await;
    let proxy = a.proxy().spawn();
    let s = session(&proxy, true).await;
    write_and_read(&s, "ks_lz4", 2_000).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_is_transparent() {
    let a = Account::new(1, "rotate").await;
    let mut proxy = a.proxy().spawn();
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
    proxy.wait_for_line(|l| l.contains("key rotation"), Duration::from_secs(5));
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
    let proxy = a.proxy().spawn();
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
    let proxy = a.proxy().spawn();
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
    let proxy = a.proxy().env("ENTRA_DB_PROXY_MAX_CONNECTIONS", "1").spawn();
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
