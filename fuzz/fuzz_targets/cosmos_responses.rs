//! Cosmos DB specifics of `dbproxy_cassandra::cosmos`: the throttled-ERROR detection
//! (`rate_limit`), the request charge of a response's custom payload (`request_charge`, fed
//! every prefix of the body, as the relay reads it in place), and `RetryTracker` driven by a
//! conversation of requests, throttled and other answers.
//!
//! Byte 0 selects the mode (`% 4`); the rest is:
//! 0. an ERROR built from the bytes: byte 1 the frame flags (tracing, warning, custom payload
//!    prefixes are written), byte 2 the error code (and bit 4: a RESULT instead), byte 3 the
//!    body compression (none, lz4, snappy), byte 4 the message's start ("Request rate is
//!    large", "… TooManyRequests (429)", another), then the rest of the message;
//! 1. a raw response: byte 1 the flags, byte 2 the opcode, byte 3 the compression, then the
//!    body as it came (both functions on it);
//! 2. a custom payload built from the bytes: byte 1 the flags, byte 2 the entry count, each
//!    entry a key selector (RequestCharge, others, fuzz bytes) and a value selector (null, 8
//!    bytes, any length), then the rest of the body;
//! 3. `RetryTracker`: 4 bytes of policy (retries, total wait, fixed backoff, byte cap, each
//!    possibly unbounded), then commands `op, stream, arg`: a request (QUERY, EXECUTE, BATCH,
//!    PREPARE, OPTIONS; `arg` its size), a throttled answer (`arg`: no RetryAfterMs, small,
//!    u64::MAX, or more digits than a u64), another answer, or a forgotten stream.
//!
//! Invariants besides "no panic":
//! * `rate_limit` of a built ERROR is the model's answer (Overloaded with the rate-limit text,
//!   the wait read from the first `RetryAfterMs=` digits), whatever the prefixes and the
//!   compression; on a raw frame it answers only for an ERROR;
//! * `request_charge` of a built payload is the model's (the first `RequestCharge` entry, 8
//!   bytes, finite and non-negative); on any body, each prefix answers nothing or what the
//!   whole body answers, and an answer is finite and non-negative;
//! * `RetryTracker` agrees with a model of its budget: which requests are kept, the bytes
//!   held, each decision (Retry with the kept request and the wait, GiveUp, Relay), never
//!   more retries than `max_retries` nor a total wait above `max_wait`.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::{collections::HashMap, time::Duration};

use bytes::{BufMut, BytesMut};
use common::Bytes;
use dbproxy_cassandra::{
    BodyCompression, Frame, codes,
    cosmos::{RetryDecision, RetryPolicy, RetryTracker, rate_limit, request_charge},
    frame::{flags, opcode},
};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 20;
const PREFIXES: u8 = flags::TRACING | flags::WARNING | flags::CUSTOM_PAYLOAD;

