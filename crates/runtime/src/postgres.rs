//! A PostgreSQL session through the proxy, top to bottom.
//!
//! 1. **Client startup** ([`read_client_startup`]): the client may first ask for TLS
//!    (SSLRequest) or GSS encryption (GSSENCRequest); both are declined with `'N'` so the client
//!    continues in clear on the local connection. A CancelRequest is forwarded (step 6). The
//!    StartupMessage names the database and parameters; its `user` is ignored.
//! 2. **Credential**: the listener's token cache hands over an Entra ID access token; it waits for
//!    Entra only when no valid token is cached.
//! 3. **Upstream**: TCP, then SSLRequest → `'S'` → TLS with the server name verified.
//! 4. **Login**: a StartupMessage as the configured Entra user, answering the server's password
//!    request (cleartext, MD5 or SCRAM-SHA-256) with the token — the sans-IO state machine
//!    [`dbproxy_postgres::login::UpstreamLogin`] decides every byte.
//! 5. **Relay**: from AuthenticationOk on, every byte is forwarded unparsed in both directions.
//! 6. **Cancel**: a CancelRequest carries the upstream backend's own key (the client learnt it
//!    from the relayed BackendKeyData), so it is forwarded as-is over a fresh TLS connection.
//!
//! Any failure is reported to the client as a FATAL ErrorResponse with a SQLSTATE (08001 upstream
//! unreachable or TLS failure, 28000 credential unavailable, 08P01 protocol violation; the
//! upstream's own errors verbatim) before the connection is closed.

use std::{sync::Arc, time::Duration, time::Instant};

use bytes::BytesMut;
use dbproxy_credentials::{PasswordSource, Secret};
use dbproxy_postgres::{
    login::{LoginStep, UpstreamLogin},
    messages::{self, ErrorFields},
    sqlstate,
    startup::{StartupMessage, StartupPacket, parse_startup_packet},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::timeout_at,
};

use crate::{
    listener::Service,
    local_tls::{LocalTls, LocalTlsMode},
    metrics::ListenerMetrics,
    relay::{RelayEnd, RelayOptions, Transferred, relay},
    stream::ClientStream,
    upstream::Upstream,
};

/// Everything a PostgreSQL listener needs to serve its clients.
pub struct PostgresService {
    /// The listener's name, for logs.
    pub name: String,
    /// The Azure Database for PostgreSQL server.
    pub upstream: Upstream,
    /// The Entra principal to log in as (replaces the client's `user`).
    pub user: String,
    /// Database used when the client names none.
    pub default_database: Option<String>,
    /// Source of the password (an Entra ID access token).
    pub credential: Arc<dyn PasswordSource>,
    /// Bound on the client's startup and on the upstream login, each.
    pub handshake_timeout: Duration,
    /// Close sessions idle for this long (None: never).
    pub idle_timeout: Option<Duration>,
    /// This listener's metrics.
    pub metrics: ListenerMetrics,
    /// TLS between clients and the proxy (None: SSLRequest is answered 'N').
    pub local_tls: Option<LocalTls>,
}

/// How a session ended, for the one log line written at close.
#[derive(Debug)]
enum Outcome {
    Relayed {
        transferred: Transferred,
        end: RelayEnd,
        database: String,
    },
    Cancelled,
}

/// Why a session ended early. Each carries what the client is told.
#[derive(Debug)]
struct SessionError {
    /// SQLSTATE sent to the client, if any response can still be sent.
    code: Option<&'static str>,
    /// Message for the client and the log (never a secret).
    message: String,
    /// What to check.
    hint: Option<&'static str>,
    /// Short cause for logs and metrics.
    cause: &'static str,
}

impl SessionError {
    fn new(
        cause: &'static str,
        code: &'static str,
        message: String,
        hint: Option<&'static str>,
    ) -> Self {
        SessionError {
            code: Some(code),
            message,
            hint,
            cause,
        }
    }

