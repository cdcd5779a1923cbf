//! ARM listKeys failing for the Cosmos DB key (the CQL path, against the shared 1-node
//! Cassandra): 429 with `Retry-After` and 500/503, passing (retried within one fetch) and
//! lasting (the fetch fails; the driver is told, then the proxy recovers).

use std::time::{Duration, Instant};

use dbproxy_testkit::azure::ArmFault;
use scylla::client::session_builder::SessionBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::hostile::cql_wire;

use super::{metric, poll, wait_status};
use crate::{cassandra::Account, stack::FAILED_SESSION, util::http_get};

const FAILURES: &str = "entra_db_proxy_credential_refresh_failures_total";
const REFRESHES: &str = "entra_db_proxy_credential_refreshes_total";
const CQL: &str = r#"listener="cassandra""#;
const RETRYING: &str = "listing the Cosmos DB keys failed; retrying";
const FETCH_FAILED: &str = "Cosmos DB account key fetch failed";

/// A v4 STARTUP on a raw connection: `Ok(())` for READY, else the ERROR's (code, message).
/// Answered within 30 s.
pub(super) async fn startup(addr: std::net::SocketAddr) -> Result<(), (i32, String)> {
    startup_from(addr, None).await.map(drop)
}

/// [`startup`] from the source address `from` (a simulated pod), keeping the connection.
pub(crate) async fn startup_from(
    addr: std::net::SocketAddr,
    from: Option<&str>,
) -> Result<tokio::net::TcpStream, (i32, String)> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    }
    let mut c = socket.connect(addr).await.unwrap();
    c.write_all(&cql_wire::startup_v(4, 7)).await.unwrap();
    let mut header = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(30), c.read_exact(&mut header))
        .await
        .expect("an answer to STARTUP in time")
        .expect("a frame header");
    assert_eq!(
        (header[0], header[2], header[3]),
        (0x84, 0, 7),
        "{header:?}"
    );
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0; len];
    c.read_exact(&mut body).await.unwrap();
    match header[4] {
        0x02 => Ok(c),
        0x00 => {
            let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
            let n = u16::from_be_bytes([body[4], body[5]]) as usize;
            Err((code, String::from_utf8_lossy(&body[6..6 + n]).into_owned()))
        }
        op => panic!("unexpected opcode {op:#04x} in answer to STARTUP"),
    }
}

