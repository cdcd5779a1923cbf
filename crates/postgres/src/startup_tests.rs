//! Unit tests of [`super`]: every startup packet kind, the limits, and the errors.

use super::*;
use crate::sqlstate;
use bytes::BufMut;

/// A raw startup packet: length word, code, body.
fn packet(code: u32, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32((body.len() + 8) as u32);
    buf.put_u32(code);
    buf.put_slice(body);
    buf
}

fn startup_bytes(code: u32, params: &[(&str, &str)]) -> BytesMut {
    let mut body = Vec::new();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    packet(code, &body)
}

fn parse_all(bytes: &[u8]) -> Result<Option<StartupPacket>, ProtocolError> {
    let mut buf = BytesMut::from(bytes);
    let r = parse_startup_packet(&mut buf);
    if let Ok(Some(_)) = r {
        assert!(buf.is_empty(), "whole packet consumed");
    }
    r
}

#[test]
fn ssl_request() {
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut buf);
    assert_eq!(parse_all(&buf).unwrap(), Some(StartupPacket::SslRequest));
    assert_eq!(&buf[..], &[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
}

#[test]
fn gssenc_request() {
    let buf = packet(80_877_104, &[]);
    assert_eq!(parse_all(&buf).unwrap(), Some(StartupPacket::GssEncRequest));
}

#[test]
fn ssl_request_with_wrong_length() {
    let err = parse_all(&packet(SSL_REQUEST_CODE, &[0])).unwrap_err();
    assert_eq!(err.kind(), ProtocolErrorKind::InvalidLength);
    assert_eq!(err.code(), sqlstate::PROTOCOL_VIOLATION);
    assert_eq!(
        err.to_string(),
        "invalid length of SSLRequest: 9 (must be 8)"
    );
}

#[test]
fn cancel_request_v3_0() {
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(1234, 0x0102_0304, &mut buf);
    assert_eq!(
        parse_all(&buf).unwrap(),
        Some(StartupPacket::CancelRequest {
            process_id: 1234,
            secret_key: vec![1, 2, 3, 4]
        })
    );
}

#[test]
fn cancel_request_v3_2_long_key() {
    let key: Vec<u8> = (0..=255).collect();
    let mut body = (-7i32).to_be_bytes().to_vec();
    body.extend_from_slice(&key);
    let buf = packet(CANCEL_REQUEST_CODE, &body);
    assert_eq!(
        parse_all(&buf).unwrap(),
        Some(StartupPacket::CancelRequest {
            process_id: -7,
            secret_key: key
        })
    );
}

#[test]
fn cancel_request_key_too_short_or_long() {
    for key_len in [0, 3, 257] {
        let mut body = 1i32.to_be_bytes().to_vec();
        body.extend(std::iter::repeat_n(9, key_len));
        let err = parse_all(&packet(CANCEL_REQUEST_CODE, &body)).unwrap_err();
        assert_eq!(err.kind(), ProtocolErrorKind::InvalidLength, "{key_len}");
    }
    let err = parse_all(&packet(CANCEL_REQUEST_CODE, &[0, 0])).unwrap_err();
    assert_eq!(err.kind(), ProtocolErrorKind::InvalidLength);
}

#[test]
fn cancel_key_is_not_in_debug() {
    let pkt = StartupPacket::CancelRequest {
        process_id: 42,
        secret_key: b"SECRETKEY".to_vec(),
    };
    let dbg = format!("{pkt:?}");
    assert!(!dbg.contains("SECRETKEY"), "{dbg}");
    assert!(!dbg.contains("83, 69"), "{dbg}");
    assert!(dbg.contains("42"), "{dbg}");
}

#[test]
fn startup_message_v3_0_from_postgres_protocol() {
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [
            ("user", "alice"),
            ("database", "app"),
            ("application_name", "psql"),
            ("client_encoding", "UTF8"),
        ],
        &mut buf,
    )
    .unwrap();
    let Some(StartupPacket::Startup(msg)) = parse_all(&buf).unwrap() else {
        panic!("not a StartupMessage");
    };
    assert_eq!(msg.version, ProtocolVersion::V3_0);
    assert_eq!(msg.user(), Some("alice"));
    assert_eq!(msg.database(), Some("app"));
    assert_eq!(msg.get_str("application_name"), Some("psql"));
    assert_eq!(msg.params.len(), 4);
}

#[test]
fn startup_message_v3_2() {
    let buf = startup_bytes(196_610, &[("user", "bob")]);
    let Some(StartupPacket::Startup(msg)) = parse_all(&buf).unwrap() else {
        panic!("not a StartupMessage");
    };
    assert_eq!(msg.version, ProtocolVersion::V3_2);
    assert_eq!(msg.version.code(), 196_610);
    assert_eq!(msg.version.to_string(), "3.2");
}

