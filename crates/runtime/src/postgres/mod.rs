//! A PostgreSQL session through the proxy, top to bottom.
//!
//! 1. **Client startup** ([`startup`]): the client may first ask for TLS (SSLRequest), which
//!    is accepted when the listener has local TLS (answered `'S'`, then the TLS handshake;
//!    `'N'` otherwise), or open with TLS directly (PostgreSQL 17's `sslnegotiation=direct`,
//!    ALPN `postgresql`), or ask for GSS encryption (GSSENCRequest, always `'N'`). A
//!    CancelRequest is forwarded ([`cancel`]). The StartupMessage names the database and
//!    parameters (values passed on as the bytes sent, UTF-8 or not, as PostgreSQL takes them);
//!    its `user` is replaced. Bytes the client sent after its StartupMessage (a pipelined
//!    query) are kept and forwarded once the upstream session is ready.
//! 2. **Credential**: the listener's token cache hands over an Entra ID access token; it waits
//!    for Entra only when no valid token is cached.
//! 3. **Upstream** ([`connect`]): TCP, then SSLRequest → `'S'` → TLS with the server name
//!    verified.
//! 4. **Login** ([`login`]): a StartupMessage as the configured Entra user, answering the
//!    server's password request (cleartext, MD5 or SCRAM-SHA-256) with the token — the sans-IO
//!    state machine [`dbproxy_postgres::login::UpstreamLogin`] decides every byte. A refused
//!    token is replaced once.
//! 5. **Relay** ([`crate::relay`]): from AuthenticationOk on, every byte is forwarded unparsed
//!    in both directions.
//!
//! With `warm_sessions` on ([`warm`]), steps 2–4 are skipped for a client whose startup can be
//! served by a session logged in ahead of time.
//!
//! Any failure is reported to the client as a FATAL ErrorResponse with a SQLSTATE (08001 upstream
//! unreachable or TLS failure, 28000 credential unavailable, 08P01 protocol violation; the
//! upstream's own errors verbatim) before the connection is closed.

pub mod cancel;
pub mod connect;
pub mod login;
pub mod startup;
pub mod warm;

#[cfg(test)]
mod tests;

use std::{sync::Arc, time::Duration, time::Instant};

use bytes::BytesMut;
use dbproxy_credentials::PasswordSource;
use dbproxy_postgres::{
    FatalWatch, MAX_STARTUP_LEN,
    messages::{self, ErrorFields},
    sqlstate,
};
use tokio::io::AsyncWriteExt;

pub use connect::PostgresUpstream;
pub use warm::{WarmPool, WarmSettings};

use crate::{
    escape::Escaped,
    listener::Service,
    local_tls::LocalTls,
    metrics::ListenerMetrics,
    relay::{RelayEnd, RelayOptions, relay},
    session::{self, CloseReason, Ended, SessionError, SessionLabels},
    stream::ClientStream,
    upstream::Connector,
};
use startup::ClientStart;

/// Everything a PostgreSQL listener needs to serve its clients (made again per identity by
/// per-pod identity, with its own user and credential, and no warm sessions).
pub struct PostgresService<C: Connector = PostgresUpstream> {
    /// The listener's name, for logs.
    pub name: String,
    /// The Azure Database for PostgreSQL server.
    pub upstream: C,
    /// The Entra principal to log in as (replaces the client's `user`).
    pub user: String,
    /// Database used when the client names none.
    pub default_database: Option<String>,
    /// Source of the password (an Entra ID access token).
    pub credential: Arc<dyn PasswordSource>,
    /// Bound on the client's startup, on waiting for the credential, and on the upstream
    /// login, each.
    pub handshake_timeout: Duration,
    /// Close sessions idle for this long (None: never).
    pub idle_timeout: Option<Duration>,
    /// This listener's metrics.
    pub metrics: ListenerMetrics,
    /// TLS between clients and the proxy (None: SSLRequest is answered 'N').
    pub local_tls: Option<LocalTls>,
    /// Upstream sessions logged in ahead of clients (off unless `warm_sessions` > 0).
    pub warm: WarmPool<C::Stream>,
}

