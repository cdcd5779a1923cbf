//! Whole CQL sessions in memory: the driver and the upstream are `tokio::io::duplex` pipes, the
//! upstream a scripted fake Cassandra with PasswordAuthenticator; no socket is opened.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use bytes::{BufMut, BytesMut};
use dbproxy_cassandra::{
    Frame, PreparedStatements, SupportedOptions, Topology, codes, error_frame, frame::opcode,
    messages, schema::query_frame,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::CassandraService;
use crate::{
    listener::Service,
    metrics::ListenerMetrics,
    stream::ClientStream,
    testutil::{MemoryUpstream, ScriptedPasswords},
};

mod cosmos;

const LIMIT: Duration = Duration::from_secs(10);

fn service(
    upstream: MemoryUpstream,
    credential: Arc<ScriptedPasswords>,
) -> Arc<CassandraService<MemoryUpstream>> {
    service_capped(upstream, credential, super::DEFAULT_MAX_FRAME_SIZE)
}

fn service_capped(
    upstream: MemoryUpstream,
    credential: Arc<ScriptedPasswords>,
    max_frame_size: usize,
) -> Arc<CassandraService<MemoryUpstream>> {
    Arc::new(CassandraService {
        name: "catalog".into(),
        upstream,
        username: "catalog".into(),
        credential,
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: None,
        metrics: ListenerMetrics::detached("catalog", "cassandra"),
        max_version: 4,
        supported: SupportedOptions::default(),
        topology: Topology {
            listen: ([127, 0, 0, 1], 9042).into(),
            host_id: uuid::Uuid::nil(),
            data_center: None,
            rack: None,
        },
        prepared: PreparedStatements::new(),
        local_tls: None,
        max_frame_size,
        cosmos: None,
        schema: Default::default(),
    })
}

fn connect(
    svc: &Arc<CassandraService<MemoryUpstream>>,
) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (app, proxy_side) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(
        svc.clone()
            .serve(ClientStream::Memory(proxy_side), "memory".into()),
    );
    (app, task)
}

/// Reads one legacy-framed frame: (stream, opcode, body).
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> (i16, u8, Vec<u8>) {
    let mut header = [0u8; 9];
    r.read_exact(&mut header).await.unwrap();
    let stream = i16::from_be_bytes([header[2], header[3]]);
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let mut body = vec![0; len];
    r.read_exact(&mut body).await.unwrap();
    (stream, header[4], body)
}

fn response(stream: i16, op: u8, body: &[u8]) -> BytesMut {
    Frame::new(4, true, 0, stream, op, body.to_vec()).to_bytes()
}

fn authenticate() -> BytesMut {
    let class = b"org.apache.cassandra.auth.PasswordAuthenticator";
    let mut body = BytesMut::new();
    body.put_u16(class.len() as u16);
    body.put_slice(class);
    response(0, opcode::AUTHENTICATE, &body)
}

/// The fake upstream's side of a login: STARTUP, AUTHENTICATE, AUTH_RESPONSE; returns the
/// SASL PLAIN token.
async fn upstream_login(s: &mut DuplexStream) -> Vec<u8> {
    let (_, op, _) = read_frame(s).await;
    assert_eq!(op, opcode::STARTUP);
    s.write_all(&authenticate()).await.unwrap();
    let (_, op, body) = read_frame(s).await;
    assert_eq!(op, opcode::AUTH_RESPONSE);
    body[4..].to_vec()
}

fn startup(stream: i16) -> BytesMut {
    messages::startup_frame(4, stream, &[("CQL_VERSION", "3.0.0")]).to_bytes()
}

