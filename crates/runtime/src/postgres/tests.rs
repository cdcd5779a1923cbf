//! Whole PostgreSQL sessions in memory: the client and the upstream are `tokio::io::duplex`
//! pipes, the upstream a scripted fake server; no socket is opened.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use bytes::{BufMut, BytesMut};
use dbproxy_postgres::{
    ProtocolVersion,
    messages::{self, ErrorFields},
    startup::StartupMessage,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::PostgresService;
use crate::{
    listener::Service,
    local_tls::{LocalTls, LocalTlsMode},
    metrics::ListenerMetrics,
    stream::ClientStream,
    testutil::{MemoryUpstream, ScriptedPasswords},
};

const LIMIT: Duration = Duration::from_secs(10);

fn service(
    upstream: MemoryUpstream,
    credential: Arc<ScriptedPasswords>,
) -> Arc<PostgresService<MemoryUpstream>> {
    service_with(upstream, credential, None)
}

fn service_with(
    upstream: MemoryUpstream,
    credential: Arc<ScriptedPasswords>,
    local_tls: Option<LocalTls>,
) -> Arc<PostgresService<MemoryUpstream>> {
    Arc::new(PostgresService {
        name: "orders".into(),
        upstream,
        user: "entra-user".into(),
        default_database: Some("orders".into()),
        credential,
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: None,
        metrics: ListenerMetrics::detached("orders", "postgres"),
        local_tls,
        warm: Default::default(),
    })
}

/// Starts serving one in-memory client; returns the app's end and the session task.
fn connect(
    svc: &Arc<PostgresService<MemoryUpstream>>,
) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (app, proxy_side) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(
        svc.clone()
            .serve(ClientStream::Memory(proxy_side), "memory".into()),
    );
    (app, task)
}

fn startup(user: &str, database: &str) -> BytesMut {
    let mut msg = StartupMessage::new(ProtocolVersion::V3_0);
    msg.set("user", user);
    msg.set("database", database);
    msg.set("application_name", "unit");
    let mut buf = BytesMut::new();
    messages::startup_message(&msg, &mut buf).unwrap();
    buf
}

/// A tagged message: tag, length, body.
fn msg(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_i32(body.len() as i32 + 4);
    b.put_slice(body);
    b
}

fn auth(code: i32) -> BytesMut {
    msg(b'R', &code.to_be_bytes())
}

fn error(code: &'static str, text: &str) -> BytesMut {
    let mut b = BytesMut::new();
    messages::error_response(&ErrorFields::fatal(code, text), &mut b);
    b
}

/// What a server says after AuthenticationOk.
fn session_start() -> BytesMut {
    let mut b = auth(0);
    b.extend_from_slice(&msg(b'S', b"server_version\x0015.0\x00"));
    b.extend_from_slice(&msg(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]));
    b.extend_from_slice(&msg(b'Z', b"I"));
    b
}

async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> (u8, Vec<u8>) {
    let tag = r.read_u8().await.unwrap();
    let len = r.read_i32().await.unwrap();
    let mut body = vec![0; len as usize - 4];
    r.read_exact(&mut body).await.unwrap();
    (tag, body)
}

/// The server side of a StartupMessage: its `name\0value\0` pairs.
async fn read_startup(r: &mut DuplexStream) -> Vec<(String, String)> {
    let len = r.read_i32().await.unwrap();
    let mut body = vec![0; len as usize - 4];
    r.read_exact(&mut body).await.unwrap();
    let fields: Vec<String> = body[4..]
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    fields
        .chunks(2)
        .filter(|c| c.len() == 2 && !c[0].is_empty())
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect()
}

/// Reads the client's messages up to and including the `n`th ReadyForQuery.
async fn read_until_ready<R: AsyncRead + Unpin>(app: &mut R, n: usize) -> Vec<u8> {
    let mut tags = Vec::new();
    while tags.iter().filter(|t| **t == b'Z').count() < n {
        tags.push(read_msg(app).await.0);
    }
    tags
}

