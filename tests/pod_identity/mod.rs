//! Per-pod identity (a DaemonSet's proxy): pods simulated by client sockets bound to
//! 127.0.0.2, 127.0.0.3, …, a fake Kubernetes API (pods of the node, service accounts,
//! TokenRequest), the fake Entra with a federated credential per identity, and the real
//! PostgreSQL whose role for each identity takes that identity's tokens as its password (and
//! the real Cassandra, likewise, in `cassandra.rs`).

mod cassandra;
mod postgres;
mod uid;

use std::{net::SocketAddr, path::PathBuf};

use dbproxy_testkit::{
    azure::FakeAzureConfig,
    kubernetes::{FakeKube, FakePod},
    postgres::PasswordAuth,
};

use crate::{
    stack::{DB, Stack},
    util::ProxyCmd,
};

pub const NODE: &str = "aks-nodepool1-0";
pub const CID_ORDERS: &str = "0a1b2c3d-0000-4000-8000-00000000a001";
pub const CID_BILLING: &str = "0a1b2c3d-0000-4000-8000-00000000b002";
pub const CID_REPORTS: &str = "0a1b2c3d-0000-4000-8000-00000000c003";
pub const ORDERS_IP: &str = "127.0.0.2";
pub const BILLING_IP: &str = "127.0.0.3";
pub const STRANGER_IP: &str = "127.0.0.4";
pub const HOSTNET_IP: &str = "127.0.0.5";
pub const OTHER_NODE_IP: &str = "127.0.0.6";
pub const UNKNOWN_IP: &str = "127.0.0.9";

/// The roles of the identities (client id → role).
pub const ROLES: &[(&str, &str)] = &[
    (CID_ORDERS, "app_orders"),
    (CID_BILLING, "app_billing"),
    (CID_REPORTS, "app_reports"),
];

pub struct PodStack {
    pub s: Stack,
    pub kube: FakeKube,
    pub token_file: PathBuf,
}

impl PodStack {
    /// Two allowed service accounts (shop/orders, shop/billing), one outside the policy
    /// (other/intruder), a host-network pod, and a pod on another node.
    pub async fn start() -> PodStack {
        let s = Stack::with(PasswordAuth::Password, FakeAzureConfig::default()).await;
        let kube = FakeKube::start(&s_ca(&s)).await.unwrap();
        for (_, role) in ROLES {
            s.pg.set_role_password(role, &dbproxy_testkit::tokens::random_b64url(24))
                .await
                .unwrap();
        }
        s.azure.update_config(|c| {
            c.federated_credentials = vec![
                kube.federated_credential(CID_ORDERS, "shop", "orders"),
                kube.federated_credential(CID_BILLING, "shop", "billing"),
                kube.federated_credential(CID_REPORTS, "shop", "billing"),
                kube.federated_credential(CID_REPORTS, "other", "intruder"),
            ]
        });
        // Each identity's token becomes its role's password (Azure validates the token).
        let pg = s.pg.clone();
        s.azure.on_issue(move |t| {
            let pg = pg.clone();
            async move {
                let role = ROLES
                    .iter()
                    .find(|(c, _)| t.client_id.as_deref() == Some(*c))
                    .map(|(_, r)| *r);
                if let Some(role) = role
                    && let Err(e) = pg.set_role_password(role, &t.token).await
                {
                    eprintln!("setting {role}'s password: {e:#}");
                }
            }
        });
        let user = dbproxy_kubernetes::POSTGRES_USER_ANNOTATION;
        let cid = dbproxy_kubernetes::CLIENT_ID_ANNOTATION;
        kube.set_service_account("shop", "orders", &[(cid, CID_ORDERS), (user, "app_orders")]);
        kube.set_service_account(
            "shop",
            "billing",
            &[(cid, CID_BILLING), (user, "app_billing")],
        );
        kube.set_service_account(
            "other",
            "intruder",
            &[(cid, CID_REPORTS), (user, "app_reports")],
        );
        kube.add_pod(FakePod::running(
            "shop",
            "orders-7d9f",
            "orders",
            NODE,
            ORDERS_IP,
        ));
        kube.add_pod(FakePod::running(
            "shop",
            "billing-5c2a",
            "billing",
            NODE,
            BILLING_IP,
        ));
        kube.add_pod(FakePod::running(
            "other",
            "intruder-1",
            "intruder",
            NODE,
            STRANGER_IP,
        ));
        let mut host = FakePod::running("shop", "node-agent", "orders", NODE, HOSTNET_IP);
        host.host_network = true;
        kube.add_pod(host);
        kube.add_pod(FakePod::running(
            "shop",
            "orders-elsewhere",
            "orders",
            "aks-nodepool1-1",
            OTHER_NODE_IP,
        ));
        let token_file = s.dir.join("kube-token");
        std::fs::write(&token_file, kube.token()).unwrap();
        PodStack {
            s,
            kube,
            token_file,
        }
    }

    /// The proxy with pod identity for shop/*.
    pub fn proxy(&self) -> ProxyCmd {
        ProxyCmd::new()
            .args(["--postgres-listen", "127.0.0.1:0"])
            .args([
                "--postgres-upstream",
                &format!("127.0.0.1:{}", self.s.pg.port()),
            ])
            .args(["--postgres-database", DB])
            .args(["--pod-identity-allow", "shop/*"])
            .args(["--node-name", NODE])
            .args(["--kubernetes-api", &self.kube.url()])
            .args(["--kubernetes-token-file", self.token_file.to_str().unwrap()])
            .args(["--kubernetes-ca-file", self.s.ca_file.to_str().unwrap()])
            .args(["--pod-identity-tenant-id", &self.s.azure.config().tenant_id])
            .env("SSL_CERT_FILE", self.s.ca_file.to_str().unwrap())
            .env("AZURE_AUTHORITY_HOST", self.s.azure.authority_host())
            .env(
                "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                self.s.silent_imds_url(),
            )
    }
}

fn s_ca(s: &Stack) -> dbproxy_testkit::certs::TestCa {
    // The stack's CA is not kept; a FakeKube gets a certificate from a CA the proxy trusts:
    // write a second CA next to the first and trust both.
    let ca = dbproxy_testkit::certs::TestCa::new("fake kube");
    let mut pem = std::fs::read_to_string(&s.ca_file).unwrap();
    pem.push_str(&ca.ca_pem());
    std::fs::write(&s.ca_file, pem).unwrap();
    ca
}

/// Connects through the proxy at `proxy` from source address `ip` (a simulated pod).
pub async fn connect_from(
    ip: &str,
    proxy: SocketAddr,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(proxy).await.unwrap();
    let (client, conn) = tokio_postgres::Config::new()
        .user("whoever")
        .dbname(DB)
        .application_name("it-pod")
        .connect_raw(stream, tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `current_user` of a session from `ip`, or the error's SQLSTATE and message.
pub async fn whoami(ip: &str, proxy: SocketAddr) -> Result<String, (String, String)> {
    match connect_from(ip, proxy).await {
        Ok(c) => Ok(c
            .query_one("select current_user::text", &[])
            .await
            .map_err(|e| crate::stack::db_error(&e))?
            .get(0)),
        Err(e) => Err(crate::stack::db_error(&e)),
    }
}

/// Polls `whoami` until `pred` holds (at most `secs` seconds); returns the last answer.
pub async fn eventually(
    ip: &str,
    proxy: SocketAddr,
    secs: u64,
    pred: impl Fn(&Result<String, (String, String)>) -> bool,
) -> Result<String, (String, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let r = whoami(ip, proxy).await;
        if pred(&r) || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