    /// An error after which nothing more is sent to the client.
    fn silent(cause: &'static str, message: String) -> Self {
        SessionError {
            code: None,
            message,
            hint: None,
            cause,
        }
    }
}

const HINT_UPSTREAM: &str = "Check the listener's upstream host and port, DNS, and that the server's firewall admits this host.";
const HINT_TLS: &str = "Check the upstream name the certificate must match (tls.server_name) and the trusted CAs (tls.ca_file, SSL_CERT_FILE, SSL_CERT_DIR).";
const HINT_CREDENTIAL: &str = "Check the proxy's credential settings (--credential and its ids) and the proxy's log, which names the endpoint that failed.";

impl Service for PostgresService {
    async fn serve(self: Arc<Self>, client: ClientStream, _peer: String) {
        let started = Instant::now();
        let (client, start) = self.open(client).await;
        let Some(mut client) = client else {
            if let Err(e) = start {
                self.metrics.handshake_failed(e.cause);
                tracing::warn!(cause = e.cause, error = %e.message, outcome = "failed", "session ended");
            }
            return;
        };
        let result = match start {
            Ok(start) => self.session(&mut client, start, started).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(Outcome::Relayed {
                transferred: t,
                end,
                database,
            }) => tracing::info!(
                upstream = %self.upstream,
                user = %self.user,
                database = %database,
                duration_ms = started.elapsed().as_millis() as u64,
                bytes_to_upstream = t.to_upstream,
                bytes_to_client = t.to_client,
                outcome = match end {
                    RelayEnd::Closed => "closed",
                    RelayEnd::Idle => "idle timeout",
                },
                "session ended"
            ),
            Ok(Outcome::Cancelled) => {
                tracing::info!(upstream = %self.upstream, outcome = "cancel forwarded", "cancel request")
            }
            Err(e) => {
                if e.cause == "client_eof" {
                    // A TCP probe (load balancer, tcpSocket health check) or a client that gave up.
                    tracing::debug!(
                        cause = e.cause,
                        "connection closed before a startup message"
                    );
                    return;
                }
                self.metrics.handshake_failed(e.cause);
                send_error(&mut client, &e).await;
                tracing::warn!(
                    upstream = %self.upstream,
                    user = %self.user,
                    duration_ms = started.elapsed().as_millis() as u64,
                    cause = e.cause,
                    error = %e.message,
                    outcome = "failed",
                    "session ended"
                );
            }
        }
    }

    async fn reject_busy(self: Arc<Self>, client: ClientStream) {
        // Like PostgreSQL, read the startup first so that libpq shows the message.
        let (client, start) = self.open(client).await;
        let Some(mut client) = client else { return };
        let e = match start {
            Ok(ClientStart::Cancel(bytes)) => {
                // Cancels never count against the cap: they free a busy session.
                let _ = self.forward_cancel(&bytes).await;
                return;
            }
            Ok(ClientStart::Startup(_)) => SessionError::new(
                "too_many_connections",
                sqlstate::TOO_MANY_CONNECTIONS,
                format!(
                    "sorry, too many clients already: listener \"{}\" is at its connection cap",
                    self.name
                ),
                Some("Retry later, or raise --max-connections."),
            ),
            Ok(ClientStart::TlsRequested) => return,
            Err(e) => e,
        };
        send_error(&mut client, &e).await;
    }
}

/// Sends the client a FATAL ErrorResponse for `e` (if it carries a SQLSTATE) and closes.
async fn send_error(client: &mut ClientStream, e: &SessionError) {
    if let Some(code) = e.code {
        let mut buf = BytesMut::new();
        messages::error_response(
            &ErrorFields {
                severity: messages::FATAL,
                code,
                message: e.message.clone(),
                detail: None,
                hint: e.hint.map(str::to_owned),
            },
            &mut buf,
        );
        let _ = write_all_timeout(client, &buf).await;
    }
    let _ = client.shutdown().await;
}