#[tokio::test]
async fn refused_token_is_replaced_and_the_pipelined_query_is_answered() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let connects = upstream.connects.clone();
    let credential = ScriptedPasswords::new(&["stale", "fresh"]);
    let svc = service(upstream, credential.clone());
    let server = tokio::spawn(async move {
        // First connection: the stale token is refused as Azure refuses it.
        let mut s = servers.recv().await.unwrap();
        let params = read_startup(&mut s).await;
        assert!(
            params.contains(&("user".into(), "entra-user".into())),
            "{params:?}"
        );
        assert!(
            params.contains(&("database".into(), "orders".into())),
            "{params:?}"
        );
        s.write_all(&auth(3)).await.unwrap();
        assert_eq!(read_msg(&mut s).await, (b'p', b"stale\0".to_vec()));
        s.write_all(&error("28P01", "password authentication failed"))
            .await
            .unwrap();
        drop(s);
        // Second: the fresh one is accepted; the client's pipelined query follows.
        let mut s = servers.recv().await.unwrap();
        read_startup(&mut s).await;
        s.write_all(&auth(3)).await.unwrap();
        assert_eq!(read_msg(&mut s).await, (b'p', b"fresh\0".to_vec()));
        s.write_all(&session_start()).await.unwrap();
        assert_eq!(read_msg(&mut s).await, (b'Q', b"SELECT 1\0".to_vec()));
        let mut answer = msg(b'C', b"SELECT 1\0");
        answer.extend_from_slice(&msg(b'Z', b"I"));
        s.write_all(&answer).await.unwrap();
        assert_eq!(read_msg(&mut s).await.0, b'X');
    });

    let (mut app, session) = connect(&svc);
    let mut opening = startup("app", "orders");
    opening.extend_from_slice(&msg(b'Q', b"SELECT 1\0"));
    app.write_all(&opening).await.unwrap();
    let tags = tokio::time::timeout(LIMIT, read_until_ready(&mut app, 2))
        .await
        .unwrap();
    assert_eq!(tags, b"RSKZCZ");
    app.write_all(&msg(b'X', b"")).await.unwrap();
    drop(app);
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    assert_eq!(credential.rejections.load(Ordering::SeqCst), 1);
    assert_eq!(connects.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn other_refusals_reach_the_client_verbatim_without_a_retry() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let connects = upstream.connects.clone();
    let credential = ScriptedPasswords::new(&["token", "another"]);
    let svc = service(upstream, credential.clone());
    let refusal = error("3D000", "database \"nope\" does not exist");
    let sent = refusal.clone();
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        read_startup(&mut s).await;
        s.write_all(&sent).await.unwrap();
    });
    let (mut app, session) = connect(&svc);
    app.write_all(&startup("app", "nope")).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, app.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, refusal.to_vec());
    server.await.unwrap();
    session.await.unwrap();
    assert_eq!(credential.rejections.load(Ordering::SeqCst), 0);
    assert_eq!(connects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_second_refusal_of_the_credential_is_final() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let credential = ScriptedPasswords::new(&["one", "two", "three"]);
    let svc = service(upstream, credential.clone());
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let mut s = servers.recv().await.unwrap();
            read_startup(&mut s).await;
            s.write_all(&auth(3)).await.unwrap();
            read_msg(&mut s).await;
            s.write_all(&error("28P01", "password authentication failed"))
                .await
                .unwrap();
        }
    });
    let (mut app, session) = connect(&svc);
    app.write_all(&startup("app", "orders")).await.unwrap();
    let (tag, body) = tokio::time::timeout(LIMIT, read_msg(&mut app))
        .await
        .unwrap();
    assert_eq!(tag, b'E');
    assert!(String::from_utf8_lossy(&body).contains("28P01"));
    server.await.unwrap();
    session.await.unwrap();
    assert_eq!(credential.rejections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_broken_startup_gets_a_protocol_violation_and_no_upstream() {
    let (upstream, _servers) = MemoryUpstream::new();
    let connects = upstream.connects.clone();
    let svc = service(upstream, ScriptedPasswords::new(&["token"]));
    let (mut app, session) = connect(&svc);
    // Length 6: shorter than any startup packet can be.
    app.write_all(&[0, 0, 0, 6, 0, 3]).await.unwrap();
    let (tag, body) = tokio::time::timeout(LIMIT, read_msg(&mut app))
        .await
        .unwrap();
    assert_eq!(tag, b'E');
    assert!(String::from_utf8_lossy(&body).contains("08P01"), "{body:?}");
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    assert_eq!(connects.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_server_breaking_the_login_protocol_gives_08001() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let svc = service(upstream, ScriptedPasswords::new(&["token"]));
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        read_startup(&mut s).await;
        // A DataRow during login.
        s.write_all(&msg(b'D', &[0, 0])).await.unwrap();
        s
    });
    let (mut app, session) = connect(&svc);
    app.write_all(&startup("app", "orders")).await.unwrap();
    let (tag, body) = tokio::time::timeout(LIMIT, read_msg(&mut app))
        .await
        .unwrap();
    assert_eq!(tag, b'E');
    assert!(String::from_utf8_lossy(&body).contains("08001"), "{body:?}");
    drop(server.await.unwrap());
    session.await.unwrap();
}

#[tokio::test]
async fn cancel_requests_are_forwarded_as_sent() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let svc = service(upstream, ScriptedPasswords::new(&["token"]));
    let mut cancel = BytesMut::new();
    messages::cancel_request(42, &[0, 0, 0, 7], &mut cancel);
    let expected = cancel.to_vec();
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        let mut got = vec![0; expected.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
    });
    let (mut app, session) = connect(&svc);
    app.write_all(&cancel).await.unwrap();
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
}

