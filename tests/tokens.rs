use std::time::{Duration, Instant};

use dbproxy_testkit::{azure::FakeAzureConfig, postgres::PasswordAuth};

use crate::stack::{self, ENTRA_USER, FAILED_SESSION, Stack, psql};

/// Short-lived tokens, the role's password rotated with each: new logins keep working across
/// several lifetimes and an open session survives its token's expiry.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_expire_mid_run_without_client_failures() {
    let cfg = FakeAzureConfig {
        lifetime: Duration::from_secs(24),
        ..FakeAzureConfig::default()
    };
    let s = Stack::with(PasswordAuth::Password, cfg).await;
    // The fake makes each new token the role's password at once (Entra's old tokens stay
    // valid): a login in flight with the previous token at that moment is refused, and the
    // proxy retries it with the new one. That retry is logged as a warning; the client must
    // not notice it.
    let proxy = s
        .proxy_sp()
        .expect_warnings(&["the upstream refused the credential; retrying with a fresh one"])
        .spawn();
    let long_lived = stack::connect(proxy.port()).await.unwrap();
    let started = Instant::now();
    let mut sessions = 0;
    while started.elapsed() < Duration::from_secs(40) {
        let c = stack::connect(proxy.port())
            .await
            .unwrap_or_else(|e| panic!("login {sessions} failed: {e:#}"));
        let user: String = c
            .query_one("select current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(user, ENTRA_USER);
        sessions += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let n: i32 = long_lived.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7, "the session opened with the first token still works");
    let issued = s.azure.issued().len();
    assert!(
        issued >= 2,
        "tokens should have been refreshed; issued {issued}"
    );
    assert!(sessions > 10);
}

/// The server refuses the cached token (revoked, or the role's password changed): the proxy
/// drops it, fetches a fresh one and retries once, and the client never notices.
#[tokio::test(flavor = "multi_thread")]
async fn rejected_token_is_replaced_transparently() {
    let s = Stack::start().await;
    let mut proxy = s
        .proxy_sp()
        .expect_warnings(&["the upstream refused the credential"])
        .spawn();
    assert_eq!(psql(proxy.port(), "select 1").trim(), "1");
    let before = s.azure.issued().len();
    s.pg.set_role_password(ENTRA_USER, "not-the-token")
        .await
        .unwrap();
    assert_eq!(psql(proxy.port(), "select current_user").trim(), ENTRA_USER);
    assert_eq!(
        s.azure.issued().len(),
        before + 1,
        "exactly one fresh token"
    );
    proxy.wait_for_line(
        |l| l.contains("the upstream refused the credential"),
        Duration::from_secs(5),
    );
}

/// When even a fresh token is refused, the client gets the server's own error, verbatim.
#[tokio::test(flavor = "multi_thread")]
async fn server_errors_reach_the_client_verbatim() {
    let s = Stack::start().await;
    s.azure.clear_on_issue(); // tokens no longer become the role's password
    let proxy = s
        .proxy_sp()
        .expect_warnings(&["the upstream refused the credential", FAILED_SESSION])
        .spawn();
    let (code, message) = stack::db_error(&stack::connect(proxy.port()).await.unwrap_err());
    assert_eq!(code, "28P01", "{message}");
    assert!(
        message.contains("password authentication failed for user"),
        "{message}"
    );
}

async fn large_token(auth: PasswordAuth, len: usize) {
    let cfg = FakeAzureConfig {
        token_len: len,
        ..FakeAzureConfig::default()
    };
    let s = Stack::with(auth, cfg).await;
    let proxy = s.proxy_sp().spawn();
    assert_eq!(psql(proxy.port(), "select current_user").trim(), ENTRA_USER);
    let t = s.azure.last_token().unwrap();
    assert!(t.len() >= len - 8, "token of {} chars", t.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn token_of_7000_chars_with_md5() {
    large_token(PasswordAuth::Md5, 7000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_of_16_kb_with_cleartext_password() {
    large_token(PasswordAuth::Password, 16 * 1024).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scram_sha_256_upstream() {
    large_token(PasswordAuth::Scram, 1900).await;
}
