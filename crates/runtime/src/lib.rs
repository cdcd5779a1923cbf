//! The runtime of entra-db-proxy: everything that touches a socket.
//!
//! A client connection travels through these modules in order, and each step lives in one file:
//!
//! # Layout
//! - [`listener`]: binds the local address (TCP or a Unix socket) and accepts connections, one
//!   task per client; [`stream`] is what it hands over; [`local_tls`] the optional client TLS;
//!   [`workers`] the session threads (a current-thread runtime per core) sessions run on.
//! - [`session`]: what every session shares: [`CloseReason`], [`SessionError`] (what the
//!   client is told), the closing log line, and the login-with-retry loop; [`login`] drives a
//!   sans-IO login machine over any stream.
//! - [`postgres`]: the PostgreSQL session, one file a step: `startup.rs` (SSLRequest /
//!   GSSENCRequest / CancelRequest / StartupMessage) → `login.rs` (credential, upstream,
//!   login) → relay; `connect.rs` (SSLRequest then TLS upstream), `cancel.rs`.
//! - [`cassandra`]: the CQL session: `handshake.rs` (TLS, OPTIONS/STARTUP) → `login.rs`
//!   (credential, upstream TLS, SASL PLAIN) → `relay.rs` (frames, topology hidden);
//!   `schema.rs` (schema agreement after DDL).
//! - [`upstream`]: the [`Connector`] trait (how a session reaches its upstream; tests use
//!   in-memory streams) and [`Upstream`]: TCP connect with a timeout, TLS with the server name
//!   verified.
//! - [`relay`]: once logged in, plain bytes both ways until either side closes.
//! - [`gate`]: admission by client identity (per-pod identity, Unix-socket uid allowlists)
//!   in front of a protocol service.
//! - [`escape`]: client-controlled text made safe for log lines.
//! - [`metrics`] and [`admin`]: Prometheus metrics and the probe/metrics HTTP server.
//!
//! The protocol details (message layouts, the login state machine) are sans-IO and live in the
//! `dbproxy-postgres` crate; credentials (Entra ID tokens, their cache) in `dbproxy-credentials`.

#![warn(missing_docs)]

pub mod admin;
pub mod cassandra;
pub mod escape;
pub mod gate;
pub mod listener;
pub mod local_tls;
pub mod login;
pub mod metrics;
pub mod postgres;
pub mod relay;
pub mod session;
pub mod stream;
pub mod upstream;
pub mod workers;

#[cfg(test)]
mod testutil;

pub use admin::{AdminServer, Health};
pub use cassandra::CassandraService;
pub use gate::{Admission, Admitted, Gated, NotAdmitted, Peer, Refuse, UidAllowlist};
pub use listener::{ListenAddr, Listener, Shutdown};
pub use local_tls::{LocalTls, LocalTlsMode};
pub use metrics::{IdentityMetrics, ListenerMetrics, Metrics};
pub use postgres::{PostgresService, PostgresUpstream, WarmPool, WarmSettings};
pub use session::{CloseReason, SessionError};
pub use stream::ClientStream;
pub use upstream::{Connector, Upstream};
pub use workers::Workers;
