//! The client side of a connection's start, where the proxy plays the server.
//!
//! ```text
//! client                         proxy
//!   OPTIONS          ─────────▶  SUPPORTED {CQL_VERSION, COMPRESSION, PROTOCOL_VERSIONS}   (any number of times)
//!   STARTUP {opts}   ─────────▶  HandshakeAction::Startup → the runtime logs in upstream,
//!                                then sends the client READY (or forwards the upstream ERROR)
//! ```
//!
//! The client sends no credentials: the proxy never asks for them (no AUTHENTICATE). A
//! version above the proxy's maximum gets the ERROR Cassandra sends, so drivers downgrade
//! (see [`crate::messages::unsupported_version_frame`]). Frames before READY are always in
//! legacy framing, even for v5.

use bytes::Bytes;

use crate::error::CqlError;
use crate::frame::{BodyCompression, Frame, opcode};
use crate::messages::{self, codes};

/// The lowest protocol version the proxy speaks.
pub const MIN_VERSION: u8 = 3;

/// What the proxy advertises in SUPPORTED and accepts in STARTUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportedOptions {
    /// Body compressions offered (`lz4`, `snappy`); empty for none (Cosmos DB).
    pub compression: Vec<String>,
    /// The CQL version advertised, e.g. `3.4.5`.
    pub cql_version: String,
}

impl Default for SupportedOptions {
    fn default() -> Self {
        SupportedOptions {
            compression: Vec::new(),
            cql_version: "3.4.5".to_owned(),
        }
    }
}

/// What the runtime does with a client frame received before READY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeAction {
    /// Send this frame to the client and keep reading (SUPPORTED, or an ERROR the client may
    /// recover from).
    Reply(Frame),
    /// Send this frame to the client, then close the connection.
    ReplyAndClose(Frame),
    /// The client sent STARTUP: connect and log in upstream now, replaying `raw_body`.
    Startup {
        /// The protocol version the client speaks.
        version: u8,
        /// The STARTUP's stream id (READY or the ERROR goes back on it).
        stream: i16,
        /// The STARTUP options in wire order (CQL_VERSION, COMPRESSION, DRIVER_NAME, …).
        options: Vec<(String, String)>,
        /// The STARTUP body as received.
        raw_body: Bytes,
    },
}

/// The proxy's half of a client's connection start (sans-IO: frames in, actions out).
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    max_version: u8,
    supported: SupportedOptions,
    started: bool,
}

impl ClientHandshake {
    /// A handshake accepting versions 3 up to `max_version` (4 for Cosmos DB, 5 otherwise).
    pub fn new(max_version: u8, supported: SupportedOptions) -> Self {
        ClientHandshake {
            max_version: max_version.max(MIN_VERSION),
            supported,
            started: false,
        }
    }

    /// The highest version accepted.
    pub fn max_version(&self) -> u8 {
        self.max_version
    }

