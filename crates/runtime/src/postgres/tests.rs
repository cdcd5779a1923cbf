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
    metrics::ListenerMetrics,
    stream::ClientStream,
    testutil::{MemoryUpstream, ScriptedPasswords},
};

const LIMIT: Duration = Duration::from_secs(10);

fn service(
    upstream: MemoryUpstream,
    credential: Arc<ScriptedPasswords>,
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
        local_tls: None,
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
async fn read_until_ready(app: &mut DuplexStream, n: usize) -> Vec<u8> {
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
