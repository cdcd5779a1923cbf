//! CQL frames ("envelopes" in v5): the header, raw frames, the decoder and the encoder.
//!
//! # Layout (v3, v4, and v5 inside segments)
//!
//! ```text
//!  0         8        16        24        32         40
//!  +---------+---------+---------+---------+---------+
//!  | version |  flags  |      stream       | opcode  |
//!  +---------+---------+---------+---------+---------+
//!  |                length                 |
//!  +---------+---------+---------+---------+
//!  |  body (length bytes)  ...
//! ```
//!
//! `version`'s top bit is the direction (0x80 = response); `stream` is a signed 16-bit id
//! (-1 for server-pushed EVENTs); `length` is the body length, big-endian (the protocol allows
//! 256 MB; the proxy accepts what its listener's cap allows, by default Cassandra's own
//! 16 MiB, see [`DEFAULT_MAX_FRAME_SIZE`]).
//! Flags: 0x01 compressed body, 0x02 tracing, 0x04 custom payload, 0x08 warning, 0x10 beta.
//! v1/v2 headers (8 bytes, a one-byte stream) are read and written too, only so that a very
//! old client can be told its version is unsupported.
//!
//! A [`Frame`] keeps its body exactly as it was on the wire (still compressed if flag 0x01
//! says so): the proxy relays frames without looking inside them, and decodes a body only
//! where it must read or rewrite it.
//!
//! # Framing
//!
//! v3/v4 connections, and v5 connections until the server's READY or AUTHENTICATE, put
//! frames straight on the wire ([`Framing::Legacy`]). Afterwards a v5 connection wraps
//! frames in checksummed segments ([`Framing::V5`], see [`crate::segment`]).
//!
//! # Body compression (v3/v4)
//!
//! With `COMPRESSION` negotiated in STARTUP, a frame whose flag 0x01 is set carries a
//! compressed body: `lz4` = `[int uncompressed length]` + an LZ4 block; `snappy` = a raw
//! snappy block. See [`BodyCompression`]. Either announces its uncompressed length up front,
//! and that length is checked against the cap before anything is allocated for it.
//!
//! # Bounds
//!
//! Buffers grow with the bytes that arrive, never with a length the peer announces: the
//! decoder checks a header's length against its cap and then waits for the bytes, without
//! reserving room for them. A client frame over the cap can be discarded as it streams in
//! ([`FrameDecoder::discard_oversized`]), the way Cassandra does, and answered with
//! [`CqlError::RequestTooBig`] on its stream.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use crate::compression::BodyCompression;
use crate::error::CqlError;
use crate::segment;

/// Length of a v3+ frame header.
pub const HEADER_LEN: usize = 9;
/// Length of a v1/v2 frame header (one-byte stream id).
pub const LEGACY_V2_HEADER_LEN: usize = 8;
/// The protocol's own bound on a frame body: 256 MB.
pub const MAX_FRAME_LEN: usize = 256 * 1024 * 1024;
/// Cassandra 5.0's default `native_transport_max_frame_size` (16 MiB): the largest frame,
/// header included, it accepts from a client; the proxy's default cap.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;
/// A bound for frames exchanged before READY (OPTIONS, STARTUP, AUTHENTICATE, …).
pub const HANDSHAKE_MAX_FRAME_LEN: usize = 64 * 1024;

/// Message opcodes (spec §2.4).
pub mod opcode {
    /// ERROR (response).
    pub const ERROR: u8 = 0x00;
    /// STARTUP (request).
    pub const STARTUP: u8 = 0x01;
    /// READY (response).
    pub const READY: u8 = 0x02;
    /// AUTHENTICATE (response).
    pub const AUTHENTICATE: u8 = 0x03;
    /// OPTIONS (request).
    pub const OPTIONS: u8 = 0x05;
    /// SUPPORTED (response).
    pub const SUPPORTED: u8 = 0x06;
    /// QUERY (request).
    pub const QUERY: u8 = 0x07;
    /// RESULT (response).
    pub const RESULT: u8 = 0x08;
    /// PREPARE (request).
    pub const PREPARE: u8 = 0x09;
    /// EXECUTE (request).
    pub const EXECUTE: u8 = 0x0A;
    /// REGISTER (request).
    pub const REGISTER: u8 = 0x0B;
    /// EVENT (server push, stream -1).
    pub const EVENT: u8 = 0x0C;
    /// BATCH (request).
    pub const BATCH: u8 = 0x0D;
    /// AUTH_CHALLENGE (response).
    pub const AUTH_CHALLENGE: u8 = 0x0E;
    /// AUTH_RESPONSE (request).
    pub const AUTH_RESPONSE: u8 = 0x0F;
    /// AUTH_SUCCESS (response).
    pub const AUTH_SUCCESS: u8 = 0x10;

