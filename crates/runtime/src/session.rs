//! The shape every session shares, whatever its protocol.
//!
//! A protocol module (PostgreSQL, CQL) reads the client's opening, logs in upstream and relays;
//! this module holds what does not depend on the protocol:
//!
//! - [`CloseReason`]: why a session ended, as one enum. It decides the metric cause label
//!   ([`CloseReason::cause`]) and how the end is logged ([`CloseReason::severity`]).
//! - [`SessionError`]: a session that ended before or instead of relaying: its reason, the
//!   message for the log, and what the client is told — bytes the protocol module encoded
//!   (a PostgreSQL ErrorResponse, a CQL ERROR frame, or the upstream's own refusal verbatim).
//! - [`Ended`]: a session that relayed, for the one log line written at close.
//! - [`finish`]: writes that line, counts failures, and tells the client.
//! - [`login_with_retry`]: asks the credential for a password, runs a login attempt, and when
//!   the upstream refuses the credential asks the credential for the next one, a bounded
//!   number of times. Both protocols log in through it.

use std::{future::Future, time::Duration, time::Instant};

use bytes::BytesMut;
use dbproxy_credentials::{PasswordSource, Secret};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::{escape::Escaped, metrics::ListenerMetrics, relay::Transferred};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed after relaying (or the relay's client side ended).
    ClientClosed,
    /// The upstream closed after relaying.
    UpstreamClosed,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
    /// A PostgreSQL CancelRequest was forwarded (such connections carry no session).
    CancelForwarded,
    /// The client closed before its opening message: a TCP probe (load balancer, `tcpSocket`
    /// health check) or a client that gave up. Not a failure.
    ClientGone,
    /// A CQL protocol version above the listener's maximum was refused so the driver steps
    /// down (normal negotiation). Not a failure.
    VersionNegotiation,
    /// The client sent no opening in time.
    ClientTimeout,
    /// Reading from or writing to the client failed.
    ClientIo,
    /// TLS with the client failed, or the listener requires TLS and the client did not ask.
    ClientTls,
    /// The client broke the protocol.
    ClientProtocol,
    /// The listener is at its connection cap.
    TooManyConnections,
    /// No password could be had from the credential.
    Credential,
    /// The upstream could not be reached over TCP.
    UpstreamConnect,
    /// TLS with the upstream failed (or it refused TLS).
    UpstreamTls,
    /// The upstream did not complete the login in time.
    UpstreamTimeout,
    /// Reading from or writing to the upstream failed during login.
    UpstreamIo,
    /// The upstream broke the protocol (during login or relay).
    UpstreamProtocol,
    /// The upstream refused the credential, and no other could be had.
    Rejected,
    /// The upstream refused the login for another reason (its error goes to the client).
    UpstreamRefused,
    /// The relay failed with an I/O error.
    Relay,
    /// A bug in the proxy (a poisoned lock).
    Internal,
    /// The listener's identity check refused the client (unknown pod, policy, uid).
    NotAdmitted,
}

/// How the end of a session is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A session that did its work: one INFO line.
    Normal,
    /// Not worth an operator's attention: one DEBUG line, not counted as a failure.
    Quiet,
    /// A failure: one WARN line, counted in `handshake_failures_total{cause}`.
    Failure,
}

impl CloseReason {
    /// The `cause` label of the failure counter, and the log's `cause` field.
    pub fn cause(self) -> &'static str {
        use CloseReason::*;
        match self {
            ClientClosed => "client_closed",
            UpstreamClosed => "upstream_closed",
            IdleTimeout => "idle_timeout",
            CancelForwarded => "cancel",
            ClientGone => "client_eof",
            VersionNegotiation => "version_negotiation",
            ClientTimeout => "client_timeout",
            ClientIo => "client_io",
            ClientTls => "client_tls",
            ClientProtocol => "client_protocol",
            TooManyConnections => "too_many_connections",
            Credential => "credential",
            UpstreamConnect => "upstream_connect",
            UpstreamTls => "upstream_tls",
            UpstreamTimeout => "upstream_timeout",
            UpstreamIo => "upstream_io",
            UpstreamProtocol => "upstream_protocol",
            Rejected => "rejected",
            UpstreamRefused => "upstream_error",
            Relay => "relay",
            Internal => "internal",
            NotAdmitted => "not_admitted",
        }
    }

    /// The `outcome` field of the session's log line.
    pub fn outcome(self) -> &'static str {
        use CloseReason::*;
        match self {
            ClientClosed => "client closed",
            UpstreamClosed => "upstream closed",
            IdleTimeout => "idle timeout",
            CancelForwarded => "cancel forwarded",
            ClientProtocol => "client protocol error",
            UpstreamProtocol => "upstream protocol error",
            Internal => "internal error",
            _ => "failed",
        }
    }

    /// How the end is logged and counted.
    pub fn severity(self) -> Severity {
        use CloseReason::*;
        match self {
            ClientClosed | UpstreamClosed | IdleTimeout | CancelForwarded => Severity::Normal,
            ClientGone | VersionNegotiation => Severity::Quiet,
            _ => Severity::Failure,
        }
    }
}

