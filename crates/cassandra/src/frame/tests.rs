use super::codec::Piece;
use super::*;
use crate::segment;
use cassandra_protocol::compression::Compression;
use cassandra_protocol::frame::frame_decoder::{
    FrameDecoder as _, Lz4FrameDecoder, UncompressedFrameDecoder,
};
use cassandra_protocol::frame::frame_encoder::{
    FrameEncoder as _, Lz4FrameEncoder, UncompressedFrameEncoder,
};

fn query_frame(stream: i16, body_len: usize) -> Frame {
    let body: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
    Frame::new(4, false, 0, stream, opcode::QUERY, body)
}

#[test]
fn header_parses() {
    let bytes = [0x84, 0x08, 0xff, 0xfe, 0x08, 0, 0, 1, 0];
    assert_eq!(
        FrameHeader::parse(&bytes),
        Some(FrameHeader {
            version: 4,
            response: true,
            flags: 0x08,
            stream: -2,
            opcode: opcode::RESULT,
            body_len: 256,
        })
    );
    assert_eq!(FrameHeader::parse(&bytes[..8]), None);
}

#[test]
fn frames_fed_byte_by_byte() {
    let frames = [query_frame(1, 10), query_frame(2, 0), query_frame(3, 300)];
    let mut wire = BytesMut::new();
    for f in &frames {
        f.encode(&mut wire);
    }
    let mut dec = FrameDecoder::new(1024);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for b in wire.iter() {
        buf.put_u8(*b);
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            out.push(f);
        }
    }
    assert_eq!(out, frames);
    assert!(buf.is_empty());
}

#[test]
fn oversized_length_is_refused_at_the_header() {
    let mut dec = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
    let mut buf = BytesMut::from(&[0x04, 0, 0, 5, opcode::QUERY, 0x10, 0, 0, 0][..]);
    match dec.decode(&mut buf) {
        Err(CqlError::FrameTooLarge {
            len,
            max,
            version,
            stream,
        }) => {
            assert_eq!((len, max, version, stream), (0x1000_0000, 65536, 4, 5));
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    // exactly at the bound is fine
    let mut dec = FrameDecoder::new(3);
    let mut buf = query_frame(0, 3).to_bytes();
    assert!(dec.decode(&mut buf).unwrap().is_some());
}

#[test]
fn error_frame_from_an_error() {
    let e = CqlError::FrameTooLarge {
        len: 10,
        max: 5,
        version: 4,
        stream: 3,
    };
    let f = e.to_error_frame(4, 3);
    assert_eq!(f.header.opcode, opcode::ERROR);
    let (code, _) = crate::messages::parse_error(&f.body).unwrap();
    assert_eq!(code, 0x000A);
}

#[test]
fn body_compression_matches_cassandra_protocol() {
    let body: Vec<u8> = b"SELECT * FROM system.local WHERE key='local'".repeat(20);
    for (ours, theirs) in [
        (BodyCompression::Lz4, Compression::Lz4),
        (BodyCompression::Snappy, Compression::Snappy),
    ] {
        let compressed = ours.compress(&body).unwrap();
        assert!(compressed.len() < body.len());
        assert_eq!(theirs.decode(compressed.to_vec()).unwrap(), body);
        let theirs_compressed = theirs.encode(&body).unwrap();
        assert_eq!(&ours.decompress(&theirs_compressed).unwrap()[..], &body[..]);
    }
}

#[test]
fn decompression_is_bounded() {
    let body = vec![0u8; 10_000];
    let lz4 = BodyCompression::Lz4.compress(&body).unwrap();
    assert!(
        BodyCompression::Lz4
            .decompress_bounded(&lz4, 9_999)
            .is_err()
    );
    let snappy = BodyCompression::Snappy.compress(&body).unwrap();
    assert!(
        BodyCompression::Snappy
            .decompress_bounded(&snappy, 9_999)
            .is_err()
    );
    // a lying lz4 length prefix
    assert!(
        BodyCompression::Lz4
            .decompress(&[0x7f, 0xff, 0xff, 0xff, 0x00])
            .is_err()
    );
    // compressed flag without compression
    let f = Frame::new(4, true, flags::COMPRESSION, 0, opcode::RESULT, lz4);
    assert!(matches!(
        f.plain_body(BodyCompression::None, MAX_FRAME_LEN),
        Err(CqlError::Decompress(_))
    ));
}

/// A v4 QUERY header announcing `body_len` bytes, on `stream`.
fn header_announcing(stream: i16, body_len: u32) -> BytesMut {
    let mut buf = BytesMut::new();
    FrameHeader {
        version: 4,
        response: false,
        flags: 0,
        stream,
        opcode: opcode::QUERY,
        body_len,
    }
    .encode(&mut buf);
    buf
}

#[test]
fn an_announced_length_reserves_nothing() {
    // 1 MiB announced, under the cap: the decoder waits without growing the buffer.
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN_FOR_TESTS);
    let mut buf = header_announcing(1, 1024 * 1024);
    let before = buf.capacity();
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
    assert_eq!(buf.capacity(), before);
    assert!(buf.capacity() < 1024, "{}", buf.capacity());
}

const DEFAULT_MAX_FRAME_LEN_FOR_TESTS: usize = DEFAULT_MAX_FRAME_SIZE - HEADER_LEN;

#[test]
fn an_oversized_frame_is_discarded_as_it_arrives_then_refused_like_cassandra() {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN_FOR_TESTS);
    dec.discard_oversized(Some(4));
    // 200 MiB announced; the body trickles in 64 KiB at a time.
    let announced: u32 = 200 * 1024 * 1024;
    let mut buf = header_announcing(7, announced);
    assert_eq!(dec.decode(&mut buf).unwrap(), None);
    assert!(buf.is_empty() && dec.has_buffered());
    let chunk = vec![0xAAu8; 64 * 1024];
    let mut sent = 0usize;
    let err = loop {
        let n = chunk.len().min(announced as usize - sent);
        buf.extend_from_slice(&chunk[..n]);
        sent += n;
        if sent == announced as usize {
            // the next frame follows in the same read
            query_frame(8, 3).encode(&mut buf);
        }
        match dec.decode(&mut buf) {
            Ok(None) => assert!(buf.is_empty(), "nothing of it is kept"),
            Ok(Some(f)) => panic!("got a frame {f:?}"),
            Err(e) => break e,
        }
        assert!(buf.capacity() <= 2 * chunk.len() + 64);
    };
    assert_eq!(sent, announced as usize);
    let CqlError::RequestTooBig {
        len,
        max,
        version,
        stream,
    } = err
    else {
        panic!("expected RequestTooBig, got {err:?}");
    };
    assert_eq!(
        (len, max, version, stream),
        (u64::from(announced) + 9, 16 << 20, 4, 7)
    );
    assert_eq!(
        err.to_string(),
        "Request is too big: length 209715209 exceeds maximum allowed length 16777216."
    );
    assert_eq!(err.code(), crate::messages::codes::INVALID);
    assert!(!err.is_fatal());
    // The connection goes on.
    assert!(!dec.has_buffered());
    assert_eq!(dec.decode(&mut buf).unwrap(), Some(query_frame(8, 3)));
}