const HINT_UPSTREAM: &str = "Check the listener's upstream host and port, DNS, and that the server's firewall admits this host.";
const HINT_TLS: &str = "Check the upstream name the certificate must match (tls.server_name) and the trusted CAs (tls.ca_file, SSL_CERT_FILE, SSL_CERT_DIR).";
const HINT_IDENTITY: &str = "The proxy identifies clients by pod (source IP) or uid; see the listener's pod_identity / allow_uids settings and the proxy's log.";
const HINT_CREDENTIAL: &str = "Check the proxy's credential settings (--credential and its ids) and the proxy's log, which names the endpoint that failed.";

/// A session error the client is told about with a FATAL ErrorResponse.
pub(crate) fn fatal(
    reason: CloseReason,
    code: &'static str,
    message: String,
    hint: Option<&'static str>,
) -> SessionError {
    let mut reply = BytesMut::new();
    messages::error_response(
        &ErrorFields {
            severity: messages::FATAL,
            code,
            message: message.clone(),
            detail: None,
            hint: hint.map(str::to_owned),
        },
        &mut reply,
    );
    SessionError::with_reply(reason, message, reply)
}

impl<C: Connector> Service for PostgresService<C> {
    async fn serve(self: Arc<Self>, client: ClientStream, _peer: String) {
        let started = Instant::now();
        let labels = SessionLabels {
            upstream: &self.upstream,
            user: &self.user,
            metrics: &self.metrics,
        };
        match self.open(client).await {
            Ok((mut client, start)) => {
                let result = self.session(&mut client, start, started).await;
                session::finish(&labels, Some(&mut client), started, result).await;
            }
            Err((mut client, e)) => {
                session::finish(&labels, client.as_mut(), started, Err(e)).await
            }
        }
    }

    async fn reject_busy(self: Arc<Self>, client: ClientStream) {
        // Like PostgreSQL, read the startup first so that libpq shows the message.
        let (mut client, e) = match self.open(client).await {
            Ok((client, ClientStart::Cancel(bytes))) => {
                // Cancels never count against the cap: they free a busy session.
                let _ = self.forward_cancel(&bytes).await;
                drop(client);
                return;
            }
            Ok((client, ClientStart::Startup { .. })) => (
                Some(client),
                fatal(
                    CloseReason::TooManyConnections,
                    sqlstate::TOO_MANY_CONNECTIONS,
                    format!(
                        "sorry, too many clients already: listener \"{}\" is at its connection cap",
                        self.name
                    ),
                    Some("Retry later, or raise --max-connections."),
                ),
            ),
            Err((client, e)) => (client, e),
        };
        if let Some(client) = client.as_mut() {
            let _ = session::write_all_timeout(client, &e.reply).await;
            let _ = client.shutdown().await;
        }
    }
}

impl<C: Connector> crate::gate::Refuse for PostgresService<C> {
    async fn refuse(self: Arc<Self>, client: ClientStream, why: String) {
        // Like a pg_hba.conf reject: read the startup first so that libpq shows the message.
        let started = Instant::now();
        let labels = SessionLabels {
            upstream: &self.upstream,
            user: &self.user,
            metrics: &self.metrics,
        };
        match self.open(client).await {
            Ok((client, ClientStart::Cancel(_))) => drop(client),
            Ok((mut client, ClientStart::Startup { .. })) => {
                let e = fatal(
                    CloseReason::NotAdmitted,
                    sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                    why,
                    Some(HINT_IDENTITY),
                );
                session::finish(&labels, Some(&mut client), started, Err(e)).await;
            }
            Err((mut client, e)) => {
                session::finish(&labels, client.as_mut(), started, Err(e)).await
            }
        }
    }
}

