//! Steps 2–4 of a CQL session: credential, upstream connection, SASL PLAIN login.
//!
//! ```text
//! proxy                                   upstream
//! STARTUP (the driver's, replayed) ────▶
//!                                   ◀──── AUTHENTICATE (PasswordAuthenticator)
//! AUTH_RESPONSE \0user\0password ──────▶
//!                                   ◀──── AUTH_SUCCESS   (or READY, or ERROR 0x0100)
//! ```
//!
//! Each attempt connects afresh and runs the sans-IO [`UpstreamLogin`] over it
//! ([`crate::login::drive`]) under the handshake timeout. A refusal with code 0x0100 (bad
//! credentials) goes back to the password source, which re-fetches the keys (rotation) or
//! falls back to the other key of the pair; the login is retried up to three times in all
//! ([`crate::session::login_with_retry`]). Other refusals reach the driver verbatim, on its
//! STARTUP's stream.

use bytes::BytesMut;
use dbproxy_cassandra::{CqlError, LoginStep, UpstreamLogin, codes, error_frame};
use dbproxy_credentials::Secret;
use tokio::io::AsyncWriteExt;

use super::{CassandraService, HINT_CREDENTIAL, HINT_UPSTREAM, Startup, cql_error};
use crate::{
    login::{DriveError, drive, unfinished_login},
    session::{self, Attempt, CloseReason, Refusal, SessionError},
    upstream::Connector,
};

crate::login::login_machine!(UpstreamLogin, LoginStep, CqlError);

/// A logged-in upstream connection.
pub(crate) struct LoggedIn<S> {
    /// The connection.
    pub stream: S,
    /// The finished login: its framing and codec carry on into the relay.
    pub login: UpstreamLogin,
    /// Bytes the upstream sent after the login's last frame.
    pub buf: BytesMut,
}

impl<C: Connector> CassandraService<C> {
    /// Logs in upstream with the client's STARTUP, replacing refused credentials.
    pub(crate) async fn login(
        &self,
        startup: &Startup,
    ) -> Result<LoggedIn<C::Stream>, SessionError> {
        let (v, s) = (startup.version, startup.stream);
        let no_password = |e: String| {
            cql_error(
                CloseReason::Credential,
                v,
                s,
                codes::BAD_CREDENTIALS,
                format!(
                    "entra-db-proxy could not obtain the password for listener \"{}\": {e} ({HINT_CREDENTIAL})",
                    self.name
                ),
            )
        };
        session::login_with_retry(
            self.credential.as_ref(),
            3,
            self.handshake_timeout,
            no_password,
            |password| self.attempt(startup, password),
        )
        .await
    }

    /// One login attempt over a new connection, under the handshake timeout.
    pub(crate) async fn attempt(
        &self,
        startup: &Startup,
        password: Secret,
    ) -> Result<Attempt<LoggedIn<C::Stream>>, SessionError> {
        let (v, s) = (startup.version, startup.stream);
        let upstream_err = |reason: CloseReason, message: String| {
            cql_error(
                reason,
                v,
                s,
                codes::SERVER_ERROR,
                format!("entra-db-proxy: {message} ({HINT_UPSTREAM})"),
            )
        };
        let attempt = async {
            let connect_started = std::time::Instant::now();
            let mut stream = self.upstream.connect().await.map_err(|e| {
                let reason = match e {
                    crate::upstream::ConnectError::Tcp { .. } => CloseReason::UpstreamConnect,
                    _ => CloseReason::UpstreamTls,
                };
                upstream_err(reason, e.to_string())
            })?;
            self.metrics
                .connect
                .observe(connect_started.elapsed().as_secs_f64());
            let mut login = UpstreamLogin::new(
                v,
                startup.raw_body.clone(),
                self.username.clone(),
                password.expose().as_bytes().to_vec(),
            );
            let mut buf = BytesMut::with_capacity(4096);
            let end = drive(&mut login, &mut stream, &mut buf)
                .await
                .map_err(|e| match e {
                    DriveError::Io(e) => upstream_err(
                        CloseReason::UpstreamIo,
                        format!("the upstream {} failed during login: {e}", self.upstream),
                    ),
                    DriveError::Protocol(e) => upstream_err(
                        CloseReason::UpstreamProtocol,
                        format!("login to {} failed: {e}", self.upstream),
                    ),
                })?;
            Ok(match end {
                LoginStep::Ready => Attempt::LoggedIn(LoggedIn { stream, login, buf }),
                LoginStep::Rejected {
                    error,
                    code,
                    message,
                    bad_credentials,
                } => {
                    let mut reply = BytesMut::new();
                    // Cosmos refuses every key when local auth is disabled: no other key
                    // helps, and the driver is told what will.
                    let local_auth_off = dbproxy_credentials::local_auth_disabled(&message);
                    if local_auth_off {
                        let text = format!(
                            "{message} (entra-db-proxy, listener \"{}\": {})",
                            self.name,
                            dbproxy_credentials::LOCAL_AUTH_HINT
                        );
                        error_frame(v, s, code, &text).encode(&mut reply);
                    } else {
                        error.with_stream(s).encode(&mut reply);
                    }
                    Attempt::Refused(Refusal {
                        credential: bad_credentials && !local_auth_off,
                        summary: format!("{code:#06x} {message}"),
                        reply,
                    })
                }
                LoginStep::NeedMore | LoginStep::Send(_) => return Err(unfinished_login()),
            })
        };
        let who = format!("the upstream {}", self.upstream);
        session::bounded(self.handshake_timeout, &who, attempt, |message| {
            upstream_err(CloseReason::UpstreamTimeout, message)
        })
        .await
    }

    /// `entra-db-proxy check`: acquires the password and logs in upstream once.
    pub async fn check(&self) -> Result<String, String> {
        let password = session::check_password(self.credential.as_ref()).await?;
        let startup = own_startup(self.max_version.min(4));
        match self.attempt(&startup, password).await {
            Ok(Attempt::LoggedIn(mut up)) => {
                let _ = up.stream.shutdown().await;
                Ok(format!("logged in as {}", self.username))
            }
            Ok(Attempt::Refused(r)) => {
                Err(format!("the upstream refused the login: {}", r.summary))
            }
            Err(e) => Err(e.message),
        }
    }
}

/// A STARTUP of the proxy's own (check, schema agreement).
pub(crate) fn own_startup(version: u8) -> Startup {
    let frame = dbproxy_cassandra::messages::startup_frame(version, 0, &[("CQL_VERSION", "3.0.0")]);
    Startup {
        version,
        stream: 0,
        options: vec![("CQL_VERSION".into(), "3.0.0".into())],
        raw_body: frame.body,
    }
}