    /// Handles one frame from the client (decoded with legacy framing).
    pub fn on_frame(&mut self, frame: &Frame) -> Result<HandshakeAction, CqlError> {
        let h = &frame.header;
        if self.started {
            return Err(CqlError::Unexpected {
                opcode: h.opcode,
                context: "after STARTUP, before the proxy answered it",
            });
        }
        if h.version < MIN_VERSION || h.version > self.max_version {
            return Ok(HandshakeAction::ReplyAndClose(
                messages::unsupported_version_frame(h.version, self.max_version, h.stream),
            ));
        }
        let protocol_error = |message: String| {
            messages::error_frame(h.version, h.stream, codes::PROTOCOL_ERROR, &message)
        };
        // Cassandra's checks and wording (`Message.Type.fromOpcode`): the opcode, then the
        // direction.
        if opcode::name(h.opcode) == "unknown" {
            return Ok(HandshakeAction::Reply(protocol_error(format!(
                "Unknown opcode {}",
                h.opcode
            ))));
        }
        if h.response {
            return Ok(HandshakeAction::ReplyAndClose(protocol_error(format!(
                "Wrong protocol direction (expected REQUEST, got RESPONSE) for opcode {} ({})",
                h.opcode,
                opcode::name(h.opcode)
            ))));
        }
        match h.opcode {
            opcode::OPTIONS => Ok(HandshakeAction::Reply(
                self.supported_frame(h.version, h.stream),
            )),
            opcode::STARTUP => {
                if frame.is_compressed() {
                    return Ok(HandshakeAction::ReplyAndClose(protocol_error(
                        "STARTUP must not be compressed".into(),
                    )));
                }
                let options = match messages::parse_string_map(&frame.body) {
                    Ok(options) => options,
                    Err(e) => {
                        return Ok(HandshakeAction::ReplyAndClose(protocol_error(
                            e.to_string(),
                        )));
                    }
                };
                if let Some((_, algo)) = options
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("COMPRESSION"))
                {
                    let offered = self
                        .supported
                        .compression
                        .iter()
                        .any(|c| c.eq_ignore_ascii_case(algo));
                    let usable = match h.version {
                        // v5 compresses segments, and only with lz4.
                        5 => algo.eq_ignore_ascii_case("lz4"),
                        _ => BodyCompression::from_option(algo).is_some(),
                    };
                    if !(offered && usable) {
                        return Ok(HandshakeAction::Reply(protocol_error(format!(
                            "Unknown compression algorithm: {algo}"
                        ))));
                    }
                }
                self.started = true;
                Ok(HandshakeAction::Startup {
                    version: h.version,
                    stream: h.stream,
                    options,
                    raw_body: frame.body.clone(),
                })
            }
            other => Ok(HandshakeAction::Reply(protocol_error(format!(
                "Unexpected message {}, expecting STARTUP or OPTIONS",
                opcode::name(other)
            )))),
        }
    }

    fn supported_frame(&self, version: u8, stream: i16) -> Frame {
        let cql = [self.supported.cql_version.as_str()];
        let compression: Vec<&str> = self
            .supported
            .compression
            .iter()
            .map(String::as_str)
            .collect();
        let versions = messages::supported_versions(self.max_version);
        let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
        messages::supported_frame(
            version,
            stream,
            &[
                ("CQL_VERSION", &cql),
                ("COMPRESSION", &compression),
                ("PROTOCOL_VERSIONS", &versions),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{parse_error, parse_supported, startup_frame};

    fn handshake(max: u8) -> ClientHandshake {
        ClientHandshake::new(
            max,
            SupportedOptions {
                compression: vec!["lz4".into(), "snappy".into()],
                cql_version: "3.4.5".into(),
            },
        )
    }

    fn options(version: u8, stream: i16) -> Frame {
        Frame::new(version, false, 0, stream, opcode::OPTIONS, Bytes::new())
    }

    #[test]
    fn options_gets_supported() {
        let mut hs = handshake(4);
        let HandshakeAction::Reply(reply) = hs.on_frame(&options(4, 3)).unwrap() else {
            panic!("expected a reply");
        };
        assert_eq!(reply.header.opcode, opcode::SUPPORTED);
        assert_eq!(
            (
                reply.header.version,
                reply.header.stream,
                reply.header.response
            ),
            (4, 3, true)
        );
        let map = parse_supported(&reply.body).unwrap();
        assert_eq!(map[0], ("CQL_VERSION".into(), vec!["3.4.5".into()]));
        assert_eq!(
            map[1],
            ("COMPRESSION".into(), vec!["lz4".into(), "snappy".into()])
        );
        assert_eq!(
            map[2],
            (
                "PROTOCOL_VERSIONS".into(),
                vec!["3/v3".into(), "4/v4".into()]
            )
        );
        // OPTIONS may come again.
        assert!(matches!(
            hs.on_frame(&options(4, 4)).unwrap(),
            HandshakeAction::Reply(_)
        ));
    }

    #[test]
    fn v5_client_with_max_4_gets_the_exact_cassandra_error() {
        let mut hs = handshake(4);
        let action = hs.on_frame(&options(5, 0)).unwrap();
        let HandshakeAction::ReplyAndClose(reply) = action else {
            panic!("expected ReplyAndClose");
        };
        let msg =
            b"Invalid or unsupported protocol version (5); supported versions are (3/v3, 4/v4)";
        let mut expected = vec![0x84, 0x00, 0x00, 0x00, 0x00];
        expected.extend_from_slice(&((4 + 2 + msg.len()) as u32).to_be_bytes());
        expected.extend_from_slice(&[0, 0, 0, 0x0A]);
        expected.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        expected.extend_from_slice(msg);
        assert_eq!(&reply.to_bytes()[..], &expected[..]);
    }

    #[test]
    fn v5_client_with_max_5_is_accepted() {
        let mut hs = handshake(5);
        let f = startup_frame(5, 0, &[("CQL_VERSION", "3.0.0"), ("COMPRESSION", "lz4")]);
        assert!(matches!(
            hs.on_frame(&f).unwrap(),
            HandshakeAction::Startup { version: 5, .. }
        ));
        // snappy is not a v5 compression
        let mut hs = handshake(5);
        let f = startup_frame(5, 0, &[("CQL_VERSION", "3.0.0"), ("COMPRESSION", "snappy")]);
        assert!(matches!(
            hs.on_frame(&f).unwrap(),
            HandshakeAction::Reply(_)
        ));
    }

    #[test]
    fn startup_with_lz4_starts_the_upstream_login() {
        let mut hs = handshake(4);
        let f = startup_frame(
            4,
            1,
            &[
                ("CQL_VERSION", "3.0.0"),
                ("COMPRESSION", "lz4"),
                ("DRIVER_NAME", "scylla"),
            ],
        );
        let action = hs.on_frame(&f).unwrap();
        assert_eq!(
            action,
            HandshakeAction::Startup {
                version: 4,
                stream: 1,
                options: vec![
                    ("CQL_VERSION".into(), "3.0.0".into()),
                    ("COMPRESSION".into(), "lz4".into()),
                    ("DRIVER_NAME".into(), "scylla".into()),
                ],
                raw_body: f.body.clone(),
            }
        );
        // Nothing is expected until the proxy answers the STARTUP.
        assert!(hs.on_frame(&options(4, 0)).is_err());
    }

    #[test]
    fn unknown_compression_is_refused() {
        let mut hs = ClientHandshake::new(4, SupportedOptions::default());
        let f = startup_frame(4, 0, &[("CQL_VERSION", "3.0.0"), ("COMPRESSION", "lz4")]);
        let HandshakeAction::Reply(reply) = hs.on_frame(&f).unwrap() else {
            panic!("expected a reply");
        };
        assert_eq!(
            parse_error(&reply.body).unwrap(),
            (
                codes::PROTOCOL_ERROR,
                "Unknown compression algorithm: lz4".into()
            )
        );
    }

    #[test]
    fn query_before_startup_is_a_protocol_error() {
        let mut hs = handshake(4);
        let f = Frame::new(
            4,
            false,
            0,
            2,
            opcode::QUERY,
            Bytes::from_static(b"\0\0\0\0"),
        );
        let HandshakeAction::Reply(reply) = hs.on_frame(&f).unwrap() else {
            panic!("expected a reply");
        };
        let (code, message) = parse_error(&reply.body).unwrap();
        assert_eq!(code, codes::PROTOCOL_ERROR);
        assert!(message.contains("QUERY"), "{message}");
        assert_eq!(reply.header.stream, 2);
    }

    #[test]
    fn unknown_opcodes_and_response_frames_get_cassandras_words() {
        let mut hs = handshake(4);
        let f = Frame::new(4, false, 0, 2, 0x7f, Bytes::new());
        let HandshakeAction::Reply(reply) = hs.on_frame(&f).unwrap() else {
            panic!("expected a reply");
        };
        assert_eq!(
            parse_error(&reply.body).unwrap(),
            (codes::PROTOCOL_ERROR, "Unknown opcode 127".into())
        );
        let f = Frame::new(4, true, 0, 2, opcode::OPTIONS, Bytes::new());
        let HandshakeAction::ReplyAndClose(reply) = hs.on_frame(&f).unwrap() else {
            panic!("expected a reply and a close");
        };
        assert_eq!(
            parse_error(&reply.body).unwrap().1,
            "Wrong protocol direction (expected REQUEST, got RESPONSE) for opcode 5 (OPTIONS)"
        );
    }

    #[test]
    fn garbage_startup_body_closes() {
        let mut hs = handshake(4);
        let f = Frame::new(
            4,
            false,
            0,
            0,
            opcode::STARTUP,
            Bytes::from_static(b"\x00\x05ab"),
        );
        assert!(matches!(
            hs.on_frame(&f).unwrap(),
            HandshakeAction::ReplyAndClose(_)
        ));
    }

    #[test]
    fn v2_client_is_told_in_v2() {
        let mut hs = handshake(4);
        let HandshakeAction::ReplyAndClose(reply) = hs.on_frame(&options(2, 0)).unwrap() else {
            panic!("expected ReplyAndClose");
        };
        assert_eq!(reply.header.version, 2);
    }
}
