/*!
SQLSTATE codes the proxy puts in the `C` field of the ErrorResponses it writes.

Values and names follow PostgreSQL's `src/backend/utils/errcodes.txt` (Appendix A of the
PostgreSQL documentation). Clients act on the class (the first two characters): `08` is a
connection exception, `28` an authentication failure, `53` insufficient resources, `57` operator
intervention.
*/

/// `08P01` protocol_violation: a malformed packet, or a message that makes no sense here.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `08006` connection_failure: an established connection (here: to the upstream) failed.
pub const CONNECTION_FAILURE: &str = "08006";
/// `08001` sqlclient_unable_to_establish_sqlconnection: the upstream could not be reached or
/// logged in to.
pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: &str = "08001";
/// `28000` invalid_authorization_specification: the user may not log in (e.g. unknown role).
pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
/// `28P01` invalid_password: password (here: the access token) authentication failed.
pub const INVALID_PASSWORD: &str = "28P01";
/// `53300` too_many_connections: a connection limit was reached.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `0A000` feature_not_supported: e.g. an unsupported protocol version or GSS encryption.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `57P01` admin_shutdown: the proxy is shutting down.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `57P03` cannot_connect_now: the proxy is starting up or cannot serve yet.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `XX000` internal_error: a bug or an unexpected internal failure.
pub const INTERNAL_ERROR: &str = "XX000";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_five_characters() {
        for code in [
            PROTOCOL_VIOLATION,
            CONNECTION_FAILURE,
            SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            INVALID_AUTHORIZATION_SPECIFICATION,
            INVALID_PASSWORD,
            TOO_MANY_CONNECTIONS,
            FEATURE_NOT_SUPPORTED,
            ADMIN_SHUTDOWN,
            CANNOT_CONNECT_NOW,
            INTERNAL_ERROR,
        ] {
            assert_eq!(code.len(), 5, "{code}");
            assert!(
                code.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
            );
        }
    }
}
