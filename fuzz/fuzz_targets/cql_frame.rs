//! CQL: the frame decoder (`FrameDecoder`) in legacy and v5 framing (plain and lz4
//! segments), fed in arbitrary chunks, and the lz4/snappy body decompression of every
//! frame whose COMPRESSION flag is set.
//!
//! Invariants: legacy `Ok(None)` leaves the bytes untouched; a legacy frame re-encodes to
//! exactly the bytes it was decoded from; v5 frames re-encoded into segments decode back to
//! the same frames.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use bytes::BytesMut;
use dbproxy_cassandra::{BodyCompression, Frame, FrameDecoder, FrameEncoder, Framing, frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let framing = match mode % 3 {
        0 => Framing::Legacy,
        1 => Framing::V5 { lz4: false },
        _ => Framing::V5 { lz4: true },
    };
    // Small bounds too, so the too-large path is reached.
    let max = match (mode >> 2) % 4 {
        0 => frame::HANDSHAKE_MAX_FRAME_LEN,
        1 => 1024 * 1024,
        2 => 64,
        _ => frame::MAX_FRAME_LEN,
    };
    let compression = match (mode >> 4) % 3 {
        0 => BodyCompression::Lz4,
        1 => BodyCompression::Snappy,
        _ => BodyCompression::None,
    };
    let (_, chunks) = common::chunks(data);

    let mut dec = FrameDecoder::new(max);
    dec.set_framing(framing);
    let mut buf = BytesMut::new();
    let mut frames: Vec<Frame> = Vec::new();
    'feed: for c in chunks {
        buf.extend_from_slice(c);
        loop {
            let before = buf.clone();
            match dec.decode(&mut buf) {
                Ok(None) => {
                    if framing == Framing::Legacy {
                        assert_eq!(buf, before, "Ok(None) changed the buffer");
                    }
                    break;
                }
                Ok(Some(f)) => {
                    if framing == Framing::Legacy {
                        let used = before.len() - buf.len();
                        assert_eq!(&f.to_bytes()[..], &before[..used], "re-encoding differs");
                    }
                    if f.is_compressed() {
                        let _ = f.plain_body(compression, 16 * 1024 * 1024);
                        let _ = compression.decompress_bounded(&f.body, 4096);
                    }
                    frames.push(f);
                }
                Err(_) => break 'feed,
            }
        }
    }

    if let Framing::V5 { .. } = framing {
        let mut enc = FrameEncoder::new();
        enc.set_framing(framing);
        let mut wire = BytesMut::new();
        for f in &frames {
            enc.encode(f, &mut wire);
        }
        let mut dec = FrameDecoder::new(frame::MAX_FRAME_LEN);
        dec.set_framing(framing);
        for f in &frames {
            let again = dec
                .decode(&mut wire)
                .expect("re-encoded v5 frame")
                .expect("complete");
            assert_eq!(&again, f);
        }
        assert!(wire.is_empty());
    }
});
