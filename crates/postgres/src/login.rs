/*!
[`UpstreamLogin`]: the proxy's side of logging in to the upstream server, as a state machine.

The proxy sends the StartupMessage, then answers whatever authentication request the server
makes, using the access token as the password, until the server says AuthenticationOk or sends
an ErrorResponse:

```text
proxy                                         upstream
StartupMessage ─────────────────────────────▶
             ◀── NegotiateProtocolVersion 'v'   (optional: asked for a newer 3.x or _pq_ options)
             ◀── NoticeResponse 'N'             (optional, any time)
             ◀── 'R' 3 AuthenticationCleartextPassword
PasswordMessage(token) ─────────────────────▶
           or
             ◀── 'R' 5 AuthenticationMD5Password (salt)
PasswordMessage("md5" + md5(md5(token + user) + salt)) ▶
           or
             ◀── 'R' 10 AuthenticationSASL ("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")
SASLInitialResponse("SCRAM-SHA-256", "n,,n=,r=<client nonce>") ▶
             ◀── 'R' 11 AuthenticationSASLContinue ("r=<nonce>,s=<salt>,i=<iterations>")
SASLResponse("c=biws,r=<nonce>,p=<proof>") ─▶
             ◀── 'R' 12 AuthenticationSASLFinal ("v=<server signature>")  — verified here
             ◀── 'R' 0 AuthenticationOk, ParameterStatus*, BackendKeyData, ReadyForQuery
           or, at any point
             ◀── 'E' ErrorResponse (FATAL), then the server closes
```

SCRAM is done without channel binding (`n,,`), even when the server offers
SCRAM-SHA-256-PLUS: the upstream TLS session belongs to the runtime, and the token is a bearer
credential anyway. The server signature is still verified, so a server that does not know the
password cannot complete the exchange.

At AuthenticationOk the login is over: everything from that message on (and whatever
NegotiateProtocolVersion and NoticeResponse messages arrived before it) goes to the client,
which then sees a normal connection start, and the runtime relays raw bytes from there.

Each message's length is checked at its header against [`MAX_LOGIN_MESSAGE_LEN`] before it is
buffered.
*/

use std::fmt;

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;

use crate::backend::{
    self, AUTH_CLEARTEXT_PASSWORD, AUTH_MD5_PASSWORD, AUTH_OK, AUTH_SASL, AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL, AUTHENTICATION_TAG, ERROR_RESPONSE_TAG, Header,
    NEGOTIATE_PROTOCOL_VERSION_TAG, NOTICE_RESPONSE_TAG,
};
use crate::error::{ProtocolError, ProtocolErrorKind};
use crate::messages;
use crate::startup::StartupMessage;

/// The largest backend message accepted during login, in bytes (the length word's value).
/// PostgreSQL's own authentication messages are tiny; notices and errors are a few KB.
pub const MAX_LOGIN_MESSAGE_LEN: usize = 1024 * 1024;

/// The most bytes of NegotiateProtocolVersion and NoticeResponse messages kept for the client
/// before AuthenticationOk.
pub const MAX_PENDING_TO_CLIENT: usize = 1024 * 1024;

