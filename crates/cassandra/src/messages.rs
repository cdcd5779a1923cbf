//! Builders for the frames the proxy itself sends, and readers for the few bodies it must
//! understand.
//!
//! # Layouts
//!
//! ```text
//! ERROR        [int code][string message]  (+ code-specific fields; only codes without any
//!                                            are offered in `codes`)
//! READY        (empty)
//! SUPPORTED    [string multimap]
//! STARTUP      [string map]                 e.g. CQL_VERSION=3.0.0, COMPRESSION=lz4
//! AUTHENTICATE [string authenticator class]
//! AUTH_RESPONSE / AUTH_CHALLENGE / AUTH_SUCCESS  [bytes token]
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::CqlError;
use crate::frame::{Frame, opcode};
use crate::wire::{self, Reader};

/// ERROR codes (spec §9) whose body is just `[int code][string message]`.
pub mod codes {
    /// Server error: something unexpected happened (on the proxy).
    pub const SERVER_ERROR: i32 = 0x0000;
    /// Protocol error: a malformed or out-of-place message.
    pub const PROTOCOL_ERROR: i32 = 0x000A;
    /// Authentication error ("bad credentials").
    pub const BAD_CREDENTIALS: i32 = 0x0100;
    /// Overloaded: the coordinator is overloaded (Cosmos: request rate is large).
    pub const OVERLOADED: i32 = 0x1001;
    /// The coordinator is bootstrapping.
    pub const IS_BOOTSTRAPPING: i32 = 0x1002;
    /// Truncation error.
    pub const TRUNCATE_ERROR: i32 = 0x1003;
    /// Syntax error in the query.
    pub const SYNTAX_ERROR: i32 = 0x2000;
    /// The logged-in user lacks the permission.
    pub const UNAUTHORIZED: i32 = 0x2100;
    /// Invalid query.
    pub const INVALID: i32 = 0x2200;
    /// Configuration error.
    pub const CONFIG_ERROR: i32 = 0x2300;
}

/// A response frame with no flags.
fn response(version: u8, stream: i16, op: u8, body: BytesMut) -> Frame {
    Frame::new(version, true, 0, stream, op, body.freeze())
}

/// An ERROR frame: `[int code][string message]`. For codes whose body has further fields
/// (Unavailable, timeouts, Already_exists, Unprepared, …) those fields are not written: use
/// the codes in [`codes`].
pub fn error_frame(version: u8, stream: i16, code: i32, message: &str) -> Frame {
    let mut body = BytesMut::with_capacity(6 + message.len());
    body.put_i32(code);
    wire::put_string(&mut body, message);
    response(version, stream, opcode::ERROR, body)
}

/// A SUPPORTED frame: `[string multimap]` of the given options, in order.
pub fn supported_frame(version: u8, stream: i16, options: &[(&str, &[&str])]) -> Frame {
    let mut body = BytesMut::new();
    body.put_u16(options.len().min(u16::MAX as usize) as u16);
    for (key, values) in options.iter().take(u16::MAX as usize) {
        wire::put_string(&mut body, key);
        wire::put_string_list(&mut body, values);
    }
    response(version, stream, opcode::SUPPORTED, body)
}

/// A READY frame (empty body).
pub fn ready_frame(version: u8, stream: i16) -> Frame {
    response(version, stream, opcode::READY, BytesMut::new())
}

/// The versions a server with the given maximum accepts, as Cassandra lists them:
/// `3/v3, 4/v4` (…`, 5/v5`).
pub fn supported_versions(max_version: u8) -> Vec<String> {
    (3..=max_version.max(3))
        .map(|v| format!("{v}/v{v}"))
        .collect()
}

/// What Cassandra answers a client speaking a version it does not support, so drivers
/// downgrade: ERROR 0x000A `Invalid or unsupported protocol version (N); supported versions
/// are (3/v3, 4/v4)`, at `min(client_version, max_version)` so the client can read it (with
/// a v1/v2 header for v1/v2 clients), always in legacy framing.
pub fn unsupported_version_frame(client_version: u8, max_version: u8, stream: i16) -> Frame {
    let message = format!(
        "Invalid or unsupported protocol version ({client_version}); supported versions are ({})",
        supported_versions(max_version).join(", ")
    );
    error_frame(
        client_version.min(max_version),
        stream,
        codes::PROTOCOL_ERROR,
        &message,
    )
}