#[test]
fn only_refusals_of_the_token_count_as_credential_refusals() {
    use super::login::refuses_the_token;
    assert!(refuses_the_token(
        "28P01",
        "password authentication failed for user \"a\""
    ));
    assert!(refuses_the_token(
        "28000",
        "The access token has expired. Please acquire a new token and retry."
    ));
    assert!(refuses_the_token(
        "28000",
        "The access token does not have a valid audience claim."
    ));
    assert!(!refuses_the_token(
        "28000",
        "pg_hba.conf rejects connection for host \"127.0.0.1\", user \"u\", database \"d\", SSL encryption"
    ));
    assert!(!refuses_the_token("28000", "role \"u\" does not exist"));
    assert!(!refuses_the_token("3D000", "database \"d\" does not exist"));
}

/// The upstream's view of a StartupMessage, bytes as sent: `(name, value)` pairs.
async fn read_startup_raw(r: &mut DuplexStream) -> Vec<(Vec<u8>, Vec<u8>)> {
    let len = r.read_i32().await.unwrap();
    let mut body = vec![0; len as usize - 4];
    r.read_exact(&mut body).await.unwrap();
    let fields: Vec<&[u8]> = body[4..].split(|b| *b == 0).collect();
    fields
        .chunks(2)
        .filter(|c| c.len() == 2 && !c[0].is_empty())
        .map(|c| (c[0].to_vec(), c[1].to_vec()))
        .collect()
}

#[tokio::test]
async fn non_utf8_startup_values_go_upstream_as_sent() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let svc = service(upstream, ScriptedPasswords::new(&["token"]));
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        let params = read_startup_raw(&mut s).await;
        s.write_all(&session_start()).await.unwrap();
        params
    });
    let (mut app, session) = connect(&svc);
    let mut opening = StartupMessage::new(ProtocolVersion::V3_0);
    opening.set("user", &b"ren\xe9"[..]);
    opening.set("database", "orders");
    opening.set("application_name", &b"caf\xe9 \xff"[..]);
    let mut bytes = BytesMut::new();
    messages::startup_message(&opening, &mut bytes).unwrap();
    app.write_all(&bytes).await.unwrap();
    let tags = tokio::time::timeout(LIMIT, read_until_ready(&mut app, 1))
        .await
        .unwrap();
    assert_eq!(tags, b"RSKZ");
    let params = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    assert_eq!(
        params,
        vec![
            (b"user".to_vec(), b"entra-user".to_vec()),
            (b"database".to_vec(), b"orders".to_vec()),
            (b"application_name".to_vec(), b"caf\xe9 \xff".to_vec()),
        ]
    );
    drop(app);
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
}

/// What libpq's `sslmode=require` does: encrypt, verify nothing.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client offering these ALPN protocols.
fn tls_client(alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let provider = dbproxy_tls::provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn localhost() -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::try_from("localhost").unwrap()
}

fn tls(mode: LocalTlsMode) -> Option<LocalTls> {
    let mut tls = LocalTls::self_signed().unwrap();
    tls.mode = mode;
    Some(tls)
}

/// An upstream that takes one login and answers it.
fn one_login(
    mut servers: tokio::sync::mpsc::UnboundedReceiver<DuplexStream>,
) -> tokio::task::JoinHandle<Vec<(String, String)>> {
    tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        let params = read_startup(&mut s).await;
        s.write_all(&session_start()).await.unwrap();
        // Hold the upstream until the proxy lets go.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        params
    })
}

