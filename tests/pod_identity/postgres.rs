//! Per-pod identity on a PostgreSQL listener.

use super::*;
use crate::{stack::FAILED_SESSION, util::http_get};

const REFUSED: &str = r#""cause":"not_admitted""#;

#[tokio::test(flavor = "multi_thread")]
async fn two_pods_log_in_as_their_own_roles_and_others_are_refused() {
    let p = PodStack::start().await;
    let mut proxy = p
        .proxy()
        .args(["--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&[REFUSED])
        .spawn();
    synced(&mut proxy);
    let addr = proxy.addr();
    assert_eq!(whoami(ORDERS_IP, addr).await, Ok("app_orders".into()));
    assert_eq!(whoami(BILLING_IP, addr).await, Ok("app_billing".into()));

    // The federated assertions were TokenRequests bound to the pods, for Entra's audience.
    let issued = p.kube.issued();
    for (sa, pod) in [
        ("shop/orders", "orders-7d9f"),
        ("shop/billing", "billing-5c2a"),
    ] {
        let t = issued
            .iter()
            .find(|t| t.service_account == sa)
            .unwrap_or_else(|| panic!("no TokenRequest for {sa}: {issued:?}"));
        assert_eq!(t.bound_pod.as_deref(), Some(pod));
        assert_eq!(t.audiences, vec!["api://AzureADTokenExchange".to_string()]);
        assert_eq!(t.expiration_seconds, 600);
    }

    let refused = [
        (
            STRANGER_IP,
            "pod other/intruder-1 (service account other/intruder) may not use listener \"postgres\"",
        ),
        (
            UNKNOWN_IP,
            "no running pod on node aks-nodepool1-0 has the address 127.0.0.9",
        ),
        (HOSTNET_IP, "host-network pods"),
        (
            OTHER_NODE_IP,
            "no running pod on node aks-nodepool1-0 has the address 127.0.0.6",
        ),
    ];
    for (ip, why) in refused {
        let (code, message) = whoami(ip, addr).await.unwrap_err();
        assert_eq!(code, "28000", "{ip}: {message}");
        assert!(message.contains(why), "{ip}: {message}");
        assert!(message.contains("hint"), "{message}");
    }

    // Logs name the pod and the service account of each session.
    let log = proxy.log();
    assert!(
        log.lines().any(|l| l.contains("logged in upstream")
            && l.contains(r#""pod":"shop/orders-7d9f""#)
            && l.contains(r#""service_account":"shop/orders""#)),
        "{log}"
    );
    // Metrics per service account.
    let (_, metrics) = http_get(proxy.admin.unwrap(), "/metrics").await;
    for line in [
        r#"entra_db_proxy_identity_sessions_total{listener="postgres",service_account="shop/orders"}"#,
        r#"entra_db_proxy_identity_refusals_total{listener="postgres",service_account="other/intruder",reason="policy"} 1"#,
        r#"entra_db_proxy_identity_refusals_total{listener="postgres",service_account="unknown",reason="unknown_pod"} 2"#,
        r#"entra_db_proxy_identity_refusals_total{listener="postgres",service_account="unknown",reason="host_network"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_pod_keeps_its_open_session_but_its_ip_is_refused() {
    let p = PodStack::start().await;
    let mut proxy = p.proxy().expect_warnings(&[REFUSED]).spawn();
    synced(&mut proxy);
    let addr = proxy.addr();
    assert_eq!(whoami(ORDERS_IP, addr).await, Ok("app_orders".into()));
    let open = connect_from(ORDERS_IP, addr).await.unwrap();
    p.kube.delete_pod("shop", "orders-7d9f");
    let r = eventually(ORDERS_IP, addr, 20, |r| r.is_err()).await;
    let (code, message) = r.unwrap_err();
    assert_eq!(code, "28000");
    assert!(message.contains("no running pod on node"), "{message}");
    // Documented: a session already open is the database's; it goes on until it ends.
    let who: String = open
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "app_orders");
    // The billing pod is unaffected.
    assert_eq!(whoami(BILLING_IP, addr).await, Ok("app_billing".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_service_account_annotation_applies_without_restart() {
    let p = PodStack::start().await;
    let mut proxy = p.proxy().spawn();
    synced(&mut proxy);
    let addr = proxy.addr();
    assert_eq!(whoami(BILLING_IP, addr).await, Ok("app_billing".into()));
    // The billing service account now maps to another identity and role.
    p.kube.set_service_account(
        "shop",
        "billing",
        &[
            (dbproxy_kubernetes::CLIENT_ID_ANNOTATION, CID_REPORTS),
            (dbproxy_kubernetes::POSTGRES_USER_ANNOTATION, "app_reports"),
        ],
    );
    let r = eventually(BILLING_IP, addr, 30, |r| r.as_deref() == Ok("app_reports")).await;
    assert_eq!(r, Ok("app_reports".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_api_down_at_start_and_mid_run_admits_no_one_then_recovers() {
    let p = PodStack::start().await;
    p.kube.set_down(true);
    let mut proxy = p
        .proxy()
        .expect_warnings(&[
            REFUSED,
            "the pod table is no longer current",
            FAILED_SESSION,
        ])
        .spawn();
    let addr = proxy.addr();
    let (code, message) = whoami(ORDERS_IP, addr).await.unwrap_err();
    assert_eq!(code, "28000");
    assert!(message.contains("is not current"), "{message}");
    p.kube.set_down(false);
    assert_eq!(
        eventually(ORDERS_IP, addr, 40, |r| r.is_ok()).await,
        Ok("app_orders".into())
    );

    // Mid-run: the watch breaks; nobody new is admitted on a table that may be stale.
    p.kube.set_down(true);
    proxy.wait_for_line(
        |l| l.contains("the pod table is no longer current"),
        std::time::Duration::from_secs(20),
    );
    let (code, message) = whoami(BILLING_IP, addr).await.unwrap_err();
    assert_eq!(code, "28000");
    assert!(message.contains("is not current"), "{message}");
    p.kube.set_down(false);
    assert_eq!(
        eventually(BILLING_IP, addr, 40, |r| r.is_ok()).await,
        Ok("app_billing".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_log_holds_no_token() {
    let p = PodStack::start().await;
    let mut proxy = p.proxy().rust_log("trace").spawn();
    synced(&mut proxy);
    let addr = proxy.addr();
    assert_eq!(whoami(ORDERS_IP, addr).await, Ok("app_orders".into()));
    assert_eq!(whoami(BILLING_IP, addr).await, Ok("app_billing".into()));
    let log = proxy.log();
    let mut secrets: Vec<String> = p.kube.issued().into_iter().map(|t| t.token).collect();
    secrets.extend(p.s.azure.issued().into_iter().map(|t| t.token));
    secrets.push(p.kube.token());
    assert!(secrets.len() >= 5, "{secrets:?}");
    for secret in &secrets {
        // Also no large piece of one (a JWT's signature part).
        let tail = &secret[secret.len() - 40..];
        assert!(!log.contains(tail), "the log holds a token");
    }
    assert!(
        log.contains("TokenRequest for shop/orders"),
        "the trace covered the exchange"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_lists_the_identities_it_sees() {
    let p = PodStack::start().await;
    let (code, out) = p.proxy().arg("check").run_to_end();
    assert_eq!(code, Some(0), "{out}");
    for row in [
        "shop/orders-7d9f",
        "user app_orders, client id 0a1b2c3d-0000-4000-8000-00000000a001",
        "shop/billing-5c2a",
        "other/intruder-1",
        "refused: not in pod_identity allow",
        "refused: host network",
        "4 pods seen on node aks-nodepool1-0",
    ] {
        assert!(out.contains(row), "{row} not in\n{out}");
    }
    assert!(!out.contains("orders-elsewhere"), "{out}");
}

/// Waits for the first pod list (the proxy is ready before it, and refuses everyone until it).
fn synced(proxy: &mut crate::util::Proxy) {
    proxy.wait_for_line(
        |l| l.contains("pod table synced"),
        std::time::Duration::from_secs(20),
    );
}