/// 500, 429 (Retry-After: 2 s) and 503, then the keys: one fetch rides it out, honouring the
/// Retry-After, and the driver never notices; no failed acquisition is counted.
#[tokio::test(flavor = "multi_thread")]
async fn passing_arm_errors_are_retried_within_one_fetch() {
    let a = Account::new(1, "armretry").await;
    a.azure.queue_arm_faults(&[
        ArmFault::Status(500),
        ArmFault::Throttled {
            retry_after_secs: 2,
        },
        ArmFault::Status(503),
    ]);
    let proxy = a
        .proxy()
        .args(["--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&[RETRYING])
        .spawn();
    let session = SessionBuilder::new()
        .known_node(proxy.addrs["cassandra"].to_string())
        .connection_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap_or_else(|e| panic!("no session despite ARM recovering: {e}\n{}", proxy.log()));
    session
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();
    let reqs = a.azure.arm_requests();
    assert_eq!(reqs.len(), 4, "500, 429, 503, then the keys: {reqs:?}");
    let after_429 = reqs[2].at.duration_since(reqs[1].at);
    assert!(
        after_429 >= Duration::from_secs(2),
        "Retry-After: 2 was not honoured: the next request came {after_429:?} later"
    );
    let admin = proxy.admin.unwrap();
    wait_status(admin, "/readiness", 200, Duration::from_secs(10)).await;
    assert_eq!(metric(admin, FAILURES, CQL).await, 0.0);
    assert!(metric(admin, REFRESHES, CQL).await >= 1.0);
    let retries = proxy
        .lines()
        .iter()
        .filter(|l| l.contains(RETRYING))
        .count();
    assert_eq!(retries, 3, "{}", proxy.log());
}

/// ARM throttling, then failing, for longer than a fetch retries: the driver gets ERROR 0x0100
/// naming ARM's answer, /readiness says no credential yet, the failures are counted; when ARM
/// answers again, the proxy serves without a restart.
#[tokio::test(flavor = "multi_thread")]
async fn lasting_arm_errors_give_0x0100_then_recover() {
    let a = Account::new(1, "armdown").await;
    a.azure.set_arm_failing(Some(ArmFault::Throttled {
        retry_after_secs: 1,
    }));
    let proxy = a
        .proxy()
        .args(["--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&[RETRYING, FETCH_FAILED, FAILED_SESSION])
        .spawn();
    let addr = proxy.addrs["cassandra"];
    let admin = proxy.admin.unwrap();

    let started = Instant::now();
    let (code, message) = startup(addr).await.expect_err("no key, no session");
    eprintln!("{code:#06x} after {:?}: {message}", started.elapsed());
    assert_eq!(code, 0x0100, "{message}");
    assert!(
        message.contains("could not obtain the password")
            && message.contains("answered HTTP 429: TooManyRequests")
            && message.contains("ARM kept throttling"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let (status, body) = http_get(admin, "/readiness").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no credential acquired yet"), "{body}");
    assert!(metric(admin, FAILURES, CQL).await >= 1.0);
    // Throttled requests were spaced by their Retry-After (1 s) within each fetch.
    let reqs = a.azure.arm_requests();
    assert!(reqs.len() >= 4, "{reqs:?}");
    assert!(reqs[1].at.duration_since(reqs[0].at) >= Duration::from_secs(1));

    a.azure.set_arm_failing(Some(ArmFault::Status(503)));
    let (code, message) = poll(
        "a 503 reaching the driver",
        Duration::from_secs(60),
        || async { startup(addr).await.err().filter(|(_, m)| m.contains("503")) },
    )
    .await;
    eprintln!("{code:#06x}: {message}");
    assert_eq!(code, 0x0100, "{message}");
    assert!(
        message.contains("answered HTTP 503: ServiceUnavailable")
            && message.contains("ARM kept failing"),
        "{message}"
    );

    a.azure.set_arm_failing(None);
    poll(
        "a session after ARM recovered",
        Duration::from_secs(60),
        || async { startup(addr).await.ok() },
    )
    .await;
    wait_status(admin, "/readiness", 200, Duration::from_secs(10)).await;
    assert!(metric(admin, REFRESHES, CQL).await >= 1.0);
    let session = SessionBuilder::new()
        .known_node(addr.to_string())
        .build()
        .await
        .unwrap();
    session
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .unwrap();
}

/// Entra hanging on the Cosmos DB path (the ARM token never comes): the driver gets ERROR
/// 0x0100 saying the key source timed out, within the handshake timeout, though a key fetch
/// may take minutes.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_arm_token_gives_0x0100_within_the_handshake_timeout() {
    let a = Account::new(1, "armtokenhang").await;
    a.azure
        .set_identity_hang(dbproxy_testkit::azure::Hang::NoAnswer);
    let proxy = a
        .proxy()
        .args(["--handshake-timeout", "3s", "--admin-listen", "127.0.0.1:0"])
        .expect_warnings(&[FAILED_SESSION])
        .spawn();
    let started = Instant::now();
    let (code, message) = startup(proxy.addrs["cassandra"])
        .await
        .expect_err("no key, no session");
    eprintln!("{code:#06x} after {:?}: {message}", started.elapsed());
    assert_eq!(code, 0x0100, "{message}");
    assert!(
        message.contains("Cosmos DB primary key from https://")
            && message.contains("timed out: no answer within 3s"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let (status, _) = http_get(proxy.admin.unwrap(), "/readiness").await;
    assert_eq!(status, 503);
    assert!(
        a.azure.arm_requests().is_empty(),
        "no token, no ARM request"
    );
}
