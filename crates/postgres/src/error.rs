/*!
[`ProtocolError`]: a packet from a client that the proxy cannot accept, or a value that cannot be
put on the wire. Each error knows the SQLSTATE to report it under, so the runtime can answer the
client with an ErrorResponse ([`ProtocolError::to_error_fields`]) before closing.
*/

use crate::messages::ErrorFields;
use crate::sqlstate;
use crate::startup::ProtocolVersion;

/// What kind of [`ProtocolError`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolErrorKind {
    /// The packet's length word is below the minimum or above the limit.
    InvalidLength,
    /// The packet's content does not follow the layout for its kind.
    Malformed,
    /// A StartupMessage asked for a protocol version other than 3.x.
    UnsupportedVersion(ProtocolVersion),
    /// A string to encode contains a NUL byte, which would end it early on the wire.
    ContainsNul,
}

/// A malformed or unsupported packet, or a value that cannot be encoded.
///
/// `Display` is the message to show the client (PostgreSQL's wording where it has one);
/// [`code`](Self::code) is the SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    kind: ProtocolErrorKind,
    message: String,
}

impl ProtocolError {
    pub(crate) fn new(kind: ProtocolErrorKind, message: impl Into<String>) -> Self {
        ProtocolError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self::new(ProtocolErrorKind::Malformed, message)
    }

    /// What went wrong.
    pub fn kind(&self) -> ProtocolErrorKind {
        self.kind
    }

    /// The SQLSTATE to report: `0A000` feature_not_supported for an unsupported protocol
    /// version, `08P01` protocol_violation for everything else.
    pub fn code(&self) -> &'static str {
        match self.kind {
            ProtocolErrorKind::UnsupportedVersion(_) => sqlstate::FEATURE_NOT_SUPPORTED,
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
    }

    /// The human-readable message (the same text as `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the client must be answered in protocol 2's error format
    /// ([`messages::error_response_v2`](crate::messages::error_response_v2)): it asked for
    /// protocol 1.x or 2.x. PostgreSQL answers those so (`send_message_to_frontend`: the
    /// protocol-3 format when the major version is 3 or more, or the version is 0).
    pub fn wants_v2_format(&self) -> bool {
        matches!(self.kind, ProtocolErrorKind::UnsupportedVersion(v) if v.major < 3 && v.code() != 0)
    }

    /// A FATAL ErrorResponse describing this error, ready for
    /// [`messages::error_response`](crate::messages::error_response).
    pub fn to_error_fields(&self) -> ErrorFields {
        ErrorFields::fatal(self.code(), self.message.clone())
    }
}