/// Why a login to the upstream failed (other than the server rejecting it, which is
/// [`LoginStep::Rejected`]). Messages never include the password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The StartupMessage could not be encoded (a NUL byte in a parameter).
    #[error("cannot encode the StartupMessage for the upstream: {0}")]
    InvalidStartup(ProtocolError),
    /// A message for the upstream could not be encoded.
    #[error("cannot encode a message for the upstream: {0}")]
    Encode(ProtocolError),
    /// A message's length word is below 4.
    #[error("upstream sent a message with invalid length {0} during login")]
    InvalidLength(i32),
    /// A message is longer than [`MAX_LOGIN_MESSAGE_LEN`].
    #[error("upstream sent a {len}-byte message during login, more than the {max}-byte limit")]
    MessageTooLong {
        /// The length the header announced.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many notices before AuthenticationOk.
    #[error("upstream sent more than {max} bytes of notices during login")]
    TooManyNotices {
        /// The limit, [`MAX_PENDING_TO_CLIENT`].
        max: usize,
    },
    /// A message type that does not belong in the login phase, or not at this point of it.
    #[error("upstream sent unexpected message type {tag:?} {during}")]
    UnexpectedMessage {
        /// The message's tag.
        tag: char,
        /// Where in the login it came, e.g. "while waiting for an authentication request".
        during: &'static str,
    },
    /// An authentication request that does not fit the exchange so far (e.g. AuthenticationOk
    /// before SCRAM's AuthenticationSASLFinal, or a second password request).
    #[error("upstream sent unexpected Authentication{method} {during}")]
    UnexpectedAuthRequest {
        /// The request's name, e.g. "SASLContinue".
        method: &'static str,
        /// Where in the login it came.
        during: &'static str,
    },
    /// The server asked for an authentication method the proxy cannot do (Kerberos, GSSAPI,
    /// SSPI, or an unknown code).
    #[error("upstream asked for unsupported authentication method {code} ({name})")]
    UnsupportedAuthMethod {
        /// The AuthenticationRequest code.
        code: i32,
        /// Its name, or "unknown".
        name: &'static str,
    },
    /// AuthenticationSASL without SCRAM-SHA-256 among the mechanisms.
    #[error(
        "upstream offered no supported SASL mechanism (offered: {offered}; supported: SCRAM-SHA-256)"
    )]
    UnsupportedSaslMechanisms {
        /// The mechanisms offered, comma-separated.
        offered: String,
    },
    /// A message whose body does not follow its layout.
    #[error("upstream sent a malformed {0} message")]
    Malformed(&'static str),
    /// MD5 authentication was requested but the StartupMessage has no `user`.
    #[error(
        "upstream asked for MD5 authentication, which needs a user name, but the StartupMessage has no \"user\""
    )]
    Md5MissingUser,
    /// The password contains a NUL byte, so it cannot go in a PasswordMessage.
    #[error("the password contains a NUL byte and cannot be sent in a PasswordMessage")]
    PasswordContainsNul,
    /// The SCRAM exchange failed on the client side (bad server-first message, nonce mismatch,
    /// iteration count too high, ...).
    #[error("SCRAM-SHA-256 authentication with the upstream failed: {0}")]
    Scram(String),
    /// The server's SCRAM signature did not verify: the server does not know the password, or
    /// the exchange was tampered with.
    #[error("upstream's SCRAM-SHA-256 server signature did not verify: {0}")]
    ScramServerSignature(String),
    /// [`UpstreamLogin::receive`] was called after the login ended.
    #[error("the upstream login has already finished")]
    Finished,
}

/// What the runtime should do after [`UpstreamLogin::receive`].
pub enum LoginStep {
    /// Read more bytes from the upstream, append them to the buffer, and call `receive` again.
    NeedMore,
    /// Write these bytes to the upstream, then call `receive` again (with the same buffer,
    /// which may already hold the next message).
    Send(BytesMut),
    /// AuthenticationOk was received. Write `to_client` to the client — any
    /// NegotiateProtocolVersion and NoticeResponse messages received earlier, then
    /// AuthenticationOk and every byte after it that had been read (ParameterStatus,
    /// BackendKeyData, ReadyForQuery, possibly a partial message) — then relay raw bytes both
    /// ways. The buffer passed to `receive` is left empty.
    Authenticated {
        /// The bytes to write to the client.
        to_client: BytesMut,
    },
    /// The server sent an ErrorResponse. Write `to_client` to the client (earlier notices,
    /// then the ErrorResponse's exact bytes) and close.
    Rejected {
        /// The bytes to write to the client.
        to_client: BytesMut,
        /// The SQLSTATE (`C` field), e.g. `28P01` for a rejected password, `28000` for an
        /// unknown role; empty if the server sent none.
        code: String,
        /// The message (`M` field); empty if the server sent none.
        message: String,
    },
}

impl fmt::Debug for LoginStep {
    // Bytes are not shown: `Send` carries the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginStep::NeedMore => f.write_str("NeedMore"),
            LoginStep::Send(bytes) => write!(f, "Send(<{} bytes>)", bytes.len()),
            LoginStep::Authenticated { to_client } => f
                .debug_struct("Authenticated")
                .field("to_client", &format_args!("<{} bytes>", to_client.len()))
                .finish(),
            LoginStep::Rejected {
                to_client,
                code,
                message,
            } => f
                .debug_struct("Rejected")
                .field("to_client", &format_args!("<{} bytes>", to_client.len()))
                .field("code", code)
                .field("message", message)
                .finish(),
        }
    }
}

