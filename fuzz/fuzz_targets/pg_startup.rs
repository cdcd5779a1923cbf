//! PostgreSQL: the first packet of a client connection (StartupMessage, SSLRequest,
//! GSSENCRequest, CancelRequest), fed in arbitrary chunks.
//!
//! Invariants: `Ok(None)` leaves the buffer untouched; the chunked feed yields the same
//! packets and error as the whole input parsed at once; a parsed StartupMessage re-encodes
//! and parses back to itself.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use bytes::BytesMut;
use dbproxy_postgres::{StartupPacket, messages, parse_startup_packet};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Outcome {
    Packet(StartupPacket),
    Error(String),
}

/// Parses every complete packet at the front of `buf`; true once an error ended the stream.
fn drain(buf: &mut BytesMut, out: &mut Vec<Outcome>) -> bool {
    loop {
        let before = buf.clone();
        match parse_startup_packet(buf) {
            Ok(None) => {
                assert_eq!(*buf, before, "Ok(None) changed the buffer");
                return false;
            }
            Ok(Some(packet)) => {
                assert!(buf.len() < before.len(), "a packet consumed nothing");
                check_reencode(&packet);
                out.push(Outcome::Packet(packet));
            }
            Err(e) => {
                out.push(Outcome::Error(e.to_string()));
                return true;
            }
        }
    }
}

fn check_reencode(packet: &StartupPacket) {
    match packet {
        StartupPacket::Startup(msg) => {
            let mut enc = BytesMut::new();
            if messages::startup_message(msg, &mut enc).is_ok() {
                match parse_startup_packet(&mut enc) {
                    Ok(Some(StartupPacket::Startup(again))) => assert_eq!(&again, msg),
                    other => panic!("re-encoded StartupMessage parsed as {other:?}"),
                }
                assert!(enc.is_empty());
            }
        }
        StartupPacket::CancelRequest {
            process_id,
            secret_key,
        } => {
            let mut enc = BytesMut::new();
            messages::cancel_request(*process_id, secret_key, &mut enc);
            assert_eq!(
                parse_startup_packet(&mut enc).ok().flatten().as_ref(),
                Some(packet)
            );
        }
        StartupPacket::SslRequest | StartupPacket::GssEncRequest => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let (_, chunks) = common::chunks(data);

    let mut whole = BytesMut::new();
    for c in &chunks {
        whole.extend_from_slice(c);
    }
    let mut expected = Vec::new();
    drain(&mut whole, &mut expected);

    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for c in &chunks {
        buf.extend_from_slice(c);
        if drain(&mut buf, &mut got) {
            break;
        }
    }
    assert_eq!(
        got, expected,
        "chunked parse differs from the one-shot parse"
    );
});
