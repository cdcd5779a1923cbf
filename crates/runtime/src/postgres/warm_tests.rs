//! Warm sessions in memory: the hand-over applies the client's parameters before its
//! pipelined bytes (an `application_name` kept as sent after the greeting, checked; others
//! before it), and a session the server closed is never handed out.

use tokio_util::sync::CancellationToken;

use super::*;
use crate::postgres::{WarmPool, WarmSettings};

fn warm_service(upstream: MemoryUpstream) -> Arc<PostgresService<MemoryUpstream>> {
    Arc::new(PostgresService {
        name: "orders".into(),
        upstream,
        user: "entra-user".into(),
        default_database: Some("orders".into()),
        credential: ScriptedPasswords::new(&["token"]),
        handshake_timeout: Duration::from_secs(5),
        idle_timeout: None,
        metrics: ListenerMetrics::detached("orders", "postgres"),
        local_tls: None,
        warm: WarmPool::new(WarmSettings {
            sessions: 1,
            max_age: Duration::from_secs(300),
        }),
    })
}

/// The server side of a warm login: startup, cleartext password, the greeting, then the
/// priming round trip (Parse, Parse, Bind, Execute, Close, Sync: a setting read, nothing
/// changed). Returns the startup's parameters.
async fn serve_login(server: &mut DuplexStream) -> Vec<(String, String)> {
    let params = read_startup(server).await;
    server.write_all(&auth(3)).await.unwrap();
    assert_eq!(read_msg(server).await.0, b'p');
    server.write_all(&session_start()).await.unwrap();
    let mut tags = Vec::new();
    for _ in 0..6 {
        tags.push(read_msg(server).await.0);
    }
    assert_eq!(tags, b"PPBECS");
    for (tag, body) in [
        (b'1', &b""[..]),
        (b'1', b""),
        (b'2', b""),
        (b'D', b"\0\x01\0\0\0\0"),
        (b'C', b"SELECT 1\0"),
        (b'3', b""),
        (b'Z', b"I"),
    ] {
        server.write_all(&msg(tag, body)).await.unwrap();
    }
    params
}

async fn wait_ready(svc: &PostgresService<MemoryUpstream>) {
    tokio::time::timeout(LIMIT, async {
        while svc.warm.len() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a warm session ready");
}

/// The client's greeting messages up to ReadyForQuery, as (tag, body).
async fn read_greeting(app: &mut DuplexStream) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let m = read_msg(app).await;
        let done = m.0 == b'Z';
        out.push(m);
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn parameters_are_applied_before_the_pipelined_bytes() {
    let (upstream, mut rx) = MemoryUpstream::new();
    let svc = warm_service(upstream);
    let stop = CancellationToken::new();
    svc.spawn_warm(stop.clone());
    let mut server = rx.recv().await.unwrap();
    let warm_params = serve_login(&mut server).await;
    assert!(!warm_params.iter().any(|(n, _)| n == "application_name"));
    wait_ready(&svc).await;

    let (mut app, _task) = connect(&svc);
    let mut opening = startup("someone", "orders");
    opening.extend_from_slice(&msg(b'Q', b"select 1\0"));
    app.write_all(&opening).await.unwrap();

    // Parse, Bind, Execute (application_name), Close, Sync; then the pipelined query.
    let tags: Vec<u8> = {
        let mut tags = Vec::new();
        for _ in 0..5 {
            tags.push(read_msg(&mut server).await.0);
        }
        tags
    };
    assert_eq!(tags, b"PBECS");
    let mut answer = msg(b'1', b"");
    answer.extend_from_slice(&msg(b'2', b""));
    answer.extend_from_slice(&msg(b'D', b"\0\x01\0\0\0\x04unit"));
    answer.extend_from_slice(&msg(b'C', b"SELECT 1\0"));
    answer.extend_from_slice(&msg(b'S', b"application_name\0unit\0"));
    answer.extend_from_slice(&msg(b'3', b""));
    answer.extend_from_slice(&msg(b'Z', b"I"));
    server.write_all(&answer).await.unwrap();
    let (tag, body) = tokio::time::timeout(LIMIT, read_msg(&mut server))
        .await
        .unwrap();
    assert_eq!((tag, body.as_slice()), (b'Q', &b"select 1\0"[..]));

    // The client saw the login's greeting with the server's report for what was applied.
    let greeting = read_greeting(&mut app).await;
    let tags: Vec<u8> = greeting.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"RSSKZ");
    assert_eq!(greeting[1].1, b"server_version\x0015.0\x00");
    assert_eq!(greeting[2].1, b"application_name\0unit\0");
    assert_eq!(greeting[3].1, [0, 0, 0, 42, 0, 0, 0, 7]);
    stop.cancel();
}

#[tokio::test]
async fn a_session_the_server_closed_is_not_handed_out() {
    let (upstream, mut rx) = MemoryUpstream::new();
    let svc = warm_service(upstream);
    let stop = CancellationToken::new();
    svc.spawn_warm(stop.clone());
    let mut server = rx.recv().await.unwrap();
    serve_login(&mut server).await;
    wait_ready(&svc).await;
    drop(server);

    // The client's cold login is served; the pool's replacement (no application_name) never
    // gets an answer, so that the client cannot be handed a new warm session instead.
    tokio::spawn(async move {
        while let Some(mut s) = rx.recv().await {
            tokio::spawn(async move {
                let params = read_startup(&mut s).await;
                if params.iter().any(|(n, _)| n == "application_name") {
                    s.write_all(&auth(3)).await.unwrap();
                    assert_eq!(read_msg(&mut s).await.0, b'p');
                    s.write_all(&session_start()).await.unwrap();
                }
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
            });
        }
    });
    let (mut app, _task) = connect(&svc);
    app.write_all(&startup("someone", "orders")).await.unwrap();
    let greeting = tokio::time::timeout(LIMIT, read_greeting(&mut app))
        .await
        .unwrap();
    // The cold path: the server's greeting verbatim (no application_name report appended).
    let tags: Vec<u8> = greeting.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"RSKZ");
    stop.cancel();
}

