//! Step 1 of a CQL session: the driver's opening, up to its STARTUP.
//!
//! ```text
//! driver                                  proxy
//! (TLS ClientHello, if local TLS) ─────▶  TLS handshake
//! OPTIONS ─────────────────────────────▶  SUPPORTED (this listener's versions, compression)
//! STARTUP v6+ (above the maximum) ─────▶  ERROR 0x000A, close: the driver retries lower
//! STARTUP {CQL_VERSION, COMPRESSION} ──▶  kept for the upstream login
//! ```
//!
//! With local TLS offered (not required), the first byte tells: a TLS ClientHello starts with
//! 0x16, a CQL frame with its version byte. Frames are split by [`FrameDecoder`] with the
//! handshake's small frame cap. Bytes the driver sends after STARTUP stay in the buffer for
//! the relay. Sockets are read at most `READ_CHUNK` (64 KiB) bytes at a time (`read_some`, the
//! relay's reads too).

use bytes::{BufMut, BytesMut};
use dbproxy_cassandra::{ClientHandshake, CqlError, Frame, FrameDecoder, HandshakeAction};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    time::{Instant, timeout_at},
};

use super::{CassandraService, Startup, cql_error};
use crate::{
    local_tls::LocalTlsMode,
    session::{CloseReason, SessionError},
    stream::ClientStream,
    upstream::Connector,
};

/// Why a frame could not be read.
pub(crate) enum ReadError {
    Io(std::io::Error),
    Cql(CqlError),
}

/// The most one read takes from a socket. Buffers grow by reads, not by the lengths frames
/// announce, so this (with the frame cap) bounds what a connection holds.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// One read of at most [`READ_CHUNK`] bytes into `buf`; 0 at EOF.
pub(crate) async fn read_some<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    r.read_buf(&mut (&mut *buf).limit(READ_CHUNK)).await
}

/// Reads until one frame is decoded; `Ok(None)` on a clean EOF.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    decoder: &mut FrameDecoder,
    buf: &mut BytesMut,
) -> Result<Option<Frame>, ReadError> {
    loop {
        if let Some(frame) = decoder.decode(buf).map_err(ReadError::Cql)? {
            return Ok(Some(frame));
        }
        let n = read_some(r, buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return if buf.is_empty() && !decoder.has_buffered() {
                Ok(None)
            } else {
                Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()))
            };
        }
    }
}

/// The version and stream of a (possibly garbled) request, for addressing an ERROR to it.
pub(crate) fn addressee(buf: &[u8]) -> (u8, i16) {
    let version = buf
        .first()
        .map(|b| b & 0x7f)
        .filter(|v| (3..=5).contains(v))
        .unwrap_or(4);
    let stream = match buf.get(2..4) {
        Some(s) if version >= 3 => i16::from_be_bytes([s[0], s[1]]),
        _ => 0,
    };
    (version, stream)
}

/// The ERROR for a header whose version byte is outside what the listener speaks (3 to `max`),
/// addressed as [`dbproxy_cassandra::unsupported_version_frame`] addresses it; None when the
/// version is one the listener speaks.
fn unsupported_version_reply(buf: &[u8], max: u8) -> Option<BytesMut> {
    let header = dbproxy_cassandra::FrameHeader::parse(buf)?;
    if (dbproxy_cassandra::handshake::MIN_VERSION..=max).contains(&header.version) {
        return None;
    }
    let mut out = BytesMut::new();
    dbproxy_cassandra::unsupported_version_frame(header.version, max, header.stream)
        .encode(&mut out);
    Some(out)
}

impl<C: Connector> CassandraService<C> {
    /// TLS on connect: required, or offered (a TLS ClientHello starts with 0x16; a CQL frame
    /// with its version byte).
    pub(crate) async fn maybe_tls(
        &self,
        client: ClientStream,
        deadline: Instant,
    ) -> Result<ClientStream, SessionError> {
        let Some(tls) = &self.local_tls else {
            return Ok(client);
        };
        let timed_out =
            || SessionError::silent(CloseReason::ClientTimeout, "client sent nothing in time");
        let wants_tls = match tls.mode {
            LocalTlsMode::Require => true,
            LocalTlsMode::Offer => match timeout_at(deadline, client.peek_first_byte()).await {
                Ok(first) => first == Some(0x16),
                Err(_) => return Err(timed_out()),
            },
        };
        if !wants_tls {
            return Ok(client);
        }
        match timeout_at(deadline, client.accept_tls(&tls.acceptor)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(SessionError::silent(
                CloseReason::ClientTls,
                format!("TLS handshake with the client failed: {e}"),
            )),
            Err(_) => Err(timed_out()),
        }
    }

