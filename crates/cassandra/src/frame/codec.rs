//! Splitting a byte stream into frames, and writing frames, in either framing.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::{Frame, FrameHeader, HEADER_LEN};
use crate::error::CqlError;
use crate::segment;

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
    /// Legacy framing: frames longer than this may be relayed as they arrive
    /// ([`FrameDecoder::next_piece`]); `None`, always whole.
    pass_min: Option<usize>,
    /// Bytes of the frame being relayed as it arrives still to come.
    passing: u64,
    /// The frame at the head of the buffer was asked about and must be decoded whole.
    whole: bool,
}

/// What [`FrameDecoder::next_piece`] hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// A whole frame.
    Frame(Frame),
    /// Bytes of a frame being relayed as they arrive, exactly as they were on the wire: its
    /// header with the first part of its body, then the rest in later pieces. Nothing else may
    /// be written to the same peer until [`FrameDecoder::is_passing`] is false again.
    Raw(Bytes),
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
            pass_min: None,
            passing: 0,
            whole: false,
        }
    }

    /// Legacy framing: a frame longer than `min` bytes (header included) that the caller does
    /// not need whole is handed out by [`FrameDecoder::next_piece`] as its bytes arrive,
    /// instead of being held until its last byte (up to the cap per connection and
    /// direction). The cap still applies. `None` turns the mode off; v5 framing always
    /// decodes whole frames (a segment's CRC covers its payload).
    pub fn pass_large_frames(&mut self, min: Option<usize>) {
        self.pass_min = min.map(|m| m.max(HEADER_LEN + 1));
    }

    /// True while a frame is being relayed as it arrives.
    pub fn is_passing(&self) -> bool {
        self.passing > 0
    }

    /// Like [`FrameDecoder::decode`], but a large frame (see
    /// [`FrameDecoder::pass_large_frames`]) that is not complete yet is offered to `whole`
    /// once, with its header and the first `min` bytes of its body as they were on the wire
    /// (possibly compressed). If `whole` answers false, the frame is handed out as
    /// [`Piece::Raw`] pieces as it arrives; otherwise it is decoded whole as usual.
    pub fn next_piece(
        &mut self,
        buf: &mut BytesMut,
        whole: impl FnOnce(&FrameHeader, &[u8]) -> bool,
    ) -> Result<Option<Piece>, CqlError> {
        if self.passing > 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = usize::try_from(self.passing).map_or(buf.len(), |r| r.min(buf.len()));
            self.passing -= n as u64;
            return Ok(Some(Piece::Raw(buf.split_to(n).freeze())));
        }
        if let (Some(min), Framing::Legacy, None, false) =
            (self.pass_min, self.framing, self.discarding, self.whole)
        {
            if let Some(h) = FrameHeader::parse(buf) {
                let total = h.encoded_len() + h.body_len as usize;
                if h.body_len as usize <= self.max_frame_len && total > min && buf.len() < total {
                    if buf.len() < min {
                        return Ok(None);
                    }
                    if whole(&h, &buf[h.encoded_len()..]) {
                        self.whole = true;
                    } else {
                        let n = buf.len();
                        self.passing = (total - n) as u64;
                        return Ok(Some(Piece::Raw(buf.split_to(n).freeze())));
                    }
                }
            }
        }
        let frame = self.decode(buf)?;
        if frame.is_some() {
            self.whole = false;
        }
        Ok(frame.map(Piece::Frame))
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
