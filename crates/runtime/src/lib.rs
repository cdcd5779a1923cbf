//! The runtime of entra-db-proxy: everything that touches a socket.
//!
//! A client connection travels through these modules in order, and each step lives in one file:
//!
//! # Layout
//! - [`listener`]: binds the local address (TCP or a Unix socket) and accepts connections, one
//!   task per client; [`stream`] is what it hands over; [`local_tls`] the optional client TLS.
//! - [`postgres`]: the PostgreSQL session, read top to bottom: client startup (SSLRequest /
//!   GSSENCRequest / CancelRequest / StartupMessage) → credential → upstream TLS → login → relay.
//! - [`cassandra`]: the CQL session: handshake (OPTIONS/STARTUP) → credential → upstream TLS
//!   → SASL PLAIN login → frame relay that hides the upstream topology.
//! - [`upstream`]: TCP connect with a timeout, then TLS with the server name verified.
//! - [`relay`]: once logged in, plain bytes both ways until either side closes.
//! - [`metrics`] and [`admin`]: Prometheus metrics and the probe/metrics HTTP server.
//!
//! The protocol details (message layouts, the login state machine) are sans-IO and live in the
//! `dbproxy-postgres` crate; credentials (Entra ID tokens, their cache) in `dbproxy-credentials`.

#![warn(missing_docs)]

pub mod admin;
pub mod cassandra;
pub mod listener;
pub mod local_tls;
pub mod metrics;
pub mod postgres;
pub mod relay;
pub mod stream;
pub mod upstream;

pub use admin::{AdminServer, Health};
pub use cassandra::CassandraService;
pub use listener::{ListenAddr, Listener, Shutdown};
pub use local_tls::{LocalTls, LocalTlsMode};
pub use metrics::{ListenerMetrics, Metrics};
pub use postgres::PostgresService;
pub use stream::ClientStream;
pub use upstream::Upstream;
