//! The Cassandra harness against a real Cassandra 5.0 (needs `scripts/install-cassandra.sh`).
//! `cargo test -p dbproxy-testkit --test cassandra three_nodes` runs the 3-node test alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use base64::Engine as _;
use dbproxy_testkit::{
    cassandra::{CassandraCluster, CassandraOptions},
    certs::TestCa,
};
use rand::RngCore as _;
use scylla::{
    client::{session::Session, session_builder::SessionBuilder},
    errors::NewSessionError,
};

/// A Cosmos-like account key: 64 random bytes, base64 (88 characters).
fn account_key() -> String {
    let mut bytes = [0u8; 64];
    rand::rng().fill_bytes(&mut bytes);
    let key = base64::engine::general_purpose::STANDARD.encode(bytes);
    assert_eq!(key.len(), 88);
    key
}

async fn login(
    c: &CassandraCluster,
    node: usize,
    user: &str,
    pw: &str,
) -> Result<Session, NewSessionError> {
    c.session_builder(node).user(user, pw).build().await
}

async fn rows<T>(s: &Session, cql: &str) -> Vec<T>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    s.query_unpaged(cql, &[])
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"))
        .into_rows_result()
        .unwrap()
        .rows::<T>()
        .unwrap()
        .collect::<Result<Vec<T>, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_tls_only_password_logins() {
    let ca = TestCa::new("cassandra-test-ca");
    let t0 = Instant::now();
    let c = CassandraCluster::start(&ca, CassandraOptions::single())
        .await
        .expect("starting Cassandra");
    eprintln!("1-node cluster ready in {:.1}s", t0.elapsed().as_secs_f64());
    assert_eq!(c.nodes(), vec![c.contact_point()]);

    let key = account_key();
    c.set_role_password("acct1", &key).await.unwrap();

    // TLS verified against the test CA (IP SAN 127.0.0.1), logged in as the new role.
    let s = login(&c, 1, "acct1", &key).await.expect("login as acct1");
    let (user,) = rows::<(String,)>(
        &s,
        "SELECT role FROM system_auth.roles WHERE role = 'acct1'",
    )
    .await
    .pop()
    .unwrap();
    assert_eq!(user, "acct1");
    s.query_unpaged(
        "CREATE KEYSPACE IF NOT EXISTS ks1 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        &[],
    )
    .await
    .unwrap();
    s.query_unpaged(
        "CREATE TABLE IF NOT EXISTS ks1.t (k int PRIMARY KEY, v text)",
        &[],
    )
    .await
    .unwrap();
    s.query_unpaged("INSERT INTO ks1.t (k, v) VALUES (?, ?)", (1i32, "one"))
        .await
        .unwrap();
    let got = rows::<(i32, String)>(&s, "SELECT k, v FROM ks1.t WHERE k = 1").await;
    assert_eq!(got, vec![(1, "one".to_string())]);

    // A wrong password is an AuthenticationError.
    let err = login(&c, 1, "acct1", &account_key()).await.unwrap_err();
    assert!(
        format!("{err:?}").contains("AuthenticationError"),
        "expected an AuthenticationError, got {err:?}"
    );

    // A new key replaces the old one at once (caches are off), as a Cosmos key rotation.
    let key2 = account_key();
    c.set_role_password("acct1", &key2).await.unwrap();
    login(&c, 1, "acct1", &key2)
        .await
        .expect("login with the new key");
    let err = login(&c, 1, "acct1", &key).await.unwrap_err();
    assert!(
        format!("{err:?}").contains("AuthenticationError"),
        "{err:?}"
    );

    // Plaintext CQL is refused: the native port speaks TLS only.
    let plain = tokio::time::timeout(
        Duration::from_secs(30),
        SessionBuilder::new()
            .known_node_addr(c.contact_point())
            .user("acct1", &key2)
            .connection_timeout(Duration::from_secs(5))
            .build(),
    )
    .await
    .expect("a plaintext connection attempt must end");
    let err = plain.expect_err("plaintext CQL must not work");
    assert!(
        !format!("{err:?}").contains("AuthenticationError"),
        "{err:?}"
    );

    c.admin_query("DROP KEYSPACE ks1").await.unwrap();
    assert!(c.log_tail(1, 50).contains("INFO"));
    let t = Instant::now();
    drop(c);
    eprintln!(
        "1-node cluster stopped in {:.1}s",
        t.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_peers_and_rf1_spread() {
    let ca = TestCa::new("cassandra-test-ca-3");
    let t0 = Instant::now();
    let c = CassandraCluster::start(&ca, CassandraOptions::three_nodes())
        .await
        .expect("starting 3 Cassandra nodes");
    eprintln!("3-node cluster ready in {:.1}s", t0.elapsed().as_secs_f64());
    let nodes = c.nodes();
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0], c.contact_point());
    assert!(nodes.iter().all(|a| a.port() == c.native_port()));

    let key = account_key();
    c.set_role_password("acct3", &key).await.unwrap();
    // Through node 1 only, as the proxy connects.
    let s = login(&c, 1, "acct3", &key)
        .await
        .expect("login through node 1");

    let peers: BTreeSet<IpAddr> = rows::<(IpAddr,)>(&s, "SELECT peer FROM system.peers")
        .await
        .into_iter()
        .map(|(p,)| p)
        .collect();
    let want: BTreeSet<IpAddr> = [2, 3]
        .into_iter()
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    assert_eq!(peers, want);

    s.query_unpaged(
        "CREATE KEYSPACE ks3 WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        &[],
    )
    .await
    .unwrap();
    s.query_unpaged("CREATE TABLE ks3.t (k int PRIMARY KEY, v int)", &[])
        .await
        .unwrap();
    // The session knows node 1 only, so the driver's schema wait does not cover nodes 2 and 3.
    c.wait_schema_agreement().await.unwrap();
    let insert = s
        .prepare("INSERT INTO ks3.t (k, v) VALUES (?, ?)")
        .await
        .unwrap();
    const ROWS: i32 = 60;
    for k in 0..ROWS {
        s.execute_unpaged(&insert, (k, k * 10)).await.unwrap();
    }

    // Ring: each node's token, as node 1 sees it.
    let mut ring: BTreeMap<i64, IpAddr> = BTreeMap::new();
    for (ip, tokens) in
        rows::<(IpAddr, Vec<String>)>(&s, "SELECT broadcast_address, tokens FROM system.local")
            .await
            .into_iter()
            .chain(rows::<(IpAddr, Vec<String>)>(&s, "SELECT peer, tokens FROM system.peers").await)
    {
        for t in tokens {
            ring.insert(t.parse().unwrap(), ip);
        }
    }
    assert_eq!(ring.len(), 3, "{ring:?}");
    let owner = |t: i64| {
        *ring
            .range(t..)
            .next()
            .or_else(|| ring.iter().next())
            .unwrap()
            .1
    };
    let owners: BTreeSet<IpAddr> = rows::<(i64,)>(&s, "SELECT token(k) FROM ks3.t")
        .await
        .into_iter()
        .map(|(t,)| owner(t))
        .collect();
    assert_eq!(owners.len(), 3, "RF 1 rows on {owners:?} only");

    // And physically: every node wrote some of them locally (node-local virtual table), and each
    // node coordinates reads of all rows over its own TLS native port.
    let mut local_writes = 0;
    for n in 1..=3 {
        let sn = login(&c, n, "acct3", &key).await.expect("login per node");
        let (count,) = rows::<(i64,)>(
            &sn,
            "SELECT count FROM system_views.local_write_latency WHERE keyspace_name = 'ks3' AND table_name = 't'",
        )
        .await
        .pop()
        .unwrap();
        assert!(count > 0, "node {n} stored no row");
        local_writes += count;
        let all = rows::<(i32,)>(&sn, "SELECT k FROM ks3.t").await;
        assert_eq!(all.len(), ROWS as usize, "through node {n}");
    }
    assert_eq!(local_writes, i64::from(ROWS));
    let t = Instant::now();
    drop(c);
    eprintln!(
        "3-node cluster stopped in {:.1}s",
        t.elapsed().as_secs_f64()
    );
}
