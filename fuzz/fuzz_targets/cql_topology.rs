//! CQL: the topology rewriter (`TopologyRewriter`), fed a conversation built from the fuzz
//! bytes: client QUERY/PREPARE/EXECUTE of system.local/peers/peers_v2 (and of other text),
//! upstream RESULT Rows and Prepared with fuzz-chosen columns and cell values, EVENTs, and
//! raw frames, optionally compressed.
//!
//! Invariants: no panic; a forwarded upstream frame re-encodes and decodes back to itself,
//! and its body decompresses when its COMPRESSION flag is set.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use bytes::{BufMut, BytesMut};
use dbproxy_cassandra::frame::{flags, opcode};
use dbproxy_cassandra::{
    BodyCompression, ClientAction, Frame, FrameDecoder, Topology, TopologyRewriter, UpstreamAction,
};
use libfuzzer_sys::fuzz_target;

const QUERIES: [&str; 8] = [
    "SELECT * FROM system.local WHERE key='local'",
    "select peer, data_center, host_id, rack, rpc_address, tokens from system.peers",
    "SELECT * FROM system.peers_v2",
    "SELECT * FROM \"system\".\"local\"",
    "  SeLeCt cluster_name ,release_version FROM   system . local ",
    "SELECT * FROM system_schema.keyspaces",
    "SELECT * FROM system.local WHERE key = ?",
    "INSERT INTO ks.t (a) VALUES (1)",
];

const TABLES: [&str; 4] = ["local", "peers", "peers_v2", "other"];

/// (name, type): the columns of system.local and system.peers(_v2), and one stranger.
const COLUMNS: [(&str, &[u8]); 19] = [
    ("key", &[0x00, 0x0D]),
    ("bootstrapped", &[0x00, 0x0D]),
    ("broadcast_address", &[0x00, 0x10]),
    ("cluster_name", &[0x00, 0x0D]),
    ("data_center", &[0x00, 0x0D]),
    ("host_id", &[0x00, 0x0C]),
    ("listen_address", &[0x00, 0x10]),
    ("partitioner", &[0x00, 0x0D]),
    ("rack", &[0x00, 0x0D]),
    ("release_version", &[0x00, 0x0D]),
    ("rpc_address", &[0x00, 0x10]),
    ("rpc_port", &[0x00, 0x09]),
    ("tokens", &[0x00, 0x22, 0x00, 0x0D]),
    ("peer", &[0x00, 0x10]),
    ("native_port", &[0x00, 0x09]),
    ("native_address", &[0x00, 0x10]),
    ("broadcast_port", &[0x00, 0x09]),
    ("listen_port", &[0x00, 0x09]),
    ("schema_version", &[0x00, 0x0C]),
];

const EVENTS: [&str; 4] = ["TOPOLOGY_CHANGE", "STATUS_CHANGE", "SCHEMA_CHANGE", "OTHER"];

