//! CQL v5: one segment (`segment::decode`, plain and lz4), fed in arbitrary chunks.
//!
//! Invariants: `Ok(None)` leaves the buffer untouched; a decoded segment re-encodes and
//! decodes back to the same segment.
#![no_main]

#[path = "common/mod.rs"]
mod common;

use bytes::BytesMut;
use dbproxy_cassandra::segment;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (seed, chunks) = common::chunks(data);
    let lz4 = seed & 1 != 0;
    let mut buf = BytesMut::new();
    'feed: for c in chunks {
        buf.extend_from_slice(c);
        loop {
            let before = buf.clone();
            match segment::decode(&mut buf, lz4) {
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) changed the buffer");
                    break;
                }
                Ok(Some(seg)) => {
                    assert!(seg.payload.len() <= segment::MAX_PAYLOAD_LEN);
                    let mut enc = BytesMut::new();
                    segment::encode(&seg.payload, seg.self_contained, lz4, &mut enc);
                    let again = segment::decode(&mut enc, lz4)
                        .expect("re-encoded segment")
                        .expect("complete");
                    assert_eq!(again, seg);
                    assert!(enc.is_empty());
                }
                Err(_) => break 'feed,
            }
        }
    }
});