    /// The spec's name for an opcode, for logs and error messages.
    pub fn name(op: u8) -> &'static str {
        match op {
            ERROR => "ERROR",
            STARTUP => "STARTUP",
            READY => "READY",
            AUTHENTICATE => "AUTHENTICATE",
            OPTIONS => "OPTIONS",
            SUPPORTED => "SUPPORTED",
            QUERY => "QUERY",
            RESULT => "RESULT",
            PREPARE => "PREPARE",
            EXECUTE => "EXECUTE",
            REGISTER => "REGISTER",
            EVENT => "EVENT",
            BATCH => "BATCH",
            AUTH_CHALLENGE => "AUTH_CHALLENGE",
            AUTH_RESPONSE => "AUTH_RESPONSE",
            AUTH_SUCCESS => "AUTH_SUCCESS",
            _ => "unknown",
        }
    }
}

/// Header flags (spec §2.2).
pub mod flags {
    /// The body is compressed with the algorithm negotiated in STARTUP (v3/v4).
    pub const COMPRESSION: u8 = 0x01;
    /// Tracing: a response body starts with a 16-byte tracing id.
    pub const TRACING: u8 = 0x02;
    /// A `[bytes map]` custom payload precedes the message (after tracing id and warnings).
    pub const CUSTOM_PAYLOAD: u8 = 0x04;
    /// A response body carries a `[string list]` of warnings (after the tracing id).
    pub const WARNING: u8 = 0x08;
    /// The client opts in to a beta protocol version.
    pub const USE_BETA: u8 = 0x10;
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Protocol version, without the direction bit.
    pub version: u8,
    /// True for server → client frames (the 0x80 bit of the version byte).
    pub response: bool,
    /// Header flags ([`flags`]).
    pub flags: u8,
    /// Stream id.
    pub stream: i16,
    /// Message opcode ([`opcode`]).
    pub opcode: u8,
    /// Body length as announced.
    pub body_len: u32,
}

impl FrameHeader {
    /// The header length implied by a frame's first byte: 8 for v1/v2, 9 otherwise.
    pub fn len_for(first_byte: u8) -> usize {
        if first_byte & 0x7f < 3 {
            LEGACY_V2_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Parses a header from the start of `buf`; `None` if `buf` is shorter than the header.
    pub fn parse(buf: &[u8]) -> Option<FrameHeader> {
        let first = *buf.first()?;
        let len = Self::len_for(first);
        if buf.len() < len {
            return None;
        }
        let version = first & 0x7f;
        let response = first & 0x80 != 0;
        let (stream, rest) = if len == HEADER_LEN {
            (i16::from_be_bytes([buf[2], buf[3]]), &buf[4..9])
        } else {
            (i16::from(buf[2] as i8), &buf[3..8])
        };
        Some(FrameHeader {
            version,
            response,
            flags: buf[1],
            stream,
            opcode: rest[0],
            body_len: u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]),
        })
    }

    /// This header's encoded length.
    pub fn encoded_len(&self) -> usize {
        if self.version < 3 {
            LEGACY_V2_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Writes the header (with `body_len` as given).
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.version | if self.response { 0x80 } else { 0 });
        out.put_u8(self.flags);
        if self.version < 3 {
            out.put_i8(self.stream as i8);
        } else {
            out.put_i16(self.stream);
        }
        out.put_u8(self.opcode);
        out.put_u32(self.body_len);
    }
}

/// A frame with its body as it was on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header; [`Frame::encode`] writes `body.len()` as the length, whatever `body_len` says.
    pub header: FrameHeader,
    /// The raw body (compressed if `header.flags` has [`flags::COMPRESSION`]).
    pub body: Bytes,
}

impl Frame {
    /// A frame with the given header fields; `body_len` is taken from `body`.
    pub fn new(
        version: u8,
        response: bool,
        flags: u8,
        stream: i16,
        opcode: u8,
        body: impl Into<Bytes>,
    ) -> Frame {
        let body = body.into();
        Frame {
            header: FrameHeader {
                version,
                response,
                flags,
                stream,
                opcode,
                body_len: body.len() as u32,
            },
            body,
        }
    }

    /// The same frame on another stream (e.g. an upstream ERROR answered on the client's stream).
    pub fn with_stream(mut self, stream: i16) -> Frame {
        self.header.stream = stream;
        self
    }

    /// Header plus body length.
    pub fn encoded_len(&self) -> usize {
        self.header.encoded_len() + self.body.len()
    }

