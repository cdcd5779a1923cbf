//! The crate's error type.
//!
//! Every error carries the CQL error code the proxy should answer the client with
//! ([`CqlError::code`]): malformed or unexpected input is a protocol error (`0x000A`), a failure
//! on the proxy's own side (compressing a body) is a server error (`0x0000`), and a request
//! over the frame cap is what Cassandra calls it, an invalid request (`0x2200`) — the one error
//! after which the connection can go on ([`CqlError::is_fatal`]).

use crate::frame::Frame;
use crate::messages::{codes, error_frame};

/// What went wrong while reading or writing CQL bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CqlError {
    /// A frame announced (or grew to) a body longer than the configured bound. Checked at the
    /// header, before the body is buffered.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The announced length.
        len: u64,
        /// The configured bound.
        max: usize,
        /// The protocol version in the offending header (without the direction bit).
        version: u8,
        /// The stream id in the offending header.
        stream: i16,
    },
    /// A client frame over the cap, discarded as it arrived
    /// ([`crate::FrameDecoder::discard_oversized`]). Worded and coded as Cassandra 5.0 words it
    /// (`Envelope.Decoder`: an `InvalidRequestException` on the frame's stream); the
    /// connection stays usable.
    #[error("Request is too big: length {len} exceeds maximum allowed length {max}.")]
    RequestTooBig {
        /// The frame's length, header included.
        len: u64,
        /// The cap, header included.
        max: usize,
        /// The protocol version in the offending header (without the direction bit).
        version: u8,
        /// The stream id in the offending header.
        stream: i16,
    },
    /// A compressed body announcing an uncompressed length over the bound; refused before
    /// anything is decompressed.
    #[error("{algorithm} body announces {len} uncompressed bytes, over the limit of {max} bytes")]
    BodyTooLarge {
        /// `"lz4"` or `"snappy"`.
        algorithm: &'static str,
        /// The announced uncompressed length.
        len: u64,
        /// The bound.
        max: usize,
    },
    /// Bytes that do not follow the protocol's layout.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which structure was being read ("frame header", "STARTUP body", "v5 segment", …).
        what: &'static str,
        /// What exactly was wrong.
        detail: String,
    },
    /// A well-formed message that is not allowed at this point of the conversation.
    #[error("unexpected {} message {context}", crate::frame::opcode::name(*.opcode))]
    Unexpected {
        /// The message's opcode.
        opcode: u8,
        /// Where it arrived ("during the upstream login", …).
        context: &'static str,
    },
    /// A v5 segment whose header CRC24 or payload CRC32 does not match.
    #[error("v5 segment {part} CRC mismatch (computed {computed:#x}, received {received:#x})")]
    SegmentCrc {
        /// `"header"` or `"payload"`.
        part: &'static str,
        /// The CRC computed over the received bytes.
        computed: u32,
        /// The CRC found on the wire.
        received: u32,
    },
    /// A compressed body (v4 frame flag 0x01) or an lz4 v5 segment that fails to decompress,
    /// or a compressed frame on a connection that negotiated no compression.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The proxy could not compress a body it rewrote.
    #[error("compression failed: {0}")]
    Compress(String),
}

impl CqlError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        CqlError::Malformed {
            what,
            detail: detail.into(),
        }
    }

    /// The CQL error code to answer the client with: [`codes::PROTOCOL_ERROR`] for bad input,
    /// [`codes::SERVER_ERROR`] for the proxy's own failures.
    pub fn code(&self) -> i32 {
        match self {
            CqlError::Compress(_) => codes::SERVER_ERROR,
            CqlError::RequestTooBig { .. } => codes::INVALID,
            _ => codes::PROTOCOL_ERROR,
        }
    }

    /// False only for [`CqlError::RequestTooBig`]: the oversized frame is gone and the
    /// connection can carry on, as with Cassandra. Every other error closes the connection.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CqlError::RequestTooBig { .. })
    }

    /// An ERROR frame telling the client about this error ([`CqlError::code`] and the
    /// `Display` text) at the given version and stream.
    pub fn to_error_frame(&self, version: u8, stream: i16) -> Frame {
        error_frame(version, stream, self.code(), &self.to_string())
    }
}