/// A session that ended before relaying, or instead of it.
#[derive(Debug)]
pub struct SessionError {
    /// Why.
    pub reason: CloseReason,
    /// For the log (and usually the client): never a secret.
    pub message: String,
    /// What the client is told before the connection is closed, already encoded by the
    /// protocol module (empty: nothing can or need be sent).
    pub reply: BytesMut,
}

impl SessionError {
    /// An error after which nothing is sent to the client.
    pub fn silent(reason: CloseReason, message: impl Into<String>) -> SessionError {
        SessionError {
            reason,
            message: message.into(),
            reply: BytesMut::new(),
        }
    }

    /// An error the client is told about with `reply`.
    pub fn with_reply(
        reason: CloseReason,
        message: impl Into<String>,
        reply: BytesMut,
    ) -> SessionError {
        SessionError {
            reason,
            message: message.into(),
            reply,
        }
    }
}

/// A session that relayed, for its closing log line.
#[derive(Debug)]
pub struct Ended {
    /// Whether the client was handed a warm upstream session (PostgreSQL).
    pub warm: bool,
    /// Why it ended.
    pub reason: CloseReason,
    /// Bytes moved each way.
    pub transferred: Transferred,
    /// The upstream database (PostgreSQL) or keyspace, when known.
    pub database: Option<String>,
}

/// Who a listener's sessions log in as, for their log lines.
pub struct SessionLabels<'a> {
    /// `host:port` of the upstream.
    pub upstream: &'a (dyn std::fmt::Display + Sync),
    /// The upstream login name.
    pub user: &'a str,
    /// The listener's metrics.
    pub metrics: &'a ListenerMetrics,
}

/// Writes the session's closing log line, counts a failure, and sends the client what a
/// failure tells it before closing the client's write side.
pub async fn finish<C>(
    labels: &SessionLabels<'_>,
    client: Option<&mut C>,
    started: Instant,
    result: Result<Ended, SessionError>,
) where
    C: AsyncWrite + Unpin + ?Sized,
{
    let duration_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(end) => {
            labels.metrics.session_ended(end.reason);
            let t = end.transferred;
            let database = end.database.as_deref().unwrap_or("");
            tracing::info!(
                upstream = %labels.upstream,
                user = %Escaped(labels.user),
                database = %Escaped(database),
                duration_ms,
                bytes_to_upstream = t.to_upstream,
                bytes_to_client = t.to_client,
                outcome = end.reason.outcome(),
                session = if end.warm { "warm" } else { "cold" },
                "session ended"
            );
        }
        Err(e) => {
            if let Some(client) = client {
                if !e.reply.is_empty() {
                    let _ = write_all_timeout(client, &e.reply).await;
                }
                let _ = client.shutdown().await;
            }
            match e.reason.severity() {
                Severity::Quiet => {
                    tracing::debug!(cause = e.reason.cause(), detail = %Escaped(&e.message), "session not started")
                }
                Severity::Normal => tracing::info!(
                    upstream = %labels.upstream,
                    outcome = e.reason.outcome(),
                    "session ended"
                ),
                Severity::Failure => {
                    labels.metrics.handshake_failed(e.reason);
                    tracing::warn!(
                        upstream = %labels.upstream,
                        user = %Escaped(labels.user),
                        duration_ms,
                        cause = e.reason.cause(),
                        error = %Escaped(&e.message),
                        outcome = "failed",
                        "session ended"
                    );
                }
            }
        }
    }
}

/// Writes `bytes` to the client, giving up after 5 s (a client that does not read).
pub async fn write_all_timeout<C>(client: &mut C, bytes: &[u8]) -> std::io::Result<()>
where
    C: AsyncWrite + Unpin + ?Sized,
{
    match tokio::time::timeout(Duration::from_secs(5), client.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Runs `attempt` for at most `limit`; past it, the error `timed_out` builds from the message
/// "… did not complete the login within N s".
pub async fn bounded<T>(
    limit: Duration,
    who: &str,
    attempt: impl Future<Output = Result<T, SessionError>>,
    timed_out: impl FnOnce(String) -> SessionError,
) -> Result<T, SessionError> {
    match tokio::time::timeout(limit, attempt).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(format!(
            "{who} did not complete the login within {} s",
            limit.as_secs()
        ))),
    }
}