#[test]
fn without_discard_mode_an_oversized_frame_is_fatal() {
    let mut dec = FrameDecoder::new(1000);
    let mut buf = header_announcing(3, 1001);
    let err = dec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, CqlError::FrameTooLarge { len: 1001, .. }));
    assert!(err.is_fatal());
    // In discard mode too, for another version or a response: garbage, not a request.
    dec.discard_oversized(Some(3));
    assert!(matches!(
        dec.decode(&mut buf),
        Err(CqlError::FrameTooLarge { .. })
    ));
    dec.discard_oversized(Some(4));
    buf[0] = 0x84;
    assert!(matches!(
        dec.decode(&mut buf),
        Err(CqlError::FrameTooLarge { .. })
    ));
}

#[test]
fn lz4_and_snappy_bombs_are_refused_before_decompressing() {
    // lz4: a 4-byte prefix announcing 2 GiB, then a few bytes of "block".
    let bomb = [0x7f, 0xff, 0xff, 0xff, 0x1f, 0x00, 0x01, 0x00];
    match BodyCompression::Lz4.decompress_bounded(&bomb, 1 << 20) {
        Err(CqlError::BodyTooLarge {
            algorithm: "lz4",
            len,
            max,
        }) => assert_eq!((len, max), (0x7fff_ffff, 1 << 20)),
        other => panic!("expected BodyTooLarge, got {other:?}"),
    }
    // snappy: a varint announcing ~4 GiB (0xffffffff), then garbage.
    let bomb = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x00];
    match BodyCompression::Snappy.decompress_bounded(&bomb, 1 << 20) {
        Err(CqlError::BodyTooLarge {
            algorithm: "snappy",
            len,
            ..
        }) => assert_eq!(len, 0xffff_ffff),
        other => panic!("expected BodyTooLarge, got {other:?}"),
    }
    // snappy: a real 2 MiB body refused under a 1 MiB bound.
    let body = vec![7u8; 2 << 20];
    let snappy = BodyCompression::Snappy.compress(&body).unwrap();
    assert!(snappy.len() < 200_000);
    let f = Frame::new(4, false, flags::COMPRESSION, 0, opcode::QUERY, snappy);
    assert!(matches!(
        f.plain_body(BodyCompression::Snappy, 1 << 20),
        Err(CqlError::BodyTooLarge { .. })
    ));
    assert_eq!(
        f.plain_body(BodyCompression::Snappy, 2 << 20)
            .unwrap()
            .len(),
        2 << 20
    );
    // An uncompressed body is not copied or checked here (the decoder bounded it).
    let f = query_frame(1, 10);
    assert_eq!(f.plain_body(BodyCompression::Lz4, 5).unwrap().len(), 10);
}

