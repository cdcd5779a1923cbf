//! CQL: the proxy's login to the upstream (`UpstreamLogin`), fed server frames after
//! `start()`.
//!
//! Two modes (bit 0 of the first byte):
//! - raw: the bytes, in arbitrary chunks, are the upstream's stream as is;
//! - framed: the bytes describe frames (opcode, flags, body) that the harness encodes in the
//!   login's current framing (v5 segments with valid CRCs after AUTHENTICATE/READY), with the
//!   body compressed when the COMPRESSION flag is set, so the later states are reached.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use bytes::BytesMut;
use dbproxy_cassandra::{
    BodyCompression, Frame, FrameEncoder, LoginStep, UpstreamLogin, frame::flags, messages,
};
use libfuzzer_sys::fuzz_target;

const OPCODES: [u8; 8] = [0x00, 0x02, 0x03, 0x0E, 0x10, 0x06, 0x08, 0x0C];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let version = 3 + ((mode >> 1) % 3);
    let compression = match (mode >> 3) % 3 {
        0 => None,
        1 => Some("lz4"),
        _ => Some("snappy"),
    };
    let mut options = vec![("CQL_VERSION", "3.0.0")];
    if let Some(c) = compression {
        options.push(("COMPRESSION", c));
    }
    let body = messages::startup_frame(version, 0, &options).body;
    let mut login = UpstreamLogin::new(version, body, "account".into(), b"key".to_vec());
    let _ = login.start();

    let mut buf = BytesMut::new();
    if mode & 1 == 0 {
        let (_, chunks) = common::chunks(data);
        let mut chunks = chunks.into_iter();
        loop {
            match login.receive(&mut buf) {
                Ok(LoginStep::NeedMore) => match chunks.next() {
                    Some(c) => buf.extend_from_slice(c),
                    None => return,
                },
                Ok(LoginStep::Send(_)) => {}
                Ok(LoginStep::Ready) => {
                    let _ = login.into_codec();
                    return;
                }
                Ok(LoginStep::Rejected { .. }) | Err(_) => return,
            }
        }
    }

    let mut input = common::Bytes::new(data);
    while !input.is_empty() {
        let op = input.u8();
        let opcode = if op & 0x80 != 0 {
            op & 0x7f
        } else {
            OPCODES[usize::from(op) % OPCODES.len()]
        };
        let fl = input.u8();
        let mut body = input.short_slice().to_vec();
        let framed_compression = login.compression();
        if fl & flags::COMPRESSION != 0 && framed_compression != BodyCompression::None {
            if let Ok(c) = framed_compression.compress(&body) {
                body = c.to_vec();
            }
        }
        let frame = Frame::new(version, op & 0x40 == 0, fl, 0, opcode, body);
        let mut enc = FrameEncoder::new();
        enc.set_framing(login.framing());
        enc.encode(&frame, &mut buf);
        loop {
            match login.receive(&mut buf) {
                Ok(LoginStep::NeedMore) => break,
                Ok(LoginStep::Send(_)) => {}
                Ok(LoginStep::Ready) => {
                    let _ = login.into_codec();
                    return;
                }
                Ok(LoginStep::Rejected { .. }) | Err(_) => return,
            }
        }
    }
});