/// The password for `entra-db-proxy check`, or what went wrong getting it.
pub async fn check_password(credential: &dyn PasswordSource) -> Result<Secret, String> {
    credential
        .password()
        .await
        .map_err(|e| format!("credential: {e}"))
}

/// The end of one login attempt with one password.
pub enum Attempt<T> {
    /// Logged in; `T` is the logged-in upstream and whatever goes with it.
    LoggedIn(T),
    /// The upstream refused the login.
    Refused(Refusal),
}

/// An upstream's refusal of a login.
pub struct Refusal {
    /// The refusal is about the credential (PostgreSQL 28P01/28000, CQL 0x0100): another
    /// password may succeed.
    pub credential: bool,
    /// The upstream's code and message, for the log.
    pub summary: String,
    /// The upstream's refusal, encoded for the client, sent verbatim when no retry helps.
    pub reply: BytesMut,
}

/// Logs in with the credential's password, retrying up to `attempts` times in all while the
/// upstream refuses the credential itself and the credential has another to offer.
///
/// Waiting for the credential (a token or key being fetched) takes at most `wait` each time;
/// past it the client is told the credential timed out (the fetch itself goes on in the
/// background, for the next client). `no_password` builds the error the client gets when the
/// credential has no password.
pub async fn login_with_retry<T, F, Fut>(
    credential: &dyn PasswordSource,
    attempts: u32,
    wait: Duration,
    no_password: impl FnOnce(String) -> SessionError,
    mut attempt: F,
) -> Result<T, SessionError>
where
    F: FnMut(Secret) -> Fut,
    Fut: Future<Output = Result<Attempt<T>, SessionError>>,
{
    let timed_out = || {
        format!(
            "{}: timed out: no answer within {}s (still trying in the background)",
            credential.describe(),
            wait.as_secs_f32()
        )
    };
    let mut password = match tokio::time::timeout(wait, credential.password()).await {
        Ok(r) => r.map_err(|e| no_password(e.to_string()))?,
        Err(_) => return Err(no_password(timed_out())),
    };
    let mut tried = 0;
    loop {
        tried += 1;
        let refusal = match attempt(password.clone()).await? {
            Attempt::LoggedIn(t) => return Ok(t),
            Attempt::Refused(r) => r,
        };
        if refusal.credential && tried < attempts {
            let next = match tokio::time::timeout(wait, credential.after_rejection(&password)).await
            {
                Ok(r) => r,
                Err(_) => Err(dbproxy_credentials::CredentialError::Timeout {
                    who: credential.describe(),
                    after: wait,
                }),
            };
            match next {
                Ok(Some(next)) => {
                    tracing::warn!(refusal = %Escaped(&refusal.summary), attempt = tried, "the upstream refused the credential; retrying with a fresh one");
                    password = next;
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "no fresh credential after the upstream refused one")
                }
            }
        }
        let reason = if refusal.credential {
            CloseReason::Rejected
        } else {
            CloseReason::UpstreamRefused
        };
        return Err(SessionError::with_reply(
            reason,
            format!("the upstream refused the login: {}", refusal.summary),
            refusal.reply,
        ));
    }
}

#[cfg(test)]
mod tests {
    use dbproxy_credentials::{CacheStatus, CredentialError};

    use super::*;

    /// A credential whose fetch never ends (a token endpoint that hangs).
    struct Hung;

    #[async_trait::async_trait]
    impl PasswordSource for Hung {
        fn describe(&self) -> String {
            "hung source".into()
        }
        async fn password(&self) -> Result<Secret, CredentialError> {
            std::future::pending().await
        }
        async fn after_rejection(&self, _: &Secret) -> Result<Option<Secret>, CredentialError> {
            std::future::pending().await
        }
        fn status(&self) -> CacheStatus {
            CacheStatus::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_credential_is_bounded() {
        let started = tokio::time::Instant::now();
        let r: Result<(), SessionError> = login_with_retry(
            &Hung,
            2,
            Duration::from_secs(7),
            |m| SessionError::silent(CloseReason::Credential, m),
            |_| async { unreachable!("no password, no attempt") },
        )
        .await;
        let Err(e) = r else {
            panic!("a credential error expected")
        };
        assert_eq!(e.reason, CloseReason::Credential);
        assert_eq!(
            e.message,
            "hung source: timed out: no answer within 7s (still trying in the background)"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(7));
    }
}
