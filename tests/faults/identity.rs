//! Token endpoints that hang: Entra ID's (a service principal) and IMDS (managed identity),
//! at the proxy's first fetch and at a refresh while a valid token is cached.
//!
//! The proxy runs with `--credential-timeout 2s`: every credential HTTP request and every
//! acquisition ends by then, and a client waiting for one is told within that (and always
//! within the handshake timeout). The bounds asserted are far above both.

use std::time::{Duration, Instant};

use dbproxy_testkit::{
    azure::{FakeAzureConfig, Hang},
    postgres::PasswordAuth,
};

use super::{metric, poll, wait_status};
use crate::{
    stack::{self, FAILED_SESSION, Stack, db_error},
    util::{Proxy, http_get},
};

const FAILURES: &str = "entra_db_proxy_credential_refresh_failures_total";
const REFRESHES: &str = "entra_db_proxy_credential_refreshes_total";
const PG: &str = r#"listener="postgres""#;
const CREDENTIAL_FAILED: &str = r#"listener="postgres",protocol="postgres",cause="credential""#;
const HANDSHAKE_FAILURES: &str = "entra_db_proxy_handshake_failures_total";

/// A login through the proxy fails with 28000 within 20 s; returns the message.
async fn refused_28000(proxy: &Proxy) -> String {
    let started = Instant::now();
    let err = stack::connect(proxy.port()).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "28000", "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered after {:?}",
        started.elapsed()
    );
    eprintln!("28000 after {:?}: {message}", started.elapsed());
    message
}

/// Until logins work again (the fault lifted): the refresher or the next client gets a token.
async fn recovers(proxy: &Proxy) {
    poll(
        "a login after the fault",
        Duration::from_secs(60),
        || async {
            let c = stack::connect(proxy.port()).await.ok()?;
            c.simple_query("select 1").await.ok()
        },
    )
    .await;
    let admin = proxy.admin.unwrap();
    wait_status(admin, "/readiness", 200, Duration::from_secs(10)).await;
    assert!(metric(admin, REFRESHES, PG).await >= 1.0);
}