    /// Appends header and body to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        let header = FrameHeader {
            body_len: self.body.len() as u32,
            ..self.header
        };
        header.encode(out);
        out.put_slice(&self.body);
    }

    /// The frame's bytes.
    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// True if the body is compressed (flag 0x01).
    pub fn is_compressed(&self) -> bool {
        self.header.flags & flags::COMPRESSION != 0
    }

    /// The body uncompressed: the raw body, or decompressed with `compression` if flag 0x01
    /// is set, at most `max` bytes ([`CqlError::BodyTooLarge`] otherwise, found before
    /// decompressing). A compressed frame on a connection without compression is an error.
    pub fn plain_body(&self, compression: BodyCompression, max: usize) -> Result<Bytes, CqlError> {
        if self.is_compressed() {
            if compression == BodyCompression::None {
                return Err(CqlError::Decompress(
                    "compressed frame but no compression was negotiated".into(),
                ));
            }
            compression.decompress_bounded(&self.body, max)
        } else {
            Ok(self.body.clone())
        }
    }
}

/// Which framing applies on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Frames straight on the wire: v3/v4, and v5 before READY/AUTHENTICATE.
    #[default]
    Legacy,
    /// v5 after the handshake: frames inside CRC-checked segments, lz4-compressed if
    /// `COMPRESSION: lz4` was negotiated.
    V5 {
        /// Segments are lz4-compressed.
        lz4: bool,
    },
}

/// Splits a byte stream into [`Frame`]s.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_len: usize,
    framing: Framing,
    /// v5: frames of a self-contained segment not yet handed out.
    ready: VecDeque<Frame>,
    /// v5: the part of a large frame gathered from non-self-contained segments so far.
    partial: BytesMut,
    /// Legacy framing: requests of this version over the cap are discarded as they arrive
    /// instead of failing at once.
    discard_version: Option<u8>,
    /// The oversized frame being discarded.
    discarding: Option<Discarding>,
}

/// An oversized frame whose bytes are being dropped as they arrive.
#[derive(Debug, Clone, Copy)]
struct Discarding {
    /// Bytes of it still to come.
    remaining: u64,
    /// Its length, header included.
    total: u64,
    version: u8,
    stream: i16,
}

impl FrameDecoder {
    /// A legacy-framing decoder rejecting bodies longer than `max_frame_len`.
    pub fn new(max_frame_len: usize) -> Self {
        FrameDecoder {
            max_frame_len,
            framing: Framing::Legacy,
            ready: VecDeque::new(),
            partial: BytesMut::new(),
            discard_version: None,
            discarding: None,
        }
    }

    /// Legacy framing: a request of protocol `version` over the cap is not an immediate error
    /// but is skipped as its bytes arrive (nothing of it is buffered); once it has passed,
    /// [`FrameDecoder::decode`] returns [`CqlError::RequestTooBig`] and the decoder is ready
    /// for the next frame. This is what Cassandra does with a request over
    /// `native_transport_max_frame_size`. Any other oversized header (a response, another
    /// version: garbage) stays [`CqlError::FrameTooLarge`], as does every oversized frame in
    /// v5 framing. `None` turns the mode off.
    pub fn discard_oversized(&mut self, version: Option<u8>) {
        self.discard_version = version;
    }

    /// Switches framing (e.g. to v5 segments after READY).
    pub fn set_framing(&mut self, framing: Framing) {
        self.framing = framing;
    }