#[test]
fn a_v5_segment_header_reserves_nothing() {
    let (_, mut enc) = v5(false);
    let mut wire = BytesMut::new();
    enc.encode(&v5_frame(1, 100_000), &mut wire);
    let mut buf = BytesMut::from(&wire[..segment::UNCOMPRESSED_HEADER_LEN]);
    let before = buf.capacity();
    assert_eq!(segment::decode(&mut buf, false).unwrap(), None);
    assert_eq!(buf.capacity(), before);
}

#[test]
fn v5_ignores_the_discard_mode() {
    let (_, mut enc) = v5(false);
    let mut wire = BytesMut::new();
    enc.encode(&v5_frame(1, 300_000), &mut wire);
    let mut dec = FrameDecoder::new(100_000);
    dec.set_framing(Framing::V5 { lz4: false });
    dec.discard_oversized(Some(5));
    assert!(matches!(
        dec.decode(&mut wire),
        Err(CqlError::FrameTooLarge { .. })
    ));
}

fn v5(lz4: bool) -> (FrameDecoder, FrameEncoder) {
    let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
    let mut enc = FrameEncoder::new();
    dec.set_framing(Framing::V5 { lz4 });
    enc.set_framing(Framing::V5 { lz4 });
    (dec, enc)
}

fn v5_frame(stream: i16, len: usize) -> Frame {
    let mut f = query_frame(stream, len);
    f.header.version = 5;
    f
}

#[test]
fn v5_self_contained_segment_with_two_frames() {
    for lz4 in [false, true] {
        let (mut dec, mut enc) = v5(lz4);
        let frames = [v5_frame(1, 20), v5_frame(2, 40)];
        let mut wire = BytesMut::new();
        enc.encode_all(&frames, &mut wire);
        // one segment
        let mut probe = wire.clone();
        let seg = segment::decode(&mut probe, lz4).unwrap().unwrap();
        assert!(seg.self_contained);
        assert!(probe.is_empty());
        // and cassandra-protocol reads it too
        let mut theirs = wire.to_vec();
        let envelopes = if lz4 {
            Lz4FrameDecoder::default().consume(&mut theirs, Compression::None)
        } else {
            UncompressedFrameDecoder::default().consume(&mut theirs, Compression::None)
        }
        .unwrap();
        assert_eq!(envelopes.len(), 2);
        assert_eq!(envelopes[1].stream_id, 2);

        // byte by byte
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                out.push(f);
            }
        }
        assert_eq!(out, frames);
    }
}

#[test]
fn v5_frame_split_across_segments() {
    for lz4 in [false, true] {
        let (mut dec, mut enc) = v5(lz4);
        let big = v5_frame(7, 300_000);
        let mut wire = BytesMut::new();
        enc.encode(&big, &mut wire);
        enc.encode(&v5_frame(8, 5), &mut wire);
        let mut probe = wire.clone();
        let mut segments = 0;
        while let Some(seg) = segment::decode(&mut probe, lz4).unwrap() {
            segments += 1;
            assert_eq!(seg.self_contained, segments == 4);
        }
        assert_eq!(segments, 4);
        assert_eq!(dec.decode(&mut wire).unwrap(), Some(big));
        assert_eq!(dec.decode(&mut wire).unwrap().unwrap().header.stream, 8);
        assert_eq!(dec.decode(&mut wire).unwrap(), None);
    }
}

#[test]
fn v5_reads_segments_written_by_cassandra_protocol() {
    let frame = v5_frame(3, 1000);
    let bytes = frame.to_bytes().to_vec();

    let mut enc = UncompressedFrameEncoder::default();
    enc.add_envelope(bytes.clone());
    let mut wire = BytesMut::from(enc.finalize_self_contained());
    let (mut dec, _) = v5(false);
    assert_eq!(dec.decode(&mut wire).unwrap(), Some(frame.clone()));

    let mut enc = Lz4FrameEncoder::default();
    enc.add_envelope(bytes);
    let mut wire = BytesMut::from(enc.finalize_self_contained());
    let (mut dec, _) = v5(true);
    assert_eq!(dec.decode(&mut wire).unwrap(), Some(frame));
}

