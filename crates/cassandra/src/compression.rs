//! v3/v4 body compression (frame flag 0x01), negotiated by STARTUP's `COMPRESSION` option.
//!
//! `lz4` = `[int uncompressed length]` + one LZ4 block; `snappy` = one raw snappy block (its
//! uncompressed length a varint up front). Both lengths are read and checked against a bound
//! before anything is allocated or decompressed ([`BodyCompression::decompress_bounded`]).

use bytes::Bytes;

use crate::error::CqlError;
use crate::frame::DEFAULT_MAX_FRAME_SIZE;

/// The body compression negotiated by STARTUP's `COMPRESSION` option (v3/v4 frame flag 0x01).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyCompression {
    /// No compression negotiated.
    #[default]
    None,
    /// `lz4`: `[int uncompressed length]` followed by one LZ4 block.
    Lz4,
    /// `snappy`: one raw snappy block.
    Snappy,
}

impl BodyCompression {
    /// From a STARTUP `COMPRESSION` value (case-insensitive); `None` if unknown.
    pub fn from_option(value: &str) -> Option<BodyCompression> {
        if value.eq_ignore_ascii_case("lz4") {
            Some(BodyCompression::Lz4)
        } else if value.eq_ignore_ascii_case("snappy") {
            Some(BodyCompression::Snappy)
        } else {
            None
        }
    }

    /// From a STARTUP options list: the `COMPRESSION` entry, [`BodyCompression::None`] if
    /// absent or unknown.
    pub fn from_startup_options(options: &[(String, String)]) -> BodyCompression {
        options
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("COMPRESSION"))
            .and_then(|(_, v)| BodyCompression::from_option(v))
            .unwrap_or_default()
    }

    /// Decompresses a body; the uncompressed size is bounded by [`DEFAULT_MAX_FRAME_SIZE`].
    pub fn decompress(&self, body: &[u8]) -> Result<Bytes, CqlError> {
        self.decompress_bounded(body, DEFAULT_MAX_FRAME_SIZE)
    }

    /// Decompresses a body whose uncompressed size must not exceed `max`: the length the
    /// body announces (lz4's `[int]` prefix, snappy's varint) is checked before decompressing,
    /// so nothing larger than `max` is ever allocated ([`CqlError::BodyTooLarge`]).
    pub fn decompress_bounded(&self, body: &[u8], max: usize) -> Result<Bytes, CqlError> {
        match self {
            BodyCompression::None => Ok(Bytes::copy_from_slice(body)),
            BodyCompression::Lz4 => {
                if body.len() < 4 {
                    return Err(CqlError::Decompress("lz4 body shorter than 4 bytes".into()));
                }
                let len = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
                if len > max {
                    return Err(CqlError::BodyTooLarge {
                        algorithm: "lz4",
                        len: len as u64,
                        max,
                    });
                }
                lz4_flex::block::decompress(&body[4..], len)
                    .map(Bytes::from)
                    .map_err(|e| CqlError::Decompress(format!("lz4: {e}")))
            }
            BodyCompression::Snappy => {
                let len = snap::raw::decompress_len(body)
                    .map_err(|e| CqlError::Decompress(format!("snappy: {e}")))?;
                if len > max {
                    return Err(CqlError::BodyTooLarge {
                        algorithm: "snappy",
                        len: len as u64,
                        max,
                    });
                }
                snap::raw::Decoder::new()
                    .decompress_vec(body)
                    .map(Bytes::from)
                    .map_err(|e| CqlError::Decompress(format!("snappy: {e}")))
            }
        }
    }

    /// Compresses a body in this algorithm's wire format.
    pub fn compress(&self, body: &[u8]) -> Result<Bytes, CqlError> {
        match self {
            BodyCompression::None => Ok(Bytes::copy_from_slice(body)),
            BodyCompression::Lz4 => {
                let len = u32::try_from(body.len())
                    .map_err(|_| CqlError::Compress("body too long for lz4".into()))?;
                let mut out =
                    Vec::with_capacity(4 + lz4_flex::block::get_maximum_output_size(body.len()));
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&lz4_flex::block::compress(body));
                Ok(Bytes::from(out))
            }
            BodyCompression::Snappy => snap::raw::Encoder::new()
                .compress_vec(body)
                .map(Bytes::from)
                .map_err(|e| CqlError::Compress(format!("snappy: {e}"))),
        }
    }
}