    /// The framing in use.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Changes the body-length bound (e.g. from the handshake bound to the relay bound).
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }

    /// True if the decoder holds bytes of an unfinished v5 frame or frames not yet returned,
    /// or is in the middle of discarding an oversized frame.
    pub fn has_buffered(&self) -> bool {
        !self.ready.is_empty() || !self.partial.is_empty() || self.discarding.is_some()
    }

    /// The next frame: consumes its bytes from `buf`. `Ok(None)`: more bytes are needed.
    /// The announced length is checked before the body is buffered, and no room is reserved
    /// for it: `buf` grows only as the caller reads bytes into it.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CqlError> {
        match self.framing {
            Framing::Legacy => self.decode_top_level(buf),
            Framing::V5 { lz4 } => self.decode_v5(buf, lz4),
        }
    }

    /// Legacy framing straight on the wire, with the discard mode.
    fn decode_top_level(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CqlError> {
        if let Some(d) = self.discarding.as_mut() {
            let n = usize::try_from(d.remaining).map_or(buf.len(), |r| r.min(buf.len()));
            buf.advance(n);
            d.remaining -= n as u64;
            if d.remaining > 0 {
                return Ok(None);
            }
            let d = *d;
            self.discarding = None;
            return Err(CqlError::RequestTooBig {
                len: d.total,
                max: self.max_frame_len + HEADER_LEN,
                version: d.version,
                stream: d.stream,
            });
        }
        if let (Some(version), Some(h)) = (self.discard_version, FrameHeader::parse(buf)) {
            if h.version == version && !h.response && h.body_len as usize > self.max_frame_len {
                let total = u64::from(h.body_len) + h.encoded_len() as u64;
                self.discarding = Some(Discarding {
                    remaining: total,
                    total,
                    version: h.version,
                    stream: h.stream,
                });
                return self.decode_top_level(buf);
            }
        }
        self.decode_legacy(buf)
    }

    fn check_len(&self, header: &FrameHeader) -> Result<usize, CqlError> {
        let len = header.body_len as usize;
        if len > self.max_frame_len {
            return Err(CqlError::FrameTooLarge {
                len: u64::from(header.body_len),
                max: self.max_frame_len,
                version: header.version,
                stream: header.stream,
            });
        }
        Ok(len)
    }

    fn decode_legacy(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, CqlError> {
        let Some(header) = FrameHeader::parse(buf) else {
            return Ok(None);
        };
        let body_len = self.check_len(&header)?;
        let header_len = header.encoded_len();
        let total = header_len + body_len;
        if buf.len() < total {
            // No `reserve` for the announced length: the buffer grows as bytes arrive.
            return Ok(None);
        }
        buf.advance(header_len);
        let body = buf.split_to(body_len).freeze();
        Ok(Some(Frame { header, body }))
    }

    fn decode_v5(&mut self, buf: &mut BytesMut, lz4: bool) -> Result<Option<Frame>, CqlError> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Ok(Some(frame));
            }
            let Some(seg) = segment::decode(buf, lz4)? else {
                return Ok(None);
            };
            if seg.self_contained {
                if !self.partial.is_empty() {
                    return Err(CqlError::malformed(
                        "v5 segment",
                        "self-contained segment in the middle of a multi-segment frame",
                    ));
                }
                let mut payload = BytesMut::from(&seg.payload[..]);
                while !payload.is_empty() {
                    match self.decode_legacy(&mut payload)? {
                        Some(frame) => self.ready.push_back(frame),
                        None => {
                            return Err(CqlError::malformed(
                                "v5 segment",
                                "self-contained segment ends inside a frame",
                            ));
                        }
                    }
                }
            } else {
                self.partial.extend_from_slice(&seg.payload);
                if let Some(header) = FrameHeader::parse(&self.partial) {
                    let total = header.encoded_len() + self.check_len(&header)?;
                    if self.partial.len() > total {
                        return Err(CqlError::malformed(
                            "v5 segment",
                            "non-self-contained segments carry more than one frame",
                        ));
                    }
                    if self.partial.len() == total {
                        let mut whole = std::mem::take(&mut self.partial);
                        if let Some(frame) = self.decode_legacy(&mut whole)? {
                            return Ok(Some(frame));
                        }
                    }
                }
            }
        }
    }
}

/// Writes [`Frame`]s in the connection's framing.
#[derive(Debug, Default)]
pub struct FrameEncoder {
    framing: Framing,
}

impl FrameEncoder {
    /// A legacy-framing encoder.
    pub fn new() -> Self {
        FrameEncoder::default()
    }

    /// Switches framing (e.g. to v5 segments after READY).
    pub fn set_framing(&mut self, framing: Framing) {
        self.framing = framing;
    }

    /// The framing in use.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Appends `frame` to `out`: as is (legacy), or wrapped in v5 segments: one self-contained
    /// segment when the frame fits in a segment's 128 KiB payload, else split across
    /// non-self-contained segments.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) {
        match self.framing {
            Framing::Legacy => frame.encode(out),
            Framing::V5 { lz4 } => {
                let bytes = frame.to_bytes();
                if bytes.len() <= segment::MAX_PAYLOAD_LEN {
                    segment::encode(&bytes, true, lz4, out);
                } else {
                    for chunk in bytes.chunks(segment::MAX_PAYLOAD_LEN) {
                        segment::encode(chunk, false, lz4, out);
                    }
                }
            }
        }
    }

    /// Appends several frames; in v5 small frames share self-contained segments.
    pub fn encode_all<'a>(
        &mut self,
        frames: impl IntoIterator<Item = &'a Frame>,
        out: &mut BytesMut,
    ) {
        let Framing::V5 { lz4 } = self.framing else {
            for frame in frames {
                frame.encode(out);
            }
            return;
        };
        let mut pending = BytesMut::new();
        for frame in frames {
            if frame.encoded_len() > segment::MAX_PAYLOAD_LEN {
                if !pending.is_empty() {
                    segment::encode(&pending, true, lz4, out);
                    pending.clear();
                }
                self.encode(frame, out);
                continue;
            }
            if pending.len() + frame.encoded_len() > segment::MAX_PAYLOAD_LEN {
                segment::encode(&pending, true, lz4, out);
                pending.clear();
            }
            frame.encode(&mut pending);
        }
        if !pending.is_empty() {
            segment::encode(&pending, true, lz4, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
