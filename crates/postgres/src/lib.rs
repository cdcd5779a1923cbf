/*!
The PostgreSQL wire protocol pieces entra-db-proxy needs, as sans-IO code: no sockets and no
async runtime. Bytes go in, parsed packets, bytes to send, or "what to do next" come out. The
runtime crate owns the sockets, the TLS and the timeouts; this crate owns the byte layouts.

A proxied connection looks like this on the wire:

```text
 client (psql, libpq, JDBC, ...)          proxy                   Azure Database for PostgreSQL
  ── SSLRequest ────────────────────────▶  parse_startup_packet
  ◀──────────────────────────── 'S' / 'N'  SSL_SUPPORTED (local TLS on, the default; the runtime
                                           then runs the TLS handshake) / SSL_NOT_SUPPORTED
  ── StartupMessage(user=alice) ────────▶  parse_startup_packet
                                           (user := Entra user)
                                           (runtime) ─────────── SSLRequest, 'S', TLS handshake ──▶
                                           UpstreamLogin::start ── StartupMessage(user=Entra user) ▶
                                           UpstreamLogin::receive ◀── AuthenticationCleartextPassword ──
                                                                  ── PasswordMessage(access token) ──▶
                                                                  ◀── AuthenticationOk, ParameterStatus…
  ◀──── AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery  (LoginStep::Authenticated)
  ◀═══════════════════════════ raw bytes relayed both ways ══════════════════════════════════════▶
```

Every message after the startup packet is framed as `tag: u8, length: i32 (counts itself, not
the tag), body`. The startup packets (the first thing a client sends) have no tag: `length: i32,
code: i32, body`. All integers are big-endian.

# Layout

- [`startup`]: the first packet from a client — `SSLRequest`, `GSSENCRequest`,
  `CancelRequest`, `StartupMessage` — parsed with [`parse_startup_packet`], bounded by
  [`MAX_STARTUP_LEN`] before anything is buffered.
- [`messages`]: one builder per message the proxy writes (`ssl_request`, `startup_message`,
  `cancel_request`, `password_message`, `error_response`), named as the protocol
  documentation names them, each writing into a [`bytes::BytesMut`].
- [`backend`]: the little the proxy reads from a server by hand: the message header
  (NegotiateProtocolVersion has no variant in `postgres-protocol`) and ErrorResponse fields.
- [`fatal`]: [`FatalWatch`], which notices a FATAL ErrorResponse in the relayed server bytes
  (the server ending the session), without buffering them.
- [`login`]: [`UpstreamLogin`], the state machine that logs in to the upstream server with an
  access token as password (cleartext, MD5 or SCRAM-SHA-256) and says when to hand over to the
  byte relay.
- [`warm`]: warm sessions: the login greeting captured, a client's startup parameters planned
  and applied after login (`set_config` as bind parameters), the greeting rendered for it.
- [`sqlstate`]: the SQLSTATE codes the proxy reports.
- [`ProtocolError`]: a malformed or unsupported packet, with the SQLSTATE to report it under.
*/
#![warn(missing_docs)]

pub mod backend;
mod error;
pub mod fatal;
pub mod login;
pub mod messages;
pub mod sqlstate;
pub mod startup;
pub mod warm;

pub use backend::parse_error_fields;
pub use error::{ProtocolError, ProtocolErrorKind};
pub use fatal::FatalWatch;
pub use login::{LoginError, LoginStep, UpstreamLogin};
pub use messages::ErrorFields;
pub use startup::{
    MAX_STARTUP_LEN, ProtocolVersion, StartupMessage, StartupPacket, parse_startup_packet,
};
