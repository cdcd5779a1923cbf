//! A CQL session through the proxy, top to bottom.
//!
//! 1. **Client handshake** ([`handshake`]): TLS on connect when the listener has local TLS;
//!    then [`dbproxy_cassandra::ClientHandshake`]: OPTIONS is answered with SUPPORTED (what
//!    this listener offers); a protocol version above the listener's maximum gets ERROR 0x000A
//!    so drivers downgrade; STARTUP starts the login. The driver never sees an AUTHENTICATE:
//!    the proxy logs in for it. The whole handshake runs under one deadline.
//! 2. **Credential**: the listener's password source (the Cosmos DB account key from ARM
//!    listKeys, an Entra token, or a file).
//! 3. **Upstream**: TCP, then TLS at once (CQL has no in-band upgrade), server name verified.
//! 4. **Login** ([`login`]): the client's STARTUP replayed, then SASL PLAIN (`\0user\0key`).
//!    Refused credentials (ERROR 0x0100) are reported to the password source, which re-fetches
//!    the keys (rotation) or falls back to the other key; the login is retried before the
//!    client sees anything. The client then gets READY on its STARTUP's stream.
//! 5. **Relay** ([`relay`]): frames both ways, parsed at the header only, except where the
//!    topology must be hidden ([`dbproxy_cassandra::TopologyRewriter`]): `system.local` shows
//!    the proxy, `system.peers`/`peers_v2` are empty, topology and status events are dropped —
//!    so drivers never connect past the proxy. A DDL's result is held until the upstream's
//!    nodes agree on the schema ([`schema`]), since the driver cannot see the peers to wait.
//!    Frames over the listener's cap ([`CassandraService::max_frame_size`]) are never
//!    buffered: a client's is skipped as it arrives and answered as Cassandra answers it
//!    (ERROR 0x2200 "Request is too big", the session goes on); an upstream's closes the
//!    session with a log line.
//!
//! Failures of the proxy's own reach the client as a CQL ERROR (0x0100 bad credentials when
//! no key or token could be had, 0x0000 server error when the upstream is unreachable,
//! 0x000A protocol error for garbage) and the connection is closed; upstream errors during
//! the login are forwarded verbatim.

pub mod handshake;
pub mod login;
pub mod relay;
pub mod schema;

#[cfg(test)]
mod tests;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
pub use dbproxy_cassandra::frame::DEFAULT_MAX_FRAME_SIZE;
use dbproxy_cassandra::{
    BodyCompression, FrameDecoder, FrameEncoder, PreparedStatements, SupportedOptions, Topology,
    codes, error_frame,
    frame::{HANDSHAKE_MAX_FRAME_LEN, HEADER_LEN},
    ready_frame,
};
use dbproxy_credentials::PasswordSource;
use tokio::io::AsyncWriteExt;

use crate::{
    escape::Escaped,
    listener::Service,
    local_tls::LocalTls,
    metrics::ListenerMetrics,
    session::{self, CloseReason, Ended, SessionError, SessionLabels},
    stream::ClientStream,
    upstream::{Connector, Upstream},
};
use relay::{Codecs, Inbound, Relay};

