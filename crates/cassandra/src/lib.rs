//! Sans-IO pieces of the CQL native protocol (v3, v4, v5) for entra-db-proxy.
//!
//! The proxy lets unmodified CQL drivers reach Azure Cosmos DB for Apache Cassandra (or any
//! Cassandra): the driver connects to the proxy without credentials, the proxy logs in
//! upstream with SASL PLAIN, answers the driver READY, relays frames, and hides the upstream
//! topology so the driver never dials past the proxy. This crate does no I/O: bytes go in,
//! frames and actions come out; the runtime owns sockets, TLS, timeouts and credentials.
//!
//! A connection's life, seen from this crate:
//!
//! 1. [`FrameDecoder`] (legacy framing, [`frame::HANDSHAKE_MAX_FRAME_LEN`]) splits the
//!    client's bytes; [`ClientHandshake::on_frame`] answers OPTIONS and yields
//!    [`HandshakeAction::Startup`] on STARTUP.
//! 2. [`UpstreamLogin`] replays that STARTUP upstream and answers AUTHENTICATE with
//!    `\0user\0key`, until [`LoginStep::Ready`] (the runtime sends the client
//!    [`messages::ready_frame`]) or [`LoginStep::Rejected`].
//! 3. The relay: frames are decoded on their header alone and passed through
//!    [`TopologyRewriter`], which rewrites `system.local` / `system.peers(_v2)` results and
//!    drops topology events. v5 connections switch both sides to [`Framing::V5`] segments
//!    after READY.
//!
//! # Layout
//!
//! * `frame.rs` — the 9-byte header, raw [`Frame`]s, [`FrameDecoder`] / [`FrameEncoder`],
//!   [`Framing`], the frame cap ([`frame::DEFAULT_MAX_FRAME_SIZE`], Cassandra's default).
//! * `compression.rs` (private, re-exported from `frame`) — v3/v4 body compression
//!   ([`BodyCompression`]: lz4, snappy), bounded before decompressing.
//! * `segment.rs` — v5 segments: 6-byte (8 with lz4) CRC24-checked header, payload,
//!   CRC32 trailer.
//! * `messages.rs` — frames the proxy says itself (ERROR, READY, SUPPORTED, the
//!   unsupported-version ERROR that makes drivers downgrade) and the few bodies it reads.
//! * `handshake.rs` — [`ClientHandshake`]: the proxy as the server, before READY.
//! * `login.rs` — [`UpstreamLogin`]: the proxy as the client of the upstream.
//! * `topology.rs` — [`TopologyRewriter`]: system tables and events.
//! * `schema.rs` — schema agreement after DDL: spotting a SCHEMA_CHANGE result, the
//!   `schema_version` queries and reading their answers.
//! * `cosmos.rs` — Cosmos DB: its request-rate Overloaded, [`cosmos::RetryTracker`] (throttled
//!   requests resent within a budget), the request charge of a response's custom payload.
//! * `error.rs` — [`CqlError`], each with the CQL error code to answer the client with.
//! * `wire.rs` (private) — the spec's primitive notations, bounds-checked.
//! * `result.rs` (private) — a bounds-checked walk over RESULT Rows / Prepared metadata.
//!
//! Bodies are decoded only where the proxy
//! must read or rewrite them; every length is checked against a bound before anything is
//! allocated for it.

//! # Example
//!
//! ```
//! use bytes::BytesMut;
//! use dbproxy_cassandra::{
//!     ClientHandshake, FrameDecoder, HandshakeAction, LoginStep, SupportedOptions, UpstreamLogin,
//!     frame::HANDSHAKE_MAX_FRAME_LEN, messages,
//! };
//!
//! // The client's first bytes: STARTUP (v4, stream 0).
//! let mut from_client =
//!     messages::startup_frame(4, 0, &[("CQL_VERSION", "3.0.0")]).to_bytes();
//! let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
//! let mut handshake = ClientHandshake::new(4, SupportedOptions::default());
//! let frame = decoder.decode(&mut from_client).unwrap().unwrap();
//! let HandshakeAction::Startup { version, raw_body, .. } = handshake.on_frame(&frame).unwrap() else {
//!     unreachable!()
//! };
//!
//! // Log in upstream with the client's STARTUP.
//! let mut login = UpstreamLogin::new(version, raw_body, "account".into(), b"key".to_vec());
//! let _startup_bytes = login.start(); // write these upstream
//! let mut from_upstream = messages::ready_frame(4, 0).to_bytes();
//! assert_eq!(login.receive(&mut from_upstream).unwrap(), LoginStep::Ready);
//! // … answer the client `messages::ready_frame(version, stream)` and start relaying.
//! ```

#![warn(missing_docs)]

mod compression;
pub mod cosmos;
mod error;
pub mod frame;
pub mod handshake;
pub mod login;
pub mod messages;
mod result;
pub mod schema;
pub mod segment;
pub mod topology;
mod wire;

pub use error::CqlError;
pub use frame::{
    BodyCompression, Frame, FrameDecoder, FrameEncoder, FrameHeader, Framing, HEADER_LEN, Piece,
};
pub use handshake::{ClientHandshake, HandshakeAction, SupportedOptions};
pub use login::{LoginStep, UpstreamLogin};
pub use messages::{codes, error_frame, ready_frame, supported_frame, unsupported_version_frame};
pub use topology::{
    ClientAction, PreparedStatements, SystemTable, Topology, TopologyRewriter, UpstreamAction,
};