    /// Answers OPTIONS, refuses what must be refused, returns the STARTUP. Bytes after it stay
    /// in `buf`.
    pub(crate) async fn client_handshake(
        &self,
        client: &mut ClientStream,
        buf: &mut BytesMut,
        deadline: Instant,
    ) -> Result<Startup, SessionError> {
        match timeout_at(deadline, self.handshake_frames(client, buf)).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::silent(
                CloseReason::ClientTimeout,
                "client sent no STARTUP in time",
            )),
        }
    }

    async fn handshake_frames(
        &self,
        client: &mut ClientStream,
        buf: &mut BytesMut,
    ) -> Result<Startup, SessionError> {
        let mut decoder = FrameDecoder::new(dbproxy_cassandra::frame::HANDSHAKE_MAX_FRAME_LEN);
        let mut handshake = ClientHandshake::new(self.max_version, self.supported.clone());
        loop {
            let frame = match read_frame(client, &mut decoder, buf).await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    return Err(SessionError::silent(
                        CloseReason::ClientGone,
                        "closed before STARTUP",
                    ));
                }
                Err(ReadError::Io(e)) => {
                    return Err(SessionError::silent(
                        CloseReason::ClientIo,
                        format!("reading the handshake: {e}"),
                    ));
                }
                Err(ReadError::Cql(e)) => {
                    // As Cassandra, the version byte is judged before the length: bytes that
                    // are not CQL at all (HTTP, TLS to a plain port, noise) get "unsupported
                    // protocol version", not "frame too large".
                    if let Some(reply) = unsupported_version_reply(buf, self.max_version) {
                        let message =
                            "refused the client's opening: not a supported protocol version";
                        return Err(SessionError::with_reply(
                            CloseReason::ClientProtocol,
                            message,
                            reply,
                        ));
                    }
                    let (version, stream) = addressee(buf);
                    let reason = CloseReason::ClientProtocol;
                    return Err(cql_error(reason, version, stream, e.code(), e.to_string()));
                }
            };
            let (version, stream) = (frame.header.version, frame.header.stream);
            match handshake.on_frame(&frame) {
                Ok(HandshakeAction::Reply(reply)) => {
                    let mut out = BytesMut::new();
                    reply.encode(&mut out);
                    client.write_all(&out).await.map_err(|e| {
                        SessionError::silent(
                            CloseReason::ClientIo,
                            format!("client went away: {e}"),
                        )
                    })?;
                }
                Ok(HandshakeAction::ReplyAndClose(reply)) => {
                    // Above the listener's maximum: drivers offer their highest version (the
                    // Python and Node drivers start with DSE's v65/v66) and step down on this
                    // error. Normal negotiation, not a failure.
                    let reason = if version > self.max_version {
                        CloseReason::VersionNegotiation
                    } else {
                        CloseReason::ClientProtocol
                    };
                    let mut out = BytesMut::new();
                    reply.encode(&mut out);
                    let message = format!(
                        "refused the client's opening (opcode {:#04x}, protocol v{version})",
                        frame.header.opcode
                    );
                    return Err(SessionError::with_reply(reason, message, out));
                }
                Ok(HandshakeAction::Startup {
                    version,
                    stream,
                    options,
                    raw_body,
                }) => {
                    return Ok(Startup {
                        version,
                        stream,
                        options,
                        raw_body,
                    });
                }
                Err(e) => {
                    let version = version.min(self.max_version);
                    let reason = CloseReason::ClientProtocol;
                    return Err(cql_error(reason, version, stream, e.code(), e.to_string()));
                }
            }
        }
    }
}
