/*!
The first packet a client sends: parsing it and the types it parses into.

Before the regular `tag, length, body` framing begins, a client sends one untagged packet whose
first word is its own length (counting itself) and whose second word says what it is:

```text
SSLRequest         length=8    code=80877103 (1234<<16 | 5679)
GSSENCRequest      length=8    code=80877104 (1234<<16 | 5680)
CancelRequest      length=12+n code=80877102 (1234<<16 | 5678)  process_id: i32, secret_key: [u8; n]
                                 n = 4 in protocol 3.0; 4..=256 since protocol 3.2
StartupMessage     length      version: i32 (major<<16 | minor; 196608 = 3.0, 196610 = 3.2)
                               then (name\0 value\0)*  \0
```

An SSLRequest or GSSENCRequest is answered with one byte (`'S'`/`'G'` to go ahead, `'N'` to
refuse; see [`messages::SSL_NOT_SUPPORTED`](crate::messages::SSL_NOT_SUPPORTED)); the client then
either upgrades the stream or sends its StartupMessage (or, after `'N'`, gives up). A
CancelRequest is the only packet on its connection.

After answering an SSLRequest with `'S'`, bytes the client sent before the TLS handshake must
not be trusted (CVE-2021-23214): the runtime should refuse the connection if the buffer passed
to [`parse_startup_packet`] still holds bytes at that point.

The length is checked against [`MAX_STARTUP_LEN`] as soon as its four bytes have arrived, before
anything more is buffered, like PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.

**Direct TLS** (PostgreSQL 17, libpq's `sslnegotiation=direct`): instead of an SSLRequest the
client opens with a TLS ClientHello, whose first byte is a TLS handshake record's content type,
[`TLS_HANDSHAKE_RECORD`] (0x16). Read as a length word, it would announce a packet of hundreds
of megabytes, so it cannot be mistaken for a startup packet: the runtime looks at the first byte
with [`is_direct_tls`] before parsing and, if it is TLS, runs the handshake at once. The client
must offer the ALPN protocol [`ALPN_PROTOCOL`] (`postgresql`); PostgreSQL closes a direct TLS
connection that negotiated none.

Parameter names must be UTF-8; values are kept as the bytes sent. PostgreSQL checks the encoding
of neither names nor values: it copies them as C strings (`ProcessStartupPacket`), a database or role name
that matches no catalog entry is refused as not existing, and `application_name` is cleaned of
non-ASCII bytes by the server itself (`?` up to PostgreSQL 15, `\xHH` escapes since 16). So a
value in Latin-1 or any other encoding goes upstream unchanged.
*/

use std::{borrow::Cow, fmt};

use bytes::{Buf, BytesMut};

use crate::error::{ProtocolError, ProtocolErrorKind};

/// The largest startup packet accepted, in bytes, counting the length word itself: PostgreSQL's
/// `MAX_STARTUP_PACKET_LENGTH` (10,000) bounds what follows the length word.
pub const MAX_STARTUP_LEN: usize = 10_004;

/// The smallest startup packet: the length word and the code.
const MIN_STARTUP_LEN: usize = 8;

/// The code of an SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// The code of a GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// The code of a CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// The first byte of a TLS handshake record (a ClientHello), which opens a direct TLS connection.
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The ALPN protocol name of PostgreSQL over TLS (PostgreSQL 17 and later, both negotiations).
pub const ALPN_PROTOCOL: &[u8] = b"postgresql";

/// Whether a connection whose first bytes are `first` opens with TLS directly (PostgreSQL 17's
/// direct TLS) rather than with a startup packet. Looks at the first byte only, as PostgreSQL
/// does; None until a byte has arrived.
pub fn is_direct_tls(first: &[u8]) -> Option<bool> {
    first.first().map(|b| *b == TLS_HANDSHAKE_RECORD)
}

/// The shortest cancel key: the 4 bytes of protocol 3.0.
pub const MIN_CANCEL_KEY_LEN: usize = 4;
/// The longest cancel key protocol 3.2 allows.
pub const MAX_CANCEL_KEY_LEN: usize = 256;

/// The first packet on a client connection.
#[derive(Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// SSLRequest: the client asks to upgrade to TLS. Answer with one byte.
    SslRequest,
    /// GSSENCRequest: the client asks for GSSAPI encryption. Answer with one byte.
    GssEncRequest,
    /// CancelRequest: cancel the query running on another connection.
    CancelRequest {
        /// The backend process ID from the other connection's BackendKeyData.
        process_id: i32,
        /// The secret key from the other connection's BackendKeyData: 4 bytes in protocol 3.0,
        /// 4 to 256 bytes in protocol 3.2. Hidden from `Debug`.
        secret_key: Vec<u8>,
    },
    /// StartupMessage: the protocol version and the connection parameters.
    Startup(StartupMessage),
}