/// Everything a CQL listener needs to serve its clients (cloned per identity by per-pod
/// identity, with its own user, credential and schema control).
#[derive(Clone)]
pub struct CassandraService<C = Upstream> {
    /// The listener's name, for logs.
    pub name: String,
    /// The Cosmos DB (or Cassandra) contact point.
    pub upstream: C,
    /// The login name (the Cosmos DB account name).
    pub username: String,
    /// Where the password comes from.
    pub credential: Arc<dyn PasswordSource>,
    /// Bound on the client's handshake, on waiting for the credential, and on the upstream
    /// login, each.
    pub handshake_timeout: Duration,
    /// Close sessions idle for this long (None: never).
    pub idle_timeout: Option<Duration>,
    /// This listener's metrics.
    pub metrics: ListenerMetrics,
    /// Highest protocol version offered to clients (4 for Cosmos DB, which speaks v4 only).
    pub max_version: u8,
    /// What SUPPORTED advertises (compression algorithms; none for Cosmos DB).
    pub supported: SupportedOptions,
    /// What drivers are shown instead of the upstream's nodes.
    pub topology: Topology,
    /// Prepared system-table statements, shared by the listener's connections.
    pub prepared: PreparedStatements,
    /// TLS between drivers and the proxy (TLS on connect; None: plain only).
    pub local_tls: Option<LocalTls>,
    /// The control connection for schema agreement after DDL (`Default::default()`).
    pub schema: Arc<schema::SchemaControl>,
    /// The largest frame, header included, taken from either side after READY (default
    /// [`DEFAULT_MAX_FRAME_SIZE`], Cassandra's `native_transport_max_frame_size`). Also bounds
    /// a compressed body once decompressed.
    pub max_frame_size: usize,
    /// Set when the upstream is Cosmos DB: its throttling absorbed, its request units counted.
    pub cosmos: Option<Cosmos>,
}

/// What a Cosmos DB listener does beyond Cassandra's.
#[derive(Clone)]
pub struct Cosmos {
    /// How requests Cosmos throttles are retried (None: they are not; the error reaches the
    /// driver).
    pub retry: Option<dbproxy_cassandra::cosmos::RetryPolicy>,
    /// The listener's Cosmos metrics.
    pub metrics: crate::metrics::CosmosMetrics,
}

/// What the client asked for at STARTUP.
pub(crate) struct Startup {
    /// Protocol version.
    pub version: u8,
    /// The STARTUP's stream, which READY (or the refusal) must answer on.
    pub stream: i16,
    /// Its options (CQL_VERSION, COMPRESSION, DRIVER_NAME, …).
    pub options: Vec<(String, String)>,
    /// Its body, replayed upstream.
    pub raw_body: Bytes,
}

const HINT_CREDENTIAL: &str = "check the proxy's credential (the identity needs Microsoft.DocumentDB/databaseAccounts/listKeys/action on the account) and the proxy's log";
const HINT_UPSTREAM: &str =
    "check the listener's upstream host and port, DNS, firewall, and the trusted CAs";

/// A session error the client is told about with a CQL ERROR on `stream`.
pub(crate) fn cql_error(
    reason: CloseReason,
    version: u8,
    stream: i16,
    code: i32,
    message: String,
) -> SessionError {
    let mut reply = BytesMut::new();
    error_frame(version, stream, code, &message).encode(&mut reply);
    SessionError::with_reply(reason, message, reply)
}

impl<C: Connector> Service for CassandraService<C> {
    async fn serve(self: Arc<Self>, client: ClientStream, _peer: String) {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let labels = SessionLabels {
            upstream: &self.upstream,
            user: &self.username,
            metrics: &self.metrics,
        };
        let mut client = match self.maybe_tls(client, deadline).await {
            Ok(client) => client,
            Err(e) => return session::finish::<ClientStream>(&labels, None, started, Err(e)).await,
        };
        let result = self.session(&mut client, deadline, started).await;
        session::finish(&labels, Some(&mut client), started, result).await;
    }

    async fn reject_busy(self: Arc<Self>, client: ClientStream) {
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let Ok(mut client) = self.maybe_tls(client, deadline).await else {
            return;
        };
        // Answer the first request, whatever it is, with Overloaded on its stream.
        let mut buf = BytesMut::new();
        let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
        let first = tokio::time::timeout_at(
            deadline,
            handshake::read_frame(&mut client, &mut decoder, &mut buf),
        )
        .await;
        if let Ok(Ok(Some(frame))) = first {
            let version = frame.header.version.min(self.max_version.max(3));
            let e = cql_error(
                CloseReason::TooManyConnections,
                version,
                frame.header.stream,
                codes::OVERLOADED,
                format!(
                    "entra-db-proxy: too many connections: listener \"{}\" is at its connection cap; retry later or raise --max-connections",
                    self.name
                ),
            );
            let _ = session::write_all_timeout(&mut client, &e.reply).await;
        }
        let _ = client.shutdown().await;
    }
}