impl PostgresService {
    /// Step 1, client startup: reads the client's opening packets, upgrading the connection to
    /// TLS when the client asks and the listener offers it. Returns the stream (None if it was
    /// lost in a failed TLS handshake) and what the client asked for.
    async fn open(
        &self,
        mut client: ClientStream,
    ) -> (Option<ClientStream>, Result<ClientStart, SessionError>) {
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let timed_out = || {
            SessionError::silent(
                "client_timeout",
                "client sent no startup message in time".into(),
            )
        };
        loop {
            let offer = self.local_tls.is_some() && !client.is_tls();
            let start = match timeout_at(deadline, read_client_startup(&mut client, offer)).await {
                Ok(r) => r,
                Err(_) => return (Some(client), Err(timed_out())),
            };
            match (start, &self.local_tls) {
                (Ok(ClientStart::TlsRequested), Some(tls)) => {
                    if client.write_all(&[messages::SSL_SUPPORTED]).await.is_err() {
                        return (
                            None,
                            Err(SessionError::silent(
                                "client_eof",
                                "client went away".into(),
                            )),
                        );
                    }
                    match timeout_at(deadline, client.accept_tls(&tls.acceptor)).await {
                        Ok(Ok(upgraded)) => client = upgraded,
                        Ok(Err(e)) => {
                            return (
                                None,
                                Err(SessionError::silent(
                                    "client_tls",
                                    format!("TLS handshake with the client failed: {e}"),
                                )),
                            );
                        }
                        Err(_) => return (None, Err(timed_out())),
                    }
                }
                (Ok(ClientStart::Startup(_)), Some(tls))
                    if tls.mode == LocalTlsMode::Require && !client.is_tls() =>
                {
                    let e = SessionError::new(
                        "client_tls",
                        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                        format!(
                            "listener \"{}\" requires TLS between the client and the proxy",
                            self.name
                        ),
                        Some("Connect with sslmode=require (or verify-full with the proxy's CA)."),
                    );
                    return (Some(client), Err(e));
                }
                (start, _) => return (Some(client), start),
            }
        }
    }