impl<C: Connector> PostgresService<C> {
    /// Steps 2–5 for a client that sent its StartupMessage (or a CancelRequest).
    async fn session(
        &self,
        client: &mut ClientStream,
        start: ClientStart,
        started: Instant,
    ) -> Result<Ended, SessionError> {
        let (startup, pipelined) = match start {
            ClientStart::Startup { message, pipelined } => (message, pipelined),
            ClientStart::Cancel(bytes) => {
                self.forward_cancel(&bytes).await?;
                return Ok(Ended {
                    warm: false,
                    reason: CloseReason::CancelForwarded,
                    transferred: Default::default(),
                    database: None,
                });
            }
        };
        // Values are bytes as sent (PostgreSQL does not check their encoding); logged lossily.
        let client_user = startup.get_lossy("user").unwrap_or_default().into_owned();
        let upstream_startup = self.upstream_startup(startup);
        // The client's packet was within PostgreSQL's limit, but with the proxy's user (and
        // default database) it may not be: the server would close without a word.
        let len = upstream_startup.encoded_len();
        if len > MAX_STARTUP_LEN {
            return Err(fatal(
                CloseReason::ClientProtocol,
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "invalid length of startup packet: {len} once the proxy set the user and database (must be 8 to {MAX_STARTUP_LEN})"
                ),
                Some("Send fewer or shorter startup parameters."),
            ));
        }
        let database = upstream_startup
            .get_lossy("database")
            .map_or_else(|| self.user.clone(), |d| d.into_owned());
        tracing::debug!(
            client_user = %Escaped(&client_user),
            user = %self.user,
            database = %Escaped(&database),
            application_name = %Escaped(&upstream_startup.get_lossy("application_name").unwrap_or_default()),
            "client startup"
        );

        // 2.–4. A warm session, or credential, upstream TLS and login (a refused token is
        // replaced once).
        let (mut upstream, server, warm) = match self.take_warm(&upstream_startup).await {
            Some(mut handover) => {
                client.write_all(&handover.greeting).await.map_err(|e| {
                    SessionError::silent(CloseReason::ClientIo, format!("client went away: {e}"))
                })?;
                if let Err(e) = self.confirm_handover(&mut handover).await {
                    return Err(fatal(
                        CloseReason::UpstreamProtocol,
                        sqlstate::CONNECTION_FAILURE,
                        format!(
                            "the warm upstream session could not take this connection's parameters: {e}"
                        ),
                        Some(
                            "A bug in entra-db-proxy's warm sessions: warm_sessions = 0 turns them off; please report it.",
                        ),
                    ));
                }
                let mut server = FatalWatch::new();
                server.feed(&handover.greeting);
                tracing::info!(user = %self.user, database = %Escaped(&database), "warm upstream session handed over; relaying");
                (handover.stream, server, true)
            }
            None => {
                let (upstream, server) = self.login(client, upstream_startup).await?;
                tracing::info!(user = %self.user, database = %Escaped(&database), "logged in upstream; relaying");
                (upstream, server, false)
            }
        };
        self.metrics
            .handshake
            .observe(started.elapsed().as_secs_f64());

        // What the client pipelined behind its StartupMessage, now that the server can take it.
        if !pipelined.is_empty() {
            upstream.write_all(&pipelined).await.map_err(|e| {
                SessionError::silent(
                    CloseReason::Relay,
                    format!("relay ended: the upstream went away: {e}"),
                )
            })?;
            self.metrics
                .bytes_to_upstream
                .inc_by(pipelined.len() as u64);
        }

        // 5. Relay.
        let options = RelayOptions {
            to_upstream: self.metrics.bytes_to_upstream.clone(),
            to_client: self.metrics.bytes_to_client.clone(),
            idle_timeout: self.idle_timeout,
            server,
        };
        let (mut transferred, end) = relay(client, &mut upstream, options)
            .await
            .map_err(|e| SessionError::silent(CloseReason::Relay, format!("relay ended: {e}")))?;
        transferred.to_upstream += pipelined.len() as u64;
        Ok(Ended {
            warm,
            reason: match end {
                RelayEnd::ClientClosed => CloseReason::ClientClosed,
                RelayEnd::UpstreamClosed => CloseReason::UpstreamClosed,
                RelayEnd::Idle => CloseReason::IdleTimeout,
            },
            transferred,
            database: Some(database),
        })
    }
}