#[tokio::test]
async fn refused_key_is_replaced_and_the_session_relays() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let connects = upstream.connects.clone();
    let credential = ScriptedPasswords::new(&["old-key", "new-key"]);
    let svc = service(upstream, credential.clone());
    let server = tokio::spawn(async move {
        // First connection: the old key is refused (key rotation).
        let mut s = servers.recv().await.unwrap();
        assert_eq!(upstream_login(&mut s).await, b"\0catalog\0old-key");
        let refusal = error_frame(
            4,
            0,
            codes::BAD_CREDENTIALS,
            "Provided username and/or password are incorrect",
        );
        let mut out = BytesMut::new();
        refusal.encode(&mut out);
        s.write_all(&out).await.unwrap();
        drop(s);
        // Second: the new key is accepted; the driver's pipelined QUERY follows.
        let mut s = servers.recv().await.unwrap();
        assert_eq!(upstream_login(&mut s).await, b"\0catalog\0new-key");
        s.write_all(&response(
            0,
            opcode::AUTH_SUCCESS,
            &[0xff, 0xff, 0xff, 0xff],
        ))
        .await
        .unwrap();
        let (stream, op, _) = read_frame(&mut s).await;
        assert_eq!((stream, op), (3, opcode::QUERY));
        s.write_all(&response(3, opcode::RESULT, &[0, 0, 0, 1]))
            .await
            .unwrap();
        // The driver closes; so does the upstream side.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    });

    let (mut app, session) = connect(&svc);
    let options = Frame::new(4, false, 0, 1, opcode::OPTIONS, Vec::new()).to_bytes();
    app.write_all(&options).await.unwrap();
    let (stream, op, _) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!((stream, op), (1, opcode::SUPPORTED));
    let mut opening = startup(2);
    opening.extend_from_slice(&query_frame(4, 3, "SELECT v FROM ks.t").to_bytes());
    app.write_all(&opening).await.unwrap();
    let (stream, op, _) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!((stream, op), (2, opcode::READY));
    let (stream, op, body) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!((stream, op, body), (3, opcode::RESULT, vec![0, 0, 0, 1]));
    drop(app);
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    assert_eq!(credential.rejections.load(Ordering::SeqCst), 1);
    assert_eq!(connects.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn other_refusals_reach_the_driver_on_its_stream() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let connects = upstream.connects.clone();
    let credential = ScriptedPasswords::new(&["key", "other"]);
    let svc = service(upstream, credential.clone());
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        let (_, op, _) = read_frame(&mut s).await;
        assert_eq!(op, opcode::STARTUP);
        let refusal = error_frame(4, 0, codes::PROTOCOL_ERROR, "Unknown compression algorithm");
        let mut out = BytesMut::new();
        refusal.encode(&mut out);
        s.write_all(&out).await.unwrap();
    });
    let (mut app, session) = connect(&svc);
    app.write_all(&startup(7)).await.unwrap();
    let (stream, op, body) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!((stream, op), (7, opcode::ERROR));
    assert_eq!(body[..4], codes::PROTOCOL_ERROR.to_be_bytes());
    server.await.unwrap();
    session.await.unwrap();
    assert_eq!(credential.rejections.load(Ordering::SeqCst), 0);
    assert_eq!(connects.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn garbage_after_ready_gets_an_error_and_never_reaches_the_upstream() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let svc = service(upstream, ScriptedPasswords::new(&["key"]));
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        upstream_login(&mut s).await;
        s.write_all(&response(
            0,
            opcode::AUTH_SUCCESS,
            &[0xff, 0xff, 0xff, 0xff],
        ))
        .await
        .unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        // The garbage did not reach it.
        assert!(rest.is_empty(), "{rest:?}");
    });
    let (mut app, session) = connect(&svc);
    app.write_all(&startup(0)).await.unwrap();
    let (_, op, _) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!(op, opcode::READY);
    // A frame with version byte 0x42.
    app.write_all(&[0x42, 0, 0, 9, 7, 0, 0, 0, 0])
        .await
        .unwrap();
    let (_, op, body) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!(op, opcode::ERROR);
    assert_eq!(body[..4], codes::PROTOCOL_ERROR.to_be_bytes());
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    drop(app);
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn versions_above_the_maximum_are_refused_for_a_downgrade() {
    let (upstream, _servers) = MemoryUpstream::new();
    let connects = upstream.connects.clone();
    let svc = service(upstream, ScriptedPasswords::new(&["key"]));
    let (mut app, session) = connect(&svc);
    app.write_all(&messages::startup_frame(5, 0, &[("CQL_VERSION", "3.0.0")]).to_bytes())
        .await
        .unwrap();
    let (_, op, body) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!(op, opcode::ERROR);
    assert_eq!(body[..4], codes::PROTOCOL_ERROR.to_be_bytes());
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    assert_eq!(connects.load(Ordering::SeqCst), 0);
}

