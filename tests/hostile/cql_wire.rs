//! CQL bytes for the hostile cases: frames as a client writes them (including wrong ones), and
//! the frames that come back, in legacy framing or v5 segments.

use std::time::Duration;

use bytes::BytesMut;
use dbproxy_cassandra::{Frame, FrameDecoder, FrameEncoder, Framing, messages};
use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) const OPTIONS: u8 = 0x05;
pub(crate) const STARTUP: u8 = 0x01;
pub(crate) const READY: u8 = 0x02;
pub(crate) const ERROR: u8 = 0x00;
pub(crate) const SUPPORTED: u8 = 0x06;
pub(crate) const RESULT: u8 = 0x08;
pub(crate) const QUERY: u8 = 0x07;
pub(crate) const REGISTER: u8 = 0x0B;
pub(crate) const AUTH_RESPONSE: u8 = 0x0F;
pub(crate) const PROTOCOL_ERROR: i32 = 0x000A;

/// A frame as written: the version byte as given (direction bit included), a 9-byte header
/// (8 bytes, one-byte stream, for versions 1 and 2), `body` with its true length.
pub(crate) fn raw(version_byte: u8, stream: i16, opcode: u8, body: &[u8]) -> Vec<u8> {
    raw_len(version_byte, stream, opcode, body.len() as u32, body)
}

/// A frame whose header announces `len`, whatever follows.
pub(crate) fn raw_len(version_byte: u8, stream: i16, opcode: u8, len: u32, body: &[u8]) -> Vec<u8> {
    let mut out = vec![version_byte, 0];
    if version_byte & 0x7f < 3 {
        out.push(stream as u8);
    } else {
        out.extend_from_slice(&stream.to_be_bytes());
    }
    out.push(opcode);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A CQL [string map] from raw keys and values.
pub(crate) fn string_map(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = (pairs.len() as u16).to_be_bytes().to_vec();
    for (k, v) in pairs {
        for s in [k, v] {
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s);
        }
    }
    out
}

/// STARTUP with these options (legacy framing, as every STARTUP is).
pub(crate) fn startup(version: u8, stream: i16, options: &[(&str, &str)]) -> Vec<u8> {
    messages::startup_frame(version, stream, options)
        .to_bytes()
        .to_vec()
}

/// The usual STARTUP: CQL_VERSION 3.0.0.
pub(crate) fn startup_v(version: u8, stream: i16) -> Vec<u8> {
    startup(version, stream, &[("CQL_VERSION", "3.0.0")])
}

/// QUERY `cql` (consistency ONE) in legacy framing.
pub(crate) fn query(version: u8, stream: i16, cql: &str) -> Vec<u8> {
    dbproxy_cassandra::schema::query_frame(version, stream, cql)
        .to_bytes()
        .to_vec()
}

/// QUERY `cql` inside one v5 segment.
pub(crate) fn query_v5(stream: i16, cql: &str) -> Vec<u8> {
    let frame = dbproxy_cassandra::schema::query_frame(5, stream, cql);
    let mut enc = FrameEncoder::new();
    enc.set_framing(Framing::V5 { lz4: false });
    let mut out = BytesMut::new();
    enc.encode(&frame, &mut out);
    out.to_vec()
}

/// A frame read back.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub version_byte: u8,
    pub stream: i16,
    pub opcode: u8,
    pub body: Vec<u8>,
}

impl Reply {
    fn from_frame(f: Frame) -> Reply {
        Reply {
            version_byte: f.header.version | if f.header.response { 0x80 } else { 0 },
            stream: f.header.stream,
            opcode: f.header.opcode,
            body: f.body.to_vec(),
        }
    }

    /// The ERROR's code and message.
    pub(crate) fn error(&self) -> Option<(i32, String)> {
        (self.opcode == ERROR)
            .then(|| messages::parse_error(&self.body).ok())
            .flatten()
    }

    /// (version byte, stream, opcode, error code) for comparisons.
    pub(crate) fn key(&self) -> (u8, i16, u8, Option<i32>) {
        (
            self.version_byte,
            self.stream,
            self.opcode,
            self.error().map(|e| e.0),
        )
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:#04x} stream {} opcode {:#04x}",
            self.version_byte, self.stream, self.opcode
        )?;
        if let Some((code, message)) = self.error() {
            write!(f, " ERROR {code:#06x} {message:?}")?;
        }
        write!(f, "]")
    }
}

/// The frames in `bytes`, in `framing` (legacy: 8- or 9-byte headers by version).
pub(crate) fn frames(bytes: &[u8], framing: Framing) -> Result<Vec<Reply>, String> {
    let mut dec = FrameDecoder::new(16 << 20);
    dec.set_framing(framing);
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Some(f) = dec
        .decode(&mut buf)
        .map_err(|e| format!("{e} after {out:?}"))?
    {
        out.push(Reply::from_frame(f));
    }
    if !buf.is_empty() {
        return Err(format!("{} trailing bytes after {out:?}", buf.len()));
    }
    Ok(out)
}

/// One frame in legacy framing, within `limit`.
pub(crate) async fn read_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Result<Reply, String> {
    let read = async {
        let first = s.read_u8().await.map_err(|e| format!("closed: {e}"))?;
        let header_len = if first & 0x7f < 3 { 8 } else { 9 };
        let mut header = vec![first; header_len];
        s.read_exact(&mut header[1..])
            .await
            .map_err(|e| e.to_string())?;
        let len = u32::from_be_bytes(header[header_len - 4..].try_into().unwrap()) as usize;
        let mut body = vec![0; len.min(16 << 20)];
        s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        header.extend_from_slice(&body);
        let mut frames = frames(&header, Framing::Legacy)?;
        frames.pop().ok_or_else(|| "no frame".to_string())
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| format!("no frame within {limit:?}"))?
}
