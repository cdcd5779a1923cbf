use bytes::{BufMut, BytesMut};

use super::*;
use crate::messages::error_frame;

const RATE: &str = "Request rate is large: ActivityID=0a1b, RetryAfterMs=12, Additional details='Response status code does not indicate success: TooManyRequests (429); Substatus: 3200; ActivityId: 0a1b; Reason: ({ \"Errors\": [ \"Request rate is large.\" ] });";

fn query(stream: i16) -> Frame {
    let mut body = BytesMut::new();
    body.put_i32(8);
    body.put_slice(b"SELECT 1");
    body.put_u16(1);
    body.put_u8(0);
    Frame::new(4, false, 0, stream, opcode::QUERY, body.freeze())
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_retries: 2,
        max_wait: Duration::from_millis(100),
        fixed_backoff: Duration::from_millis(30),
        max_held_bytes: 1024,
    }
}

#[test]
fn recognises_cosmos_rate_limiting_only() {
    let f = error_frame(4, 3, codes::OVERLOADED, RATE);
    assert_eq!(
        rate_limit(&f, BodyCompression::None, 1 << 20),
        Some(Some(Duration::from_millis(12)))
    );
    let no_wait = error_frame(
        4,
        3,
        codes::OVERLOADED,
        "Request rate is large: ActivityID=x, Additional details='TooManyRequests (429)",
    );
    assert_eq!(
        rate_limit(&no_wait, BodyCompression::None, 1 << 20),
        Some(None)
    );
    // Cassandra's own Overloaded, another code, a RESULT: not rate limiting.
    let busy = error_frame(4, 3, codes::OVERLOADED, "Server is in overloaded state");
    assert_eq!(rate_limit(&busy, BodyCompression::None, 1 << 20), None);
    let other = error_frame(4, 3, codes::SERVER_ERROR, RATE);
    assert_eq!(rate_limit(&other, BodyCompression::None, 1 << 20), None);
    let result = Frame::new(4, true, 0, 3, opcode::RESULT, vec![0, 0, 0, 1]);
    assert_eq!(rate_limit(&result, BodyCompression::None, 1 << 20), None);
    // Garbage in an ERROR body is not a rate limit (and no panic).
    let garbage = Frame::new(4, true, 0, 3, opcode::ERROR, vec![0, 0, 0x10, 1, 0xff]);
    assert_eq!(rate_limit(&garbage, BodyCompression::None, 1 << 20), None);
}

fn with_payload(flags_extra: u8, charge: &[u8], rest: &[u8]) -> (FrameHeader, Vec<u8>) {
    let mut body = BytesMut::new();
    if flags_extra & flags::WARNING != 0 {
        body.put_u16(1);
        body.put_u16(4);
        body.put_slice(b"warn");
    }
    body.put_u16(2);
    body.put_u16(3);
    body.put_slice(b"foo");
    body.put_i32(1);
    body.put_u8(9);
    body.put_u16(13);
    body.put_slice(b"RequestCharge");
    body.put_i32(charge.len() as i32);
    body.put_slice(charge);
    body.put_slice(rest);
    let f = Frame::new(
        4,
        true,
        flags::CUSTOM_PAYLOAD | flags_extra,
        1,
        opcode::RESULT,
        body.freeze(),
    );
    (f.header, f.body.to_vec())
}

#[test]
fn reads_the_request_charge_in_place() {
    let (h, body) = with_payload(0, &2.79f64.to_be_bytes(), &[0, 0, 0, 1]);
    assert_eq!(request_charge(&h, &body), Some(2.79));
    let (h, body) = with_payload(flags::WARNING, &5.5f64.to_be_bytes(), &[]);
    assert_eq!(request_charge(&h, &body), Some(5.5));
    // Cut off, wrong size, negative, no flag: nothing.
    assert_eq!(request_charge(&h, &body[..body.len() - 3]), None);
    let (h, body) = with_payload(0, &[1, 2, 3], &[]);
    assert_eq!(request_charge(&h, &body), None);
    let (h, body) = with_payload(0, &(-1.0f64).to_be_bytes(), &[]);
    assert_eq!(request_charge(&h, &body), None);
    let plain = FrameHeader { flags: 0, ..h };
    assert_eq!(request_charge(&plain, &body), None);
}

