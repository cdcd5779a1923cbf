//! A Cosmos DB listener's relay in memory: throttled requests resent on their stream after
//! the wait without holding up other streams, the budget, and the request charge.

use bytes::{BufMut, BytesMut};
use dbproxy_cassandra::{
    Frame, codes, cosmos::RetryPolicy, error_frame, frame::flags, frame::opcode,
    schema::query_frame,
};
use tokio::io::{AsyncWriteExt, DuplexStream};

use super::{LIMIT, logged_in as ready_session, read_frame, response, service, upstream_login};
use crate::{
    cassandra::{CassandraService, Cosmos},
    metrics::Metrics,
    testutil::{MemoryUpstream, ScriptedPasswords},
};

fn rate_limited(stream: i16, ms: u64) -> BytesMut {
    let message = format!(
        "Request rate is large: ActivityID=5c1e, RetryAfterMs={ms}, Additional details='Response status code does not indicate success: TooManyRequests (429); Substatus: 3200; ActivityId: 5c1e; Reason: ({{ \"Errors\": [ \"Request rate is large.\" ] }});"
    );
    error_frame(4, stream, codes::OVERLOADED, &message).to_bytes()
}

/// A RESULT Void with a `RequestCharge` custom payload.
fn charged_result(stream: i16, charge: f64) -> BytesMut {
    charged(stream, charge, &[0, 0, 0, 1])
}

/// A RESULT whose body is `result` (after the header), behind a `RequestCharge` custom payload.
fn charged(stream: i16, charge: f64, result: &[u8]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u16(1);
    body.put_u16(13);
    body.put_slice(b"RequestCharge");
    body.put_i32(8);
    body.put_f64(charge);
    body.put_slice(result);
    Frame::new(
        4,
        true,
        flags::CUSTOM_PAYLOAD,
        stream,
        opcode::RESULT,
        body.freeze(),
    )
    .to_bytes()
}

fn cosmos_service(
    upstream: MemoryUpstream,
    retry: RetryPolicy,
) -> (std::sync::Arc<CassandraService<MemoryUpstream>>, Metrics) {
    let svc = service(upstream, ScriptedPasswords::new(&["token"]));
    let mut svc = std::sync::Arc::into_inner(svc).unwrap();
    let metrics = Metrics::new();
    svc.cosmos = Some(Cosmos {
        retry: Some(retry),
        metrics: metrics.cosmos("catalog"),
    });
    (std::sync::Arc::new(svc), metrics)
}

async fn logged_in(s: &mut DuplexStream) {
    upstream_login(s).await;
    s.write_all(&response(0, opcode::AUTH_SUCCESS, &[0xff; 4]))
        .await
        .unwrap();
}

fn metric(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.encode();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{listener=\"catalog\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

#[tokio::test]
async fn throttled_requests_are_resent_on_their_stream_and_others_go_on() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let (svc, metrics) = cosmos_service(upstream, RetryPolicy::default());
    let mut both = query_frame(4, 1, "INSERT INTO ks.t (k) VALUES (1)").to_bytes();
    both.extend_from_slice(&query_frame(4, 2, "SELECT k FROM ks.t").to_bytes());
    let (got_2, mut got_2_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        logged_in(&mut s).await;
        let (stream, _, first) = read_frame(&mut s).await;
        assert_eq!(stream, 1);
        // Stream 1 is throttled for a second; stream 2 is answered at once.
        s.write_all(&rate_limited(1, 1000)).await.unwrap();
        let (stream, _, _) = read_frame(&mut s).await;
        assert_eq!(stream, 2);
        s.write_all(&charged_result(2, 1.5)).await.unwrap();
        // The driver has stream 2's answer before stream 1 is resent: a proxy that waited
        // out stream 1's delay before relaying stream 2 would have resent it by now.
        (&mut got_2_rx).await.unwrap();
        tokio::select! {
            biased;
            _ = read_frame(&mut s) => panic!("stream 1 resent before stream 2 was relayed"),
            _ = std::future::ready(()) => {}
        }
        // Then stream 1's request comes again, byte for byte.
        let (stream, _, again) = read_frame(&mut s).await;
        assert_eq!((stream, &again), (1, &first));
        s.write_all(&charged_result(1, 2.25)).await.unwrap();
        s
    });
    let (mut app, _session) = ready_session(&svc).await;
    app.write_all(&both).await.unwrap();
    let (stream, op, _) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!((stream, op), (2, opcode::RESULT));
    got_2.send(()).unwrap();
    let (stream, op, _) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!(
        (stream, op),
        (1, opcode::RESULT),
        "the driver never sees the 429"
    );
    let _s = server.await.unwrap();
    let p = "entra_db_proxy_cosmos";
    assert_eq!(metric(&metrics, &format!("{p}_throttled_total")), 1.0);
    assert_eq!(metric(&metrics, &format!("{p}_retried_total")), 1.0);
    assert_eq!(metric(&metrics, &format!("{p}_given_up_total")), 0.0);
    assert_eq!(
        metric(&metrics, &format!("{p}_retry_wait_seconds_total")),
        1.0
    );
    assert_eq!(metric(&metrics, &format!("{p}_request_units_total")), 3.75);
}