    async fn session(
        &self,
        client: &mut ClientStream,
        start: ClientStart,
        started: Instant,
    ) -> Result<Outcome, SessionError> {
        let startup = match start {
            ClientStart::Startup(msg) => msg,
            ClientStart::Cancel(bytes) => {
                self.forward_cancel(&bytes).await?;
                return Ok(Outcome::Cancelled);
            }
            ClientStart::TlsRequested => {
                return Err(SessionError::silent(
                    "client_protocol",
                    "TLS requested twice".into(),
                ));
            }
        };
        let client_user = startup.get("user").unwrap_or("").to_owned();
        let upstream_startup = self.upstream_startup(startup);
        let database = upstream_startup.get("database").unwrap_or("").to_owned();
        tracing::debug!(client_user = %client_user, user = %self.user, database = %database, "client startup");

        // 2.–4. Credential, upstream TLS, login. A token the server refuses (28P01/28000) is
        // reported to the credential, which drops it and hands over a fresh one; the login is
        // retried once with it, before the client has seen anything. This covers a token revoked
        // or rotated while still cached.
        let mut password = self.credential.password().await.map_err(|e| {
            SessionError::new(
                "credential",
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!(
                    "entra-db-proxy could not obtain an Entra ID token for listener \"{}\": {e}",
                    self.name
                ),
                Some(HINT_CREDENTIAL),
            )
        })?;
        let mut upstream = None;
        for attempt in 0..2 {
            let login = UpstreamLogin::new(
                upstream_startup.clone(),
                password.expose().as_bytes().to_vec(),
            );
            match self.connect_and_login(login).await? {
                LoginResult::Authenticated { tls, to_client } => {
                    client.write_all(&to_client).await.map_err(|e| {
                        SessionError::silent("client_io", format!("client went away: {e}"))
                    })?;
                    upstream = Some(tls);
                    break;
                }
                LoginResult::Rejected {
                    to_client,
                    code,
                    message,
                } => {
                    let token_refused = code == sqlstate::INVALID_PASSWORD
                        || code == sqlstate::INVALID_AUTHORIZATION_SPECIFICATION;
                    if token_refused
                        && attempt == 0
                        && let Some(next) = self.next_password(&password).await
                    {
                        tracing::warn!(code = %code, message = %message, "the server refused the cached token; retrying once with a fresh one");
                        password = next;
                        continue;
                    }
                    // The server's own error, verbatim.
                    let _ = write_all_timeout(client, &to_client).await;
                    return Err(SessionError::silent(
                        if token_refused {
                            "rejected"
                        } else {
                            "upstream_error"
                        },
                        format!("the database server refused the login: {code} {message}"),
                    ));
                }
            }
        }
        let Some(mut upstream) = upstream else {
            return Err(SessionError::silent(
                "rejected",
                "login retry exhausted".into(),
            ));
        };
        tracing::info!(user = %self.user, database = %database, "logged in upstream; relaying");

        self.metrics
            .handshake
            .observe(started.elapsed().as_secs_f64());

        // 5. Relay.
        let options = RelayOptions {
            to_upstream: self.metrics.bytes_to_upstream.clone(),
            to_client: self.metrics.bytes_to_client.clone(),
            idle_timeout: self.idle_timeout,
        };
        let (transferred, end) = relay(client, &mut upstream, options)
            .await
            .map_err(|e| SessionError::silent("relay", format!("relay ended: {e}")))?;
        Ok(Outcome::Relayed {
            transferred,
            end,
            database,
        })
    }

