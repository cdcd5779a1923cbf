//! Secrets never leak: a full run at trace level, through success, a refused token and an
//! Entra outage, must not log any token, the client secret, or the federated assertion.

use std::time::Duration;

use crate::stack::{self, ENTRA_USER, FAILED_SESSION, Stack, psql};

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_a_trace_level_log() {
    let s = Stack::start().await;
    let c = s.azure.config();
    let mut proxy = s
        .proxy_sp()
        .rust_log("trace")
        .expect_warnings(&[
            "the upstream refused the credential",
            "within 10 s of fetching a new one",
            FAILED_SESSION,
        ])
        .spawn();
    assert_eq!(psql(proxy.port(), "select current_user").trim(), ENTRA_USER);
    // A refused token and its replacement.
    s.pg.set_role_password(ENTRA_USER, "not-the-token")
        .await
        .unwrap();
    assert_eq!(psql(proxy.port(), "select 1").trim(), "1");
    // A server rejection that reaches the client.
    s.azure.clear_on_issue();
    s.pg.set_role_password(ENTRA_USER, "still-not-the-token")
        .await
        .unwrap();
    let _ = stack::connect(proxy.port()).await.unwrap_err();
    proxy.wait_for_line(|l| l.contains("28P01"), Duration::from_secs(10));

    let log = proxy.log();
    assert!(
        log.lines().count() > 20,
        "expected a chatty trace log:\n{log}"
    );
    let mut secrets: Vec<String> = s.azure.issued().into_iter().map(|t| t.token).collect();
    assert!(secrets.len() >= 2);
    secrets.push(c.client_secret.clone());
    for secret in &secrets {
        // The whole secret, and its last 40 characters (a JWT's signature part).
        let tail = &secret[secret.len().saturating_sub(40)..];
        assert!(
            !log.contains(secret.as_str()),
            "a secret appears in the log"
        );
        assert!(!log.contains(tail), "part of a secret appears in the log");
    }
}
