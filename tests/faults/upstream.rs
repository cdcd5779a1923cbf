//! The upstream unreachable: a server that accepts TCP and never answers TLS, a name that
//! does not resolve.

use std::time::{Duration, Instant};

use super::{metric, wait_status};
use crate::stack::{self, FAILED_SESSION, Stack, db_error};

/// The proxy's view of an upstream it cannot reach: /readiness stays ready (probes never dial
/// a database, so a database outage does not restart the proxy), and the failed logins are
/// counted as `upstream_connect`.
async fn probes_and_metrics(admin: std::net::SocketAddr) {
    wait_status(admin, "/readiness", 200, Duration::from_secs(20)).await;
    let labels = r#"listener="postgres",protocol="postgres",cause="upstream_connect""#;
    assert!(metric(admin, "entra_db_proxy_handshake_failures_total", labels).await >= 1.0);
}

/// A loopback address that accepts connections and never answers (the accepted sockets are
/// kept open until the listener is dropped).
struct Silent {
    addr: std::net::SocketAddr,
    _task: tokio::task::JoinHandle<()>,
}

impl Silent {
    async fn start() -> Silent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        Silent { addr, _task: task }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_never_answers_tls_gives_08001_in_time() {
    let s = Stack::start().await;
    let silent = Silent::start().await;
    let cfg = s.azure.config();
    let proxy = crate::util::ProxyCmd::new()
        .args(["--postgres-listen", "127.0.0.1:0"])
        .args(["--postgres-upstream", &silent.addr.to_string()])
        .args(["--postgres-user", stack::ENTRA_USER])
        .args(["--connect-timeout", "1s", "--handshake-timeout", "3s"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("SSL_CERT_FILE", s.ca_file.to_str().unwrap())
        .env("AZURE_AUTHORITY_HOST", s.azure.authority_host())
        .env("AZURE_POSTGRESQL_CLIENTID", cfg.client_id)
        .env("AZURE_POSTGRESQL_CLIENTSECRET", cfg.client_secret)
        .env("AZURE_POSTGRESQL_TENANTID", cfg.tenant_id)
        .expect_warnings(&[FAILED_SESSION])
        .spawn();
    let started = Instant::now();
    let err = stack::connect(proxy.port()).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "08001", "{message}");
    assert!(
        message.contains("did not answer the SSLRequest within 1000 ms"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The proxy itself still answers.
    let err = stack::connect(proxy.port()).await.unwrap_err();
    assert_eq!(db_error(&err).0, "08001");
    probes_and_metrics(proxy.admin.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_name_that_does_not_resolve_gives_08001() {
    let s = Stack::start().await;
    let cfg = s.azure.config();
    let proxy = crate::util::ProxyCmd::new()
        .args(["--postgres-listen", "127.0.0.1:0"])
        .args(["--postgres-upstream", "no-such-server.invalid"])
        .args(["--postgres-user", stack::ENTRA_USER])
        .args(["--connect-timeout", "2s"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env("SSL_CERT_FILE", s.ca_file.to_str().unwrap())
        .env("AZURE_AUTHORITY_HOST", s.azure.authority_host())
        .env("AZURE_POSTGRESQL_CLIENTID", cfg.client_id)
        .env("AZURE_POSTGRESQL_CLIENTSECRET", cfg.client_secret)
        .env("AZURE_POSTGRESQL_TENANTID", cfg.tenant_id)
        .expect_warnings(&[FAILED_SESSION])
        .spawn();
    let err = stack::connect(proxy.port()).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("no-such-server.invalid"), "{message}");
    assert!(message.contains("DNS"), "{message}");
    probes_and_metrics(proxy.admin.unwrap()).await;
}
