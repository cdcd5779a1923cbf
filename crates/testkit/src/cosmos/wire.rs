//! The few CQL v4 bytes the Cosmos stand-in reads and writes, written out here rather than
//! borrowed from the proxy's crate so that a decoding bug there cannot hide behind the fake.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub(crate) const ERROR: u8 = 0x00;
pub(crate) const STARTUP: u8 = 0x01;
pub(crate) const READY: u8 = 0x02;
pub(crate) const AUTHENTICATE: u8 = 0x03;
pub(crate) const OPTIONS: u8 = 0x05;
pub(crate) const SUPPORTED: u8 = 0x06;
pub(crate) const QUERY: u8 = 0x07;
pub(crate) const RESULT: u8 = 0x08;
pub(crate) const EXECUTE: u8 = 0x0A;
pub(crate) const BATCH: u8 = 0x0D;
pub(crate) const AUTH_RESPONSE: u8 = 0x0F;
pub(crate) const AUTH_SUCCESS: u8 = 0x10;

pub(crate) const FLAG_TRACING: u8 = 0x02;
pub(crate) const FLAG_CUSTOM_PAYLOAD: u8 = 0x04;
pub(crate) const FLAG_WARNING: u8 = 0x08;

/// Error codes.
pub(crate) const PROTOCOL_ERROR: i32 = 0x000A;
pub(crate) const BAD_CREDENTIALS: i32 = 0x0100;
pub(crate) const OVERLOADED: i32 = 0x1001;

/// Bound on a frame body the stand-in reads (the protocol's own 256 MB).
const MAX_BODY: usize = 256 * 1024 * 1024;

/// A frame as read: the 9-byte header's fields and the body.
#[derive(Debug, Clone)]
pub(crate) struct RawFrame {
    pub version_byte: u8,
    pub flags: u8,
    pub stream: i16,
    pub opcode: u8,
    pub body: Bytes,
}

impl RawFrame {
    pub(crate) fn version(&self) -> u8 {
        self.version_byte & 0x7f
    }

    pub(crate) fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(9 + self.body.len());
        out.put_u8(self.version_byte);
        out.put_u8(self.flags);
        out.put_i16(self.stream);
        out.put_u8(self.opcode);
        out.put_u32(self.body.len() as u32);
        out.put_slice(&self.body);
        out
    }
}

/// Reads one frame (v3+ header); `Ok(None)` at a clean end of stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<RawFrame>> {
    let mut header = [0u8; 9];
    match r.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut header[1..]).await?;
    let len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    if len > MAX_BODY {
        return Err(std::io::Error::other(format!("frame body of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(RawFrame {
        version_byte: header[0],
        flags: header[1],
        stream: i16::from_be_bytes([header[2], header[3]]),
        opcode: header[4],
        body: body.into(),
    }))
}

