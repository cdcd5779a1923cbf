//! The upstream login, where the proxy plays the client.
//!
//! ```text
//! proxy                                       upstream (Cosmos DB / Cassandra)
//!   STARTUP (the client's body, replayed)  ─▶
//!                                          ◀─  READY                          → Ready
//!                                          ◀─  AUTHENTICATE [string class]
//!   AUTH_RESPONSE [bytes] "\0user\0pass"   ─▶
//!                                          ◀─  AUTH_CHALLENGE [bytes]         → answer again
//!                                          ◀─  AUTH_SUCCESS [bytes]           → Ready
//!                                          ◀─  ERROR [int code][string msg]   → Rejected
//! ```
//!
//! All frames use stream 0. The token is SASL PLAIN (RFC 4616) with an empty authorization
//! identity, which both `org.apache.cassandra.auth.PasswordAuthenticator` and Cosmos DB's
//! authenticator accept. For v5 the framing switches to segments right after AUTHENTICATE
//! (spec v5 §2.3.1); this state machine does that itself, and [`UpstreamLogin::framing`]
//! tells the runtime which framing the connection uses once [`LoginStep::Ready`] came.
//! Responses may be compressed if the replayed STARTUP negotiated compression.

use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::error::CqlError;
use crate::frame::{BodyCompression, Frame, FrameDecoder, FrameEncoder, Framing, opcode};
use crate::messages::{self, codes};

/// Bound on a frame received during the login (AUTHENTICATE, challenges, ERROR).
pub const LOGIN_MAX_FRAME_LEN: usize = 1024 * 1024;

/// What the runtime does after feeding upstream bytes to [`UpstreamLogin::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStep {
    /// No whole frame yet: read more bytes.
    NeedMore,
    /// Write these bytes upstream, then read more.
    Send(BytesMut),
    /// Logged in (READY or AUTH_SUCCESS): answer the client READY yourself.
    Ready,
    /// The upstream refused the STARTUP or the credentials.
    Rejected {
        /// The upstream ERROR frame as received (stream 0): set `error.header.stream` to the
        /// client's STARTUP stream and forward it.
        error: Frame,
        /// The error code.
        code: i32,
        /// The error message.
        message: String,
        /// Code 0x0100 (bad credentials): re-fetch the key and retry with a fresh connection.
        bad_credentials: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// `start` not called yet.
    Idle,
    /// STARTUP sent; expecting READY, AUTHENTICATE or ERROR.
    StartupSent,
    /// AUTH_RESPONSE sent; expecting AUTH_CHALLENGE, AUTH_SUCCESS or ERROR.
    AuthSent,
    /// READY / AUTH_SUCCESS / ERROR received.
    Done,
}

/// The proxy's login to the upstream server (sans-IO).
pub struct UpstreamLogin {
    version: u8,
    startup_body: Bytes,
    username: String,
    password: Vec<u8>,
    compression: BodyCompression,
    v5_lz4: bool,
    decoder: FrameDecoder,
    encoder: FrameEncoder,
    state: State,
    authenticator: Option<String>,
}

impl fmt::Debug for UpstreamLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamLogin")
            .field("version", &self.version)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("compression", &self.compression)
            .field("state", &self.state)
            .field("authenticator", &self.authenticator)
            .finish_non_exhaustive()
    }
}

impl UpstreamLogin {
    /// A login at `version`, replaying the client's STARTUP body, with SASL PLAIN credentials.
    pub fn new(version: u8, startup_body: Bytes, username: String, password: Vec<u8>) -> Self {
        let options = messages::parse_string_map(&startup_body).unwrap_or_default();
        let compression = BodyCompression::from_startup_options(&options);
        let v5_lz4 = version >= 5 && compression == BodyCompression::Lz4;
        UpstreamLogin {
            version,
            startup_body,
            username,
            password,
            compression: if version >= 5 {
                BodyCompression::None
            } else {
                compression
            },
            v5_lz4,
            decoder: FrameDecoder::new(LOGIN_MAX_FRAME_LEN),
            encoder: FrameEncoder::new(),
            state: State::Idle,
            authenticator: None,
        }
    }

    /// The STARTUP frame (stream 0, legacy framing) to write upstream first.
    pub fn start(&mut self) -> BytesMut {
        self.state = State::StartupSent;
        let frame = Frame::new(
            self.version,
            false,
            0,
            0,
            opcode::STARTUP,
            self.startup_body.clone(),
        );
        frame.to_bytes()
    }

    /// The authenticator class the upstream named in AUTHENTICATE, if it asked.
    pub fn authenticator(&self) -> Option<&str> {
        self.authenticator.as_deref()
    }

    /// The body compression negotiated for a v3/v4 connection (from the replayed STARTUP).
    pub fn compression(&self) -> BodyCompression {
        self.compression
    }

    /// The framing of the upstream connection from now on: v5 segments once the upstream
    /// answered a v5 STARTUP with READY or AUTHENTICATE, legacy otherwise.
    pub fn framing(&self) -> Framing {
        self.decoder.framing()
    }