fn put_string(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn compression(sel: u8) -> BodyCompression {
    match sel % 3 {
        0 => BodyCompression::None,
        1 => BodyCompression::Lz4,
        _ => BodyCompression::Snappy,
    }
}

/// The spec of the throttled ERROR: Some(wait) for Cosmos's rate limit.
fn model_rate_limit(code: i32, message: &str) -> Option<Option<Duration>> {
    if code != codes::OVERLOADED
        || !(message.starts_with("Request rate is large")
            || message.contains("TooManyRequests (429)"))
    {
        return None;
    }
    let Some(at) = message.find("RetryAfterMs=") else {
        return Some(None);
    };
    let digits: String = message[at + "RetryAfterMs=".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some(digits.parse::<u64>().ok().map(Duration::from_millis))
}

fn built_error(b: &mut Bytes) {
    let frame_flags = b.u8() & PREFIXES;
    let code_sel = b.u8();
    let comp = compression(b.u8());
    let start = match b.u8() % 4 {
        0 => "Request rate is large: ActivityID=a, RetryAfterMs=",
        1 => "Additional details='TooManyRequests (429)', ",
        2 => "Server is in overloaded state",
        _ => "",
    };
    let rest = b.take(usize::MAX);
    let mut message = String::from(start) + &String::from_utf8_lossy(rest);
    while message.len() > usize::from(u16::MAX) {
        message.pop();
    }
    let code = [
        codes::OVERLOADED,
        codes::OVERLOADED,
        codes::SERVER_ERROR,
        codes::IS_BOOTSTRAPPING,
    ][usize::from(code_sel % 4)];
    let op = if code_sel & 0x10 != 0 {
        opcode::RESULT
    } else {
        opcode::ERROR
    };
    let mut body = BytesMut::new();
    if frame_flags & flags::TRACING != 0 {
        body.put_slice(&[7; 16]);
    }
    if frame_flags & flags::WARNING != 0 {
        body.put_u16(1);
        put_string(&mut body, b"RetryAfterMs=1 TooManyRequests (429)");
    }
    if frame_flags & flags::CUSTOM_PAYLOAD != 0 {
        body.put_u16(1);
        put_string(&mut body, b"RequestCharge");
        body.put_i32(8);
        body.put_f64(1.5);
    }
    body.put_i32(code);
    put_string(&mut body, message.as_bytes());
    let (frame_flags, body) = match comp {
        BodyCompression::None => (frame_flags, body.freeze()),
        c => match c.compress(&body) {
            Ok(z) => (frame_flags | flags::COMPRESSION, z),
            Err(_) => return,
        },
    };
    let frame = Frame::new(4, true, frame_flags, 3, op, body);
    let expected = if op == opcode::ERROR {
        model_rate_limit(code, &message)
    } else {
        None
    };
    assert_eq!(rate_limit(&frame, comp, MAX), expected, "{message:?}");
}

/// Every prefix of `body` answers nothing or what the whole body answers.
fn charge_prefixes(frame: &Frame) -> Option<f64> {
    let full = request_charge(&frame.header, &frame.body);
    if let Some(c) = full {
        assert!(c.is_finite() && c >= 0.0, "charge {c}");
    }
    for n in 0..frame.body.len() {
        let p = request_charge(&frame.header, &frame.body[..n]);
        assert!(
            p.is_none() || p.map(f64::to_bits) == full.map(f64::to_bits),
            "prefix {n}: {p:?} vs {full:?}"
        );
    }
    full
}

fn raw_response(b: &mut Bytes) {
    let frame_flags = b.u8();
    let op = b.u8();
    let comp = compression(b.u8());
    let frame = Frame::new(4, true, frame_flags, 1, op, b.take(1024).to_vec());
    if rate_limit(&frame, comp, MAX).is_some() {
        assert_eq!(op, opcode::ERROR);
    }
    charge_prefixes(&frame);
}

fn built_payload(b: &mut Bytes) {
    let frame_flags = (b.u8() & (PREFIXES | flags::COMPRESSION)) | flags::CUSTOM_PAYLOAD;
    let mut body = BytesMut::new();
    if frame_flags & flags::TRACING != 0 {
        body.put_slice(&[1; 16]);
    }
    if frame_flags & flags::WARNING != 0 {
        body.put_u16(2);
        put_string(&mut body, b"a");
        put_string(&mut body, b"RequestCharge");
    }
    let n = b.u8() % 6;
    body.put_u16(u16::from(n));
    let mut expected: Option<Option<f64>> = None;
    for _ in 0..n {
        let key: &[u8] = match b.u8() % 4 {
            0 => b"RequestCharge",
            1 => b"foo",
            2 => b"requestcharge",
            _ => b.short_slice(),
        };
        put_string(&mut body, key);
        let value: Option<&[u8]> = match b.u8() % 3 {
            0 => None,
            1 => Some(b.take(8)),
            _ => Some(b.short_slice()),
        };
        match value {
            None => body.put_i32(-1),
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v);
            }
        }
        // A key that is no UTF-8 string ends the read: no charge.
        if std::str::from_utf8(key).is_err() && expected.is_none() {
            expected = Some(None);
        }
        if key == b"RequestCharge" && expected.is_none() {
            let charge = value
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(f64::from_be_bytes);
            expected = Some(charge.filter(|c| c.is_finite() && *c >= 0.0));
        }
    }
    body.put_slice(b.take(256));
    let frame = Frame::new(4, true, frame_flags, 1, opcode::RESULT, body.freeze());
    let expected = if frame_flags & flags::COMPRESSION != 0 {
        None
    } else {
        expected.flatten()
    };
    assert_eq!(
        charge_prefixes(&frame).map(f64::to_bits),
        expected.map(f64::to_bits)
    );
}

struct Kept {
    frame: Frame,
    retries: u32,
    waited: Duration,
}

