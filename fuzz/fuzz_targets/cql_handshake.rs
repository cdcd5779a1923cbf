//! CQL: the client handshake before READY (`ClientHandshake::on_frame`): frames decoded
//! from arbitrary chunks with the handshake bound, handed to the handshake until it answers
//! STARTUP, closes, or fails.
//!
//! Invariants: every reply is a response frame on the request's stream that decodes back to
//! itself; nothing is accepted after STARTUP.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use bytes::BytesMut;
use dbproxy_cassandra::{
    ClientHandshake, FrameDecoder, HandshakeAction, SupportedOptions,
    frame::HANDSHAKE_MAX_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;

fn check_reply(reply: &dbproxy_cassandra::Frame, stream: i16) {
    assert!(reply.header.response, "a reply must be a response frame");
    assert_eq!(reply.header.stream, stream);
    let mut bytes = reply.to_bytes();
    let mut dec = FrameDecoder::new(usize::MAX);
    assert_eq!(dec.decode(&mut bytes).unwrap().as_ref(), Some(reply));
}

fuzz_target!(|data: &[u8]| {
    let (seed, chunks) = common::chunks(data);
    let max_version = 3 + (seed % 3);
    let compression = match (seed >> 2) % 3 {
        0 => vec![],
        1 => vec!["lz4".to_owned()],
        _ => vec!["lz4".to_owned(), "snappy".to_owned()],
    };
    let mut hs = ClientHandshake::new(
        max_version,
        SupportedOptions {
            compression,
            cql_version: "3.4.5".to_owned(),
        },
    );
    let mut dec = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    for c in chunks {
        buf.extend_from_slice(c);
        loop {
            let frame = match dec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            match hs.on_frame(&frame) {
                Ok(HandshakeAction::Reply(reply)) => check_reply(&reply, frame.header.stream),
                Ok(HandshakeAction::ReplyAndClose(reply)) => {
                    check_reply(&reply, frame.header.stream);
                    return;
                }
                Ok(HandshakeAction::Startup {
                    version, stream, ..
                }) => {
                    assert_eq!(version, frame.header.version);
                    assert_eq!(stream, frame.header.stream);
                    assert!(
                        hs.on_frame(&frame).is_err(),
                        "a second STARTUP was accepted"
                    );
                    return;
                }
                Err(_) => return,
            }
        }
    }
});