/// A warm service with one ready session, the server side of that session, and a client that
/// sent a StartupMessage with `params` (user and database `orders` first) and a pipelined query.
async fn handed_over(
    params: &[(&str, &str)],
) -> (
    Arc<PostgresService<MemoryUpstream>>,
    CancellationToken,
    DuplexStream,
    DuplexStream,
) {
    let (upstream, mut rx) = MemoryUpstream::new();
    let svc = warm_service(upstream);
    let stop = CancellationToken::new();
    svc.spawn_warm(stop.clone());
    let mut server = rx.recv().await.unwrap();
    serve_login(&mut server).await;
    wait_ready(&svc).await;
    let (mut app, _task) = connect(&svc);
    let mut s = StartupMessage::new(ProtocolVersion::V3_0);
    s.set("user", "someone");
    s.set("database", "orders");
    for (n, v) in params {
        s.set(*n, *v);
    }
    let mut opening = BytesMut::new();
    messages::startup_message(&s, &mut opening).unwrap();
    opening.extend_from_slice(&msg(b'Q', b"select 1\0"));
    app.write_all(&opening).await.unwrap();
    let mut tags = Vec::new();
    for _ in 0..5 {
        tags.push(read_msg(&mut server).await.0);
    }
    assert_eq!(tags, b"PBECS", "the apply round trip");
    (svc, stop, server, app)
}

/// The server's answer to an apply of one setting that it reports as `name` = `value`.
fn apply_answer(name: &str, value: &str) -> BytesMut {
    let mut answer = msg(b'1', b"");
    answer.extend_from_slice(&msg(b'2', b""));
    answer.extend_from_slice(&msg(b'D', b"\0\x01\0\0\0\0"));
    answer.extend_from_slice(&msg(b'C', b"SELECT 1\0"));
    answer.extend_from_slice(&msg(b'S', format!("{name}\0{value}\0").as_bytes()));
    answer.extend_from_slice(&msg(b'3', b""));
    answer.extend_from_slice(&msg(b'Z', b"I"));
    answer
}

#[tokio::test]
async fn an_application_name_kept_as_sent_is_confirmed_after_the_client_has_its_greeting() {
    let (_svc, stop, mut server, mut app) = handed_over(&[("application_name", "pgbench")]).await;
    // The server has not answered the apply yet; the client already has its whole greeting,
    // with the report the server will make.
    let greeting = tokio::time::timeout(LIMIT, read_greeting(&mut app))
        .await
        .expect("the greeting before the apply's answer");
    let tags: Vec<u8> = greeting.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"RSSKZ");
    assert_eq!(greeting[2].1, b"application_name\0pgbench\0");
    server
        .write_all(&apply_answer("application_name", "pgbench"))
        .await
        .unwrap();
    // Only then is the client's query relayed, and the apply's answer never reaches it.
    let (tag, body) = tokio::time::timeout(LIMIT, read_msg(&mut server))
        .await
        .unwrap();
    assert_eq!((tag, body.as_slice()), (b'Q', &b"select 1\0"[..]));
    server.write_all(&msg(b'Z', b"I")).await.unwrap();
    assert_eq!(read_msg(&mut app).await, (b'Z', b"I".to_vec()));
    stop.cancel();
}

#[tokio::test]
async fn a_deferred_apply_the_server_reports_otherwise_ends_the_client_with_fatal() {
    let (_svc, stop, mut server, mut app) = handed_over(&[("application_name", "pgbench")]).await;
    let greeting = read_greeting(&mut app).await;
    assert_eq!(greeting[2].1, b"application_name\0pgbench\0");
    server
        .write_all(&apply_answer("application_name", "pgbenc?"))
        .await
        .unwrap();
    let (tag, body) = tokio::time::timeout(LIMIT, read_msg(&mut app))
        .await
        .unwrap();
    assert_eq!(tag, b'E');
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("SFATAL") && text.contains("C08006"), "{text}");
    assert!(text.contains("otherwise than predicted"), "{text}");
    // The client's query was never relayed: the session ends.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LIMIT, server.read_to_end(&mut rest)).await;
    assert!(
        !rest.windows(9).any(|w| w == b"select 1\0"),
        "query relayed"
    );
    stop.cancel();
}

#[tokio::test]
async fn other_parameters_are_applied_before_the_client_sees_its_greeting() {
    let (_svc, stop, mut server, mut app) = handed_over(&[("DateStyle", "ISO")]).await;
    // The server's report ("ISO, MDY", not the "ISO" sent) can only be in the greeting if the
    // answer was read before the greeting was made.
    server
        .write_all(&apply_answer("DateStyle", "ISO, MDY"))
        .await
        .unwrap();
    let greeting = read_greeting(&mut app).await;
    assert!(
        greeting.iter().any(|(_, b)| b == b"DateStyle\0ISO, MDY\0"),
        "{greeting:?}"
    );
    stop.cancel();
}