fn put_string(out: &mut BytesMut, s: &str) {
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// A response frame (version byte with the direction bit).
pub(crate) fn response(version: u8, stream: i16, opcode: u8, body: BytesMut) -> RawFrame {
    RawFrame {
        version_byte: 0x80 | version,
        flags: 0,
        stream,
        opcode,
        body: body.freeze(),
    }
}

/// ERROR `code` with `message`.
pub(crate) fn error(version: u8, stream: i16, code: i32, message: &str) -> RawFrame {
    let mut body = BytesMut::new();
    body.put_i32(code);
    put_string(&mut body, message);
    response(version, stream, ERROR, body)
}

/// AUTHENTICATE naming `authenticator`.
pub(crate) fn authenticate(version: u8, stream: i16, authenticator: &str) -> RawFrame {
    let mut body = BytesMut::new();
    put_string(&mut body, authenticator);
    response(version, stream, AUTHENTICATE, body)
}

/// AUTH_SUCCESS with no token.
pub(crate) fn auth_success(version: u8, stream: i16) -> RawFrame {
    let mut body = BytesMut::new();
    body.put_i32(-1);
    response(version, stream, AUTH_SUCCESS, body)
}

/// SUPPORTED with a `[string multimap]`.
pub(crate) fn supported(version: u8, stream: i16, options: &[(&str, &[&str])]) -> RawFrame {
    let mut body = BytesMut::new();
    body.put_u16(options.len() as u16);
    for (k, vs) in options {
        put_string(&mut body, k);
        body.put_u16(vs.len() as u16);
        for v in *vs {
            put_string(&mut body, v);
        }
    }
    response(version, stream, SUPPORTED, body)
}

/// A request frame (v4).
pub(crate) fn request(stream: i16, opcode: u8, body: BytesMut) -> RawFrame {
    RawFrame {
        version_byte: 4,
        flags: 0,
        stream,
        opcode,
        body: body.freeze(),
    }
}

/// STARTUP with `CQL_VERSION` only.
pub(crate) fn startup() -> RawFrame {
    let mut body = BytesMut::new();
    body.put_u16(1);
    put_string(&mut body, "CQL_VERSION");
    put_string(&mut body, "3.0.0");
    request(0, STARTUP, body)
}

/// AUTH_RESPONSE carrying SASL PLAIN `\0user\0password`.
pub(crate) fn auth_response(user: &str, password: &str) -> RawFrame {
    let token = format!("\0{user}\0{password}");
    let mut body = BytesMut::new();
    body.put_i32(token.len() as i32);
    body.put_slice(token.as_bytes());
    request(0, AUTH_RESPONSE, body)
}

fn take_string(b: &mut &[u8]) -> Option<String> {
    if b.len() < 2 {
        return None;
    }
    let n = b.get_u16() as usize;
    if b.len() < n {
        return None;
    }
    let s = String::from_utf8_lossy(&b[..n]).into_owned();
    b.advance(n);
    Some(s)
}

/// A `[string map]` (STARTUP's body).
pub(crate) fn string_map(mut b: &[u8]) -> Option<Vec<(String, String)>> {
    if b.len() < 2 {
        return None;
    }
    let n = b.get_u16();
    (0..n)
        .map(|_| Some((take_string(&mut b)?, take_string(&mut b)?)))
        .collect()
}

/// AUTH_RESPONSE's SASL PLAIN token split into (user, password).
pub(crate) fn sasl_plain(mut b: &[u8]) -> Option<(String, String)> {
    if b.len() < 4 {
        return None;
    }
    let n = usize::try_from(b.get_i32()).ok()?;
    let token = b.get(..n)?;
    let mut parts = token.split(|&c| c == 0);
    let _authzid = parts.next()?;
    let user = String::from_utf8_lossy(parts.next()?).into_owned();
    let password = String::from_utf8_lossy(parts.next()?).into_owned();
    Some((user, password))
}

/// ERROR body → (code, message).
pub(crate) fn parse_error(mut b: &[u8]) -> Option<(i32, String)> {
    if b.len() < 4 {
        return None;
    }
    let code = b.get_i32();
    Some((code, take_string(&mut b)?))
}

/// A response body with a `RequestCharge` custom payload inserted where the spec puts it: after
/// the tracing id and the warnings, before the message.
pub(crate) fn with_request_charge(frame: &RawFrame, charge: f64) -> Option<RawFrame> {
    if frame.flags & FLAG_CUSTOM_PAYLOAD != 0 {
        return None;
    }
    let mut at = 0usize;
    let b = &frame.body[..];
    if frame.flags & FLAG_TRACING != 0 {
        at += 16;
    }
    if frame.flags & FLAG_WARNING != 0 {
        let n = u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize;
        at += 2;
        for _ in 0..n {
            let l = u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize;
            at += 2 + l;
        }
    }
    if at > b.len() {
        return None;
    }
    let mut body = BytesMut::with_capacity(b.len() + 32);
    body.put_slice(&b[..at]);
    body.put_u16(1);
    put_string(&mut body, "RequestCharge");
    body.put_i32(8);
    body.put_f64(charge);
    body.put_slice(&b[at..]);
    Some(RawFrame {
        flags: frame.flags | FLAG_CUSTOM_PAYLOAD,
        body: body.freeze(),
        ..frame.clone()
    })
}
