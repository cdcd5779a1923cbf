use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stack::{self, FAILED_SESSION, Stack, db_error, psql};

#[tokio::test(flavor = "multi_thread")]
async fn entra_down_gives_28000_then_recovers() {
    let s = Stack::start().await;
    s.azure.set_down(true);
    let proxy = s
        .proxy_sp()
        .expect_warnings(&["access token acquisition failed", FAILED_SESSION])
        .spawn();
    let err = stack::connect(proxy.port()).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("Entra ID token"), "{message}");
    assert!(message.contains("credential"), "{message}");

    s.azure.set_down(false);
    // The cache retries with backoff; the proxy serves again without a restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match stack::connect(proxy.port()).await {
            Ok(c) => {
                c.simple_query("select 1").await.unwrap();
                break;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(db_error(&e).0, "28000");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("still failing after Entra came back: {e:#}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_certificate_for_the_wrong_name_is_refused() {
    let s = Stack::start().await;
    let proxy = s
        .proxy_sp()
        .args(["--tls-server-name", "wrong.example.com"])
        .expect_warnings(&[FAILED_SESSION])
        .spawn();
    let err = stack::connect(proxy.port()).await.unwrap_err();
    let (code, message) = db_error(&err);
    assert_eq!(code, "08001", "{message}");
    assert!(
        message.contains("TLS handshake") && message.contains("certificate"),
        "{message}"
    );
    assert!(
        message.contains("tls.server_name"),
        "the hint says what to check: {message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_certificates_are_refused_upstream_and_at_entra() {
    let s = Stack::start().await;
    // Trust another CA only: neither the database nor the (HTTPS) token endpoint verifies.
    let other = dbproxy_testkit::certs::TestCa::new("someone else");
    let other_file = s.dir.join("other-ca.pem");
    other.write_ca(&other_file);

    let proxy = s
        .proxy_sp()
        .env("SSL_CERT_FILE", other_file.to_str().unwrap())
        .expect_warnings(&["access token acquisition failed", FAILED_SESSION])
        .spawn();
    let (code, message) = db_error(&stack::connect(proxy.port()).await.unwrap_err());
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("invalid peer certificate"), "{message}");
    drop(proxy);

    // With a managed identity (plain http on the host), the database's certificate is the one refused.
    let proxy = s
        .proxy()
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", s.azure.imds_url())
        .args(["--credential", "managed-identity"])
        .env("SSL_CERT_FILE", other_file.to_str().unwrap())
        .expect_warnings(&[FAILED_SESSION])
        .spawn();
    let (code, message) = db_error(&stack::connect(proxy.port()).await.unwrap_err());
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains("certificate"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_file_flag_adds_to_the_os_roots() {
    let s = Stack::start().await;
    // No SSL_CERT_FILE: OS roots plus --ca-file (which also covers the fake Entra's HTTPS).
    let mut cmd = s
        .proxy_sp()
        .args(["--ca-file", s.ca_file.to_str().unwrap()]);
    cmd.env.retain(|(k, _)| k != "SSL_CERT_FILE");
    let proxy = cmd.spawn();
    assert_eq!(psql(proxy.port(), "select 1").trim(), "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_unreachable_gives_08001() {
    let s = Stack::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut cmd = s.proxy_sp();
    let i = cmd
        .args
        .iter()
        .position(|a| a == "--postgres-upstream")
        .unwrap();
    cmd.args[i + 1] = format!("127.0.0.1:{port}");
    let proxy = cmd.expect_warnings(&[FAILED_SESSION]).spawn();
    let (code, message) = db_error(&stack::connect(proxy.port()).await.unwrap_err());
    assert_eq!(code, "08001", "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
}

/// Reads everything until EOF (with a bound), as a misbehaving client would see it.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
        .await
        .expect("the proxy must close the connection");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_gets_an_error_response_and_others_keep_working() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().expect_warnings(&[FAILED_SESSION]).spawn();
    let port = proxy.port();
    // One good session stays open across the bad clients.
    let good = stack::connect(port).await.unwrap();

    // An HTTP request instead of a startup packet: length word way over the limit.
    let mut bad = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = read_to_close(&mut bad).await;
    assert_eq!(reply.first(), Some(&b'E'), "an ErrorResponse: {reply:?}");
    assert!(
        String::from_utf8_lossy(&reply).contains("08P01"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    // Protocol 2.0: refused in protocol 2's error format, which such a client can read.
    let mut old = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    old.write_all(&[0, 0, 0, 8, 0, 2, 0, 0]).await.unwrap();
    let reply = read_to_close(&mut old).await;
    assert!(
        String::from_utf8_lossy(&reply).starts_with("EFATAL:  unsupported frontend protocol 2.0"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    // A truncated startup, then silence: the handshake timeout closes it (we don't wait for
    // that here; the next client must be served meanwhile).
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    slow.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap();

    assert_eq!(psql(port, "select 1").trim(), "1");
    let n: i32 = good.query_one("select 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 42);
    drop(slow);
}

#[tokio::test(flavor = "multi_thread")]
async fn handshake_timeout_closes_silent_clients() {
    let s = Stack::start().await;
    let proxy = s
        .proxy_sp()
        .args(["--handshake-timeout", "1"])
        .expect_warnings(&[FAILED_SESSION])
        .spawn();
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .unwrap();
    silent.write_all(&[0, 0]).await.unwrap();
    let reply = read_to_close(&mut silent).await;
    assert!(
        reply.is_empty(),
        "nothing to say to a client that never spoke: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_request_cancels_a_running_query() {
    let s = Stack::start().await;
    let proxy = s.proxy_sp().spawn();
    let client = stack::connect(proxy.port()).await.unwrap();
    let cancel = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    // Cancel only once the query runs upstream (a cancel that arrives first cancels nothing).
    stack::wait_until_running(&s, "select pg_sleep(30)").await;
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(15), sleeper)
        .await
        .expect("the cancelled query must end well before 30 s")
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014", "{err:#}");
}