#[test]
fn startup_message_newer_minor_is_accepted() {
    let buf = startup_bytes(3 << 16 | 9, &[("user", "bob")]);
    let Some(StartupPacket::Startup(msg)) = parse_all(&buf).unwrap() else {
        panic!("not a StartupMessage");
    };
    assert_eq!(msg.version, ProtocolVersion { major: 3, minor: 9 });
}

#[test]
fn startup_message_without_user_or_params() {
    let buf = startup_bytes(196_608, &[]);
    let Some(StartupPacket::Startup(msg)) = parse_all(&buf).unwrap() else {
        panic!("not a StartupMessage");
    };
    assert!(msg.params.is_empty());
    assert_eq!(msg.user(), None);
}

#[test]
fn startup_message_empty_value_allowed() {
    let buf = startup_bytes(196_608, &[("user", "u"), ("options", "")]);
    let Some(StartupPacket::Startup(msg)) = parse_all(&buf).unwrap() else {
        panic!("not a StartupMessage");
    };
    assert_eq!(msg.get("options"), Some(&b""[..]));
}

#[test]
fn protocol_2_0_is_rejected() {
    let buf = packet(2 << 16, b"user\0x\0\0");
    let err = parse_all(&buf).unwrap_err();
    assert_eq!(
        err.kind(),
        ProtocolErrorKind::UnsupportedVersion(ProtocolVersion { major: 2, minor: 0 })
    );
    assert_eq!(err.code(), sqlstate::FEATURE_NOT_SUPPORTED);
    assert_eq!(
        err.to_string(),
        "unsupported frontend protocol 2.0: server supports 3.0 to 3.2"
    );
    let fields = err.to_error_fields();
    assert_eq!(fields.severity, "FATAL");
    assert_eq!(fields.code, "0A000");
}

#[test]
fn unknown_special_code_is_unsupported_version() {
    let err = parse_all(&packet(1234 << 16 | 9999, &[0])).unwrap_err();
    assert_eq!(err.code(), sqlstate::FEATURE_NOT_SUPPORTED);
    assert!(
        err.to_string()
            .starts_with("unsupported frontend protocol 1234.9999")
    );
}

#[test]
fn incremental_byte_by_byte() {
    let all = startup_bytes(196_608, &[("user", "alice"), ("database", "db")]);
    let mut buf = BytesMut::new();
    for (i, b) in all.iter().enumerate() {
        buf.put_u8(*b);
        let before = buf.clone();
        let r = parse_startup_packet(&mut buf).unwrap();
        if i + 1 < all.len() {
            assert!(r.is_none(), "complete too early at {i}");
            assert_eq!(buf, before, "buf untouched while incomplete");
        } else {
            assert!(matches!(r, Some(StartupPacket::Startup(_))));
            assert!(buf.is_empty());
        }
    }
}

#[test]
fn trailing_bytes_are_left_in_buf() {
    let mut buf = BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut buf);
    buf.extend_from_slice(b"\x16\x03\x01");
    assert_eq!(
        parse_startup_packet(&mut buf).unwrap(),
        Some(StartupPacket::SslRequest)
    );
    assert_eq!(&buf[..], b"\x16\x03\x01");
}

#[test]
fn encoded_len_is_what_is_written() {
    let mut msg = StartupMessage::new(ProtocolVersion::V3_0);
    assert_eq!(msg.encoded_len(), 9);
    msg.set("user", "someone");
    msg.set("database", &b"caf\xe9"[..]);
    let mut buf = BytesMut::new();
    crate::messages::startup_message(&msg, &mut buf).unwrap();
    assert_eq!(msg.encoded_len(), buf.len());
}

#[test]
fn oversized_is_rejected_at_the_header() {
    // Only the length word has arrived: no need to wait for 10 KB more.
    let mut buf = BytesMut::from(&((MAX_STARTUP_LEN + 1) as u32).to_be_bytes()[..]);
    let err = parse_startup_packet(&mut buf).unwrap_err();
    assert_eq!(err.kind(), ProtocolErrorKind::InvalidLength);
    assert_eq!(err.code(), sqlstate::PROTOCOL_VIOLATION);
    assert!(
        err.to_string()
            .starts_with("invalid length of startup packet: 10005 (must be 8 to 10004)")
    );

    // Exactly at the limit is fine.
    let filler = "x".repeat(MAX_STARTUP_LEN - 8 - "user\0\0\0".len());
    let buf = startup_bytes(196_608, &[("user", &filler)]);
    assert_eq!(buf.len(), MAX_STARTUP_LEN);
    assert!(parse_all(&buf).unwrap().is_some());
}

#[test]
fn too_short_and_negative_lengths() {
    for len in [0i32, 4, 7, -1, i32::MIN] {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let err = parse_startup_packet(&mut buf).unwrap_err();
        assert_eq!(err.kind(), ProtocolErrorKind::InvalidLength, "{len}");
    }
    // Fewer than four bytes: just wait.
    let mut buf = BytesMut::from(&[0u8, 0, 0][..]);
    assert_eq!(parse_startup_packet(&mut buf).unwrap(), None);
}