impl fmt::Debug for StartupPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupPacket::SslRequest => f.write_str("SslRequest"),
            StartupPacket::GssEncRequest => f.write_str("GssEncRequest"),
            StartupPacket::CancelRequest {
                process_id,
                secret_key,
            } => f
                .debug_struct("CancelRequest")
                .field("process_id", process_id)
                .field(
                    "secret_key",
                    &format_args!("<{} bytes redacted>", secret_key.len()),
                )
                .finish(),
            StartupPacket::Startup(msg) => f.debug_tuple("Startup").field(msg).finish(),
        }
    }
}

/// A protocol version as sent in a StartupMessage: `major << 16 | minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolVersion {
    /// The major version; only 3 is supported.
    pub major: u16,
    /// The minor version; 0 and 2 exist today (3.1 was never used).
    pub minor: u16,
}

impl ProtocolVersion {
    /// Protocol 3.0 (code 196608), PostgreSQL 7.4 and later.
    pub const V3_0: ProtocolVersion = ProtocolVersion { major: 3, minor: 0 };
    /// Protocol 3.2 (code 196610), PostgreSQL 18 and later: longer cancel keys.
    pub const V3_2: ProtocolVersion = ProtocolVersion { major: 3, minor: 2 };
    /// The newest version this crate knows of; newer 3.x minors are accepted and left to the
    /// upstream server to negotiate down with NegotiateProtocolVersion.
    pub const LATEST: ProtocolVersion = ProtocolVersion::V3_2;

    /// Splits a version code (`major << 16 | minor`) into its parts.
    pub const fn from_code(code: u32) -> ProtocolVersion {
        ProtocolVersion {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
        }
    }

    /// The version code as sent on the wire: `major << 16 | minor`.
    pub const fn code(self) -> u32 {
        ((self.major as u32) << 16) | self.minor as u32
    }

    /// Whether the proxy accepts this version: any 3.x.
    pub const fn is_supported(self) -> bool {
        self.major == 3
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A StartupMessage: protocol version and connection parameters (`user`, `database`,
/// `application_name`, `options`, GUCs, `_pq_.` protocol extensions, ...), in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// The requested protocol version.
    pub version: ProtocolVersion,
    /// The parameters as `(name, value)`, in wire order: names are UTF-8, values are the bytes
    /// sent (PostgreSQL does not require them to be UTF-8, or in any encoding). Names and values
    /// must not contain NUL bytes (parsing guarantees it; encoding checks it).
    pub params: Vec<(String, Vec<u8>)>,
}

impl StartupMessage {
    /// An empty StartupMessage for `version`.
    pub fn new(version: ProtocolVersion) -> StartupMessage {
        StartupMessage {
            version,
            params: Vec::new(),
        }
    }

    /// The value of parameter `name`, as sent. If a client sent it more than once, the last one
    /// wins, as in PostgreSQL.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.params
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of parameter `name` if it was sent and is UTF-8 (None otherwise: [`get`] has
    /// the bytes).
    ///
    /// [`get`]: StartupMessage::get
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The value of parameter `name` as text for display (logs, messages): bytes that are not
    /// UTF-8 become U+FFFD.
    pub fn get_lossy(&self, name: &str) -> Option<Cow<'_, str>> {
        self.get(name).map(String::from_utf8_lossy)
    }

    /// Sets parameter `name` to `value`, keeping its position if it was present (and dropping
    /// any duplicates), appending it otherwise. Returns the previous value.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Option<Vec<u8>> {
        let name = name.into();
        let value = value.into();
        let previous = self.remove_duplicates_after_first(&name);
        match self.params.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                let first = std::mem::replace(v, value);
                previous.or(Some(first))
            }
            None => {
                self.params.push((name, value));
                None
            }
        }
    }

    /// Removes parameter `name` (every occurrence). Returns the value that was in effect.
    pub fn remove(&mut self, name: &str) -> Option<Vec<u8>> {
        let mut last = None;
        self.params.retain_mut(|(n, v)| {
            if n == name {
                last = Some(std::mem::take(v));
                false
            } else {
                true
            }
        });
        last
    }

    /// The `user` parameter, if sent and UTF-8 (`get("user")` has the bytes).
    pub fn user(&self) -> Option<&str> {
        self.get_str("user")
    }

    /// The `database` parameter, if sent and UTF-8 (PostgreSQL defaults it to the user name;
    /// `get("database")` has the bytes).
    pub fn database(&self) -> Option<&str> {
        self.get_str("database")
    }

    /// The length of this message on the wire, length word included (what
    /// [`messages::startup_message`](crate::messages::startup_message) writes).
    pub fn encoded_len(&self) -> usize {
        let params: usize = self.params.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
        4 + 4 + params + 1
    }

    /// Drops every occurrence of `name` but the first; returns the last value dropped.
    fn remove_duplicates_after_first(&mut self, name: &str) -> Option<Vec<u8>> {
        let mut seen = false;
        let mut last = None;
        self.params.retain_mut(|(n, v)| {
            if n != name {
                true
            } else if !seen {
                seen = true;
                true
            } else {
                last = Some(std::mem::take(v));
                false
            }
        });
        last
    }
}