/// Logs in a session whose upstream answers AUTH_SUCCESS; returns the driver's end after READY.
async fn logged_in(
    svc: &Arc<CassandraService<MemoryUpstream>>,
) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (mut app, session) = connect(svc);
    app.write_all(&startup(0)).await.unwrap();
    let (_, op, _) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!(op, opcode::READY);
    (app, session)
}

async fn accept_login(s: &mut DuplexStream) {
    upstream_login(s).await;
    s.write_all(&response(
        0,
        opcode::AUTH_SUCCESS,
        &[0xff, 0xff, 0xff, 0xff],
    ))
    .await
    .unwrap();
}

fn error_message(body: &[u8]) -> (i32, String) {
    dbproxy_cassandra::messages::parse_error(body).unwrap()
}

#[tokio::test]
async fn an_oversized_request_is_refused_like_cassandra_and_the_session_goes_on() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let svc = service_capped(upstream, ScriptedPasswords::new(&["key"]), 64 * 1024);
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        accept_login(&mut s).await;
        // Only the request after the oversized one arrives.
        let (stream, op, _) = read_frame(&mut s).await;
        assert_eq!((stream, op), (6, opcode::QUERY));
        s.write_all(&response(6, opcode::RESULT, &[0, 0, 0, 1]))
            .await
            .unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "{} more bytes reached the upstream",
            rest.len()
        );
    });
    let (mut app, session) = logged_in(&svc).await;
    // A QUERY announcing 1 MiB (over the 64 KiB cap), sent in full, then a normal one.
    let announced = 1024 * 1024;
    let mut header = BytesMut::new();
    dbproxy_cassandra::FrameHeader {
        version: 4,
        response: false,
        flags: 0,
        stream: 5,
        opcode: opcode::QUERY,
        body_len: announced,
    }
    .encode(&mut header);
    let writer = tokio::spawn(async move {
        app.write_all(&header).await.unwrap();
        let chunk = vec![0x55u8; 32 * 1024];
        for _ in 0..(announced as usize / chunk.len()) {
            app.write_all(&chunk).await.unwrap();
        }
        app.write_all(&query_frame(4, 6, "SELECT v FROM ks.t").to_bytes())
            .await
            .unwrap();
        app
    });
    let mut app = tokio::time::timeout(LIMIT, writer).await.unwrap().unwrap();
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(
            tokio::time::timeout(LIMIT, read_frame(&mut app))
                .await
                .unwrap(),
        );
    }
    answers.sort_by_key(|(stream, _, _)| *stream);
    let (stream, op, body) = &answers[0];
    assert_eq!((*stream, *op), (5, opcode::ERROR));
    assert_eq!(
        error_message(body),
        (
            codes::INVALID,
            "Request is too big: length 1048585 exceeds maximum allowed length 65536.".into()
        )
    );
    assert_eq!(answers[1], (6, opcode::RESULT, vec![0, 0, 0, 1]));
    drop(app);
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_oversized_upstream_frame_closes_the_session_with_an_error() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let svc = service_capped(upstream, ScriptedPasswords::new(&["key"]), 64 * 1024);
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        accept_login(&mut s).await;
        let (stream, op, _) = read_frame(&mut s).await;
        assert_eq!((stream, op), (3, opcode::QUERY));
        // A RESULT header announcing 200 MiB, and a little of its body.
        let mut out = BytesMut::new();
        dbproxy_cassandra::FrameHeader {
            version: 4,
            response: true,
            flags: 0,
            stream: 3,
            opcode: opcode::RESULT,
            body_len: 200 << 20,
        }
        .encode(&mut out);
        out.extend_from_slice(&[0u8; 1000]);
        let _ = s.write_all(&out).await;
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let (mut app, session) = logged_in(&svc).await;
    app.write_all(&query_frame(4, 3, "SELECT v FROM ks.t").to_bytes())
        .await
        .unwrap();
    let (stream, op, body) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!((stream, op), (3, opcode::ERROR));
    let (code, message) = error_message(&body);
    assert_eq!(code, codes::SERVER_ERROR);
    assert!(message.contains("max_frame_size"), "{message}");
    // Then the session is closed.
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, app.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
}