#[tokio::test]
async fn direct_tls_with_alpn_postgresql_is_served() {
    for mode in [LocalTlsMode::Offer, LocalTlsMode::Require] {
        let (upstream, servers) = MemoryUpstream::new();
        let svc = service_with(upstream, ScriptedPasswords::new(&["token"]), tls(mode));
        let server = one_login(servers);
        let (app, session) = connect(&svc);
        // No SSLRequest: the ClientHello is the first thing sent.
        let mut app = tls_client(&[b"postgresql"])
            .connect(localhost(), app)
            .await
            .unwrap();
        assert_eq!(app.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
        app.write_all(&startup("app", "orders")).await.unwrap();
        let tags = tokio::time::timeout(LIMIT, read_until_ready(&mut app, 1))
            .await
            .unwrap();
        assert_eq!(tags, b"RSKZ", "{mode:?}");
        app.write_all(&msg(b'X', b"")).await.unwrap();
        drop(app);
        let params = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
        assert!(params.contains(&("user".into(), "entra-user".into())));
        tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn direct_tls_without_alpn_is_closed_without_a_word() {
    let (upstream, _servers) = MemoryUpstream::new();
    let connects = upstream.connects.clone();
    let svc = service_with(
        upstream,
        ScriptedPasswords::new(&["token"]),
        tls(LocalTlsMode::Offer),
    );
    let (app, session) = connect(&svc);
    // The handshake itself succeeds (no ALPN offered, none selected), as with PostgreSQL 17.
    let mut app = tls_client(&[]).connect(localhost(), app).await.unwrap();
    assert_eq!(app.get_ref().1.alpn_protocol(), None);
    let _ = app.write_all(&startup("app", "orders")).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(LIMIT, app.read_to_end(&mut got))
        .await
        .unwrap();
    assert!(got.is_empty(), "nothing is sent: {got:?}");
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    assert_eq!(connects.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn tls_offering_only_other_alpn_protocols_is_refused() {
    // Both negotiations, as PostgreSQL 17's ALPN callback refuses them.
    for ssl_request in [false, true] {
        let (upstream, _servers) = MemoryUpstream::new();
        let connects = upstream.connects.clone();
        let svc = service_with(
            upstream,
            ScriptedPasswords::new(&["token"]),
            tls(LocalTlsMode::Offer),
        );
        let (mut app, session) = connect(&svc);
        if ssl_request {
            let mut req = BytesMut::new();
            messages::ssl_request(&mut req);
            app.write_all(&req).await.unwrap();
            assert_eq!(app.read_u8().await.unwrap(), b'S');
        }
        // rustls sans-IO, so that the alert is read even though the proxy then closes.
        let config = tls_client(&[b"h2", b"http/1.1"]).config().clone();
        let mut tls = rustls::ClientConnection::new(config, localhost()).unwrap();
        let mut hello = Vec::new();
        tls.write_tls(&mut hello).unwrap();
        app.write_all(&hello).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(LIMIT, app.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        // TLS 1.3: ALPN belongs in EncryptedExtensions, so the ServerHello is out before rustls
        // refuses; the alert it queues then does not reach the client through tokio-rustls
        // (here, or over TCP: tests/direct_tls.rs). local_tls.rs checks the alert itself,
        // sans-IO. Either way the handshake never completes.
        tls.read_tls(&mut answer.as_slice()).unwrap();
        match tls.process_new_packets() {
            Err(e) => assert_eq!(
                e,
                rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol),
                "{ssl_request}"
            ),
            Ok(_) => assert!(tls.is_handshaking(), "{ssl_request}"),
        }
        tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
        assert_eq!(connects.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test]
async fn ssl_request_selects_alpn_postgresql_and_serves_clients_without_alpn() {
    for alpn in [&[&b"postgresql"[..]][..], &[]] {
        let (upstream, servers) = MemoryUpstream::new();
        let svc = service_with(
            upstream,
            ScriptedPasswords::new(&["token"]),
            tls(LocalTlsMode::Require),
        );
        let server = one_login(servers);
        let (mut app, session) = connect(&svc);
        let mut req = BytesMut::new();
        messages::ssl_request(&mut req);
        app.write_all(&req).await.unwrap();
        assert_eq!(app.read_u8().await.unwrap(), b'S');
        let mut app = tls_client(alpn).connect(localhost(), app).await.unwrap();
        assert_eq!(
            app.get_ref().1.alpn_protocol(),
            alpn.first().copied(),
            "selected iff offered"
        );
        app.write_all(&startup("app", "orders")).await.unwrap();
        let tags = tokio::time::timeout(LIMIT, read_until_ready(&mut app, 1))
            .await
            .unwrap();
        assert_eq!(tags, b"RSKZ");
        drop(app);
        tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
        tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn direct_tls_to_a_listener_without_tls_is_closed_without_a_word() {
    let (upstream, _servers) = MemoryUpstream::new();
    let connects = upstream.connects.clone();
    let svc = service(upstream, ScriptedPasswords::new(&["token"]));
    let (app, session) = connect(&svc);
    let connecting = tls_client(&[b"postgresql"]).connect(localhost(), app);
    let Err(err) = tokio::time::timeout(LIMIT, connecting)
        .await
        .expect("no hang")
    else {
        panic!("accepted");
    };
    // The proxy closed the connection: the client saw the end of the stream, no answer.
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    assert_eq!(connects.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_direct_tls_handshake_ends_at_the_handshake_timeout() {
    let (upstream, _servers) = MemoryUpstream::new();
    let svc = service_with(
        upstream,
        ScriptedPasswords::new(&["token"]),
        tls(LocalTlsMode::Offer),
    );
    let (mut app, session) = connect(&svc);
    // The first bytes of a ClientHello record, then nothing.
    app.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap();
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), session)
        .await
        .expect("the session ends")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    let mut got = Vec::new();
    app.read_to_end(&mut got).await.unwrap();
    assert!(got.is_empty(), "{got:?}");
}

#[path = "warm_tests.rs"]
mod warm;