/// Where the login is.
enum State {
    /// StartupMessage sent; waiting for an authentication request.
    AwaitingAuthRequest,
    /// SASLInitialResponse sent; waiting for AuthenticationSASLContinue.
    AwaitingSaslContinue(Box<ScramSha256>),
    /// SASLResponse sent; waiting for AuthenticationSASLFinal.
    AwaitingSaslFinal(Box<ScramSha256>),
    /// Password sent or SCRAM verified; waiting for AuthenticationOk.
    AwaitingOk,
    /// Authenticated, rejected or failed.
    Done,
}

impl State {
    fn during(&self) -> &'static str {
        match self {
            State::AwaitingAuthRequest => "while waiting for an authentication request",
            State::AwaitingSaslContinue(_) => "while waiting for AuthenticationSASLContinue",
            State::AwaitingSaslFinal(_) => "while waiting for AuthenticationSASLFinal",
            State::AwaitingOk => "while waiting for AuthenticationOk",
            State::Done => "after the login finished",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            State::AwaitingAuthRequest => "AwaitingAuthRequest",
            State::AwaitingSaslContinue(_) => "AwaitingSaslContinue",
            State::AwaitingSaslFinal(_) => "AwaitingSaslFinal",
            State::AwaitingOk => "AwaitingOk",
            State::Done => "Done",
        }
    }
}

/// The proxy's login to the upstream server, as a sans-IO state machine.
///
/// ```text
/// let mut login = UpstreamLogin::new(startup, token);
/// upstream.write_all(&login.start());
/// let mut buf = BytesMut::new();
/// loop {
///     match login.receive(&mut buf)? {
///         LoginStep::NeedMore => { upstream.read_buf(&mut buf)?; }   // EOF here is an error
///         LoginStep::Send(bytes) => upstream.write_all(&bytes),
///         LoginStep::Authenticated { to_client } => { client.write_all(&to_client); break relay() }
///         LoginStep::Rejected { to_client, code, .. } => { client.write_all(&to_client); break close() }
///     }
/// }
/// ```
///
/// `Debug` never shows the password.
pub struct UpstreamLogin {
    /// The encoded StartupMessage until [`start`](Self::start) takes it.
    startup: BytesMut,
    /// Set when the StartupMessage could not be encoded; reported by the next `receive`.
    startup_error: Option<ProtocolError>,
    /// The `user` parameter, for MD5.
    user: Option<String>,
    /// The password (access token); emptied once it has been used.
    password: Vec<u8>,
    state: State,
    /// Whether a NegotiateProtocolVersion has been seen (only one is allowed).
    negotiated: bool,
    /// NegotiateProtocolVersion and NoticeResponse messages kept for the client.
    pending: BytesMut,
}