impl<C: Connector> crate::gate::Refuse for CassandraService<C> {
    async fn refuse(self: Arc<Self>, client: ClientStream, why: String) {
        // The driver's OPTIONS is answered; its STARTUP gets an authentication error (0x0100),
        // which drivers report as an authentication failure with this message.
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let labels = SessionLabels {
            upstream: &self.upstream,
            user: &self.username,
            metrics: &self.metrics,
        };
        let mut client = match self.maybe_tls(client, deadline).await {
            Ok(client) => client,
            Err(e) => return session::finish::<ClientStream>(&labels, None, started, Err(e)).await,
        };
        let mut cbuf = BytesMut::with_capacity(1024);
        let result = match self
            .client_handshake(&mut client, &mut cbuf, deadline)
            .await
        {
            Ok(startup) => Err(cql_error(
                CloseReason::NotAdmitted,
                startup.version,
                startup.stream,
                codes::BAD_CREDENTIALS,
                why,
            )),
            Err(e) => Err(e),
        };
        session::finish(&labels, Some(&mut client), started, result).await;
    }
}

impl<C: Connector> CassandraService<C> {
    /// The body bound implied by [`CassandraService::max_frame_size`].
    pub(crate) fn max_body_len(&self) -> usize {
        self.max_frame_size.saturating_sub(HEADER_LEN)
    }

    /// Steps 1–5 on a client stream past local TLS.
    async fn session(
        self: &Arc<Self>,
        client: &mut ClientStream,
        deadline: tokio::time::Instant,
        started: Instant,
    ) -> Result<Ended, SessionError> {
        // 1. Client handshake; bytes after STARTUP stay in `cbuf` for the relay.
        let mut cbuf = BytesMut::with_capacity(4096);
        let startup = self.client_handshake(client, &mut cbuf, deadline).await?;
        let (v, s) = (startup.version, startup.stream);
        tracing::debug!(
            version = v,
            options = %Escaped(&format!("{:?}", startup.options)),
            "client startup"
        );

        // 2.–4. Credential, upstream TLS and login; refused credentials are replaced.
        let up = self.login(&startup).await?;
        let mut out = BytesMut::new();
        ready_frame(v, s).encode(&mut out);
        client.write_all(&out).await.map_err(|e| {
            SessionError::silent(CloseReason::ClientIo, format!("client went away: {e}"))
        })?;
        self.metrics
            .handshake
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(user = %self.username, version = v, "logged in upstream; relaying");

        // 5. Relay, in the framing the login settled on (v5 segments after READY).
        let compression = if v >= 5 {
            BodyCompression::None
        } else {
            BodyCompression::from_startup_options(&startup.options)
        };
        let framing = up.login.framing();
        let (mut udec, uenc) = up.login.into_codec();
        let max_body = self.max_body_len();
        udec.set_max_frame_len(max_body);
        let mut cdec = FrameDecoder::new(max_body);
        // Oversized requests are skipped as they stream in and refused on their stream, the
        // way Cassandra does; the session goes on.
        cdec.discard_oversized(Some(v));
        let mut cenc = FrameEncoder::new();
        cdec.set_framing(framing);
        cenc.set_framing(framing);
        let codecs = Codecs {
            from_client: Inbound {
                buf: cbuf,
                decoder: cdec,
            },
            to_client: cenc,
            from_upstream: Inbound {
                buf: up.buf,
                decoder: udec,
            },
            to_upstream: uenc,
        };
        let relay = Relay::new(self.clone(), v, compression);
        let mut upstream = up.stream;
        let reason = relay.run(client, &mut upstream, codecs).await;
        Ok(Ended {
            warm: false,
            reason,
            transferred: relay.transferred(),
            database: None,
        })
    }
}
