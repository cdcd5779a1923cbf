//! Step 1 of a PostgreSQL session: the client's opening packets.
//!
//! ```text
//! client                                   proxy
//! TLS ClientHello (first byte 0x16) ────▶  TLS handshake at once (direct TLS, local TLS on),
//!                                          ALPN "postgresql" required; closed otherwise
//! SSLRequest ───────────────────────────▶  'S' + TLS handshake (local TLS on) or 'N'
//! GSSENCRequest ────────────────────────▶  'N'
//! StartupMessage (user, database, …) ───▶  kept; bytes after it are kept too
//!   or CancelRequest ───────────────────▶  forwarded upstream (see `cancel`)
//! ```
//!
//! **Direct TLS** is PostgreSQL 17's `sslnegotiation=direct`: the client skips the SSLRequest
//! and opens with its ClientHello; the first byte tells the two apart
//! ([`dbproxy_postgres::startup::is_direct_tls`]). As in PostgreSQL 17
//! (`ProcessSSLStartup`), a direct handshake that did not negotiate the ALPN protocol
//! `postgresql` is closed without a word (the server logs "received direct SSL connection
//! request without ALPN protocol negotiation extension"), and a listener without TLS closes
//! the connection, sending nothing: a client in the middle of a TLS handshake could not read
//! an ErrorResponse. Both negotiations select ALPN `postgresql` when the client offers it
//! (libpq 17 does on both); clients that offer none, like libpq 16 and older, are served as
//! before.
//!
//! SSLRequest and GSSENCRequest follow PostgreSQL's rules (`Negotiated`): each once, again
//! after the other was refused, neither after TLS; a request that is not allowed is refused as
//! PostgreSQL refuses it (0A000, "unsupported frontend protocol 1234.5679"). A client asking
//! for protocol 1.x or 2.x is refused in protocol 2's error format, as PostgreSQL does.
//!
//! The packets are parsed by [`dbproxy_postgres::startup::parse_startup_packet`], which
//! bounds every length before buffering. The whole opening, either TLS handshake included,
//! runs under one deadline: the listener's handshake timeout.

use bytes::BytesMut;
use dbproxy_postgres::{
    ProtocolError, messages, sqlstate,
    startup::{
        ALPN_PROTOCOL, GSSENC_REQUEST_CODE, ProtocolVersion, SSL_REQUEST_CODE, StartupMessage,
        StartupPacket, is_direct_tls, parse_startup_packet, unsupported_version,
    },
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::timeout_at,
};

use super::{PostgresService, fatal};
use crate::{
    local_tls::LocalTlsMode,
    session::{CloseReason, SessionError},
    stream::ClientStream,
    upstream::Connector,
};

/// What the client asked for at connection start.
pub(crate) enum ClientStart {
    /// A StartupMessage, and whatever the client sent after it.
    Startup {
        /// The StartupMessage.
        message: StartupMessage,
        /// Bytes that followed it (a pipelined query), forwarded once the session is ready.
        pipelined: BytesMut,
    },
    /// A CancelRequest, re-encoded for forwarding.
    Cancel(BytesMut),
}

/// One packet read by [`read_client_startup`].
enum Opening {
    Start(ClientStart),
    /// An SSLRequest the listener can accept (the caller answers 'S' and runs TLS).
    TlsRequested,
}

/// The client and what it has sent, or why it failed (with the stream, if it survived).
pub(crate) type Opened = Result<(ClientStream, ClientStart), (Option<ClientStream>, SessionError)>;

