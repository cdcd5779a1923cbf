//! Per-pod identity on a CQL listener, against the real Cassandra (the shared 1-node cluster)
//! in token mode: each identity's Entra token becomes its own role's password, as a database
//! that validates Entra tokens would check it, so a session that reaches READY logged in as
//! that pod's role with that pod's token; and in Cosmos DB keys mode, where each pod's identity
//! lists the account's keys. The CQL user comes from the service account's
//! `entra-db-proxy.io/cassandra-user` annotation.

use dbproxy_kubernetes::{CASSANDRA_USER_ANNOTATION, CLIENT_ID_ANNOTATION};
use dbproxy_testkit::{
    azure::{FakeAzure, FakeAzureConfig},
    cassandra::CassandraCluster,
    kubernetes::{FakeKube, FakePod},
    util::unique_temp_dir,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    BILLING_IP, CID_BILLING, CID_ORDERS, CID_REPORTS, HOSTNET_IP, NODE, ORDERS_IP, STRANGER_IP,
    UNKNOWN_IP,
};
use crate::{
    cassandra::{ca, cluster},
    faults::arm::startup_from,
    stack::FAILED_SESSION,
    util::{Proxy, ProxyCmd},
};

const REFUSED: &str = r#""cause":"not_admitted""#;
/// CQL's "bad credentials" (the authentication error a refused pod gets).
const BAD_CREDENTIALS: i32 = 0x0100;

/// The fakes for a CQL listener with pod identity: Entra with a federated credential per
/// identity, the Kubernetes API with shop/orders, shop/billing (both allowed), other/intruder
/// (not allowed) and a host-network pod, each service account naming `users`' CQL user.
struct CqlPods {
    azure: FakeAzure,
    kube: FakeKube,
    dir: std::path::PathBuf,
}

impl CqlPods {
    async fn start(users: [&str; 3]) -> CqlPods {
        let azure = FakeAzure::start(ca(), FakeAzureConfig::default())
            .await
            .unwrap();
        let kube = FakeKube::start(ca()).await.unwrap();
        azure.update_config(|c| {
            c.federated_credentials = vec![
                kube.federated_credential(CID_ORDERS, "shop", "orders"),
                kube.federated_credential(CID_BILLING, "shop", "billing"),
                kube.federated_credential(CID_REPORTS, "other", "intruder"),
            ]
        });
        let accounts = [
            ("shop", "orders", CID_ORDERS),
            ("shop", "billing", CID_BILLING),
            ("other", "intruder", CID_REPORTS),
        ];
        for ((ns, sa, cid), user) in accounts.into_iter().zip(users) {
            kube.set_service_account(
                ns,
                sa,
                &[
                    (CLIENT_ID_ANNOTATION, cid),
                    (CASSANDRA_USER_ANNOTATION, user),
                ],
            );
        }
        for (ns, name, sa, ip) in [
            ("shop", "orders-7d9f", "orders", ORDERS_IP),
            ("shop", "billing-5c2a", "billing", BILLING_IP),
            ("other", "intruder-1", "intruder", STRANGER_IP),
        ] {
            kube.add_pod(FakePod::running(ns, name, sa, NODE, ip));
        }
        let mut host = FakePod::running("shop", "node-agent", "orders", NODE, HOSTNET_IP);
        host.host_network = true;
        kube.add_pod(host);
        let dir = unique_temp_dir("cql-pods").unwrap();
        std::fs::write(dir.join("ca.pem"), ca().ca_pem()).unwrap();
        std::fs::write(dir.join("kube-token"), kube.token()).unwrap();
        CqlPods { azure, kube, dir }
    }

    /// The proxy: a CQL listener in front of the shared 1-node cluster, pod identity for
    /// shop/*; the caller adds the password mode.
    fn proxy(&self, cluster: &CassandraCluster) -> ProxyCmd {
        let file = |name: &str| self.dir.join(name).to_str().unwrap().to_owned();
        ProxyCmd::new()
            .args(["--cassandra-listen", "127.0.0.1:0"])
            .args([
                "--cassandra-upstream",
                &format!("127.0.0.1:{}", cluster.native_port()),
            ])
            .args(["--pod-identity-allow", "shop/*"])
            .args(["--node-name", NODE])
            .args(["--kubernetes-api", &self.kube.url()])
            .args(["--kubernetes-token-file", &file("kube-token")])
            .args(["--kubernetes-ca-file", &file("ca.pem")])
            .args(["--pod-identity-tenant-id", &self.azure.config().tenant_id])
            .env("SSL_CERT_FILE", file("ca.pem"))
            .env("AZURE_AUTHORITY_HOST", self.azure.authority_host())
            .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")
            .expect_warnings(&[REFUSED])
    }
}