impl fmt::Debug for UpstreamLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamLogin")
            .field("user", &self.user)
            .field("state", &self.state.name())
            .field("password", &"<redacted>")
            .field("pending_to_client", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamLogin {
    /// A login that sends `startup` (with `user` already set to the Entra user and `database`
    /// set) and authenticates with `password` (the access token).
    ///
    /// If `startup` cannot be encoded (a NUL byte in a parameter), [`start`](Self::start)
    /// returns no bytes and the first [`receive`](Self::receive) fails with
    /// [`LoginError::InvalidStartup`], without waiting for any bytes.
    pub fn new(startup: StartupMessage, password: Vec<u8>) -> UpstreamLogin {
        let mut encoded = BytesMut::new();
        let startup_error = messages::startup_message(&startup, &mut encoded).err();
        UpstreamLogin {
            startup: encoded,
            startup_error,
            user: startup.user().map(str::to_owned),
            password,
            state: State::AwaitingAuthRequest,
            negotiated: false,
            pending: BytesMut::new(),
        }
    }

    /// The bytes to send to the upstream first: the StartupMessage. A second call returns an
    /// empty buffer.
    pub fn start(&mut self) -> BytesMut {
        std::mem::take(&mut self.startup)
    }

    /// Processes the bytes read from the upstream so far. Complete messages are consumed from
    /// `buf`; a partial message stays for the next call.
    ///
    /// After an error, or after `Authenticated` or `Rejected`, the login is over and further
    /// calls return [`LoginError::Finished`].
    pub fn receive(&mut self, buf: &mut BytesMut) -> Result<LoginStep, LoginError> {
        let result = self.receive_inner(buf);
        if result.is_err() {
            self.finish();
        }
        result
    }

    fn receive_inner(&mut self, buf: &mut BytesMut) -> Result<LoginStep, LoginError> {
        if let Some(e) = self.startup_error.take() {
            return Err(LoginError::InvalidStartup(e));
        }
        loop {
            if matches!(self.state, State::Done) {
                return Err(LoginError::Finished);
            }
            let Some(header) = Header::parse(buf) else {
                return Ok(LoginStep::NeedMore);
            };
            let frame_len = header
                .frame_len()
                .ok_or(LoginError::InvalidLength(header.length()))?;
            if frame_len - 1 > MAX_LOGIN_MESSAGE_LEN {
                return Err(LoginError::MessageTooLong {
                    len: frame_len - 1,
                    max: MAX_LOGIN_MESSAGE_LEN,
                });
            }
            if buf.len() < frame_len {
                buf.reserve(frame_len - buf.len());
                return Ok(LoginStep::NeedMore);
            }
            match header.tag() {
                AUTHENTICATION_TAG => {
                    let code = buf[..frame_len]
                        .get(Header::SIZE..Header::SIZE + 4)
                        .and_then(|b| <[u8; 4]>::try_from(b).ok())
                        .map(i32::from_be_bytes)
                        .ok_or(LoginError::Malformed("Authentication"))?;
                    if code == AUTH_OK {
                        return self.on_ok(frame_len, buf);
                    }
                    let message = buf.split_to(frame_len);
                    let data = &message[Header::SIZE + 4..];
                    if let Some(step) = self.on_auth_request(code, data)? {
                        return Ok(step);
                    }
                }
                ERROR_RESPONSE_TAG => {
                    let message = buf.split_to(frame_len);
                    let (code, text) = backend::parse_error_fields(&message[Header::SIZE..]);
                    let mut to_client = std::mem::take(&mut self.pending);
                    to_client.unsplit(message);
                    self.finish();
                    return Ok(LoginStep::Rejected {
                        to_client,
                        code: code.unwrap_or_default(),
                        message: text.unwrap_or_default(),
                    });
                }
                NOTICE_RESPONSE_TAG => self.keep_for_client(buf.split_to(frame_len))?,
                NEGOTIATE_PROTOCOL_VERSION_TAG
                    if !self.negotiated && matches!(self.state, State::AwaitingAuthRequest) =>
                {
                    // i32 newest minor version, i32 option count: at least 8 body bytes.
                    if frame_len < Header::SIZE + 8 {
                        return Err(LoginError::Malformed("NegotiateProtocolVersion"));
                    }
                    self.negotiated = true;
                    self.keep_for_client(buf.split_to(frame_len))?;
                }
                tag => {
                    return Err(LoginError::UnexpectedMessage {
                        tag: char::from(tag),
                        during: self.state.during(),
                    });
                }
            }
        }
    }

    /// AuthenticationOk at the front of `buf`, `frame_len` bytes long.
    fn on_ok(&mut self, frame_len: usize, buf: &mut BytesMut) -> Result<LoginStep, LoginError> {
        match self.state {
            // The server may trust the connection without asking for a password.
            State::AwaitingAuthRequest | State::AwaitingOk => {}
            // Not before SCRAM's server signature has been verified.
            _ => {
                return Err(LoginError::UnexpectedAuthRequest {
                    method: backend::auth_method_name(AUTH_OK),
                    during: self.state.during(),
                });
            }
        }
        if frame_len != Header::SIZE + 4 {
            return Err(LoginError::Malformed("AuthenticationOk"));
        }
        let mut to_client = std::mem::take(&mut self.pending);
        to_client.unsplit(buf.split());
        self.finish();
        Ok(LoginStep::Authenticated { to_client })
    }

    /// An authentication request other than Ok, with its data (the body after the code).
    /// `None` means nothing to send: go on with the next message.
    fn on_auth_request(&mut self, code: i32, data: &[u8]) -> Result<Option<LoginStep>, LoginError> {
        let during = self.state.during();
        let unexpected = || LoginError::UnexpectedAuthRequest {
            method: backend::auth_method_name(code),
            during,
        };
        match code {
            AUTH_CLEARTEXT_PASSWORD => {
                if !matches!(self.state, State::AwaitingAuthRequest) {
                    return Err(unexpected());
                }
                let password = std::mem::take(&mut self.password);
                let out = password_message(&password)?;
                self.state = State::AwaitingOk;
                Ok(Some(LoginStep::Send(out)))
            }
            AUTH_MD5_PASSWORD => {
                if !matches!(self.state, State::AwaitingAuthRequest) {
                    return Err(unexpected());
                }
                let salt = <[u8; 4]>::try_from(data)
                    .map_err(|_| LoginError::Malformed("AuthenticationMD5Password"))?;
                let user = self.user.as_deref().ok_or(LoginError::Md5MissingUser)?;
                let password = std::mem::take(&mut self.password);
                let hash = md5_hash(user.as_bytes(), &password, salt);
                let out = password_message(hash.as_bytes())?;
                self.state = State::AwaitingOk;
                Ok(Some(LoginStep::Send(out)))
            }
            AUTH_SASL => {
                if !matches!(self.state, State::AwaitingAuthRequest) {
                    return Err(unexpected());
                }
                let mechanisms = parse_sasl_mechanisms(data)?;
                if !mechanisms.iter().any(|m| *m == SCRAM_SHA_256.as_bytes()) {
                    let offered = mechanisms
                        .iter()
                        .map(|m| String::from_utf8_lossy(m))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(LoginError::UnsupportedSaslMechanisms { offered });
                }
                // Even if SCRAM-SHA-256-PLUS is offered: "n,," (client does not support
                // channel binding), which the server accepts without suspecting a downgrade.
                let password = std::mem::take(&mut self.password);
                let scram = ScramSha256::new(&password, ChannelBinding::unsupported());
                let mut out = BytesMut::new();
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut out)
                    .map_err(|e| LoginError::Scram(e.to_string()))?;
                self.state = State::AwaitingSaslContinue(Box::new(scram));
                Ok(Some(LoginStep::Send(out)))
            }
            AUTH_SASL_CONTINUE => {
                let State::AwaitingSaslContinue(mut scram) =
                    std::mem::replace(&mut self.state, State::Done)
                else {
                    return Err(unexpected());
                };
                scram
                    .update(data)
                    .map_err(|e| LoginError::Scram(e.to_string()))?;
                let mut out = BytesMut::new();
                frontend::sasl_response(scram.message(), &mut out)
                    .map_err(|e| LoginError::Scram(e.to_string()))?;
                self.state = State::AwaitingSaslFinal(scram);
                Ok(Some(LoginStep::Send(out)))
            }
            AUTH_SASL_FINAL => {
                let State::AwaitingSaslFinal(mut scram) =
                    std::mem::replace(&mut self.state, State::Done)
                else {
                    return Err(unexpected());
                };
                scram
                    .finish(data)
                    .map_err(|e| LoginError::ScramServerSignature(e.to_string()))?;
                self.state = State::AwaitingOk;
                Ok(None)
            }
            _ => Err(LoginError::UnsupportedAuthMethod {
                code,
                name: backend::auth_method_name(code),
            }),
        }
    }

    /// Keeps a NoticeResponse or NegotiateProtocolVersion for the client, within bounds.
    fn keep_for_client(&mut self, message: BytesMut) -> Result<(), LoginError> {
        if self.pending.len() + message.len() > MAX_PENDING_TO_CLIENT {
            return Err(LoginError::TooManyNotices {
                max: MAX_PENDING_TO_CLIENT,
            });
        }
        self.pending.unsplit(message);
        Ok(())
    }

    /// Ends the login: nothing more is accepted, and the password is dropped.
    fn finish(&mut self) {
        self.state = State::Done;
        self.password = Vec::new();
        self.startup_error = None;
    }
}

/// A PasswordMessage, with the NUL error mapped.
fn password_message(password: &[u8]) -> Result<BytesMut, LoginError> {
    let mut out = BytesMut::new();
    messages::password_message(password, &mut out).map_err(|e| match e.kind() {
        ProtocolErrorKind::ContainsNul => LoginError::PasswordContainsNul,
        _ => LoginError::Encode(e),
    })?;
    Ok(out)
}

/// The mechanism names of an AuthenticationSASL body: `(name\0)*, \0`.
fn parse_sasl_mechanisms(mut data: &[u8]) -> Result<Vec<&[u8]>, LoginError> {
    let mut mechanisms = Vec::new();
    loop {
        let end = memchr::memchr(0, data).ok_or(LoginError::Malformed("AuthenticationSASL"))?;
        let name = &data[..end];
        data = &data[end + 1..];
        if name.is_empty() {
            return if data.is_empty() {
                Ok(mechanisms)
            } else {
                Err(LoginError::Malformed("AuthenticationSASL"))
            };
        }
        mechanisms.push(name);
    }
}

#[cfg(test)]
mod tests;
