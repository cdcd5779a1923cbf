//! v5 segment framing ("frames" in the v5 spec §2.1–2.2; CQL frames are then "envelopes").
//!
//! # Layout
//!
//! Uncompressed segment: a 6-byte header, the payload, a 4-byte trailer.
//!
//! ```text
//! header (little-endian, 48 bits):
//!   bits  0..17  payload length (≤ 131,071)
//!   bit  17      self-contained flag
//!   bits 18..24  padding
//!   bits 24..48  CRC24 of the first 3 header bytes
//! payload        one or more whole frames (self-contained), or a slice of one large frame
//! trailer        CRC32 of the payload, little-endian
//! ```
//!
//! lz4 segment: an 8-byte header, the compressed payload, a 4-byte trailer.
//!
//! ```text
//! header (little-endian, 64 bits):
//!   bits  0..17  compressed length
//!   bits 17..34  uncompressed length (0: the payload is stored uncompressed)
//!   bit  34      self-contained flag
//!   bits 35..40  padding
//!   bits 40..64  CRC24 of the first 5 header bytes
//! payload        an LZ4 block (no length prefix)
//! trailer        CRC32 of the compressed payload, little-endian
//! ```
//!
//! The CRCs are Cassandra's: CRC24 with polynomial 0x1974F0B and initial value 0x875060,
//! CRC32 seeded with the bytes FA 2D 55 CA (cassandra-protocol's `crc` module).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cassandra_protocol::crc::{crc24, crc32};

use crate::error::CqlError;

/// The largest payload a segment carries (2^17 − 1 bytes).
pub const MAX_PAYLOAD_LEN: usize = (1 << 17) - 1;
/// Header length of an uncompressed segment.
pub const UNCOMPRESSED_HEADER_LEN: usize = 6;
/// Header length of an lz4 segment.
pub const LZ4_HEADER_LEN: usize = 8;
/// Trailer (payload CRC32) length.
pub const TRAILER_LEN: usize = 4;

/// One decoded segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Whether the payload holds whole frames only.
    pub self_contained: bool,
    /// The (decompressed) payload.
    pub payload: Bytes,
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .enumerate()
        .fold(0u64, |acc, (i, b)| acc | (u64::from(*b) << (8 * i)))
}

/// Takes one segment off the front of `buf`; `Ok(None)` if it is incomplete.
/// CRCs are checked; an lz4 payload is decompressed (at most [`MAX_PAYLOAD_LEN`] bytes: the
/// header's uncompressed length is a 17-bit field, so no segment can announce more).
pub fn decode(buf: &mut BytesMut, lz4: bool) -> Result<Option<Segment>, CqlError> {
    let header_len = if lz4 {
        LZ4_HEADER_LEN
    } else {
        UNCOMPRESSED_HEADER_LEN
    };
    if buf.len() < header_len {
        return Ok(None);
    }
    let covered = header_len - 3;
    let header = le(&buf[..covered]);
    let received_crc = le(&buf[covered..header_len]) as u32;
    let computed_crc = (crc24(&buf[..covered]) as u32) & 0xff_ffff;
    if received_crc != computed_crc {
        return Err(CqlError::SegmentCrc {
            part: "header",
            computed: computed_crc,
            received: received_crc,
        });
    }
    let payload_len = (header & 0x1ffff) as usize;
    let (uncompressed_len, self_contained) = if lz4 {
        (((header >> 17) & 0x1ffff) as usize, header & (1 << 34) != 0)
    } else {
        (0, header & (1 << 17) != 0)
    };
    let total = header_len + payload_len + TRAILER_LEN;
    if buf.len() < total {
        // No `reserve` for the announced length: the buffer grows as bytes arrive.
        return Ok(None);
    }
    let payload_end = header_len + payload_len;
    let received_crc = le(&buf[payload_end..total]) as u32;
    let computed_crc = crc32(&buf[header_len..payload_end]);
    if received_crc != computed_crc {
        return Err(CqlError::SegmentCrc {
            part: "payload",
            computed: computed_crc,
            received: received_crc,
        });
    }
    buf.advance(header_len);
    let raw = buf.split_to(payload_len).freeze();
    buf.advance(TRAILER_LEN);
    let payload = if lz4 && uncompressed_len > 0 {
        lz4_flex::block::decompress(&raw, uncompressed_len)
            .map(Bytes::from)
            .map_err(|e| CqlError::Decompress(format!("lz4 segment: {e}")))?
    } else {
        raw
    };
    Ok(Some(Segment {
        self_contained,
        payload,
    }))
}

/// Appends one segment carrying `payload` (at most [`MAX_PAYLOAD_LEN`] bytes; longer
/// payloads must be split by the caller, see [`crate::frame::FrameEncoder`]). With `lz4`, the
/// payload is stored uncompressed (uncompressed length 0) when compression would not shrink it.
pub fn encode(payload: &[u8], self_contained: bool, lz4: bool, out: &mut BytesMut) {
    debug_assert!(payload.len() <= MAX_PAYLOAD_LEN);
    if lz4 {
        let compressed = lz4_flex::block::compress(payload);
        let (body, uncompressed_len): (&[u8], u64) = if compressed.len() < payload.len() {
            (&compressed, payload.len() as u64)
        } else {
            (payload, 0)
        };
        let mut header = (body.len() as u64) | (uncompressed_len << 17);
        if self_contained {
            header |= 1 << 34;
        }
        let bytes = header.to_le_bytes();
        out.reserve(LZ4_HEADER_LEN + body.len() + TRAILER_LEN);
        out.put_slice(&bytes[..5]);
        out.put_slice(&(crc24(&bytes[..5]) as u32).to_le_bytes()[..3]);
        out.put_slice(body);
        out.put_u32_le(crc32(body));
    } else {
        let mut header = payload.len() as u64;
        if self_contained {
            header |= 1 << 17;
        }
        let bytes = header.to_le_bytes();
        out.reserve(UNCOMPRESSED_HEADER_LEN + payload.len() + TRAILER_LEN);
        out.put_slice(&bytes[..3]);
        out.put_slice(&(crc24(&bytes[..3]) as u32).to_le_bytes()[..3]);
        out.put_slice(payload);
        out.put_u32_le(crc32(payload));
    }
}