    /// Reports a refused password; the next one to try, if the credential has one.
    async fn next_password(&self, refused: &Secret) -> Option<Secret> {
        match self.credential.after_rejection(refused).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(error = %e, "no fresh credential after the server refused one");
                None
            }
        }
    }

    /// `entra-db-proxy check`: acquires the credential and performs a full upstream login as
    /// a client would trigger it, then terminates the session. Returns what was verified.
    pub async fn check(&self) -> Result<String, String> {
        let password = self
            .credential
            .password()
            .await
            .map_err(|e| format!("credential: {e}"))?;
        let mut startup = StartupMessage::new(dbproxy_postgres::ProtocolVersion::V3_0);
        startup.set("application_name", "entra-db-proxy check");
        let startup = self.upstream_startup(startup);
        let database = startup.get("database").unwrap_or(&self.user).to_owned();
        let login = UpstreamLogin::new(startup, password.expose().as_bytes().to_vec());
        match self.connect_and_login(login).await {
            Ok(LoginResult::Authenticated { mut tls, .. }) => {
                // Terminate ('X'), then close.
                let _ = tls.write_all(&[b'X', 0, 0, 0, 4]).await;
                let _ = tls.shutdown().await;
                Ok(format!("logged in as {} to database {database}", self.user))
            }
            Ok(LoginResult::Rejected { code, message, .. }) => {
                Err(format!("the server refused the login: {code} {message}"))
            }
            Err(e) => Err(e.message),
        }
    }

    /// The StartupMessage sent upstream: the client's, with `user` replaced by the Entra user and
    /// `database` defaulted.
    ///
    /// libpq, pgjdbc and node-postgres send the user name as the database when the application
    /// names none; since the proxy replaces the user, such a database name is treated as "none"
    /// when a default database is configured.
    fn upstream_startup(&self, mut startup: StartupMessage) -> StartupMessage {
        let client_user = startup.get("user").map(str::to_owned);
        startup.set("user", self.user.as_str());
        let database = startup.get("database").filter(|d| !d.is_empty());
        let named = match (database, &client_user) {
            (None, _) => false,
            (Some(db), Some(user)) if db == user && self.default_database.is_some() => false,
            (Some(_), _) => true,
        };
        if !named {
            match &self.default_database {
                Some(db) => {
                    startup.set("database", db.as_str());
                }
                None => {
                    startup.remove("database");
                }
            }
        }
        startup
    }

    /// TCP, SSLRequest, TLS.
    async fn connect_upstream(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SessionError> {
        let started = Instant::now();
        let tls = self.connect_upstream_inner().await?;
        self.metrics
            .connect
            .observe(started.elapsed().as_secs_f64());
        Ok(tls)
    }

    async fn connect_upstream_inner(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SessionError> {
        let mut tcp = self.upstream.connect_tcp().await.map_err(|e| {
            SessionError::new(
                "upstream_connect",
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                format!("entra-db-proxy {e}"),
                Some(HINT_UPSTREAM),
            )
        })?;
        let mut req = BytesMut::new();
        messages::ssl_request(&mut req);
        let mut answer = [0u8; 1];
        let exchange = async {
            tcp.write_all(&req).await?;
            tcp.read_exact(&mut answer).await
        };
        exchange.await.map_err(|e| {
            SessionError::new(
                "upstream_connect",
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                format!(
                    "the database server {} closed the connection during TLS negotiation: {e}",
                    self.upstream
                ),
                Some(HINT_UPSTREAM),
            )
        })?;
        if answer[0] != messages::SSL_SUPPORTED {
            return Err(SessionError::new(
                "upstream_tls",
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                format!(
                    "the database server {} does not accept TLS (answered {:?} to SSLRequest); entra-db-proxy never sends a token in clear",
                    self.upstream, answer[0] as char
                ),
                Some(HINT_UPSTREAM),
            ));
        }
        self.upstream.tls(tcp).await.map_err(|e| {
            SessionError::new(
                "upstream_tls",
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                format!("entra-db-proxy: {e}"),
                Some(HINT_TLS),
            )
        })
    }

    /// Connects upstream and runs the login, all under the handshake timeout.
    async fn connect_and_login(
        &self,
        mut login: UpstreamLogin,
    ) -> Result<LoginResult, SessionError> {
        let attempt = async {
            let mut tls = self.connect_upstream().await?;
            let outcome = self.login(&mut login, &mut tls).await?;
            Ok(match outcome {
                LoginOutcome::Authenticated(to_client) => LoginResult::Authenticated {
                    tls: Box::new(tls),
                    to_client,
                },
                LoginOutcome::Rejected {
                    to_client,
                    code,
                    message,
                } => LoginResult::Rejected {
                    to_client,
                    code,
                    message,
                },
            })
        };
        tokio::time::timeout(self.handshake_timeout, attempt)
            .await
            .map_err(|_| {
                SessionError::new(
                    "upstream_timeout",
                    sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                    format!(
                        "the database server {} did not complete the login within {} s",
                        self.upstream,
                        self.handshake_timeout.as_secs()
                    ),
                    Some(HINT_UPSTREAM),
                )
            })?
    }

    /// Drives the login state machine until the server accepts or rejects it.
    async fn login<U>(
        &self,
        login: &mut UpstreamLogin,
        upstream: &mut U,
    ) -> Result<LoginOutcome, SessionError>
    where
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let io_err = |e: std::io::Error| {
            SessionError::new(
                "upstream_io",
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                format!(
                    "the database server {} failed during login: {e}",
                    self.upstream
                ),
                Some(HINT_UPSTREAM),
            )
        };
        let first = login.start();
        upstream.write_all(&first).await.map_err(io_err)?;
        let mut buf = BytesMut::with_capacity(8192);
        loop {
            let step = login.receive(&mut buf).map_err(|e| {
                SessionError::new(
                    "upstream_protocol",
                    sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                    format!("login to the database server {} failed: {e}", self.upstream),
                    Some(HINT_UPSTREAM),
                )
            })?;
            match step {
                LoginStep::NeedMore => {
                    let n = upstream.read_buf(&mut buf).await.map_err(io_err)?;
                    if n == 0 {
                        return Err(io_err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "connection closed",
                        )));
                    }
                }
                LoginStep::Send(bytes) => upstream.write_all(&bytes).await.map_err(io_err)?,
                LoginStep::Authenticated { to_client } => {
                    return Ok(LoginOutcome::Authenticated(to_client));
                }
                LoginStep::Rejected {
                    to_client,
                    code,
                    message,
                } => {
                    return Ok(LoginOutcome::Rejected {
                        to_client,
                        code,
                        message,
                    });
                }
            }
        }
    }

    /// Forwards a CancelRequest to the upstream over a fresh TLS connection.
    async fn forward_cancel(&self, packet: &[u8]) -> Result<(), SessionError> {
        let mut tls = self.connect_upstream().await?;
        let _ = tls.write_all(packet).await;
        let _ = tls.flush().await;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut sink)).await;
        Ok(())
    }
}