/// Parses the first packet of a client connection from the front of `buf`.
///
/// - `Ok(None)`: the packet is not complete yet; `buf` is untouched. Read more and call again.
/// - `Ok(Some(packet))`: the packet was removed from `buf`; later bytes stay in `buf`.
/// - `Err(e)`: the packet is invalid (bad length, layout, a parameter name that is not UTF-8, or
///   the protocol version); answer
///   with [`ProtocolError::to_error_fields`] and close. The length is rejected as soon as its
///   four bytes are in, so an attacker cannot make the proxy buffer more than
///   [`MAX_STARTUP_LEN`] bytes.
pub fn parse_startup_packet(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    let Some(len_bytes) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = i32::from_be_bytes(*len_bytes);
    let len = match usize::try_from(len) {
        Ok(len) if (MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&len) => len,
        _ => {
            return Err(ProtocolError::new(
                ProtocolErrorKind::InvalidLength,
                format!(
                    "invalid length of startup packet: {len} (must be {MIN_STARTUP_LEN} to {MAX_STARTUP_LEN})"
                ),
            ));
        }
    };
    let Some(packet) = buf.get(..len) else {
        return Ok(None);
    };
    let packet = parse_packet(&packet[4..])?;
    buf.advance(len);
    Ok(Some(packet))
}

/// Parses a complete packet after its length word.
fn parse_packet(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let (code, rest) = split_u32(body)
        .ok_or_else(|| ProtocolError::malformed("invalid startup packet: missing code"))?;
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if !rest.is_empty() {
                return Err(ProtocolError::new(
                    ProtocolErrorKind::InvalidLength,
                    format!(
                        "invalid length of {}: {} (must be 8)",
                        if code == SSL_REQUEST_CODE {
                            "SSLRequest"
                        } else {
                            "GSSENCRequest"
                        },
                        body.len() + 4
                    ),
                ));
            }
            Ok(if code == SSL_REQUEST_CODE {
                StartupPacket::SslRequest
            } else {
                StartupPacket::GssEncRequest
            })
        }
        CANCEL_REQUEST_CODE => parse_cancel_request(rest),
        _ => parse_startup_message(ProtocolVersion::from_code(code), rest)
            .map(StartupPacket::Startup),
    }
}

/// The refusal of a StartupMessage asking for `version` (0A000, PostgreSQL's wording). Also what
/// PostgreSQL answers an SSLRequest or GSSENCRequest that comes when that negotiation is over:
/// it reads it as a StartupMessage of protocol 1234.5679 or 1234.5680.
pub fn unsupported_version(version: ProtocolVersion) -> ProtocolError {
    ProtocolError::new(
        ProtocolErrorKind::UnsupportedVersion(version),
        format!(
            "unsupported frontend protocol {version}: server supports {} to {}",
            ProtocolVersion::V3_0,
            ProtocolVersion::LATEST
        ),
    )
}

fn parse_cancel_request(rest: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let invalid = || {
        ProtocolError::new(
            ProtocolErrorKind::InvalidLength,
            format!(
                "invalid length of CancelRequest: {} (the secret key must be {MIN_CANCEL_KEY_LEN} to {MAX_CANCEL_KEY_LEN} bytes)",
                rest.len() + 8
            ),
        )
    };
    let (pid, key) = split_u32(rest).ok_or_else(invalid)?;
    if !(MIN_CANCEL_KEY_LEN..=MAX_CANCEL_KEY_LEN).contains(&key.len()) {
        return Err(invalid());
    }
    Ok(StartupPacket::CancelRequest {
        process_id: pid as i32,
        secret_key: key.to_vec(),
    })
}

fn parse_startup_message(
    version: ProtocolVersion,
    mut rest: &[u8],
) -> Result<StartupMessage, ProtocolError> {
    if !version.is_supported() {
        return Err(unsupported_version(version));
    }
    let mut msg = StartupMessage::new(version);
    loop {
        let name = read_cstr(&mut rest).ok_or_else(|| {
            ProtocolError::malformed(
                "invalid startup packet layout: expected terminator as last byte",
            )
        })?;
        if name.is_empty() {
            if !rest.is_empty() {
                return Err(ProtocolError::malformed(
                    "invalid startup packet layout: expected terminator as last byte",
                ));
            }
            return Ok(msg);
        }
        let name = utf8(name)?;
        let value = read_cstr(&mut rest).ok_or_else(|| {
            ProtocolError::malformed(format!(
                "invalid startup packet layout: missing value for parameter \"{name}\""
            ))
        })?;
        // Values as sent: PostgreSQL does not check their encoding either.
        msg.params.push((name, value.to_vec()));
    }
}

fn utf8(bytes: &[u8]) -> Result<String, ProtocolError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        ProtocolError::malformed("invalid startup packet: parameter name is not valid UTF-8")
    })
}

/// Splits a big-endian u32 off the front of `bytes`.
fn split_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

/// Takes a NUL-terminated string off the front of `rest` (without the NUL).
fn read_cstr<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = memchr::memchr(0, rest)?;
    let s = &rest[..end];
    *rest = &rest[end + 1..];
    Some(s)
}

#[cfg(test)]
#[path = "startup_tests.rs"]
mod tests;
