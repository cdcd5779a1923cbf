/*!
What the proxy reads by hand from a PostgreSQL server: message headers, authentication request
codes and ErrorResponse fields.

Every backend message is framed as

```text
tag: u8, length: i32 (counts itself and the body, not the tag), body: [u8; length - 4]
```

The messages seen during login:

```text
'R' Authentication*        i32 code, then per code:
                             0 Ok, 3 CleartextPassword: nothing
                             5 MD5Password: [u8; 4] salt
                             10 SASL: (mechanism\0)*, \0
                             11 SASLContinue, 12 SASLFinal: SASL data (rest of the body)
                             2 KerberosV5, 7 GSS, 8 GSSContinue, 9 SSPI: not supported here
'v' NegotiateProtocolVersion i32 newest minor version supported, i32 n, (option\0){n}
'N' NoticeResponse           like ErrorResponse
'E' ErrorResponse            (field_type: u8, value\0)*, \0   (C = SQLSTATE, M = message, ...)
```

`postgres-protocol`'s `backend::Message::parse` has no variant for `'v'` and turns unknown
tags into errors, so the login state machine frames messages itself with [`Header`].
*/

/// Tag of Authentication* messages.
pub const AUTHENTICATION_TAG: u8 = b'R';
/// Tag of ErrorResponse.
pub const ERROR_RESPONSE_TAG: u8 = b'E';
/// Tag of NoticeResponse.
pub const NOTICE_RESPONSE_TAG: u8 = b'N';
/// Tag of NegotiateProtocolVersion.
pub const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';
/// Tag of ParameterStatus.
pub const PARAMETER_STATUS_TAG: u8 = b'S';
/// Tag of BackendKeyData.
pub const BACKEND_KEY_DATA_TAG: u8 = b'K';
/// Tag of ReadyForQuery.
pub const READY_FOR_QUERY_TAG: u8 = b'Z';

/// AuthenticationOk.
pub const AUTH_OK: i32 = 0;
/// AuthenticationKerberosV5 (no longer sent by PostgreSQL).
pub const AUTH_KERBEROS_V5: i32 = 2;
/// AuthenticationCleartextPassword.
pub const AUTH_CLEARTEXT_PASSWORD: i32 = 3;
/// AuthenticationMD5Password.
pub const AUTH_MD5_PASSWORD: i32 = 5;
/// AuthenticationGSS.
pub const AUTH_GSS: i32 = 7;
/// AuthenticationGSSContinue.
pub const AUTH_GSS_CONTINUE: i32 = 8;
/// AuthenticationSSPI.
pub const AUTH_SSPI: i32 = 9;
/// AuthenticationSASL.
pub const AUTH_SASL: i32 = 10;
/// AuthenticationSASLContinue.
pub const AUTH_SASL_CONTINUE: i32 = 11;
/// AuthenticationSASLFinal.
pub const AUTH_SASL_FINAL: i32 = 12;

/// The name of an authentication request code, for messages.
pub fn auth_method_name(code: i32) -> &'static str {
    match code {
        AUTH_OK => "Ok",
        AUTH_KERBEROS_V5 => "KerberosV5",
        AUTH_CLEARTEXT_PASSWORD => "CleartextPassword",
        AUTH_MD5_PASSWORD => "MD5Password",
        AUTH_GSS => "GSS",
        AUTH_GSS_CONTINUE => "GSSContinue",
        AUTH_SSPI => "SSPI",
        AUTH_SASL => "SASL",
        AUTH_SASL_CONTINUE => "SASLContinue",
        AUTH_SASL_FINAL => "SASLFinal",
        _ => "unknown",
    }
}

/// The five-byte header of a backend message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    tag: u8,
    len: i32,
}

impl Header {
    /// The size of a header: tag and length.
    pub const SIZE: usize = 5;

    /// Reads the header at the front of `buf`; `None` if fewer than five bytes are there.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let (tag, rest) = buf.split_first()?;
        let len = rest.first_chunk::<4>()?;
        Some(Header {
            tag: *tag,
            len: i32::from_be_bytes(*len),
        })
    }

    /// The message type.
    pub fn tag(self) -> u8 {
        self.tag
    }

    /// The length word as sent: body plus the four length bytes. May be invalid (below 4).
    pub fn length(self) -> i32 {
        self.len
    }

    /// The whole message's size (tag, length and body), or `None` if the length word is below
    /// 4 and so invalid.
    pub fn frame_len(self) -> Option<usize> {
        usize::try_from(self.len)
            .ok()
            .filter(|len| *len >= 4)
            .map(|len| len + 1)
    }
}

/// Reads the SQLSTATE (`C`) and message (`M`) fields from an ErrorResponse or NoticeResponse
/// body (the bytes after the 5-byte header). Invalid UTF-8 is replaced; a truncated field list
/// yields what was complete.
pub fn parse_error_fields(body: &[u8]) -> (Option<String>, Option<String>) {
    let mut code = None;
    let mut message = None;
    let mut rest = body;
    while let Some((&field, after)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some(end) = memchr::memchr(0, after) else {
            break;
        };
        let value = String::from_utf8_lossy(&after[..end]).into_owned();
        match field {
            b'C' => code = Some(value),
            b'M' => message = Some(value),
            _ => {}
        }
        rest = &after[end + 1..];
    }
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header() {
        assert_eq!(Header::parse(b"R\0\0\0"), None);
        let h = Header::parse(b"R\0\0\0\x08\0\0\0\0").unwrap();
        assert_eq!(h.tag(), b'R');
        assert_eq!(h.length(), 8);
        assert_eq!(h.frame_len(), Some(9));
        assert_eq!(Header::parse(b"R\0\0\0\x03").unwrap().frame_len(), None);
        assert_eq!(
            Header::parse(b"R\xff\xff\xff\xff").unwrap().frame_len(),
            None
        );
    }

    #[test]
    fn error_fields() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0Rauth_failed\0\0";
        assert_eq!(
            parse_error_fields(body),
            (
                Some("28P01".to_string()),
                Some("password authentication failed for user \"x\"".to_string())
            )
        );
        assert_eq!(parse_error_fields(b""), (None, None));
        assert_eq!(
            parse_error_fields(b"C28000\0Mtrunc"),
            (Some("28000".into()), None)
        );
        assert_eq!(
            parse_error_fields(b"M\xffbad\0\0"),
            (None, Some("\u{fffd}bad".into()))
        );
    }

    #[test]
    fn auth_names() {
        assert_eq!(auth_method_name(7), "GSS");
        assert_eq!(auth_method_name(42), "unknown");
    }
}