/// The end of a login attempt.
enum LoginOutcome {
    Authenticated(BytesMut),
    Rejected {
        to_client: BytesMut,
        code: String,
        message: String,
    },
}

/// A login attempt with its connection.
enum LoginResult {
    Authenticated {
        tls: Box<tokio_rustls::client::TlsStream<TcpStream>>,
        to_client: BytesMut,
    },
    Rejected {
        to_client: BytesMut,
        code: String,
        message: String,
    },
}

/// What the client asked for at connection start.
enum ClientStart {
    Startup(StartupMessage),
    /// A CancelRequest, re-encoded for forwarding.
    Cancel(BytesMut),
    /// An SSLRequest the listener can accept (the caller answers 'S' and runs TLS).
    TlsRequested,
}

/// Reads the client's opening packets, declining GSS encryption, and TLS unless `offer_tls`.
async fn read_client_startup<C>(
    client: &mut C,
    offer_tls: bool,
) -> Result<ClientStart, SessionError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    // SSLRequest and GSSENCRequest may each come once before the StartupMessage.
    let mut negotiations = 0;
    loop {
        let packet = match parse_startup_packet(&mut buf) {
            Ok(Some(p)) => p,
            Ok(None) => {
                let n = client.read_buf(&mut buf).await.map_err(|e| {
                    SessionError::silent("client_io", format!("reading startup: {e}"))
                })?;
                if n == 0 {
                    return Err(SessionError::silent(
                        "client_eof",
                        "client closed before its startup message".into(),
                    ));
                }
                continue;
            }
            Err(e) => {
                return Err(SessionError::new(
                    "client_protocol",
                    e.code(),
                    e.to_string(),
                    None,
                ));
            }
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                negotiations += 1;
                if negotiations > 2 || !buf.is_empty() {
                    return Err(SessionError::new(
                        "client_protocol",
                        sqlstate::PROTOCOL_VIOLATION,
                        "unexpected encryption negotiation".into(),
                        None,
                    ));
                }
                if offer_tls && packet == StartupPacket::SslRequest {
                    return Ok(ClientStart::TlsRequested);
                }
                client
                    .write_all(&[messages::SSL_NOT_SUPPORTED])
                    .await
                    .map_err(|e| SessionError::silent("client_io", e.to_string()))?;
            }
            StartupPacket::CancelRequest {
                process_id,
                secret_key,
            } => {
                let mut out = BytesMut::new();
                messages::cancel_request(process_id, &secret_key, &mut out);
                return Ok(ClientStart::Cancel(out));
            }
            StartupPacket::Startup(msg) => return Ok(ClientStart::Startup(msg)),
        }
    }
}

async fn write_all_timeout(client: &mut ClientStream, bytes: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(Duration::from_secs(5), client.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