fn retry_tracker(b: &mut Bytes) {
    let (r, w, f, c) = (b.u8(), b.u8(), b.u8(), b.u8());
    let policy = RetryPolicy {
        max_retries: if r == 0xff {
            u32::MAX
        } else {
            u32::from(r % 12)
        },
        max_wait: if w == 0xff {
            Duration::MAX
        } else {
            Duration::from_millis(u64::from(w) * 4)
        },
        fixed_backoff: if f == 0xff {
            Duration::MAX
        } else {
            Duration::from_millis(u64::from(f))
        },
        max_held_bytes: if c == 0xff {
            usize::MAX
        } else {
            usize::from(c) * 8
        },
    };
    let mut t = RetryTracker::new(policy);
    let mut model: HashMap<i16, Kept> = HashMap::new();
    let mut steps = 0;
    while !b.is_empty() && steps < 2000 {
        steps += 1;
        let (op, stream, arg) = (b.u8(), i16::from(b.u8() % 4), b.u8());
        match op % 4 {
            0 => {
                let code = [
                    opcode::QUERY,
                    opcode::EXECUTE,
                    opcode::BATCH,
                    opcode::PREPARE,
                    opcode::OPTIONS,
                ][usize::from(op >> 2) % 5];
                let frame = Frame::new(4, false, 0, stream, code, vec![arg; usize::from(arg)]);
                model.remove(&stream);
                let held: usize = model.values().map(|k| k.frame.encoded_len()).sum();
                let keep = policy.max_retries > 0
                    && matches!(code, opcode::QUERY | opcode::EXECUTE | opcode::BATCH)
                    && held
                        .checked_add(frame.encoded_len())
                        .is_some_and(|n| n <= policy.max_held_bytes);
                assert_eq!(t.on_request(&frame), keep);
                if keep {
                    model.insert(
                        stream,
                        Kept {
                            frame,
                            retries: 0,
                            waited: Duration::ZERO,
                        },
                    );
                }
            }
            1 => {
                let (text, wait) = match arg % 4 {
                    0 => (
                        "Request rate is large: TooManyRequests (429)".to_owned(),
                        None,
                    ),
                    1 => (
                        format!("Request rate is large: RetryAfterMs={arg}, x"),
                        Some(u64::from(arg)),
                    ),
                    2 => (
                        format!("TooManyRequests (429) RetryAfterMs={}", u64::MAX),
                        Some(u64::MAX),
                    ),
                    _ => (
                        "Request rate is large: RetryAfterMs=184467440737095516150".to_owned(),
                        None,
                    ),
                };
                let after = wait.map_or(policy.fixed_backoff, Duration::from_millis);
                let answer = dbproxy_cassandra::error_frame(4, stream, codes::OVERLOADED, &text);
                let decision = t.on_response(&answer, BodyCompression::None, MAX);
                let expected = match model.get_mut(&stream) {
                    None => RetryDecision::GiveUp,
                    Some(k) => match k.waited.checked_add(after) {
                        Some(total)
                            if k.retries < policy.max_retries && total <= policy.max_wait =>
                        {
                            k.retries += 1;
                            k.waited = total;
                            RetryDecision::Retry {
                                after,
                                frame: k.frame.clone(),
                            }
                        }
                        _ => {
                            model.remove(&stream);
                            RetryDecision::GiveUp
                        }
                    },
                };
                assert_eq!(decision, expected);
            }
            2 => {
                let answer = if arg & 1 == 0 {
                    Frame::new(4, true, 0, stream, opcode::RESULT, vec![0, 0, 0, 1])
                } else {
                    dbproxy_cassandra::error_frame(
                        4,
                        stream,
                        codes::OVERLOADED,
                        "Server is in overloaded state",
                    )
                };
                assert_eq!(
                    t.on_response(&answer, BodyCompression::None, MAX),
                    RetryDecision::Relay
                );
                model.remove(&stream);
            }
            _ => {
                t.forget(stream);
                model.remove(&stream);
            }
        }
        let held: usize = model.values().map(|k| k.frame.encoded_len()).sum();
        assert_eq!(t.held_bytes(), held);
        assert!(held <= policy.max_held_bytes);
        for k in model.values() {
            assert!(k.retries <= policy.max_retries && k.waited <= policy.max_wait);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    match b.u8() % 4 {
        0 => built_error(&mut b),
        1 => raw_response(&mut b),
        2 => built_payload(&mut b),
        _ => retry_tracker(&mut b),
    }
});