#[test]
fn retries_within_the_budget_then_gives_up() {
    let mut t = RetryTracker::new(policy());
    let q = query(5);
    assert!(t.on_request(&q));
    let throttled = error_frame(4, 5, codes::OVERLOADED, RATE);
    for _ in 0..2 {
        match t.on_response(&throttled, BodyCompression::None, 1 << 20) {
            RetryDecision::Retry { after, frame } => {
                assert_eq!(after, Duration::from_millis(12));
                assert_eq!(frame, q);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        t.on_response(&throttled, BodyCompression::None, 1 << 20),
        RetryDecision::GiveUp
    );
    assert_eq!(t.held_bytes(), 0);
}

#[test]
fn the_total_wait_bounds_retries() {
    // No RetryAfterMs: the fixed 30 ms each time; 10 retries allowed, but only 3 × 30 ms fit
    // in 100 ms.
    let mut t = RetryTracker::new(RetryPolicy {
        max_retries: 10,
        ..policy()
    });
    assert!(t.on_request(&query(1)));
    let f = error_frame(
        4,
        1,
        codes::OVERLOADED,
        "Request rate is large: TooManyRequests (429)",
    );
    let mut retries = 0;
    while let RetryDecision::Retry { after, .. } = t.on_response(&f, BodyCompression::None, 1 << 20)
    {
        assert_eq!(after, Duration::from_millis(30));
        retries += 1;
    }
    assert_eq!(retries, 3);
    assert_eq!(t.held_bytes(), 0);
}

#[test]
fn keeps_only_retryable_requests_within_the_cap() {
    let mut t = RetryTracker::new(policy());
    let prepare = Frame::new(4, false, 0, 2, opcode::PREPARE, vec![0; 10]);
    assert!(!t.on_request(&prepare));
    let big = Frame::new(4, false, 0, 3, opcode::QUERY, vec![0; 2000]);
    assert!(!t.on_request(&big));
    // Not kept: a rate limit on its stream is relayed.
    let throttled = error_frame(4, 3, codes::OVERLOADED, RATE);
    assert_eq!(
        t.on_response(&throttled, BodyCompression::None, 1 << 20),
        RetryDecision::GiveUp
    );
    assert!(t.on_request(&query(4)));
    assert!(t.held_bytes() > 0);
    // Any other response releases it.
    let ok = Frame::new(4, true, 0, 4, opcode::RESULT, vec![0, 0, 0, 1]);
    assert_eq!(
        t.on_response(&ok, BodyCompression::None, 1 << 20),
        RetryDecision::Relay
    );
    assert_eq!(t.held_bytes(), 0);
    // Retries off: nothing kept.
    let mut off = RetryTracker::new(RetryPolicy {
        max_retries: 0,
        ..policy()
    });
    assert!(!off.on_request(&query(1)));
}

#[test]
fn cosmos_hosts() {
    assert!(is_cosmos_host("acct.cassandra.cosmos.azure.com"));
    assert!(is_cosmos_host("ACCT.Cassandra.Cosmos.Azure.Com."));
    assert!(!is_cosmos_host("127.0.0.1"));
    assert!(!is_cosmos_host("cosmos.azure.com.evil.example"));
}

/// An unbounded budget (any number of retries, `Duration::MAX` in total) and the largest
/// waits: the sum of the waits used to overflow (`Duration + Duration` panics); the request
/// now gives up when the next wait no longer fits.
#[test]
fn unbounded_budgets_do_not_overflow_the_total_wait() {
    let unbounded = RetryPolicy {
        max_retries: u32::MAX,
        max_wait: Duration::MAX,
        fixed_backoff: Duration::MAX,
        max_held_bytes: usize::MAX,
    };
    // RetryAfterMs = u64::MAX: 1000 of them are exactly u64::MAX seconds, the 1001st overflows.
    let mut t = RetryTracker::new(unbounded);
    assert!(t.on_request(&query(7)));
    let huge = error_frame(
        4,
        7,
        codes::OVERLOADED,
        "Request rate is large: ActivityID=x, RetryAfterMs=18446744073709551615, TooManyRequests (429)",
    );
    let mut retries = 0u32;
    while let RetryDecision::Retry { after, .. } =
        t.on_response(&huge, BodyCompression::None, 1 << 20)
    {
        assert_eq!(after, Duration::from_millis(u64::MAX));
        retries += 1;
        assert!(retries <= 1000, "retried past the total wait");
    }
    assert_eq!(retries, 1000);
    assert_eq!(t.held_bytes(), 0);
    // No RetryAfterMs and a fixed backoff of Duration::MAX: one retry, then the second wait
    // would overflow.
    let mut t = RetryTracker::new(unbounded);
    assert!(t.on_request(&query(8)));
    let no_wait = error_frame(4, 8, codes::OVERLOADED, "Request rate is large");
    assert!(matches!(
        t.on_response(&no_wait, BodyCompression::None, 1 << 20),
        RetryDecision::Retry {
            after: Duration::MAX,
            ..
        }
    ));
    assert_eq!(
        t.on_response(&no_wait, BodyCompression::None, 1 << 20),
        RetryDecision::GiveUp
    );
    assert_eq!(t.held_bytes(), 0);
}
