/*!
Builders for the messages the proxy writes, one function per message, named as the PostgreSQL
documentation ("Message Formats") names them. Each appends to a [`BytesMut`]; the length word is
reserved first and filled in afterwards.

To the upstream server (frontend messages):

```text
SSLRequest        i32 len=8, i32 80877103
StartupMessage    i32 len, i32 version (major<<16|minor), (name\0 value\0)*, \0
CancelRequest     i32 len=12+n, i32 80877102, i32 process_id, [u8; n] secret_key
PasswordMessage   'p', i32 len, password\0          (also carries the MD5 hash)
```

To the client (backend messages):

```text
'S' / 'N'         one byte answering an SSLRequest: go ahead with TLS / not supported
ErrorResponse     'E', i32 len, (field_type: u8, value\0)*, \0
                  fields written: S severity (localized), V severity (never localized),
                  C SQLSTATE, M message, D detail (optional), H hint (optional)
```

Strings on the wire end at the first NUL, so a string containing one cannot be encoded: the
startup and password builders return a [`ProtocolError`] of kind
[`ContainsNul`](crate::ProtocolErrorKind::ContainsNul) instead. ErrorResponse text is written by
the proxy itself and is only ever informational, so [`error_response`] drops NULs instead of
failing.
*/

use bytes::{BufMut, BytesMut};

use crate::error::{ProtocolError, ProtocolErrorKind};
use crate::startup::{CANCEL_REQUEST_CODE, StartupMessage};

/// The answer to an SSLRequest (or GSSENCRequest) that refuses encryption: `'N'`.
pub const SSL_NOT_SUPPORTED: u8 = b'N';
/// The answer to an SSLRequest that accepts: `'S'`; the TLS handshake follows.
pub const SSL_SUPPORTED: u8 = b'S';

/// Severity `FATAL`: the session ends after this error.
pub const FATAL: &str = "FATAL";
/// Severity `ERROR`: the current command failed, the session goes on.
pub const ERROR: &str = "ERROR";

/// The fields of an ErrorResponse the proxy sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    /// [`FATAL`] or [`ERROR`]; written as both `S` and `V`.
    pub severity: &'static str,
    /// The SQLSTATE, `C` (see [`crate::sqlstate`]).
    pub code: &'static str,
    /// The primary message, `M`: one line, no trailing period.
    pub message: String,
    /// The optional detail, `D`.
    pub detail: Option<String>,
    /// The optional hint, `H`: what the user could do about it.
    pub hint: Option<String>,
}