fn put_string(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn long_string(out: &mut BytesMut, s: &[u8]) {
    out.put_i32(s.len() as i32);
    out.put_slice(s);
}

/// Rows metadata: flags, column count, [paging state], global table spec, column specs.
fn rows_metadata(input: &mut common::Bytes<'_>, out: &mut BytesMut) -> usize {
    let mflags = input.u8();
    let ncols = usize::from(input.u8() % 16);
    let table = TABLES[usize::from(input.u8()) % TABLES.len()];
    let no_metadata = mflags & 0x04 != 0;
    out.put_i32(i32::from(mflags & 0x07));
    out.put_i32(ncols as i32);
    if mflags & 0x02 != 0 {
        let p = input.short_slice();
        out.put_i32(p.len() as i32);
        out.put_slice(p);
    }
    if !no_metadata {
        if mflags & 0x01 != 0 {
            put_string(out, b"system");
            put_string(out, table.as_bytes());
        }
        for _ in 0..ncols {
            if mflags & 0x01 == 0 {
                put_string(out, b"system");
                put_string(out, table.as_bytes());
            }
            let (name, ty) = COLUMNS[usize::from(input.u8()) % COLUMNS.len()];
            put_string(out, name.as_bytes());
            out.put_slice(ty);
        }
    }
    ncols
}

fn rows_body(input: &mut common::Bytes<'_>, out: &mut BytesMut) {
    out.put_i32(2);
    let ncols = rows_metadata(input, out);
    let nrows = input.u8() % 4;
    out.put_i32(i32::from(nrows));
    for _ in 0..nrows {
        for _ in 0..ncols {
            let sel = input.u8();
            match sel % 8 {
                0 => out.put_i32(-1),
                1 => {
                    out.put_i32(4);
                    out.put_slice(&[10, 1, 2, 3]);
                }
                2 => {
                    out.put_i32(16);
                    out.put_slice(&[0xaa; 16]);
                }
                3 => {
                    // set<text> of two tokens
                    let mut set = BytesMut::new();
                    set.put_i32(2);
                    for t in ["-3074457345618258603", "3074457345618258602"] {
                        long_string(&mut set, t.as_bytes());
                    }
                    long_string(out, &set);
                }
                _ => long_string(out, input.short_slice()),
            }
        }
    }
}

fn prepared_body(input: &mut common::Bytes<'_>, version: u8, out: &mut BytesMut) {
    out.put_i32(4);
    put_string(out, input.short_slice());
    if version >= 5 {
        put_string(out, b"metadata-id");
    }
    // Bound-variable metadata: global spec, one or no bind marker.
    let nbind = input.u8() % 2;
    out.put_i32(1);
    out.put_i32(i32::from(nbind));
    if version >= 4 {
        out.put_i32(i32::from(nbind));
        for i in 0..nbind {
            out.put_u16(u16::from(i));
        }
    }
    put_string(out, b"system");
    put_string(out, b"local");
    for _ in 0..nbind {
        put_string(out, b"key");
        out.put_slice(&[0x00, 0x0D]);
    }
    rows_metadata(input, out);
}

fn finish(
    version: u8,
    response: bool,
    fl: u8,
    stream: i16,
    op: u8,
    body: BytesMut,
    compression: BodyCompression,
) -> Frame {
    let mut fl = fl & (flags::COMPRESSION | flags::TRACING | flags::WARNING);
    let mut body = body.freeze();
    if fl & flags::COMPRESSION != 0 {
        match compression.compress(&body) {
            Ok(c) if compression != BodyCompression::None => body = c,
            _ => fl &= !flags::COMPRESSION,
        }
    }
    // Tracing/warnings prefixes of responses are not generated: clear their flags.
    if response {
        fl &= !(flags::TRACING | flags::WARNING);
    }
    Frame::new(version, response, fl, stream, op, body)
}

fuzz_target!(|data: &[u8]| {
    let mut input = common::Bytes::new(data);
    let mode = input.u8();
    let version = 3 + (mode % 3);
    let compression = match (mode >> 2) % 3 {
        0 => BodyCompression::None,
        1 => BodyCompression::Lz4,
        _ => BodyCompression::Snappy,
    };
    let topology = Topology {
        listen: if mode & 0x40 != 0 {
            "0.0.0.0:9042"
        } else {
            "[::1]:10350"
        }
        .parse()
        .unwrap(),
        host_id: Default::default(),
        data_center: (mode & 0x80 != 0).then(|| "datacenter1".to_owned()),
        rack: None,
    };
    let mut rw = TopologyRewriter::new(topology);

    let mut steps = 0;
    while !input.is_empty() && steps < 64 {
        steps += 1;
        let cmd = input.u8();
        let fl = input.u8();
        let stream = i16::from(input.u8() % 8) - 1;
        let mut body = BytesMut::new();
        let frame = match cmd % 8 {
            0 | 1 => {
                let q = input.u8();
                let text: &[u8] = if q & 0x80 != 0 {
                    input.short_slice()
                } else {
                    QUERIES[usize::from(q) % QUERIES.len()].as_bytes()
                };
                long_string(&mut body, text);
                let op = if cmd % 8 == 0 {
                    body.put_u16(1);
                    body.put_u8(input.u8());
                    opcode::QUERY
                } else {
                    opcode::PREPARE
                };
                finish(version, false, fl, stream, op, body, compression)
            }
            2 => {
                put_string(&mut body, input.short_slice());
                body.put_u16(1);
                body.put_u8(0x02);
                finish(
                    version,
                    false,
                    fl,
                    stream,
                    opcode::EXECUTE,
                    body,
                    compression,
                )
            }
            3 => {
                rows_body(&mut input, &mut body);
                finish(version, true, fl, stream, opcode::RESULT, body, compression)
            }
            4 => {
                prepared_body(&mut input, version, &mut body);
                finish(version, true, fl, stream, opcode::RESULT, body, compression)
            }
            5 => {
                put_string(
                    &mut body,
                    EVENTS[usize::from(input.u8()) % EVENTS.len()].as_bytes(),
                );
                body.put_slice(input.short_slice());
                finish(version, true, fl, -1, opcode::EVENT, body, compression)
            }
            c => {
                // A raw frame: any opcode, flags and body, either direction.
                let op = input.u8() & 0x1f;
                body.put_slice(input.short_slice());
                Frame::new(version, c == 7, fl, stream, op, body.freeze())
            }
        };
        if frame.header.response {
            match rw.on_upstream_frame(frame, compression) {
                Ok(UpstreamAction::Forward(f)) => {
                    let mut bytes = f.to_bytes();
                    let again = FrameDecoder::new(usize::MAX).decode(&mut bytes).unwrap();
                    assert_eq!(again.as_ref(), Some(&f));
                    if f.is_compressed() && compression != BodyCompression::None {
                        // Only a rewritten frame is ours to check; others are relayed as is.
                        let _ = f.plain_body(compression, 16 * 1024 * 1024);
                    }
                }
                Ok(UpstreamAction::Drop) | Err(_) => {}
            }
        } else {
            match rw.on_client_frame(&frame, compression) {
                Ok(ClientAction::Forward) | Ok(ClientAction::Reply(_)) | Err(_) => {}
            }
        }
    }
});