impl<C: Connector> PostgresService<C> {
    /// Reads the client's opening packets, upgrading the connection to TLS when the listener
    /// offers it and the client asks (SSLRequest) or opens with a ClientHello (direct TLS).
    pub(crate) async fn open(&self, mut client: ClientStream) -> Opened {
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let timed_out = || {
            SessionError::silent(
                CloseReason::ClientTimeout,
                "client sent no startup message in time",
            )
        };
        // The first bytes: a TLS ClientHello (direct TLS) or a startup packet.
        let mut buf = BytesMut::with_capacity(1024);
        match timeout_at(deadline, read_some(&mut client, &mut buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err((Some(client), e)),
            Err(_) => return Err((Some(client), timed_out())),
        }
        if is_direct_tls(&buf) == Some(true) {
            let Some(tls) = &self.local_tls else {
                // As PostgreSQL without SSL: close, sending nothing (the rest of the
                // ClientHello is not read).
                let e = SessionError::silent(
                    CloseReason::ClientTls,
                    format!(
                        "the client opened with TLS (direct TLS, sslnegotiation=direct) but listener \"{}\" has client TLS disabled; closed, as PostgreSQL does",
                        self.name
                    ),
                );
                return Err((Some(client), e));
            };
            let replayed = ClientStream::replay(std::mem::take(&mut buf), client);
            client = match timeout_at(deadline, replayed.accept_tls(&tls.postgres_acceptor)).await {
                Ok(Ok(upgraded)) => upgraded,
                Ok(Err(e)) => {
                    let e = SessionError::silent(
                        CloseReason::ClientTls,
                        format!("direct TLS handshake with the client failed: {e}"),
                    );
                    return Err((None, e));
                }
                Err(_) => return Err((None, timed_out())),
            };
            if client.alpn_protocol() != Some(ALPN_PROTOCOL) {
                // PostgreSQL logs this (COMMERROR) and closes without a message.
                let e = SessionError::silent(
                    CloseReason::ClientTls,
                    "received direct SSL connection request without ALPN protocol negotiation extension",
                );
                // Closed with TLS close_notify, as PostgreSQL's secure_close does.
                return Err((Some(client), e));
            }
            tracing::debug!("direct TLS accepted (ALPN postgresql)");
        }
        let mut negotiated = if client.is_tls() {
            Negotiated::encrypted()
        } else {
            Negotiated::default()
        };
        loop {
            let offer = self.local_tls.is_some() && !client.is_tls();
            let read = read_client_startup(
                &mut client,
                std::mem::take(&mut buf),
                offer,
                &mut negotiated,
            );
            let opening = match timeout_at(deadline, read).await {
                Ok(Ok(opening)) => opening,
                Ok(Err(e)) => return Err((Some(client), e)),
                Err(_) => return Err((Some(client), timed_out())),
            };
            let start = match (opening, &self.local_tls) {
                (Opening::TlsRequested, Some(tls)) => {
                    if client.write_all(&[messages::SSL_SUPPORTED]).await.is_err() {
                        let e = SessionError::silent(CloseReason::ClientGone, "client went away");
                        return Err((None, e));
                    }
                    match timeout_at(deadline, client.accept_tls(&tls.postgres_acceptor)).await {
                        Ok(Ok(upgraded)) => client = upgraded,
                        Ok(Err(e)) => {
                            let e = SessionError::silent(
                                CloseReason::ClientTls,
                                format!("TLS handshake with the client failed: {e}"),
                            );
                            return Err((None, e));
                        }
                        Err(_) => return Err((None, timed_out())),
                    }
                    continue;
                }
                (Opening::TlsRequested, None) => {
                    // read_client_startup only asks when the listener offers TLS.
                    let e = SessionError::silent(CloseReason::Internal, "TLS requested twice");
                    return Err((Some(client), e));
                }
                (Opening::Start(start), _) => start,
            };
            if let (ClientStart::Startup { .. }, Some(tls)) = (&start, &self.local_tls)
                && tls.mode == LocalTlsMode::Require
                && !client.is_tls()
            {
                let e = fatal(
                    CloseReason::ClientTls,
                    sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                    format!(
                        "listener \"{}\" requires TLS between the client and the proxy",
                        self.name
                    ),
                    Some("Connect with sslmode=require (or verify-full with the proxy's CA)."),
                );
                return Err((Some(client), e));
            }
            return Ok((client, start));
        }
    }

    /// The StartupMessage sent upstream: the client's, with `user` replaced by the Entra user
    /// and `database` defaulted.
    ///
    /// libpq, pgjdbc and node-postgres send the user name as the database when the application
    /// names none; since the proxy replaces the user, such a database name is treated as "none"
    /// when a default database is configured.
    pub(crate) fn upstream_startup(&self, mut startup: StartupMessage) -> StartupMessage {
        let client_user = startup.set("user", self.user.as_str());
        let database = startup.get("database").filter(|d| !d.is_empty());
        let named = match (database, &client_user) {
            (None, _) => false,
            (Some(db), Some(user)) if db == user.as_slice() && self.default_database.is_some() => {
                false
            }
            (Some(_), _) => true,
        };
        if !named {
            match &self.default_database {
                Some(db) => {
                    startup.set("database", db.as_str());
                }
                None => {
                    startup.remove("database");
                }
            }
        }
        startup
    }
}

/// Reads at least one byte into `buf`.
async fn read_some<S>(client: &mut S, buf: &mut BytesMut) -> Result<(), SessionError>
where
    S: AsyncRead + Unpin,
{
    let n = client.read_buf(buf).await.map_err(|e| {
        SessionError::silent(CloseReason::ClientIo, format!("reading startup: {e}"))
    })?;
    if n == 0 {
        return Err(SessionError::silent(
            CloseReason::ClientGone,
            "client closed before its startup message",
        ));
    }
    Ok(())
}

/// Which encryption requests the client may still send: PostgreSQL's `ssl_done` and
/// `gss_done` (`ProcessStartupPacket`). Each request may come once; a refused SSLRequest
/// allows a GSSENCRequest and the other way round (the client may try either order); after TLS
/// neither. A request that is not allowed is read as a StartupMessage of protocol 1234.5679 or
/// 1234.5680, and refused as such (0A000), as PostgreSQL does.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Negotiated {
    ssl_done: bool,
    gss_done: bool,
}