impl ErrorFields {
    /// A FATAL error with `code` and `message`.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> ErrorFields {
        ErrorFields {
            severity: FATAL,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// An ERROR with `code` and `message`.
    pub fn error(code: &'static str, message: impl Into<String>) -> ErrorFields {
        ErrorFields {
            severity: ERROR,
            ..ErrorFields::fatal(code, message)
        }
    }

    /// Adds a detail (`D`).
    pub fn with_detail(mut self, detail: impl Into<String>) -> ErrorFields {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a hint (`H`).
    pub fn with_hint(mut self, hint: impl Into<String>) -> ErrorFields {
        self.hint = Some(hint.into());
        self
    }
}

/// Writes an SSLRequest.
pub fn ssl_request(buf: &mut BytesMut) {
    postgres_protocol::message::frontend::ssl_request(buf);
}

/// Writes a StartupMessage with `msg`'s version (3.0, 3.2, ...) and parameters in order.
///
/// Fails if a parameter name or value contains a NUL byte, or a name is empty (an empty name
/// is the list's terminator).
pub fn startup_message(msg: &StartupMessage, buf: &mut BytesMut) -> Result<(), ProtocolError> {
    for (name, value) in &msg.params {
        if name.is_empty() {
            return Err(ProtocolError::new(
                ProtocolErrorKind::Malformed,
                "cannot encode StartupMessage: empty parameter name",
            ));
        }
        if name.contains('\0') || value.contains(&0) {
            return Err(ProtocolError::new(
                ProtocolErrorKind::ContainsNul,
                format!(
                    "cannot encode StartupMessage: parameter \"{}\" contains a NUL byte",
                    name.replace('\0', "\\0")
                ),
            ));
        }
    }
    write_framed(None, buf, |buf| {
        buf.put_u32(msg.version.code());
        for (name, value) in &msg.params {
            put_cstr(buf, name.as_bytes());
            put_cstr(buf, value);
        }
        buf.put_u8(0);
    })
}

/// Writes a CancelRequest. `secret_key` is the key from BackendKeyData: 4 bytes in protocol
/// 3.0, up to 256 in 3.2 (as parsed by [`parse_startup_packet`](crate::parse_startup_packet)).
pub fn cancel_request(process_id: i32, secret_key: &[u8], buf: &mut BytesMut) {
    // 12 + 256 bytes at most from a parsed packet; a longer key is the caller's bug and is
    // written as is, for the server to reject.
    let len = u32::try_from(12 + secret_key.len()).unwrap_or(u32::MAX);
    buf.reserve(12 + secret_key.len());
    buf.put_u32(len);
    buf.put_u32(CANCEL_REQUEST_CODE);
    buf.put_i32(process_id);
    buf.put_slice(secret_key);
}

/// Writes a PasswordMessage carrying `password` (an access token can be 16 KB or more; there
/// is no limit beyond the i32 length).
///
/// Fails if `password` contains a NUL byte. The error message does not include the password.
pub fn password_message(password: &[u8], buf: &mut BytesMut) -> Result<(), ProtocolError> {
    if memchr::memchr(0, password).is_some() {
        return Err(ProtocolError::new(
            ProtocolErrorKind::ContainsNul,
            "cannot encode PasswordMessage: the password contains a NUL byte",
        ));
    }
    write_framed(Some(b'p'), buf, |buf| put_cstr(buf, password))
}

/// Writes an ErrorResponse with fields `S`, `V`, `C`, `M` and, when set, `D` and `H`.
/// NUL bytes in the texts are dropped.
pub fn error_response(fields: &ErrorFields, buf: &mut BytesMut) {
    let mut body = BytesMut::new();
    put_field(&mut body, b'S', fields.severity);
    put_field(&mut body, b'V', fields.severity);
    put_field(&mut body, b'C', fields.code);
    put_field(&mut body, b'M', &fields.message);
    if let Some(detail) = &fields.detail {
        put_field(&mut body, b'D', detail);
    }
    if let Some(hint) = &fields.hint {
        put_field(&mut body, b'H', hint);
    }
    body.put_u8(0);
    buf.reserve(5 + body.len());
    buf.put_u8(b'E');
    buf.put_u32(u32::try_from(4 + body.len()).unwrap_or(u32::MAX));
    buf.put_slice(&body);
}

/// An error in protocol 2's format, as PostgreSQL answers a client that asked for protocol 1.x
/// or 2.x (`send_message_to_frontend`): `'E'`, then `"FATAL:  <message>\n"` and a NUL, with no
/// length word and no fields, so that such a client can show why it is refused.
pub fn error_response_v2(severity: &str, message: &str, buf: &mut BytesMut) {
    buf.put_u8(b'E');
    buf.extend(severity.bytes().filter(|b| *b != 0));
    buf.put_slice(b":  ");
    buf.extend(message.bytes().filter(|b| *b != 0));
    buf.put_slice(b"\n\0");
}

fn put_field(buf: &mut BytesMut, field: u8, value: &str) {
    buf.put_u8(field);
    buf.extend(value.bytes().filter(|b| *b != 0));
    buf.put_u8(0);
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Writes `tag` (if any), a length placeholder, the body from `write`, then the length.
/// On a body too long for an i32 length, `buf` is restored and an error returned.
fn write_framed(
    tag: Option<u8>,
    buf: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut),
) -> Result<(), ProtocolError> {
    let start = buf.len();
    if let Some(tag) = tag {
        buf.put_u8(tag);
    }
    let len_at = buf.len();
    buf.put_u32(0);
    write(buf);
    let Ok(len) = i32::try_from(buf.len() - len_at) else {
        buf.truncate(start);
        return Err(ProtocolError::new(
            ProtocolErrorKind::InvalidLength,
            "message too long to encode",
        ));
    };
    buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::startup::{ProtocolVersion, StartupPacket, parse_startup_packet};
    use crate::{backend, sqlstate};
    use postgres_protocol::message::backend::Message;

    #[test]
    fn ssl_request_bytes_and_round_trip() {
        let mut buf = BytesMut::new();
        ssl_request(&mut buf);
        assert_eq!(&buf[..], &[0, 0, 0, 8, 4, 210, 22, 47]);
        assert_eq!(
            parse_startup_packet(&mut buf).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(SSL_NOT_SUPPORTED, b'N');
        assert_eq!(SSL_SUPPORTED, b'S');
    }

    #[test]
    fn startup_message_matches_postgres_protocol_for_3_0() {
        let mut msg = StartupMessage::new(ProtocolVersion::V3_0);
        msg.set("user", "alice@contoso.com");
        msg.set("database", "postgres");
        let mut ours = BytesMut::new();
        startup_message(&msg, &mut ours).unwrap();
        let mut theirs = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", "alice@contoso.com"), ("database", "postgres")],
            &mut theirs,
        )
        .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn startup_message_round_trip_3_2() {
        let mut msg = StartupMessage::new(ProtocolVersion::V3_2);
        msg.set("user", "u");
        msg.set("options", "-c search_path=x");
        msg.set("_pq_.extension", "on");
        let mut buf = BytesMut::new();
        startup_message(&msg, &mut buf).unwrap();
        assert_eq!(&buf[4..8], &196_610u32.to_be_bytes());
        assert_eq!(
            parse_startup_packet(&mut buf).unwrap(),
            Some(StartupPacket::Startup(msg))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn startup_message_rejects_nul_and_empty_name() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let mut msg = StartupMessage::new(ProtocolVersion::V3_0);
        msg.set("user", "a\0b");
        let err = startup_message(&msg, &mut buf).unwrap_err();
        assert_eq!(err.kind(), ProtocolErrorKind::ContainsNul);
        assert!(err.to_string().contains("\"user\""), "{err}");
        let mut msg = StartupMessage::new(ProtocolVersion::V3_0);
        msg.params.push((String::new(), "x".into()));
        assert!(startup_message(&msg, &mut buf).is_err());
        assert_eq!(&buf[..], b"keep", "nothing written on error");
    }

    #[test]
    fn cancel_request_round_trip() {
        let mut buf = BytesMut::new();
        cancel_request(99, &[1, 2, 3, 4], &mut buf);
        let mut theirs = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(99, 0x0102_0304, &mut theirs);
        assert_eq!(buf, theirs);

        let key: Vec<u8> = (0..32).collect();
        let mut buf = BytesMut::new();
        cancel_request(-5, &key, &mut buf);
        assert_eq!(
            parse_startup_packet(&mut buf).unwrap(),
            Some(StartupPacket::CancelRequest {
                process_id: -5,
                secret_key: key
            })
        );
    }

    #[test]
    fn password_message_long_token() {
        let token = "e".repeat(16 * 1024 + 3);
        let mut buf = BytesMut::new();
        password_message(token.as_bytes(), &mut buf).unwrap();
        let mut theirs = BytesMut::new();
        postgres_protocol::message::frontend::password_message(token.as_bytes(), &mut theirs)
            .unwrap();
        assert_eq!(buf, theirs);
        assert_eq!(buf[0], b'p');
        assert_eq!(
            i32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize,
            4 + token.len() + 1
        );
    }

    #[test]
    fn password_message_rejects_nul_without_echoing_it() {
        let mut buf = BytesMut::new();
        let err = password_message(b"sec\0ret", &mut buf).unwrap_err();
        assert_eq!(err.kind(), ProtocolErrorKind::ContainsNul);
        assert!(!err.to_string().contains("sec"), "{err}");
        assert!(buf.is_empty());
    }

    #[test]
    fn error_response_round_trip() {
        let fields = ErrorFields::fatal(sqlstate::INVALID_PASSWORD, "token rejected")
            .with_detail("the detail")
            .with_hint("run az login");
        let mut buf = BytesMut::new();
        error_response(&fields, &mut buf);
        let raw = buf.clone();

        let Some(Message::ErrorResponse(body)) = Message::parse(&mut buf).unwrap() else {
            panic!("not an ErrorResponse");
        };
        assert!(buf.is_empty());
        use fallible_iterator::FallibleIterator;
        let got: Vec<(u8, String)> = body
            .fields()
            .map(|f| {
                Ok((
                    f.type_(),
                    String::from_utf8(f.value_bytes().to_vec()).unwrap(),
                ))
            })
            .collect()
            .unwrap();
        assert_eq!(
            got,
            vec![
                (b'S', "FATAL".to_string()),
                (b'V', "FATAL".to_string()),
                (b'C', "28P01".to_string()),
                (b'M', "token rejected".to_string()),
                (b'D', "the detail".to_string()),
                (b'H', "run az login".to_string()),
            ]
        );
        assert_eq!(
            backend::parse_error_fields(&raw[5..]),
            (Some("28P01".into()), Some("token rejected".into()))
        );
    }

    #[test]
    fn error_response_minimal_and_nul_dropped() {
        let fields = ErrorFields::error(sqlstate::PROTOCOL_VIOLATION, "bad\0 thing");
        let mut buf = BytesMut::new();
        error_response(&fields, &mut buf);
        let expected: &[u8] = b"SERROR\0VERROR\0C08P01\0Mbad thing\0\0";
        assert_eq!(buf[0], b'E');
        assert_eq!(&buf[1..5], &((4 + expected.len()) as u32).to_be_bytes());
        assert_eq!(&buf[5..], expected);
    }
}