async fn entra_hangs_at_the_first_fetch(how: Hang) {
    let s = Stack::start().await;
    s.azure.set_identity_hang(how);
    let proxy = s
        .proxy_sp()
        .args(["--credential-timeout", "2s", "--handshake-timeout", "10s"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&["access token acquisition failed", FAILED_SESSION])
        .spawn();
    let admin = proxy.admin.unwrap();
    let message = refused_28000(&proxy).await;
    assert!(
        message.contains("could not obtain an Entra ID token")
            && message.contains("client secret (tenant=")
            && message.contains("timed out"),
        "names the source and the timeout: {message}"
    );
    assert!(s.azure.hung_requests() >= 1, "the fault was hit");
    let (status, body) = http_get(admin, "/readiness").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no credential acquired yet"), "{body}");
    assert_eq!(http_get(admin, "/startup").await.0, 503);
    assert!(metric(admin, FAILURES, PG).await >= 1.0);
    assert!(metric(admin, HANDSHAKE_FAILURES, CREDENTIAL_FAILED).await >= 1.0);
    // Nothing leaked into the message: no secret of the service principal.
    assert!(!message.contains(&s.azure.config().client_secret));

    s.azure.set_identity_hang(Hang::No);
    recovers(&proxy).await;
    assert_eq!(http_get(admin, "/startup").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_that_never_answers_gives_28000_in_time_then_recovers() {
    entra_hangs_at_the_first_fetch(Hang::NoAnswer).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn entra_that_stalls_its_body_gives_28000_in_time_then_recovers() {
    entra_hangs_at_the_first_fetch(Hang::StalledBody).await;
}

/// A refresh hangs while the cached token is valid: new logins go on with the cached token,
/// /readiness stays ready, the failures show in the metrics; once the token expires, logins
/// get 28000 "timed out" and /readiness fails; after Entra recovers, both come back.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_refresh_does_not_touch_logins_until_the_token_expires() {
    // A 36 s token: refreshed at half its life (18 s), usable until 10 s before its end (26 s).
    let cfg = FakeAzureConfig {
        lifetime: Duration::from_secs(36),
        ..FakeAzureConfig::default()
    };
    let s = Stack::with(PasswordAuth::Password, cfg).await;
    let proxy = s
        .proxy_sp()
        .args(["--credential-timeout", "2s", "--handshake-timeout", "10s"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&["access token acquisition failed", FAILED_SESSION])
        .spawn();
    let admin = proxy.admin.unwrap();
    wait_status(admin, "/readiness", 200, Duration::from_secs(20)).await;
    stack::connect(proxy.port()).await.unwrap();
    s.azure.set_identity_hang(Hang::NoAnswer);

    // The refresh is due at 18 s and hangs.
    poll("the refresh hanging", Duration::from_secs(40), || async {
        (s.azure.hung_requests() >= 1).then_some(())
    })
    .await;
    let c = stack::connect(proxy.port())
        .await
        .expect("a valid cached token serves new logins while the refresh hangs");
    c.simple_query("select 1").await.unwrap();
    assert_eq!(
        http_get(admin, "/readiness").await.0,
        200,
        "time left: ready"
    );
    poll(
        "the failed refresh counted",
        Duration::from_secs(20),
        || async { (metric(admin, FAILURES, PG).await >= 1.0).then_some(()) },
    )
    .await;

    // Past the token's usable life: 28000, timed out.
    let message = poll("logins failing", Duration::from_secs(40), || async {
        let err = stack::connect(proxy.port()).await.err()?;
        Some(db_error(&err))
    })
    .await;
    eprintln!("after expiry: {} {}", message.0, message.1);
    assert_eq!(message.0, "28000", "{}", message.1);
    assert!(message.1.contains("timed out"), "{}", message.1);
    let body = wait_status(admin, "/readiness", 503, Duration::from_secs(30)).await;
    assert!(
        body.contains("not valid") && body.contains("timed out"),
        "{body}"
    );
    assert_eq!(
        http_get(admin, "/startup").await.0,
        200,
        "started stays started"
    );

    s.azure.set_identity_hang(Hang::No);
    recovers(&proxy).await;
    c.simple_query("select 1")
        .await
        .expect("the session opened before the fault lives on");
}

/// Managed identity (IMDS, as on a VM or an AKS node) that accepts and never answers.
#[tokio::test(flavor = "multi_thread")]
async fn imds_that_hangs_gives_28000_in_time_then_recovers() {
    let s = Stack::start().await;
    s.azure.set_identity_hang(Hang::NoAnswer);
    let proxy = s
        .proxy()
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", s.azure.imds_url())
        .args(["--credential", "managed-identity"])
        .args(["--credential-timeout", "2s", "--handshake-timeout", "10s"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&["access token acquisition failed", FAILED_SESSION])
        .spawn();
    let admin = proxy.admin.unwrap();
    let message = refused_28000(&proxy).await;
    assert!(
        message.contains("managed identity (IMDS at http://127.0.0.1:")
            && message.contains("timed out"),
        "{message}"
    );
    let (status, body) = http_get(admin, "/readiness").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no credential acquired yet"), "{body}");
    assert!(metric(admin, FAILURES, PG).await >= 1.0);

    s.azure.set_identity_hang(Hang::No);
    recovers(&proxy).await;
}

/// The default chain with nothing but a hanging IMDS: its probe gives up after a second, so a
/// client is told at once (well within the 30 s credential and handshake timeouts) that no
/// source answered, instead of waiting for them.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_chain_does_not_wait_for_a_hanging_imds() {
    let s = Stack::start().await;
    s.azure.set_identity_hang(Hang::NoAnswer);
    let bin = s.dir.join("no-az");
    std::fs::create_dir_all(&bin).unwrap();
    // An `az` that is not logged in, so that the chain ends with the CLI, whatever PATH holds.
    s.azure.install_fake_az(&bin).unwrap();
    s.azure.set_az_logged_in(false);
    let proxy = s
        .proxy()
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", s.azure.imds_url())
        .args(["--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&["access token acquisition failed", FAILED_SESSION])
        .spawn_with_path(Some(&bin));
    let started = Instant::now();
    let err = stack::connect(proxy.port()).await.unwrap_err();
    let elapsed = started.elapsed();
    let (code, message) = db_error(&err);
    eprintln!("28000 after {elapsed:?}: {message}");
    assert_eq!(code, "28000", "{message}");
    assert!(
        message.contains("no IMDS endpoint answered") && message.contains("probe within 1000ms"),
        "{message}"
    );
    assert!(message.contains("az login"), "{message}");
    assert!(
        elapsed < Duration::from_secs(15),
        "the chain stalled for {elapsed:?}"
    );
    assert!(
        s.azure.hung_requests() >= 1,
        "the probe reached the hanging IMDS"
    );
    let admin = proxy.admin.unwrap();
    assert_eq!(http_get(admin, "/readiness").await.0, 503);
    assert!(metric(admin, FAILURES, PG).await >= 1.0);
}

/// The credential timeout above the handshake timeout: a connecting client still waits at most
/// the handshake timeout, and is told the credential timed out (the acquisition goes on).
#[tokio::test(flavor = "multi_thread")]
async fn a_client_waits_for_a_hung_credential_at_most_the_handshake_timeout() {
    let s = Stack::start().await;
    s.azure.set_identity_hang(Hang::NoAnswer);
    let proxy = s
        .proxy_sp()
        .args(["--credential-timeout", "60s", "--handshake-timeout", "2s"])
        .expect_warnings(&[FAILED_SESSION])
        .spawn();
    let message = refused_28000(&proxy).await;
    assert!(
        message.contains("client secret (tenant=")
            && message.contains("timed out: no answer within 2s (still trying in the background)"),
        "{message}"
    );
    assert_eq!(
        s.azure.hung_requests(),
        1,
        "one acquisition, still hung, shared"
    );
}
