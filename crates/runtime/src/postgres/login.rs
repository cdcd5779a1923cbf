//! Steps 2–4 of a PostgreSQL session: credential, upstream connection, login.
//!
//! Each attempt connects afresh ([`super::connect`]) and runs the sans-IO
//! [`UpstreamLogin`] over it ([`crate::login::drive`]), all under the handshake timeout. When
//! the server refuses the token ([`refuses_the_token`]), the credential is told and the login is tried
//! once more with a fresh token ([`crate::session::login_with_retry`]); any other refusal goes to
//! the client verbatim. From AuthenticationOk on, what the server sent goes to the client, which
//! sees a normal connection start.

use bytes::BytesMut;
use dbproxy_postgres::{
    FatalWatch,
    login::{LoginError, LoginStep, UpstreamLogin},
    sqlstate,
    startup::StartupMessage,
};
use tokio::io::AsyncWriteExt;

use super::{HINT_CREDENTIAL, HINT_TLS, HINT_UPSTREAM, PostgresService, fatal};
use crate::{
    login::{DriveError, drive, unfinished_login},
    session::{self, Attempt, CloseReason, Refusal, SessionError},
    stream::ClientStream,
    upstream::{ConnectError, Connector},
};

crate::login::login_machine!(UpstreamLogin, LoginStep, LoginError);

/// Whether a login refusal is about the token, so that a fresh token may succeed: 28P01, or
/// 28000 with the messages Azure Database for PostgreSQL sends for a refused token ("The access
/// token has expired…", "The access token does not have a valid audience claim…", "password
/// authentication failed for user …"). Other 28000 refusals (a `pg_hba.conf` reject, a role
/// or database that does not exist) are the client's to see, and must not cost an Entra ID
/// request each: a client could otherwise make the proxy hammer Entra in a loop.
pub fn refuses_the_token(code: &str, message: &str) -> bool {
    code == sqlstate::INVALID_PASSWORD
        || (code == sqlstate::INVALID_AUTHORIZATION_SPECIFICATION
            && (message.contains("access token")
                || message.starts_with("password authentication failed")))
}

impl<C: Connector> PostgresService<C> {
    /// Logs in upstream for `client` (replacing a refused token once) and writes the server's
    /// AuthenticationOk and what follows to the client. Returns the logged-in upstream, and a
    /// watch over the server's messages that has seen those bytes.
    pub(crate) async fn login(
        &self,
        client: &mut ClientStream,
        startup: StartupMessage,
    ) -> Result<(C::Stream, FatalWatch), SessionError> {
        let no_password = |e: String| {
            fatal(
                CloseReason::Credential,
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!(
                    "entra-db-proxy could not obtain an Entra ID token for listener \"{}\": {e}",
                    self.name
                ),
                Some(HINT_CREDENTIAL),
            )
        };
        let (upstream, to_client) = session::login_with_retry(
            self.credential.as_ref(),
            2,
            self.handshake_timeout,
            no_password,
            |password| self.attempt(startup.clone(), password.expose().as_bytes().to_vec()),
        )
        .await?;
        client.write_all(&to_client).await.map_err(|e| {
            SessionError::silent(CloseReason::ClientIo, format!("client went away: {e}"))
        })?;
        let mut server = FatalWatch::new();
        server.feed(&to_client);
        Ok((upstream, server))
    }

    /// One login attempt over a new connection, under the handshake timeout.
    pub(crate) async fn attempt(
        &self,
        startup: StartupMessage,
        password: Vec<u8>,
    ) -> Result<Attempt<(C::Stream, BytesMut)>, SessionError> {
        let attempt = async {
            let mut upstream = self.connect_upstream().await?;
            let mut login = UpstreamLogin::new(startup, password);
            let mut buf = BytesMut::with_capacity(8192);
            let end = drive(&mut login, &mut upstream, &mut buf)
                .await
                .map_err(|e| self.login_failed(e))?;
            Ok(match end {
                LoginStep::Authenticated { to_client } => Attempt::LoggedIn((upstream, to_client)),
                LoginStep::Rejected {
                    to_client,
                    code,
                    message,
                } => Attempt::Refused(Refusal {
                    credential: refuses_the_token(&code, &message),
                    summary: format!("{code} {message}"),
                    reply: to_client,
                }),
                LoginStep::NeedMore | LoginStep::Send(_) => return Err(unfinished_login()),
            })
        };
        let who = format!("the database server {}", self.upstream);
        session::bounded(self.handshake_timeout, &who, attempt, |message| {
            fatal(
                CloseReason::UpstreamTimeout,
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                message,
                Some(HINT_UPSTREAM),
            )
        })
        .await
    }

    /// Connects (TCP, SSLRequest, TLS), observing the connect latency.
    pub(crate) async fn connect_upstream(&self) -> Result<C::Stream, SessionError> {
        let started = std::time::Instant::now();
        let stream = self.upstream.connect().await.map_err(|e| {
            let (reason, hint) = match e {
                ConnectError::Tcp { .. } => (CloseReason::UpstreamConnect, HINT_UPSTREAM),
                ConnectError::NoTls { .. } => (CloseReason::UpstreamTls, HINT_UPSTREAM),
                ConnectError::Tls { .. } => (CloseReason::UpstreamTls, HINT_TLS),
            };
            fatal(
                reason,
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                format!("entra-db-proxy: {e}"),
                Some(hint),
            )
        })?;
        self.metrics
            .connect
            .observe(started.elapsed().as_secs_f64());
        Ok(stream)
    }

    fn login_failed(&self, e: DriveError<LoginError>) -> SessionError {
        let (reason, message) = match e {
            DriveError::Io(e) => (
                CloseReason::UpstreamIo,
                format!(
                    "the database server {} failed during login: {e}",
                    self.upstream
                ),
            ),
            DriveError::Protocol(e) => (
                CloseReason::UpstreamProtocol,
                format!("login to the database server {} failed: {e}", self.upstream),
            ),
        };
        fatal(
            reason,
            sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
            message,
            Some(HINT_UPSTREAM),
        )
    }

    /// `entra-db-proxy check`: acquires the credential and performs a full upstream login as
    /// a client would trigger it, then terminates the session. Returns what was verified.
    pub async fn check(&self) -> Result<String, String> {
        let password = session::check_password(self.credential.as_ref()).await?;
        let mut startup = StartupMessage::new(dbproxy_postgres::ProtocolVersion::V3_0);
        startup.set("application_name", "entra-db-proxy check");
        let startup = self.upstream_startup(startup);
        let database = startup
            .get_lossy("database")
            .map_or_else(|| self.user.clone(), |d| d.into_owned());
        match self
            .attempt(startup, password.expose().as_bytes().to_vec())
            .await
        {
            Ok(Attempt::LoggedIn((mut upstream, _))) => {
                // Terminate ('X'), then close.
                let _ = upstream.write_all(&[b'X', 0, 0, 0, 4]).await;
                let _ = upstream.shutdown().await;
                Ok(format!("logged in as {} to database {database}", self.user))
            }
            Ok(Attempt::Refused(r)) => Err(format!("the server refused the login: {}", r.summary)),
            Err(e) => Err(e.message),
        }
    }
}
