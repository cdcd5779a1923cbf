//! Cancel on a warm session, and the database restarting while sessions are warm.

use std::time::Duration;

use super::{DISCARDED, HITS, LABELS, by_reason, wait_ready, warm_proxy};
use crate::{
    faults::{metric, poll},
    stack::{self, Stack},
};

#[tokio::test(flavor = "multi_thread")]
async fn cancel_on_a_warm_session_cancels_the_query() {
    let s = Stack::start().await;
    let proxy = warm_proxy(&s, 1).spawn();
    let admin = proxy.admin.unwrap();
    wait_ready(admin, 1).await;
    let client = stack::connect(proxy.port()).await.unwrap();
    assert_eq!(metric(admin, HITS, LABELS).await, 1.0, "a warm session");
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move { client.simple_query("select pg_sleep(60)").await });
    stack::wait_until_running(&s, "select pg_sleep(60)").await;
    // The BackendKeyData the client got is the upstream backend's own: the proxy forwards the
    // CancelRequest as is.
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), sleeping)
        .await
        .expect("the query ends")
        .unwrap()
        .expect_err("cancelled");
    assert_eq!(err.as_db_error().unwrap().code().code(), "57014", "{err:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_under_warm_sessions_costs_no_client_an_error() {
    let s = Stack::start().await;
    let proxy = warm_proxy(&s, 2)
        // While the server is down, background logins fail and back off (no client sees it).
        .expect_warnings(&["warm session login failed"])
        .spawn();
    let admin = proxy.admin.unwrap();
    wait_ready(admin, 2).await;

    s.pg.restart().await.unwrap();
    // Clients right after the restart: the dead warm sessions are never handed out.
    for i in 0..4 {
        let c = stack::connect(proxy.port())
            .await
            .unwrap_or_else(|e| panic!("client {i} after the restart: {e:#}"));
        c.simple_query("select 1").await.unwrap();
    }
    assert!(
        by_reason(admin, DISCARDED, "closed").await >= 2.0,
        "both warm sessions were found closed"
    );
    // The pool recovers: later clients are served warm again.
    wait_ready(admin, 2).await;
    let hits = metric(admin, HITS, LABELS).await;
    let c = stack::connect(proxy.port()).await.unwrap();
    c.simple_query("select 1").await.unwrap();
    poll(
        "a warm hit after the restart",
        Duration::from_secs(5),
        || async { (metric(admin, HITS, LABELS).await > hits).then_some(()) },
    )
    .await;
}
