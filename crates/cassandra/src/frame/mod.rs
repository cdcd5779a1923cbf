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

use bytes::{BufMut, Bytes, BytesMut};

pub use crate::compression::BodyCompression;
use crate::error::CqlError;

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

mod codec;
pub use codec::{FrameDecoder, FrameEncoder, Framing, Piece};

#[cfg(test)]
mod tests;