impl Negotiated {
    /// After a TLS handshake (either negotiation): no encryption request is allowed any more.
    pub(crate) fn encrypted() -> Negotiated {
        Negotiated {
            ssl_done: true,
            gss_done: true,
        }
    }
}

/// The FATAL for a packet the parser refused: an ErrorResponse, or for a client that asked
/// for protocol 1.x/2.x the protocol-2 error PostgreSQL sends such clients.
fn refuse(e: &ProtocolError) -> SessionError {
    if e.wants_v2_format() {
        let mut reply = BytesMut::new();
        messages::error_response_v2(messages::FATAL, e.message(), &mut reply);
        return SessionError::with_reply(CloseReason::ClientProtocol, e.to_string(), reply);
    }
    fatal(CloseReason::ClientProtocol, e.code(), e.to_string(), None)
}

/// Reads the client's opening packets (`buf` holds bytes already read), declining GSS
/// encryption, and TLS unless `offer_tls`; `negotiated` says which requests may still come.
async fn read_client_startup<S>(
    client: &mut S,
    mut buf: BytesMut,
    offer_tls: bool,
    negotiated: &mut Negotiated,
) -> Result<Opening, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let packet = match parse_startup_packet(&mut buf) {
            Ok(Some(p)) => p,
            Ok(None) => {
                read_some(client, &mut buf).await?;
                continue;
            }
            Err(e) => return Err(refuse(&e)),
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                let ssl = packet == StartupPacket::SslRequest;
                let (done, code, what) = if ssl {
                    (negotiated.ssl_done, SSL_REQUEST_CODE, "SSL request")
                } else {
                    (
                        negotiated.gss_done,
                        GSSENC_REQUEST_CODE,
                        "GSSAPI encryption request",
                    )
                };
                if done {
                    return Err(refuse(&unsupported_version(ProtocolVersion::from_code(
                        code,
                    ))));
                }
                // As PostgreSQL: bytes behind an encryption request, before the answer, would
                // be taken as if they had come over the encrypted channel (CVE-2021-23214).
                if !buf.is_empty() {
                    return Err(fatal(
                        CloseReason::ClientProtocol,
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("received unencrypted data after {what}"),
                        None,
                    ));
                }
                if ssl && offer_tls {
                    *negotiated = Negotiated::encrypted();
                    return Ok(Opening::TlsRequested);
                }
                client
                    .write_all(&[messages::SSL_NOT_SUPPORTED])
                    .await
                    .map_err(|e| SessionError::silent(CloseReason::ClientIo, e.to_string()))?;
                // Refused: the other request may come (again), as in PostgreSQL.
                *negotiated = Negotiated {
                    ssl_done: ssl,
                    gss_done: !ssl,
                };
            }
            StartupPacket::CancelRequest {
                process_id,
                secret_key,
            } => {
                let mut out = BytesMut::new();
                messages::cancel_request(process_id, &secret_key, &mut out);
                return Ok(Opening::Start(ClientStart::Cancel(out)));
            }
            StartupPacket::Startup(message) => {
                return Ok(Opening::Start(ClientStart::Startup {
                    message,
                    pipelined: buf,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSL: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    const GSS: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

    /// Sends `packets` to `read_client_startup` one at a time, reading the one-byte answer
    /// to each but the last; returns those answers and either what was opened or the bytes of
    /// the refusal.
    async fn open(packets: &[&[u8]]) -> (Vec<u8>, Result<&'static str, String>) {
        let (mut app, mut proxy) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let mut negotiated = Negotiated::default();
            let r = read_client_startup(&mut proxy, BytesMut::new(), false, &mut negotiated).await;
            match r {
                Ok(Opening::TlsRequested) => Ok("tls"),
                Ok(Opening::Start(ClientStart::Startup { .. })) => Ok("startup"),
                Ok(Opening::Start(ClientStart::Cancel(_))) => Ok("cancel"),
                Err(e) => Err(String::from_utf8_lossy(&e.reply).into_owned()),
            }
        });
        let mut answers = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            app.write_all(p).await.unwrap();
            if i + 1 < packets.len() {
                answers.push(app.read_u8().await.unwrap());
            }
        }
        (answers, task.await.unwrap())
    }

    fn startup() -> Vec<u8> {
        let mut msg = StartupMessage::new(ProtocolVersion::V3_0);
        msg.set("user", "u");
        let mut buf = BytesMut::new();
        messages::startup_message(&msg, &mut buf).unwrap();
        buf.to_vec()
    }

    #[tokio::test]
    async fn each_encryption_request_comes_once_as_in_postgresql() {
        // A second GSSENCRequest is a StartupMessage of protocol 1234.5680 to PostgreSQL.
        let (answers, r) = open(&[&GSS, &GSS]).await;
        assert_eq!(answers, b"N");
        let reply = r.unwrap_err();
        assert!(reply.contains("0A000"), "{reply}");
        assert!(
            reply.contains("unsupported frontend protocol 1234.5680: server supports 3.0 to 3.2"),
            "{reply}"
        );
        let (answers, r) = open(&[&SSL, &SSL]).await;
        assert_eq!(answers, b"N");
        assert!(r.unwrap_err().contains("1234.5679"));
        // Bytes behind a request, before its answer, are refused (CVE-2021-23214).
        let (_, r) = open(&[&[SSL, GSS].concat()]).await;
        assert!(
            r.unwrap_err()
                .contains("received unencrypted data after SSL request")
        );
    }

    #[tokio::test]
    async fn a_refused_request_allows_the_other_one_again() {
        let (answers, r) = open(&[&SSL, &GSS, &SSL, &GSS, &startup()]).await;
        assert_eq!(answers, b"NNNN");
        assert_eq!(r, Ok("startup"));
    }

    #[tokio::test]
    async fn protocol_2_clients_are_refused_in_protocol_2s_format() {
        let (_, r) = open(&[&[0, 0, 0, 9, 0, 2, 0, 0, 0]]).await;
        assert_eq!(
            r.unwrap_err(),
            "EFATAL:  unsupported frontend protocol 2.0: server supports 3.0 to 3.2\n\0"
        );
        // Version 0.0 and 3.x-and-up errors stay ErrorResponses.
        let (_, r) = open(&[&[0, 0, 0, 9, 0, 0, 0, 0, 0]]).await;
        assert!(r.unwrap_err().starts_with("E\0\0\0"));
    }
}