impl Drop for CqlPods {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for the proxy's pod table.
fn synced(proxy: &mut Proxy) {
    proxy.wait_for_line(
        |l| l.contains("pod table synced"),
        std::time::Duration::from_secs(30),
    );
}

/// A session from `ip` that reached READY and answers a query.
async fn works_from(ip: &str, proxy: &Proxy) {
    let mut c = startup_from(proxy.addrs["cassandra"], Some(ip))
        .await
        .unwrap_or_else(|e| panic!("{ip}: {e:?}\n{}", proxy.log()));
    let rows = release_version(&mut c).await;
    assert!(
        rows.contains("release_version") && rows.contains("5.0."),
        "{rows}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pods_log_in_as_their_own_cassandra_roles_and_others_are_refused() {
    let cluster = cluster(1).await;
    let tag = std::process::id();
    let orders = format!("cql_orders_{tag}");
    let billing = format!("cql_billing_{tag}");
    for role in [&orders, &billing] {
        let unguessable = dbproxy_testkit::tokens::random_b64url(24);
        cluster.set_role_password(role, &unguessable).await.unwrap();
    }
    // The intruder's service account names the orders role: it must never get it.
    let pods = CqlPods::start([&orders, &billing, &orders]).await;
    // Each identity's token becomes its role's password before the proxy receives it.
    let roles = [(CID_ORDERS, orders.clone()), (CID_BILLING, billing.clone())];
    pods.azure.on_issue(move |t| {
        let role = roles
            .iter()
            .find(|(c, _)| t.client_id.as_deref() == Some(*c))
            .map(|(_, r)| r.clone());
        async move {
            if let Some(role) = role
                && let Err(e) = cluster.set_role_password(&role, &t.token).await
            {
                eprintln!("setting {role}'s password: {e:#}");
            }
        }
    });
    let mut proxy = pods
        .proxy(cluster)
        .args(["--cassandra-password", "token"])
        .args(["--scope", "https://cosmos.azure.com/.default"])
        .spawn();
    synced(&mut proxy);

    // Each pod's session is its own role's, and works.
    for (ip, role) in [(ORDERS_IP, &orders), (BILLING_IP, &billing)] {
        works_from(ip, &proxy).await;
        let line = proxy.wait_for_line(
            |l| l.contains("logged in upstream") && l.contains(&format!(r#""user":"{role}""#)),
            std::time::Duration::from_secs(10),
        );
        assert!(line.contains(r#""service_account":"shop/"#), "{line}");
    }
    // The TokenRequests were bound to the pods that connected.
    let issued = pods.kube.issued();
    for (sa, pod) in [
        ("shop/orders", "orders-7d9f"),
        ("shop/billing", "billing-5c2a"),
    ] {
        assert!(
            issued
                .iter()
                .any(|t| t.service_account == sa && t.bound_pod.as_deref() == Some(pod)),
            "no TokenRequest for {sa} bound to {pod}: {issued:?}"
        );
    }

    // Outside the policy, unknown, host network: CQL's authentication error, saying why.
    for (ip, why) in [
        (
            STRANGER_IP,
            "pod other/intruder-1 (service account other/intruder) may not use listener \"cassandra\"",
        ),
        (
            UNKNOWN_IP,
            "no running pod on node aks-nodepool1-0 has the address 127.0.0.9",
        ),
        (HOSTNET_IP, "host-network pods"),
    ] {
        let (code, message) = startup_from(proxy.addrs["cassandra"], Some(ip))
            .await
            .unwrap_err();
        assert_eq!(code, BAD_CREDENTIALS, "{ip}: {message}");
        assert!(message.contains(why), "{ip}: {message}");
    }
    assert!(
        !pods
            .kube
            .issued()
            .iter()
            .any(|t| t.service_account == "other/intruder")
    );
}

/// Cosmos DB keys mode: each pod's own identity lists the account's keys, so a pod whose
/// identity has no role assignment on the account is refused with ARM's reason, while one
/// that has it logs in.
#[tokio::test(flavor = "multi_thread")]
async fn cosmos_keys_are_listed_with_each_pods_own_identity() {
    let cluster = cluster(1).await;
    let account = format!("acct_pods_{}", std::process::id());
    let pods = CqlPods::start([&account, &account, &account]).await;
    cluster
        .set_role_password(&account, &pods.azure.keys().primary_master_key)
        .await
        .unwrap();
    // Only the orders identity may list the keys.
    pods.azure.set_arm_authorized(Some(&[CID_ORDERS]));
    let mut proxy = pods
        .proxy(cluster)
        .args(["--cassandra-password", "cosmos-keys"])
        .args([
            "--cassandra-list-keys-url",
            &pods.azure.list_keys_url(&account),
        ])
        .args(["--scope", "https://management.azure.com/.default"])
        .expect_warnings(&[FAILED_SESSION, "Cosmos DB account key fetch failed"])
        .spawn();
    synced(&mut proxy);
    works_from(ORDERS_IP, &proxy).await;
    let (code, message) = startup_from(proxy.addrs["cassandra"], Some(BILLING_IP))
        .await
        .unwrap_err();
    assert_eq!(code, BAD_CREDENTIALS, "{message}");
    assert!(
        message.contains("AuthorizationFailed") && message.contains(CID_BILLING),
        "{message}"
    );
    // Given the role, the billing pod gets in too.
    pods.azure.set_arm_authorized(None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while startup_from(proxy.addrs["cassandra"], Some(BILLING_IP))
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "{}", proxy.log());
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `SELECT release_version FROM system.local` on a raw v4 session: the RESULT's body.
async fn release_version(c: &mut tokio::net::TcpStream) -> String {
    let query = crate::hostile::cql_wire::query(4, 8, "SELECT release_version FROM system.local");
    c.write_all(&query).await.unwrap();
    let mut header = [0u8; 9];
    c.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0; len];
    c.read_exact(&mut body).await.unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!((header[3], header[4]), (8, 0x08), "a RESULT: {text}");
    text
}
