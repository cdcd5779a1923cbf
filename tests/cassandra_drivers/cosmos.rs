//! Through the Cosmos DB stand-in (`dbproxy_testkit::cosmos`) in front of the real Cassandra:
//! drivers run their programs with zero errors while 20 % of requests are throttled (the proxy
//! absorbs it, and its request-unit counter equals what the stand-in charged); at 100 % with a
//! small budget the driver gets Cosmos's own Overloaded; token mode (Entra RBAC) logs in with a
//! Cosmos-scoped token, and a management-scoped one is refused with a clear error.

use bytes::BytesMut;
use dbproxy_cassandra::{Frame, FrameDecoder, codes, frame::opcode, messages, schema::query_frame};
use dbproxy_testkit::cosmos::{CosmosConfig, CosmosStandin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{client_command, java_command, run_client};
use crate::{
    cassandra::Account,
    util::{Proxy, ProxyCmd, http_get},
};

/// Rows each driver program writes and reads back (fewer than the plain driver tests: the
/// stand-in adds a TLS hop and a login per connection on a shared 2-core machine).
const ROWS: &str = "2000";

/// The stand-in in front of the account's cluster; `local_auth`: keys accepted.
async fn standin(a: &Account, throttle: f64, local_auth: bool) -> CosmosStandin {
    CosmosStandin::start(
        crate::cassandra::ca(),
        CosmosConfig {
            upstream: a.cluster.contact_point(),
            upstream_tls: Some(a.cluster.tls_config()),
            upstream_login: (a.name.clone(), a.azure.keys().primary_master_key),
            login: a.azure.cosmos_login_check(&a.name, local_auth),
            throttle,
            retry_after_ms: 20,
        },
    )
    .await
    .unwrap()
}

/// The account's proxy (Service Connector's variables) pointed at the stand-in, as Cosmos.
fn proxy(a: &Account, s: &CosmosStandin) -> ProxyCmd {
    a.proxy()
        .env("AZURE_COSMOS_PORT", s.addr().port().to_string())
        .env("ENTRA_DB_PROXY_CASSANDRA_COSMOS", "true")
        .args(["--admin-listen", "127.0.0.1:0"])
}

/// A `listener="cassandra"` sample of the proxy's /metrics.
async fn metric(p: &Proxy, name: &str) -> f64 {
    let (_, text) = http_get(p.admin.unwrap(), "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(&format!("entra_db_proxy_{name}{{listener=\"cassandra\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

/// The counters moved, nothing was given up, and the request units are exactly what the
/// stand-in charged: the proxy's own schema-agreement queries count too, and so do answers
/// still in flight when a driver closes (the Java driver's schema refreshes), read after the
/// close.
async fn assert_absorbed(p: &Proxy, s: &CosmosStandin) {
    // The driver's last connections may still be closing (their last answers read): wait for
    // the counter to settle on the stand-in's figure, at most 10 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (metric(p, "cosmos_request_units_total").await - s.charged()).abs() >= 1e-6 * s.charged()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let throttled = metric(p, "cosmos_throttled_total").await;
    let retried = metric(p, "cosmos_retried_total").await;
    let given_up = metric(p, "cosmos_given_up_total").await;
    let ru = metric(p, "cosmos_request_units_total").await;
    let figures = format!(
        "stand-in: throttled {} charged {}; proxy: throttled {throttled} retried {retried} given up {given_up} RU {ru}",
        s.throttled(),
        s.charged()
    );
    eprintln!("{figures}");
    assert!(s.throttled() > 0, "{figures}");
    assert!(
        throttled > 0.0 && throttled <= s.throttled() as f64,
        "{figures}"
    );
    assert_eq!(retried, throttled, "{figures}");
    assert_eq!(given_up, 0.0, "{figures}");
    assert!(metric(p, "cosmos_retry_wait_seconds_total").await > 0.0);
    assert!(
        ru > 0.0 && (ru - s.charged()).abs() < 1e-6 * s.charged(),
        "{figures}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn python_driver_through_cosmos_with_20_percent_throttled() {
    let a = Account::new(1, "cosmospy").await;
    let s = standin(&a, 0.2, true).await;
    let p = proxy(&a, &s).spawn();
    let python = crate::clients::python();
    let mut cmd = client_command(&python);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/cassandra/python/sample.py"
    ))
    .env("ROWS", ROWS);
    let run = run_client("the Python sample", cmd, &p, "ks_cosmospy").await;
    assert_eq!(
        run.field("protocol").as_deref(),
        Some("v4"),
        "{}",
        run.stdout
    );
    assert_absorbed(&p, &s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn java_driver_through_cosmos_with_20_percent_throttled() {
    let a = Account::new(1, "cosmosjava").await;
    let s = standin(&a, 0.2, true).await;
    let p = proxy(&a, &s).spawn();
    let (what, mut cmd) = java_command("datacenter1").await;
    cmd.env("ROWS", ROWS);
    let run = run_client(&what, cmd, &p, "ks_cosmosjava").await;
    assert_eq!(
        run.field("protocol").as_deref(),
        Some("v4"),
        "{}",
        run.stdout
    );
    assert_absorbed(&p, &s).await;
}

/// A raw v4 connection through the proxy, STARTUP sent: the socket, its decoder and buffer,
/// and the proxy's first answer.
async fn raw_startup(p: &Proxy) -> (tokio::net::TcpStream, FrameDecoder, BytesMut, Frame) {
    let mut c = tokio::net::TcpStream::connect(p.addrs["cassandra"])
        .await
        .unwrap();
    let startup = messages::startup_frame(4, 0, &[("CQL_VERSION", "3.0.0")]);
    c.write_all(&startup.to_bytes()).await.unwrap();
    let (mut dec, mut buf) = (FrameDecoder::new(1 << 20), BytesMut::new());
    let first = read(&mut c, &mut dec, &mut buf).await;
    (c, dec, buf, first)
}

/// [`raw_startup`], which must be answered READY.
async fn raw_session(p: &Proxy) -> (tokio::net::TcpStream, FrameDecoder, BytesMut) {
    let (c, dec, buf, f) = raw_startup(p).await;
    assert_eq!(f.header.opcode, opcode::READY, "{f:?}\n{}", p.log());
    (c, dec, buf)
}

async fn read(c: &mut tokio::net::TcpStream, dec: &mut FrameDecoder, buf: &mut BytesMut) -> Frame {
    loop {
        if let Some(f) = dec.decode(buf).unwrap() {
            return f;
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), c.read_buf(buf))
            .await
            .expect("an answer within 30 s")
            .unwrap();
        assert!(n > 0, "the proxy closed the connection");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_a_small_budget_the_driver_sees_cosmos_own_overloaded() {
    let a = Account::new(1, "cosmosall").await;
    let s = standin(&a, 1.0, true).await;
    let p = proxy(&a, &s)
        .args([
            "--cassandra-cosmos-max-retries",
            "2",
            "--cassandra-cosmos-max-retry-wait",
            "1s",
        ])
        .spawn();
    let (mut c, mut dec, mut buf) = raw_session(&p).await;
    c.write_all(&query_frame(4, 9, "SELECT k FROM ks.none").to_bytes())
        .await
        .unwrap();
    let f = read(&mut c, &mut dec, &mut buf).await;
    assert_eq!((f.header.stream, f.header.opcode), (9, opcode::ERROR));
    let (code, message) = messages::parse_error(&f.body).unwrap();
    assert_eq!(code, codes::OVERLOADED);
    assert!(
        message.starts_with("Request rate is large: ActivityID=")
            && message.contains("RetryAfterMs=20")
            && message.contains("TooManyRequests (429); Substatus: 3200"),
        "{message}"
    );
    // Sent once and resent twice, all throttled; the third answer reached the driver.
    assert_eq!(s.throttled(), 3);
    assert_eq!(s.forwarded(), 0);
    assert_eq!(metric(&p, "cosmos_throttled_total").await, 3.0);
    assert_eq!(metric(&p, "cosmos_retried_total").await, 2.0);
    assert_eq!(metric(&p, "cosmos_given_up_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_mode_logs_in_with_a_cosmos_token_and_a_management_one_is_refused() {
    let a = Account::new(1, "cosmosrbac").await;
    // Local auth disabled: only Entra tokens for https://cosmos.azure.com log in.
    let s = standin(&a, 0.0, false).await;
    let p = proxy(&a, &s)
        .env("ENTRA_DB_PROXY_CASSANDRA_PASSWORD", "token")
        .spawn();
    let (mut c, mut dec, mut buf) = raw_session(&p).await;
    c.write_all(&query_frame(4, 2, "SELECT release_version FROM system.local").to_bytes())
        .await
        .unwrap();
    let f = read(&mut c, &mut dec, &mut buf).await;
    assert_eq!(f.header.opcode, opcode::RESULT, "{f:?}");
    // Every answer read: the request units are exactly what the stand-in charged.
    assert!(s.charged() > 0.0);
    assert_eq!(metric(&p, "cosmos_request_units_total").await, s.charged());
    let issued = a.azure.issued();
    assert!(
        !issued.is_empty()
            && issued
                .iter()
                .all(|t| t.scope == "https://cosmos.azure.com/.default"),
        "{issued:?}"
    );
    assert!(
        a.azure.arm_requests().is_empty(),
        "token mode called listKeys"
    );
    assert_eq!(s.logins(), 1);
    drop(c);

    // A token for ARM (the scope of listKeys) is not one Cosmos's data plane takes.
    let p = proxy(&a, &s)
        .env("ENTRA_DB_PROXY_CASSANDRA_PASSWORD", "token")
        .args(["--scope", "https://management.azure.com/.default"])
        .expect_warnings(&["audience", "rejected the access token again"])
        .spawn();
    let (_c, _, _, f) = raw_startup(&p).await;
    assert_eq!(f.header.opcode, opcode::ERROR, "{f:?}");
    let (code, message) = messages::parse_error(&f.body).unwrap();
    assert_eq!(code, codes::BAD_CREDENTIALS, "{message}");
    assert!(
        message.contains("audience") && message.contains("https://cosmos.azure.com/.default"),
        "{message}"
    );
    assert_eq!(s.logins(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_refused_because_local_auth_is_disabled_says_to_use_token_mode() {
    let a = Account::new(1, "cosmosnokeys").await;
    let s = standin(&a, 0.0, false).await;
    let p = proxy(&a, &s)
        .expect_warnings(&["Local Authorization is disabled", "local auth"])
        .spawn();
    let (_c, _, _, f) = raw_startup(&p).await;
    assert_eq!(f.header.opcode, opcode::ERROR, "{f:?}");
    let (code, message) = messages::parse_error(&f.body).unwrap();
    assert_eq!(code, codes::BAD_CREDENTIALS, "{message}");
    assert!(
        message.contains("Local Authorization is disabled")
            && message.contains("--cassandra-password token"),
        "{message}"
    );
}