    /// The decoder and encoder, in their final framing; the decoder may hold v5 bytes that
    /// followed the last login frame.
    pub fn into_codec(self) -> (FrameDecoder, FrameEncoder) {
        (self.decoder, self.encoder)
    }

    fn switch_to_v5(&mut self) {
        if self.version >= 5 {
            let framing = Framing::V5 { lz4: self.v5_lz4 };
            self.decoder.set_framing(framing);
            self.encoder.set_framing(framing);
        }
    }

    fn auth_response(&mut self) -> BytesMut {
        let token = messages::sasl_plain(&self.username, &self.password);
        let frame = messages::auth_response_frame(self.version, 0, &token);
        let mut out = BytesMut::new();
        self.encoder.encode(&frame, &mut out);
        out
    }

    /// Feeds upstream bytes; consumes at most one frame from `buf` per call (call again
    /// after `Send`; leftover bytes after `Ready` belong to the relay).
    pub fn receive(&mut self, buf: &mut BytesMut) -> Result<LoginStep, CqlError> {
        let Some(frame) = self.decoder.decode(buf)? else {
            return Ok(LoginStep::NeedMore);
        };
        let h = frame.header;
        const CONTEXT: &str = "during the upstream login";
        if !h.response || !matches!(self.state, State::StartupSent | State::AuthSent) {
            return Err(CqlError::Unexpected {
                opcode: h.opcode,
                context: CONTEXT,
            });
        }
        let body = frame.plain_body(self.compression, LOGIN_MAX_FRAME_LEN)?;
        match (self.state, h.opcode) {
            (_, opcode::ERROR) => {
                self.state = State::Done;
                let (code, message) = messages::parse_error(&body)?;
                Ok(LoginStep::Rejected {
                    error: frame,
                    code,
                    message,
                    bad_credentials: code == codes::BAD_CREDENTIALS,
                })
            }
            (State::StartupSent, opcode::READY) => {
                self.state = State::Done;
                self.switch_to_v5();
                Ok(LoginStep::Ready)
            }
            (State::StartupSent, opcode::AUTHENTICATE) => {
                self.authenticator = Some(messages::parse_authenticate(&body)?);
                self.switch_to_v5();
                self.state = State::AuthSent;
                Ok(LoginStep::Send(self.auth_response()))
            }
            (State::AuthSent, opcode::AUTH_CHALLENGE) => {
                messages::parse_auth_token(&body)?;
                Ok(LoginStep::Send(self.auth_response()))
            }
            (State::AuthSent, opcode::AUTH_SUCCESS) => {
                self.state = State::Done;
                Ok(LoginStep::Ready)
            }
            (_, op) => Err(CqlError::Unexpected {
                opcode: op,
                context: CONTEXT,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{error_frame, startup_frame};
    use bytes::BufMut;

    fn login(version: u8, options: &[(&str, &str)]) -> UpstreamLogin {
        let body = startup_frame(version, 0, options).body;
        UpstreamLogin::new(version, body, "user".into(), b"pass".to_vec())
    }

    fn authenticate(version: u8, class: &str) -> BytesMut {
        let mut body = BytesMut::new();
        crate::wire::put_string(&mut body, class);
        Frame::new(version, true, 0, 0, opcode::AUTHENTICATE, body.freeze()).to_bytes()
    }

    fn token_frame(version: u8, op: u8, token: Option<&[u8]>) -> BytesMut {
        let mut body = BytesMut::new();
        crate::wire::put_bytes(&mut body, token);
        Frame::new(version, true, 0, 0, op, body.freeze()).to_bytes()
    }

    #[test]
    fn password_authenticator_flow() {
        let mut l = login(4, &[("CQL_VERSION", "3.0.0")]);
        let startup = l.start();
        assert_eq!(&startup[..5], &[0x04, 0, 0, 0, opcode::STARTUP]);
        let mut buf = BytesMut::new();
        assert_eq!(l.receive(&mut buf).unwrap(), LoginStep::NeedMore);

        // byte-by-byte AUTHENTICATE
        let auth = authenticate(4, "org.apache.cassandra.auth.PasswordAuthenticator");
        let mut step = LoginStep::NeedMore;
        for b in auth.iter() {
            buf.put_u8(*b);
            step = l.receive(&mut buf).unwrap();
            if step != LoginStep::NeedMore {
                break;
            }
        }
        let LoginStep::Send(bytes) = step else {
            panic!("expected Send, got {step:?}");
        };
        assert_eq!(
            &bytes[..],
            &[
                0x04,
                0,
                0,
                0,
                opcode::AUTH_RESPONSE,
                0,
                0,
                0,
                14, // header
                0,
                0,
                0,
                10,
                0,
                b'u',
                b's',
                b'e',
                b'r',
                0,
                b'p',
                b'a',
                b's',
                b's'
            ]
        );
        assert_eq!(
            l.authenticator(),
            Some("org.apache.cassandra.auth.PasswordAuthenticator")
        );

        let mut buf = token_frame(4, opcode::AUTH_SUCCESS, None);
        assert_eq!(l.receive(&mut buf).unwrap(), LoginStep::Ready);
        assert!(buf.is_empty());
        assert_eq!(l.framing(), Framing::Legacy);
    }

    #[test]
    fn challenge_is_answered_again() {
        let mut l = login(4, &[("CQL_VERSION", "3.0.0")]);
        l.start();
        let mut buf = authenticate(
            4,
            "com.microsoft.azure.cosmosdb.cassandra.auth.CosmosAuthenticator",
        );
        assert!(matches!(l.receive(&mut buf).unwrap(), LoginStep::Send(_)));
        let mut buf = token_frame(4, opcode::AUTH_CHALLENGE, Some(b"more"));
        let LoginStep::Send(bytes) = l.receive(&mut buf).unwrap() else {
            panic!("expected Send");
        };
        assert!(bytes.ends_with(b"\0user\0pass"));
    }

    #[test]
    fn ready_without_auth() {
        let mut l = login(4, &[("CQL_VERSION", "3.0.0")]);
        l.start();
        let mut buf = crate::messages::ready_frame(4, 0).to_bytes();
        buf.extend_from_slice(b"\x84\x00\xff\xff\x0c"); // start of an EVENT for the relay
        assert_eq!(l.receive(&mut buf).unwrap(), LoginStep::Ready);
        assert_eq!(&buf[..], b"\x84\x00\xff\xff\x0c");
    }

    #[test]
    fn bad_credentials_are_rejected() {
        let mut l = login(4, &[("CQL_VERSION", "3.0.0")]);
        l.start();
        let mut buf = authenticate(4, "org.apache.cassandra.auth.PasswordAuthenticator");
        l.receive(&mut buf).unwrap();
        let err = error_frame(
            4,
            0,
            codes::BAD_CREDENTIALS,
            "Provided username user and/or password are incorrect",
        );
        let mut buf = err.to_bytes();
        let step = l.receive(&mut buf).unwrap();
        assert_eq!(
            step,
            LoginStep::Rejected {
                error: err,
                code: 0x0100,
                message: "Provided username user and/or password are incorrect".into(),
                bad_credentials: true,
            }
        );
    }

    #[test]
    fn compressed_error_is_read() {
        let mut l = login(4, &[("CQL_VERSION", "3.0.0"), ("COMPRESSION", "snappy")]);
        l.start();
        let plain = error_frame(4, 0, codes::PROTOCOL_ERROR, "nope");
        let body = BodyCompression::Snappy.compress(&plain.body).unwrap();
        let mut buf = Frame::new(4, true, 0x01, 0, opcode::ERROR, body).to_bytes();
        let LoginStep::Rejected {
            code,
            message,
            bad_credentials,
            ..
        } = l.receive(&mut buf).unwrap()
        else {
            panic!("expected Rejected");
        };
        assert_eq!(
            (code, message.as_str(), bad_credentials),
            (0x000A, "nope", false)
        );
    }

    #[test]
    fn unexpected_opcode_is_an_error() {
        let mut l = login(4, &[("CQL_VERSION", "3.0.0")]);
        l.start();
        let mut buf = token_frame(4, opcode::AUTH_SUCCESS, None);
        assert!(matches!(
            l.receive(&mut buf),
            Err(CqlError::Unexpected { .. })
        ));
    }

    #[test]
    fn v5_switches_to_segments_after_authenticate() {
        let mut l = login(5, &[("CQL_VERSION", "3.0.0"), ("COMPRESSION", "lz4")]);
        l.start();
        let mut buf = authenticate(5, "org.apache.cassandra.auth.PasswordAuthenticator");
        let LoginStep::Send(bytes) = l.receive(&mut buf).unwrap() else {
            panic!("expected Send");
        };
        assert_eq!(l.framing(), Framing::V5 { lz4: true });
        // The AUTH_RESPONSE is inside an lz4 segment.
        let mut dec = FrameDecoder::new(1024);
        dec.set_framing(Framing::V5 { lz4: true });
        let mut bytes = bytes;
        let frame = dec.decode(&mut bytes).unwrap().unwrap();
        assert_eq!(frame.header.opcode, opcode::AUTH_RESPONSE);
        // AUTH_SUCCESS arrives in a segment too.
        let mut enc = FrameEncoder::new();
        enc.set_framing(Framing::V5 { lz4: true });
        let mut buf = BytesMut::new();
        let mut body = BytesMut::new();
        crate::wire::put_bytes(&mut body, None);
        enc.encode(
            &Frame::new(5, true, 0, 0, opcode::AUTH_SUCCESS, body.freeze()),
            &mut buf,
        );
        assert_eq!(l.receive(&mut buf).unwrap(), LoginStep::Ready);
    }

    #[test]
    fn debug_hides_the_password() {
        let l = UpstreamLogin::new(4, Bytes::new(), "user".into(), b"s3cret-key".to_vec());
        let s = format!("{l:?}");
        assert!(!s.contains("s3cret"), "{s}");
        assert!(s.contains("redacted"));
    }
}