#[test]
fn v5_crc_errors() {
    let (mut dec, mut enc) = v5(false);
    let mut wire = BytesMut::new();
    enc.encode(&v5_frame(1, 10), &mut wire);
    let mut bad_header = wire.clone();
    bad_header[0] ^= 0x01;
    assert!(matches!(
        dec.decode(&mut bad_header),
        Err(CqlError::SegmentCrc { part: "header", .. })
    ));
    let (mut dec, _) = v5(false);
    let mut bad_payload = wire.clone();
    bad_payload[10] ^= 0x01;
    assert!(matches!(
        dec.decode(&mut bad_payload),
        Err(CqlError::SegmentCrc {
            part: "payload",
            ..
        })
    ));
}

#[test]
fn v5_frame_length_is_bounded() {
    let (_, mut enc) = v5(false);
    let mut wire = BytesMut::new();
    enc.encode(&v5_frame(1, 300_000), &mut wire);
    let mut dec = FrameDecoder::new(100_000);
    dec.set_framing(Framing::V5 { lz4: false });
    // refused after the first segment, before the rest is gathered
    assert!(matches!(
        dec.decode(&mut wire),
        Err(CqlError::FrameTooLarge { .. })
    ));
}

#[test]
fn v5_self_contained_segment_with_a_partial_frame_is_malformed() {
    let mut wire = BytesMut::new();
    let bytes = v5_frame(1, 10).to_bytes();
    segment::encode(&bytes[..12], true, false, &mut wire);
    let (mut dec, _) = v5(false);
    assert!(matches!(
        dec.decode(&mut wire),
        Err(CqlError::Malformed { .. })
    ));
}

/// Feeds `bytes` in `chunk`-sized reads through `next_piece`, answering `whole` for every
/// frame offered; returns the pieces and how many frames were offered.
fn pieces(dec: &mut FrameDecoder, bytes: &[u8], chunk: usize, whole: bool) -> (Vec<Piece>, usize) {
    let (mut out, mut offered, mut buf) = (Vec::new(), 0, BytesMut::new());
    for part in bytes.chunks(chunk) {
        buf.extend_from_slice(part);
        while let Some(p) = dec
            .next_piece(&mut buf, |_, _| {
                offered += 1;
                whole
            })
            .unwrap()
        {
            out.push(p);
        }
        // Relayed as they arrive: never more than about one read plus the threshold is held.
        assert!(
            whole || buf.len() <= 2 * chunk.max(1024),
            "held {} bytes",
            buf.len()
        );
    }
    assert!(buf.is_empty());
    (out, offered)
}

#[test]
fn a_large_frame_not_needed_whole_is_relayed_as_it_arrives() {
    let big = query_frame(3, 300_000);
    let small = query_frame(4, 100);
    let mut wire = big.to_bytes();
    small.encode(&mut wire);
    big.encode(&mut wire);

    let mut dec = FrameDecoder::new(1 << 20);
    dec.pass_large_frames(Some(1024));
    let (out, offered) = pieces(&mut dec, &wire, 1000, false);
    assert_eq!(offered, 2, "each large frame is offered once");
    let mut relayed = BytesMut::new();
    let mut frames = Vec::new();
    for p in out {
        match p {
            Piece::Raw(b) => relayed.extend_from_slice(&b),
            Piece::Frame(f) => {
                f.encode(&mut relayed);
                frames.push(f);
            }
        }
    }
    assert_eq!(frames, vec![small], "the small frame comes whole, in order");
    assert_eq!(&relayed[..], &wire[..], "byte for byte, in order");
    assert!(!dec.is_passing());
}

#[test]
fn a_large_frame_needed_whole_is_decoded_whole_and_the_cap_still_applies() {
    let big = query_frame(3, 300_000);
    let mut dec = FrameDecoder::new(1 << 20);
    dec.pass_large_frames(Some(1024));
    let (out, offered) = pieces(&mut dec, &big.to_bytes(), 1000, true);
    assert_eq!(offered, 1);
    assert_eq!(out, vec![Piece::Frame(big.clone())]);

    // Over the cap: the usual error, never a pass-through.
    let mut dec = FrameDecoder::new(200_000);
    dec.pass_large_frames(Some(1024));
    let mut buf = BytesMut::from(&big.to_bytes()[..5000]);
    assert!(matches!(
        dec.next_piece(&mut buf, |_, _| false),
        Err(CqlError::FrameTooLarge { .. })
    ));

    // v5 framing always decodes whole frames.
    let mut enc = FrameEncoder::new();
    enc.set_framing(Framing::V5 { lz4: false });
    let mut wire = BytesMut::new();
    enc.encode(&big, &mut wire);
    let mut dec = FrameDecoder::new(1 << 20);
    dec.set_framing(Framing::V5 { lz4: false });
    dec.pass_large_frames(Some(1024));
    let mut buf = wire;
    let got = dec.next_piece(&mut buf, |_, _| panic!("v5 frames are never offered"));
    assert_eq!(got.unwrap(), Some(Piece::Frame(big)));
}