/// A STARTUP request with the given options (the proxy replays the client's own body instead;
/// this is for tests and tools).
pub fn startup_frame(version: u8, stream: i16, options: &[(&str, &str)]) -> Frame {
    let mut body = BytesMut::new();
    body.put_u16(options.len() as u16);
    for (k, v) in options {
        wire::put_string(&mut body, k);
        wire::put_string(&mut body, v);
    }
    Frame::new(version, false, 0, stream, opcode::STARTUP, body.freeze())
}

/// An AUTH_RESPONSE request carrying `token` as `[bytes]`.
pub fn auth_response_frame(version: u8, stream: i16, token: &[u8]) -> Frame {
    let mut body = BytesMut::with_capacity(4 + token.len());
    wire::put_bytes(&mut body, Some(token));
    Frame::new(
        version,
        false,
        0,
        stream,
        opcode::AUTH_RESPONSE,
        body.freeze(),
    )
}

/// The SASL PLAIN initial response: `\0username\0password` (empty authorization identity).
pub fn sasl_plain(username: &str, password: &[u8]) -> Vec<u8> {
    let mut token = Vec::with_capacity(2 + username.len() + password.len());
    token.push(0);
    token.extend_from_slice(username.as_bytes());
    token.push(0);
    token.extend_from_slice(password);
    token
}

/// Reads an ERROR body (already decompressed): its code and message. Code-specific trailing
/// fields are ignored.
pub fn parse_error(body: &[u8]) -> Result<(i32, String), CqlError> {
    let mut r = Reader::new(body, "ERROR body");
    let code = r.int()?;
    let message = r.string()?.to_owned();
    Ok((code, message))
}

/// Reads a `[string map]` body (STARTUP), keeping the wire order.
pub fn parse_string_map(body: &[u8]) -> Result<Vec<(String, String)>, CqlError> {
    Reader::new(body, "STARTUP body").string_map()
}

/// Reads a SUPPORTED body: `[string multimap]`.
pub fn parse_supported(body: &[u8]) -> Result<Vec<(String, Vec<String>)>, CqlError> {
    let mut r = Reader::new(body, "SUPPORTED body");
    let n = r.short()?;
    (0..n)
        .map(|_| {
            let key = r.string()?.to_owned();
            let values = r.string_list()?.into_iter().map(str::to_owned).collect();
            Ok((key, values))
        })
        .collect()
}

/// Reads an AUTHENTICATE body: the authenticator class name.
pub fn parse_authenticate(body: &[u8]) -> Result<String, CqlError> {
    Ok(Reader::new(body, "AUTHENTICATE body").string()?.to_owned())
}

/// Reads an AUTH_RESPONSE / AUTH_CHALLENGE / AUTH_SUCCESS body: the `[bytes]` token.
pub fn parse_auth_token(body: &[u8]) -> Result<Option<Bytes>, CqlError> {
    Ok(Reader::new(body, "auth token")
        .bytes()?
        .map(Bytes::copy_from_slice))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frame_layout() {
        let f = error_frame(4, 7, codes::OVERLOADED, "busy");
        let bytes = f.to_bytes();
        assert_eq!(
            &bytes[..],
            &[
                0x84, 0, 0, 7, 0x00, 0, 0, 0, 10, // header
                0, 0, 0x10, 0x01, 0, 4, b'b', b'u', b's', b'y'
            ]
        );
        assert_eq!(parse_error(&f.body).unwrap(), (0x1001, "busy".into()));
    }

    #[test]
    fn supported_frame_round_trips() {
        let f = supported_frame(
            4,
            0,
            &[
                ("CQL_VERSION", &["3.4.5"]),
                ("COMPRESSION", &["lz4", "snappy"]),
            ],
        );
        assert_eq!(f.header.opcode, opcode::SUPPORTED);
        assert!(f.header.response);
        assert_eq!(
            parse_supported(&f.body).unwrap(),
            vec![
                ("CQL_VERSION".to_string(), vec!["3.4.5".to_string()]),
                (
                    "COMPRESSION".to_string(),
                    vec!["lz4".to_string(), "snappy".to_string()]
                ),
            ]
        );
    }

    #[test]
    fn sasl_plain_token() {
        assert_eq!(sasl_plain("user", b"pass"), b"\0user\0pass");
    }

    #[test]
    fn unsupported_version_for_a_v2_client_uses_the_v2_header() {
        let f = unsupported_version_frame(2, 4, 0);
        let bytes = f.to_bytes();
        assert_eq!(bytes[0], 0x82);
        assert_eq!(bytes.len(), 8 + f.body.len());
    }
}