#[tokio::test]
async fn past_the_budget_the_original_error_reaches_the_driver() {
    let (upstream, mut servers) = MemoryUpstream::new();
    let policy = RetryPolicy {
        max_retries: 2,
        ..RetryPolicy::default()
    };
    let (svc, metrics) = cosmos_service(upstream, policy);
    let original = rate_limited(4, 10);
    let sent = original.clone();
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        logged_in(&mut s).await;
        for _ in 0..3 {
            let (stream, op, _) = read_frame(&mut s).await;
            assert_eq!((stream, op), (4, opcode::QUERY));
            s.write_all(&sent).await.unwrap();
        }
        // An Overloaded that is not Cosmos rate limiting passes untouched, never retried.
        let (stream, _, _) = read_frame(&mut s).await;
        assert_eq!(stream, 5);
        s.write_all(
            &error_frame(4, 5, codes::OVERLOADED, "Server is in overloaded state").to_bytes(),
        )
        .await
        .unwrap();
        s
    });
    let (mut app, _session) = ready_session(&svc).await;
    app.write_all(&query_frame(4, 4, "SELECT 1").to_bytes())
        .await
        .unwrap();
    let (stream, op, body) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!((stream, op), (4, opcode::ERROR));
    assert_eq!(body, original[9..], "Cosmos's own error, unchanged");
    app.write_all(&query_frame(4, 5, "SELECT 2").to_bytes())
        .await
        .unwrap();
    let (stream, op, body) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!((stream, op), (5, opcode::ERROR));
    assert!(String::from_utf8_lossy(&body).contains("Server is in overloaded state"));
    let _s = server.await.unwrap();
    let p = "entra_db_proxy_cosmos";
    assert_eq!(metric(&metrics, &format!("{p}_throttled_total")), 3.0);
    assert_eq!(metric(&metrics, &format!("{p}_retried_total")), 2.0);
    assert_eq!(metric(&metrics, &format!("{p}_given_up_total")), 1.0);
}

/// Cosmos's rate limit also meets the proxy's own schema-version queries after a DDL: the poll
/// waits as told and asks again on the same control connection, the DDL's RESULT is held
/// until the versions agree (not released early with a warning), and the charges of these
/// queries count in the listener's request units.
#[tokio::test]
async fn a_throttled_schema_poll_is_asked_again() {
    use super::{answer_poll, schema_change, versions_result};
    let (upstream, mut servers) = MemoryUpstream::new();
    let connects = upstream.connects.clone();
    let (svc, metrics) = cosmos_service(upstream, RetryPolicy::default());
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        logged_in(&mut s).await;
        assert_eq!(read_frame(&mut s).await.0, 10);
        s.write_all(&schema_change(10)).await.unwrap();
        let mut c = servers.recv().await.unwrap();
        logged_in(&mut c).await;
        let (stream, op, _) = read_frame(&mut c).await;
        assert_eq!(op, opcode::QUERY);
        c.write_all(&rate_limited(stream, 20)).await.unwrap();
        answer_poll(&mut c, 1, 2).await;
        // The last poll's answers carry request charges, as every Cosmos response does.
        for charge in [0.5, 0.75] {
            let (stream, _, _) = read_frame(&mut c).await;
            c.write_all(&charged(stream, charge, &versions_result(stream, 3)[9..]))
                .await
                .unwrap();
        }
        (s, c)
    });
    let (mut app, _session) = ready_session(&svc).await;
    app.write_all(&query_frame(4, 10, "CREATE TABLE ks.t (k int PRIMARY KEY)").to_bytes())
        .await
        .unwrap();
    let (stream, op, body) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .unwrap();
    assert_eq!(
        (stream, op, body[..4].to_vec()),
        (10, opcode::RESULT, vec![0, 0, 0, 5])
    );
    let _conns = tokio::time::timeout(LIMIT, server)
        .await
        .expect("the throttled poll was asked again until the versions agreed")
        .unwrap();
    assert_eq!(
        connects.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one session, one control connection"
    );
    // The proxy's own queries cost request units too: they are counted.
    assert_eq!(
        metric(&metrics, "entra_db_proxy_cosmos_request_units_total"),
        1.25
    );
}

/// A driver that sends its last request and half-closes still gets the answer, and what the
/// answer was charged counts: the relay lets the upstream's answers through after the client's
/// side ends (until the upstream closes too, at most a short linger).
#[tokio::test]
async fn after_a_half_close_the_answer_still_arrives_and_is_counted() {
    use tokio::io::AsyncReadExt;
    let (upstream, mut servers) = MemoryUpstream::new();
    let (svc, metrics) = cosmos_service(upstream, RetryPolicy::default());
    let server = tokio::spawn(async move {
        let mut s = servers.recv().await.unwrap();
        logged_in(&mut s).await;
        assert_eq!(read_frame(&mut s).await.0, 3);
        // The proxy passed the client's end on; the answer comes after it.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        s.write_all(&charged_result(3, 4.5)).await.unwrap();
        s
    });
    let (mut app, session) = ready_session(&svc).await;
    app.write_all(&query_frame(4, 3, "INSERT INTO ks.t (k) VALUES (3)").to_bytes())
        .await
        .unwrap();
    app.shutdown().await.unwrap();
    let (stream, op, _) = tokio::time::timeout(LIMIT, read_frame(&mut app))
        .await
        .expect("the answer after the half-close");
    assert_eq!((stream, op), (3, opcode::RESULT));
    let s = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    drop(s);
    tokio::time::timeout(LIMIT, session).await.unwrap().unwrap();
    assert_eq!(
        metric(&metrics, "entra_db_proxy_cosmos_request_units_total"),
        4.5
    );
}