fn put_string(b: &mut BytesMut, s: &str) {
    b.put_u16(s.len() as u16);
    b.put_slice(s.as_bytes());
}

/// A Rows RESULT with one uuid column holding `version`.
fn versions_result(stream: i16, version: u8) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i32(2);
    body.put_i32(0x0001);
    body.put_i32(1);
    put_string(&mut body, "system");
    put_string(&mut body, "local");
    put_string(&mut body, "schema_version");
    body.put_u16(0x000C);
    body.put_i32(1);
    body.put_i32(16);
    body.put_slice(&[version; 16]);
    response(stream, opcode::RESULT, &body)
}

fn schema_change(stream: i16) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i32(5);
    for s in ["CREATED", "TABLE", "ks", "t"] {
        put_string(&mut body, s);
    }
    response(stream, opcode::RESULT, &body)
}

/// The fake upstream's side of one schema poll: `system.local`, then `system.peers`.
async fn answer_poll(c: &mut DuplexStream, local: u8, peers: u8) {
    for version in [local, peers] {
        let (stream, op, _) = read_frame(c).await;
        assert_eq!(op, opcode::QUERY);
        c.write_all(&versions_result(stream, version))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_ddl_result_waits_for_agreement_without_holding_other_streams() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let connects = upstream.connects.clone();
    let svc = service(upstream, ScriptedPasswords::new(&["key"]));
    let (agree, agreed) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let ok = response(0, opcode::AUTH_SUCCESS, &[0xff, 0xff, 0xff, 0xff]);
        let mut s = servers.recv().await.unwrap();
        upstream_login(&mut s).await;
        s.write_all(&ok).await.unwrap();
        // The DDL, then a query on another stream.
        assert_eq!(read_frame(&mut s).await.0, 10);
        s.write_all(&schema_change(10)).await.unwrap();
        assert_eq!(read_frame(&mut s).await.0, 11);
        s.write_all(&response(11, opcode::RESULT, &[0, 0, 0, 1]))
            .await
            .unwrap();
        // The listener's control connection: the nodes disagree until the test says so.
        let mut c = servers.recv().await.unwrap();
        upstream_login(&mut c).await;
        c.write_all(&ok).await.unwrap();
        answer_poll(&mut c, 1, 2).await;
        agreed.await.unwrap();
        answer_poll(&mut c, 3, 3).await;
        // A second DDL is checked over the same control connection.
        assert_eq!(read_frame(&mut s).await.0, 12);
        s.write_all(&schema_change(12)).await.unwrap();
        answer_poll(&mut c, 4, 4).await;
        (s, c, servers)
    });
    let (mut app, session) = connect(&svc);
    app.write_all(&startup(0)).await.unwrap();
    let (_, op, _) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!(op, opcode::READY);
    let mut requests = query_frame(4, 10, "CREATE TABLE ks.t (id int PRIMARY KEY)").to_bytes();
    requests.extend_from_slice(&query_frame(4, 11, "SELECT id FROM ks.t").to_bytes());
    app.write_all(&requests).await.unwrap();
    // The other stream's answer is not held behind the DDL's.
    let (stream, _, _) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!(stream, 11);
    agree.send(()).unwrap();
    let (stream, op, body) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!(
        (stream, op, body[..4].to_vec()),
        (10, opcode::RESULT, vec![0, 0, 0, 5])
    );
    app.write_all(&query_frame(4, 12, "CREATE TABLE ks.u (id int PRIMARY KEY)").to_bytes())
        .await
        .unwrap();
    let (stream, _, _) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!(stream, 12);
    let (_s, _c, _servers) = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    assert_eq!(
        connects.load(Ordering::SeqCst),
        2,
        "one session, one control connection"
    );
    drop(app);
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_large_result_is_relayed_as_it_arrives_and_the_proxys_own_answers_wait_for_its_end() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let svc = service_capped(upstream, ScriptedPasswords::new(&["key"]), 1024 * 1024);
    // A 512 KiB RESULT on stream 5, sent in two parts.
    let body: Vec<u8> = (0..512 * 1024).map(|i| (i % 253) as u8).collect();
    let result = response(5, opcode::RESULT, &body);
    let (first, rest) = result.split_at(200 * 1024);
    let (first, rest) = (first.to_vec(), rest.to_vec());
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        accept_login(&mut s).await;
        assert_eq!(read_frame(&mut s).await.0, 5);
        s.write_all(&first).await.unwrap();
        // The request after the oversized one: by now the proxy has queued its ERROR for the
        // oversized one, while the RESULT is half relayed.
        assert_eq!(read_frame(&mut s).await.0, 7);
        s.write_all(&rest).await.unwrap();
        s.write_all(&response(7, opcode::RESULT, &[0, 0, 0, 1]))
            .await
            .unwrap();
        s
    });
    let (mut app, session) = logged_in(&svc).await;
    app.write_all(&query_frame(4, 5, "SELECT v FROM ks.big").to_bytes())
        .await
        .unwrap();
    // Most of the first part reaches the driver before the upstream has sent the rest.
    let mut got = vec![0u8; 150 * 1024];
    tokio::time::timeout(LIMIT, app.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    // An oversized request (answered by the proxy itself), then a normal one.
    let mut oversized = BytesMut::new();
    dbproxy_cassandra::FrameHeader {
        version: 4,
        response: false,
        flags: 0,
        stream: 6,
        opcode: opcode::QUERY,
        body_len: 2 * 1024 * 1024,
    }
    .encode(&mut oversized);
    let (mut reader, mut writer) = tokio::io::split(app);
    let write = tokio::spawn(async move {
        writer.write_all(&oversized).await.unwrap();
        writer.write_all(&vec![0u8; 2 * 1024 * 1024]).await.unwrap();
        writer
            .write_all(&query_frame(4, 7, "SELECT v FROM ks.t").to_bytes())
            .await
            .unwrap();
        writer
    });
    let mut whole = got;
    let mut tail = vec![0u8; result.len() - whole.len()];
    tokio::time::timeout(LIMIT, reader.read_exact(&mut tail))
        .await
        .unwrap()
        .unwrap();
    whole.extend_from_slice(&tail);
    assert!(
        whole == result[..],
        "the RESULT arrives byte for byte, uninterrupted"
    );
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(
            tokio::time::timeout(LIMIT, read_frame(&mut reader))
                .await
                .unwrap(),
        );
    }
    answers.sort_by_key(|(stream, _, _)| *stream);
    assert_eq!((answers[0].0, answers[0].1), (6, opcode::ERROR));
    assert_eq!(error_message(&answers[0].2).0, codes::INVALID);
    assert_eq!(answers[1], (7, opcode::RESULT, vec![0, 0, 0, 1]));
    let writer = tokio::time::timeout(LIMIT, write).await.unwrap().unwrap();
    drop(reader.unsplit(writer));
    drop(tokio::time::timeout(LIMIT, server).await.unwrap().unwrap());
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
}

#[tokio::test]
async fn bytes_that_are_not_cql_get_unsupported_version_not_frame_too_large() {
    let (upstream, _servers) = MemoryUpstream::new();
    let svc = service(upstream, ScriptedPasswords::new(&["key"]));
    let (mut app, session) = connect(&svc);
    // 'G' (0x47) as a version byte; "TTP/" as a length of 541 MB.
    app.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (stream, op, body) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!((stream, op), (0x5420, opcode::ERROR));
    let (code, message) = error_message(&body);
    assert_eq!(code, codes::PROTOCOL_ERROR);
    assert!(
        message.starts_with("Invalid or unsupported protocol version (71)"),
        "{message}"
    );
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
}
