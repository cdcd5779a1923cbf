//! The proxy as a library, in this process: `Config::load` from flags and an injected
//! environment, `Proxy::start`, and shutdown through a future instead of a signal, with the
//! same sequence as the binary's (readiness off, keep accepting for the minimum delay, stop
//! accepting, drain open sessions).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use clap::Parser;
use entra_db_proxy::{Config, EnvSnapshot, Flags, Proxy, config::ListenAddr};

use crate::{
    stack::{self, DB, ENTRA_USER, Stack},
    util::http_get,
};

/// The proxy for `s`'s PostgreSQL, with the service principal the way Service Connector
/// passes it, Entra at the fake, and the test CA trusted through `--ca-file`.
fn config(s: &Stack, extra: &[&str]) -> Config {
    let upstream = format!("127.0.0.1:{}", s.pg.port());
    let authority = s.azure.authority_host();
    let imds = s.silent_imds_url();
    let mut args = vec![
        "entra-db-proxy",
        "--postgres-listen",
        "127.0.0.1:0",
        "--postgres-upstream",
        &upstream,
        "--postgres-user",
        ENTRA_USER,
        "--postgres-database",
        DB,
        "--ca-file",
        s.ca_file.to_str().unwrap(),
        "--authority-host",
        &authority,
        "--imds-endpoint",
        &imds,
        "--admin-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let sp = s.azure.config();
    let env = EnvSnapshot::from_pairs([
        ("AZURE_POSTGRESQL_CLIENTID", sp.client_id),
        ("AZURE_POSTGRESQL_CLIENTSECRET", sp.client_secret),
        ("AZURE_POSTGRESQL_TENANTID", sp.tenant_id),
    ]);
    Config::load(&Flags::try_parse_from(args).unwrap(), &env).unwrap()
}

fn tcp_port(proxy: &Proxy) -> u16 {
    match &proxy.listen_addrs()[0] {
        (name, ListenAddr::Tcp(a)) if name == "postgres" => a.port(),
        other => panic!("unexpected listener {other:?}"),
    }
}

async fn readiness(admin: SocketAddr) -> u16 {
    http_get(admin, "/readiness").await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_future_drains_and_returns_ok() {
    let s = Stack::start().await;
    let proxy = Proxy::start(config(
        &s,
        &["--min-shutdown-delay", "2", "--max-shutdown-delay", "30"],
    ))
    .await
    .unwrap();
    let port = tcp_port(&proxy);
    let admin = proxy.admin_addr().expect("admin server");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(proxy.run_until(async {
        let _ = stopped.await;
    }));

    // Served like the binary: a query through the proxy with no password.
    let client = stack::connect(port).await.unwrap();
    let one: String = client
        .query_one("select 1::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, "1");
    let start = Instant::now();
    while readiness(admin).await != 200 {
        assert!(start.elapsed() < Duration::from_secs(20), "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A session that outlives both delays' start: it must be drained, not cut.
    let running = tokio::spawn(async move {
        let r = client
            .query_one("select pg_sleep(4)::text || 'done'", &[])
            .await
            .map(|r| r.get::<_, String>(0));
        drop(client);
        r
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped_at = Instant::now();
    stop.send(()).unwrap();

    // Readiness fails at once, but new clients are still served during the minimum delay.
    let start = Instant::now();
    while readiness(admin).await != 503 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "readiness stayed up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = stack::connect(port)
        .await
        .expect("accepting during the minimum delay");
    drop(late);

    // After the minimum delay: no new connections, the running query still finishes.
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(stopped_at.elapsed())).await;
    assert!(
        stack::connect(port).await.is_err(),
        "still accepting after the minimum delay"
    );
    assert!(!run.is_finished(), "returned before the session finished");
    assert_eq!(running.await.unwrap().unwrap(), "done");

    let result = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run did not return once the sessions were done")
        .unwrap();
    result.unwrap();
    assert!(
        stopped_at.elapsed() < Duration::from_secs(15),
        "waited for the max delay instead of the drain"
    );
    // The admin server stopped with it.
    let start = Instant::now();
    while tokio::net::TcpStream::connect(admin).await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "admin server still up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