#[test]
fn malformed_params() {
    let cases: &[(&[u8], &str)] = &[
        // no terminator at all (just the version)
        (b"", "expected terminator as last byte"),
        // name without NUL
        (b"user", "expected terminator as last byte"),
        // name without value
        (b"user\0", "missing value for parameter \"user\""),
        // value without NUL
        (b"user\0alice", "missing value for parameter \"user\""),
        // missing final terminator
        (b"user\0alice\0", "expected terminator as last byte"),
        // bytes after the terminator
        (b"user\0alice\0\0junk", "expected terminator as last byte"),
        (b"user\0alice\0\0\0", "expected terminator as last byte"),
        // a name that is not UTF-8
        (b"\xc3\0x\0\0", "parameter name is not valid UTF-8"),
        (
            b"user\0u\0app\xff\0x\0\0",
            "parameter name is not valid UTF-8",
        ),
    ];
    for (body, want) in cases {
        let err = parse_all(&packet(196_608, body)).unwrap_err();
        assert_eq!(err.kind(), ProtocolErrorKind::Malformed, "{body:?}");
        assert_eq!(err.code(), sqlstate::PROTOCOL_VIOLATION);
        assert!(err.to_string().contains(want), "{body:?}: {err}");
    }
}

#[test]
fn direct_tls_is_told_by_its_first_byte() {
    // The start of a TLS 1.2/1.3 ClientHello record.
    let hello = [0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01];
    assert_eq!(is_direct_tls(&hello), Some(true));
    assert_eq!(is_direct_tls(&hello[..1]), Some(true));
    assert_eq!(is_direct_tls(&[]), None);
    let mut ssl = BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut ssl);
    assert_eq!(is_direct_tls(&ssl), Some(false));
    assert_eq!(
        is_direct_tls(&startup_bytes(196_608, &[("user", "u")])),
        Some(false)
    );
    // Parsed as a startup packet, a ClientHello is an impossible length, never a packet.
    let err = parse_all(&hello).unwrap_err();
    assert_eq!(err.kind(), ProtocolErrorKind::InvalidLength);
}

#[test]
fn values_are_bytes_as_sent() {
    // Latin-1 "é" (0xe9), a lone continuation byte and an overlong encoding: PostgreSQL
    // takes them all, so the proxy keeps them byte for byte.
    let body = b"user\0ren\xe9\0application_name\0app\xff\0options\0\xc0\xaf\0\0";
    let Some(StartupPacket::Startup(msg)) = parse_all(&packet(196_608, body)).unwrap() else {
        panic!("not a StartupMessage");
    };
    assert_eq!(msg.get("user"), Some(&b"ren\xe9"[..]));
    assert_eq!(msg.user(), None, "not UTF-8: no text");
    assert_eq!(msg.get_str("application_name"), None);
    assert_eq!(msg.get_lossy("application_name").unwrap(), "app\u{fffd}");
    assert_eq!(msg.get("options"), Some(&b"\xc0\xaf"[..]));
    assert_eq!(msg.get_lossy("missing"), None);
    // And they are written back unchanged.
    let mut out = BytesMut::new();
    crate::messages::startup_message(&msg, &mut out).unwrap();
    assert_eq!(&out[..], &packet(196_608, body)[..]);
}

#[test]
fn get_set_remove() {
    let mut msg = StartupMessage::new(ProtocolVersion::V3_0);
    msg.params = vec![
        ("user".into(), "first".into()),
        ("database".into(), "db".into()),
        ("user".into(), "second".into()),
    ];
    assert_eq!(msg.get("user"), Some(&b"second"[..]), "last wins");
    assert_eq!(msg.user(), Some("second"));
    assert_eq!(msg.set("user", "entra@x"), Some(b"second".to_vec()));
    assert_eq!(
        msg.params,
        vec![
            ("user".to_string(), b"entra@x".to_vec()),
            ("database".to_string(), b"db".to_vec()),
        ]
    );
    assert_eq!(msg.set("application_name", "p"), None);
    assert_eq!(msg.params.last().unwrap().0, "application_name");
    assert_eq!(msg.remove("database"), Some(b"db".to_vec()));
    assert_eq!(msg.remove("database"), None);
    assert_eq!(msg.database(), None);
    assert_eq!(msg.set("user", "again"), Some(b"entra@x".to_vec()));
    assert_eq!(
        msg.set("application_name", &b"\xff"[..]),
        Some(b"p".to_vec())
    );
}

#[test]
fn version_codes() {
    assert_eq!(ProtocolVersion::V3_0.code(), 196_608);
    assert_eq!(ProtocolVersion::from_code(196_610), ProtocolVersion::V3_2);
    assert!(!ProtocolVersion { major: 2, minor: 0 }.is_supported());
}
