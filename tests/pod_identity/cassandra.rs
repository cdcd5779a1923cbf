//! Per-pod identity on a CQL listener, against the real Cassandra (the shared 1-node cluster)
//! in token mode: each identity's Entra token becomes its own role's password, as a database
//! that validates Entra tokens would check it, so a session that reaches READY logged in as
//! that pod's role with that pod's token. The CQL user comes from the service account's
//! `entra-db-proxy.io/cassandra-user` annotation.

use dbproxy_kubernetes::{CASSANDRA_USER_ANNOTATION, CLIENT_ID_ANNOTATION};
use dbproxy_testkit::{
    azure::{FakeAzure, FakeAzureConfig},
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
    util::ProxyCmd,
};

const REFUSED: &str = r#""cause":"not_admitted""#;
/// CQL's "bad credentials" (the authentication error a refused pod gets).
const BAD_CREDENTIALS: i32 = 0x0100;

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
    // Each identity's token becomes its role's password before the proxy receives it.
    let roles = [(CID_ORDERS, orders.clone()), (CID_BILLING, billing.clone())];
    azure.on_issue(move |t| {
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
    let user = CASSANDRA_USER_ANNOTATION;
    kube.set_service_account(
        "shop",
        "orders",
        &[(CLIENT_ID_ANNOTATION, CID_ORDERS), (user, &orders)],
    );
    kube.set_service_account(
        "shop",
        "billing",
        &[(CLIENT_ID_ANNOTATION, CID_BILLING), (user, &billing)],
    );
    kube.set_service_account(
        "other",
        "intruder",
        &[(CLIENT_ID_ANNOTATION, CID_REPORTS), (user, &orders)],
    );
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
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca().ca_pem()).unwrap();
    let token_file = dir.join("kube-token");
    std::fs::write(&token_file, kube.token()).unwrap();
    let mut proxy = ProxyCmd::new()
        .args(["--cassandra-listen", "127.0.0.1:0"])
        .args([
            "--cassandra-upstream",
            &format!("127.0.0.1:{}", cluster.native_port()),
        ])
        .args(["--cassandra-password", "token"])
        .args(["--scope", "https://cosmos.azure.com/.default"])
        .args(["--pod-identity-allow", "shop/*"])
        .args(["--node-name", NODE])
        .args(["--kubernetes-api", &kube.url()])
        .args(["--kubernetes-token-file", token_file.to_str().unwrap()])
        .args(["--kubernetes-ca-file", ca_file.to_str().unwrap()])
        .args(["--pod-identity-tenant-id", &azure.config().tenant_id])
        .env("SSL_CERT_FILE", ca_file.to_str().unwrap())
        .env("AZURE_AUTHORITY_HOST", azure.authority_host())
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9")
        .expect_warnings(&[REFUSED])
        .spawn();
    let addr = proxy.addrs["cassandra"];
    proxy.wait_for_line(
        |l| l.contains("pod table synced"),
        std::time::Duration::from_secs(30),
    );

    // Each pod's session is its own role's, and works.
    for (ip, role) in [(ORDERS_IP, &orders), (BILLING_IP, &billing)] {
        let mut c = startup_from(addr, Some(ip))
            .await
            .unwrap_or_else(|e| panic!("{ip}: {e:?}\n{}", proxy.log()));
        let rows = release_version(&mut c).await;
        assert!(
            rows.contains("release_version") && rows.contains("5.0."),
            "{rows}"
        );
        let line = proxy.wait_for_line(
            |l| l.contains("logged in upstream") && l.contains(&format!(r#""user":"{role}""#)),
            std::time::Duration::from_secs(10),
        );
        assert!(line.contains(r#""service_account":"shop/"#), "{line}");
    }
    // The TokenRequests were bound to the pods that connected.
    let issued = kube.issued();
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
        let (code, message) = startup_from(addr, Some(ip)).await.unwrap_err();
        assert_eq!(code, BAD_CREDENTIALS, "{ip}: {message}");
        assert!(message.contains(why), "{ip}: {message}");
    }
    // The intruder's service account names the orders role: it never got a token for it.
    assert!(
        !kube
            .issued()
            .iter()
            .any(|t| t.service_account == "other/intruder")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `SELECT release_version FROM system.local` on a raw v4 session: the RESULT's body.
async fn release_version(c: &mut tokio::net::TcpStream) -> String {
    let cql = "SELECT release_version FROM system.local";
    let mut body = (cql.len() as u32).to_be_bytes().to_vec();
    body.extend(cql.as_bytes());
    body.extend([0x00, 0x01, 0x00]); // consistency ONE, no flags
    let mut frame = vec![0x04, 0, 0, 8, 0x07];
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    c.write_all(&frame).await.unwrap();
    let mut header = [0u8; 9];
    c.read_exact(&mut header).await.unwrap();
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0; len];
    c.read_exact(&mut body).await.unwrap();
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!((header[3], header[4]), (8, 0x08), "a RESULT: {text}");
    text
}
