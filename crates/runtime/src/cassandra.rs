//! A CQL session through the proxy, top to bottom.
//!
//! 1. **Client handshake** ([`dbproxy_cassandra::ClientHandshake`]): OPTIONS is answered with
//!    SUPPORTED (what this listener offers); a protocol version above the listener's maximum
//!    gets ERROR 0x000A so drivers downgrade; STARTUP starts the login. The driver never sees
//!    an AUTHENTICATE: the proxy logs in for it.
//! 2. **Credential**: the listener's password source (the Cosmos DB account key from ARM
//!    listKeys, an Entra token, or a file).
//! 3. **Upstream**: TCP, then TLS at once (CQL has no in-band upgrade), server name verified.
//! 4. **Login** ([`dbproxy_cassandra::UpstreamLogin`]): the client's STARTUP replayed, then
//!    SASL PLAIN (`\0user\0key`). Refused credentials (ERROR 0x0100) are reported to the
//!    password source, which re-fetches the keys (rotation) or falls back to the other key; the
//!    login is retried before the client sees anything. The client then gets READY on its
//!    STARTUP's stream.
//! 5. **Relay**: frames both ways, parsed at the header only, except where the topology must
//!    be hidden ([`dbproxy_cassandra::TopologyRewriter`]): `system.local` shows the proxy,
//!    `system.peers`/`peers_v2` are empty, topology and status events are dropped — so drivers
//!    never connect past the proxy.
//!
//! Failures of the proxy's own reach the client as a CQL ERROR (0x0100 bad credentials when
//! no key or token could be had, 0x0000 server error when the upstream is unreachable,
//! 0x000A protocol error for garbage) and the connection is closed; upstream errors during
//! the login are forwarded verbatim.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::BytesMut;
use dbproxy_cassandra::{
    BodyCompression, ClientAction, ClientHandshake, CqlError, Frame, FrameDecoder, FrameEncoder,
    HandshakeAction, LoginStep, PreparedStatements, SupportedOptions, Topology, TopologyRewriter,
    UpstreamAction, UpstreamLogin, codes, error_frame,
    frame::{HANDSHAKE_MAX_FRAME_LEN, MAX_FRAME_LEN},
    ready_frame,
    schema::{is_schema_change, query_frame, schema_versions},
};
use dbproxy_credentials::{PasswordSource, Secret};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    listener::Service,
    local_tls::{LocalTls, LocalTlsMode},
    metrics::ListenerMetrics,
    stream::ClientStream,
    upstream::Upstream,
};

/// Everything a CQL listener needs to serve its clients.
pub struct CassandraService {
    /// The listener's name, for logs.
    pub name: String,
    /// The Cosmos DB (or Cassandra) contact point.
    pub upstream: Upstream,
    /// The login name (the Cosmos DB account name).
    pub username: String,
    /// Where the password comes from.
    pub credential: Arc<dyn PasswordSource>,
    /// Bound on the client's handshake and on the upstream login, each.
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
}

/// Why a session ended early; what the client is told, if anything.
#[derive(Debug)]
struct Failure {
    cause: &'static str,
    message: String,
    /// (version, stream, code) of the ERROR to send, or None.
    reply: Option<(u8, i16, i32)>,
    /// A frame to forward verbatim instead (the upstream's own error).
    forward: Option<Frame>,
}

impl Failure {
    fn silent(cause: &'static str, message: impl Into<String>) -> Self {
        Failure {
            cause,
            message: message.into(),
            reply: None,
            forward: None,
        }
    }

    fn reply(cause: &'static str, version: u8, stream: i16, code: i32, message: String) -> Self {
        Failure {
            cause,
            message,
            reply: Some((version, stream, code)),
            forward: None,
        }
    }
}

/// What the client asked for at STARTUP.
struct Startup {
    version: u8,
    stream: i16,
    options: Vec<(String, String)>,
    raw_body: bytes::Bytes,
}

const HINT_CREDENTIAL: &str = "check the proxy's credential (the identity needs Microsoft.DocumentDB/databaseAccounts/listKeys/action on the account) and the proxy's log";
const HINT_UPSTREAM: &str =
    "check the listener's upstream host and port, DNS, firewall, and the trusted CAs";

impl Service for CassandraService {
    async fn serve(self: Arc<Self>, client: ClientStream, _peer: String) {
        let started = Instant::now();
        let Some(mut client) = self.maybe_tls(client).await else {
            self.metrics.handshake_failed("client_tls");
            return;
        };
        match self.session(&mut client, started).await {
            Ok((to_upstream, to_client, end)) => tracing::info!(
                upstream = %self.upstream,
                user = %self.username,
                duration_ms = started.elapsed().as_millis() as u64,
                bytes_to_upstream = to_upstream,
                bytes_to_client = to_client,
                outcome = end,
                "session ended"
            ),
            Err(f) if f.cause == "client_eof" => {
                tracing::debug!("connection closed before STARTUP");
            }
            Err(f) if f.cause == "version_negotiation" => {
                send_failure(&mut client, &f).await;
                tracing::debug!(detail = %f.message, "protocol version refused; the driver will retry with a lower one");
            }
            Err(f) => {
                self.metrics.handshake_failed(f.cause);
                send_failure(&mut client, &f).await;
                tracing::warn!(
                    upstream = %self.upstream,
                    user = %self.username,
                    duration_ms = started.elapsed().as_millis() as u64,
                    cause = f.cause,
                    error = %f.message,
                    outcome = "failed",
                    "session ended"
                );
            }
        }
    }

    async fn reject_busy(self: Arc<Self>, client: ClientStream) {
        let Some(mut client) = self.maybe_tls(client).await else {
            return;
        };
        // Answer the first request, whatever it is, with Overloaded on its stream.
        let mut buf = BytesMut::new();
        let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
        let first = tokio::time::timeout(
            self.handshake_timeout,
            read_frame(&mut client, &mut decoder, &mut buf),
        )
        .await;
        if let Ok(Ok(Some(frame))) = first {
            let version = frame.header.version.min(self.max_version.max(3));
            let f = Failure::reply(
                "too_many_connections",
                version,
                frame.header.stream,
                codes::OVERLOADED,
                format!(
                    "entra-db-proxy: too many connections: listener \"{}\" is at its connection cap; retry later or raise --max-connections",
                    self.name
                ),
            );
            send_failure(&mut client, &f).await;
        }
    }
}

/// Sends the failure's ERROR (or the upstream's) in legacy framing, then closes.
async fn send_failure(client: &mut ClientStream, f: &Failure) {
    let mut out = BytesMut::new();
    if let Some(frame) = &f.forward {
        frame.encode(&mut out);
    } else if let Some((version, stream, code)) = f.reply {
        error_frame(version, stream, code, &f.message).encode(&mut out);
    }
    if !out.is_empty() {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.write_all(&out)).await;
    }
    let _ = client.shutdown().await;
}

/// Reads until one frame is decoded; `Ok(None)` on a clean EOF.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    decoder: &mut FrameDecoder,
    buf: &mut BytesMut,
) -> Result<Option<Frame>, ReadError> {
    loop {
        if let Some(frame) = decoder.decode(buf).map_err(ReadError::Cql)? {
            return Ok(Some(frame));
        }
        let n = r.read_buf(buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return if buf.is_empty() && !decoder.has_buffered() {
                Ok(None)
            } else {
                Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()))
            };
        }
    }
}

enum ReadError {
    Io(std::io::Error),
    Cql(CqlError),
}

/// The version and stream of a (possibly garbled) request, for addressing an ERROR to it.
fn addressee(buf: &[u8]) -> (u8, i16) {
    let version = buf
        .first()
        .map(|b| b & 0x7f)
        .filter(|v| (3..=5).contains(v))
        .unwrap_or(4);
    let stream = match buf.get(2..4) {
        Some(s) if version >= 3 => i16::from_be_bytes([s[0], s[1]]),
        _ => 0,
    };
    (version, stream)
}

impl CassandraService {
    /// TLS on connect: required, or offered (a TLS ClientHello starts with 0x16; a CQL frame
    /// with its version byte). None when the client must be dropped.
    async fn maybe_tls(&self, client: ClientStream) -> Option<ClientStream> {
        let Some(tls) = &self.local_tls else {
            return Some(client);
        };
        let wants_tls = match tls.mode {
            LocalTlsMode::Require => true,
            LocalTlsMode::Offer => {
                tokio::time::timeout(self.handshake_timeout, client.peek_first_byte())
                    .await
                    .ok()
                    .flatten()
                    == Some(0x16)
            }
        };
        if !wants_tls {
            return Some(client);
        }
        match tokio::time::timeout(self.handshake_timeout, client.accept_tls(&tls.acceptor)).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "TLS handshake with the client failed");
                None
            }
            Err(_) => None,
        }
    }

    async fn session(
        &self,
        client: &mut ClientStream,
        started: Instant,
    ) -> Result<(u64, u64, &'static str), Failure> {
        // 1. Client handshake.
        let mut cbuf = BytesMut::with_capacity(4096);
        let startup = tokio::time::timeout(
            self.handshake_timeout,
            self.client_handshake(client, &mut cbuf),
        )
        .await
        .map_err(|_| Failure::silent("client_timeout", "client sent no STARTUP in time"))??;

        // 2. Credential.
        let (v, s) = (startup.version, startup.stream);
        let mut password = self.credential.password().await.map_err(|e| {
            Failure::reply(
                "credential",
                v,
                s,
                codes::BAD_CREDENTIALS,
                format!(
                    "entra-db-proxy could not obtain the password for listener \"{}\": {e} ({HINT_CREDENTIAL})",
                    self.name
                ),
            )
        })?;

        // 3.–4. Upstream TLS and login; refused credentials are replaced and retried.
        let mut attempt = 0;
        let (mut tls, login, ubuf) = loop {
            attempt += 1;
            let (tls, login, ubuf, rejected) = tokio::time::timeout(
                self.handshake_timeout,
                self.connect_and_login(&startup, &password),
            )
            .await
            .map_err(|_| {
                Failure::reply(
                    "upstream_timeout",
                    v,
                    s,
                    codes::SERVER_ERROR,
                    format!(
                        "entra-db-proxy: the upstream {} did not complete the login within {} s ({HINT_UPSTREAM})",
                        self.upstream,
                        self.handshake_timeout.as_secs()
                    ),
                )
            })??;
            let Some((error, code, message, bad_credentials)) = rejected else {
                break (tls, login, ubuf);
            };
            if bad_credentials && attempt < 3 {
                match self.credential.after_rejection(&password).await {
                    Ok(Some(next)) => {
                        tracing::warn!(code, message = %message, attempt, "the upstream refused the credential; retrying with the next one (key rotation)");
                        password = next;
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "no replacement credential"),
                }
            }
            return Err(Failure {
                cause: if bad_credentials {
                    "rejected"
                } else {
                    "upstream_error"
                },
                message: format!("the upstream refused the login: {code:#06x} {message}"),
                reply: None,
                forward: Some(error.with_stream(s)),
            });
        };
        let mut out = BytesMut::new();
        ready_frame(v, s).encode(&mut out);
        client
            .write_all(&out)
            .await
            .map_err(|e| Failure::silent("client_io", format!("client went away: {e}")))?;
        self.metrics
            .handshake
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(user = %self.username, version = v, "logged in upstream; relaying");

        // 5. Relay.
        let compression = if v >= 5 {
            BodyCompression::None
        } else {
            BodyCompression::from_startup_options(&startup.options)
        };
        let client_framing = login.framing();
        let (udec, uenc) = login.into_codec();
        let mut cdec = FrameDecoder::new(MAX_FRAME_LEN);
        let mut cenc = FrameEncoder::new();
        cdec.set_framing(client_framing);
        cenc.set_framing(client_framing);
        let relay = Relay {
            service: self,
            rewriter: Mutex::new(TopologyRewriter::with_prepared(
                self.topology.clone(),
                self.prepared.clone(),
            )),
            compression,
            metrics: &self.metrics,
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            to_upstream: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        };
        let end = relay
            .run(
                client,
                &mut tls,
                cbuf,
                cdec,
                cenc,
                ubuf,
                udec,
                uenc,
                self.idle_timeout,
            )
            .await;
        Ok((
            relay.to_upstream.load(Ordering::Relaxed),
            relay.to_client.load(Ordering::Relaxed),
            end,
        ))
    }

    /// Answers OPTIONS, refuses what must be refused, returns the STARTUP.
    async fn client_handshake(
        &self,
        client: &mut ClientStream,
        buf: &mut BytesMut,
    ) -> Result<Startup, Failure> {
        let mut decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_LEN);
        let mut handshake = ClientHandshake::new(self.max_version, self.supported.clone());
        loop {
            let frame = match read_frame(client, &mut decoder, buf).await {
                Ok(Some(f)) => f,
                Ok(None) => return Err(Failure::silent("client_eof", "closed before STARTUP")),
                Err(ReadError::Io(e)) => {
                    return Err(Failure::silent(
                        "client_io",
                        format!("reading the handshake: {e}"),
                    ));
                }
                Err(ReadError::Cql(e)) => {
                    let (version, stream) = addressee(buf);
                    return Err(Failure::reply(
                        "client_protocol",
                        version,
                        stream,
                        e.code(),
                        e.to_string(),
                    ));
                }
            };
            let (version, stream) = (frame.header.version, frame.header.stream);
            match handshake.on_frame(&frame) {
                Ok(HandshakeAction::Reply(reply)) => {
                    let mut out = BytesMut::new();
                    reply.encode(&mut out);
                    client.write_all(&out).await.map_err(|e| {
                        Failure::silent("client_io", format!("client went away: {e}"))
                    })?;
                }
                Ok(HandshakeAction::ReplyAndClose(reply)) => {
                    // Above the listener's maximum: drivers offer their highest version (the
                    // Python and Node drivers start with DSE's v65/v66) and step down on this
                    // error. Normal negotiation, not a failure.
                    let negotiation = version > self.max_version;
                    return Err(Failure {
                        cause: if negotiation {
                            "version_negotiation"
                        } else {
                            "client_protocol"
                        },
                        message: format!(
                            "refused the client's opening (opcode {:#04x}, protocol v{version})",
                            frame.header.opcode
                        ),
                        reply: None,
                        forward: Some(reply),
                    });
                }
                Ok(HandshakeAction::Startup {
                    version,
                    stream,
                    options,
                    raw_body,
                }) => {
                    return Ok(Startup {
                        version,
                        stream,
                        options,
                        raw_body,
                    });
                }
                Err(e) => {
                    return Err(Failure::reply(
                        "client_protocol",
                        version.min(self.max_version),
                        stream,
                        e.code(),
                        e.to_string(),
                    ));
                }
            }
        }
    }

    /// Connects (TCP + TLS) and logs in. `Ok((.., Some(rejection)))` when the upstream refused.
    #[allow(clippy::type_complexity)]
    async fn connect_and_login(
        &self,
        startup: &Startup,
        password: &Secret,
    ) -> Result<
        (
            tokio_rustls::client::TlsStream<TcpStream>,
            UpstreamLogin,
            BytesMut,
            Option<(Frame, i32, String, bool)>,
        ),
        Failure,
    > {
        let (v, s) = (startup.version, startup.stream);
        let upstream_err = |cause: &'static str, message: String| {
            Failure::reply(
                cause,
                v,
                s,
                codes::SERVER_ERROR,
                format!("entra-db-proxy: {message} ({HINT_UPSTREAM})"),
            )
        };
        let connect_started = Instant::now();
        let tcp = self
            .upstream
            .connect_tcp()
            .await
            .map_err(|e| upstream_err("upstream_connect", e.to_string()))?;
        let mut tls = self
            .upstream
            .tls(tcp)
            .await
            .map_err(|e| upstream_err("upstream_tls", e.to_string()))?;
        self.metrics
            .connect
            .observe(connect_started.elapsed().as_secs_f64());

        let mut login = UpstreamLogin::new(
            v,
            startup.raw_body.clone(),
            self.username.clone(),
            password.expose().as_bytes().to_vec(),
        );
        let io_err = |e: std::io::Error| {
            upstream_err(
                "upstream_io",
                format!("the upstream {} failed during login: {e}", self.upstream),
            )
        };
        let first = login.start();
        tls.write_all(&first).await.map_err(io_err)?;
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            let step = login.receive(&mut buf).map_err(|e| {
                upstream_err(
                    "upstream_protocol",
                    format!("login to {} failed: {e}", self.upstream),
                )
            })?;
            match step {
                LoginStep::NeedMore => {
                    let n = tls.read_buf(&mut buf).await.map_err(io_err)?;
                    if n == 0 {
                        return Err(io_err(std::io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                LoginStep::Send(bytes) => tls.write_all(&bytes).await.map_err(io_err)?,
                LoginStep::Ready => return Ok((tls, login, buf, None)),
                LoginStep::Rejected {
                    error,
                    code,
                    message,
                    bad_credentials,
                } => {
                    return Ok((
                        tls,
                        login,
                        buf,
                        Some((error, code, message, bad_credentials)),
                    ));
                }
            }
        }
    }

    /// Waits (at most [`SCHEMA_AGREEMENT_TIMEOUT`]) until every upstream node reports the same
    /// schema version, asking over a connection of its own. The driver would do this itself,
    /// comparing `system.local` with `system.peers`, but it is shown no peers.
    async fn wait_schema_agreement(&self) {
        let started = Instant::now();
        match tokio::time::timeout(SCHEMA_AGREEMENT_TIMEOUT, self.poll_schema_versions()).await {
            Ok(Ok(polls)) => tracing::debug!(
                polls,
                waited_ms = started.elapsed().as_millis() as u64,
                "upstream schema in agreement"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not check the upstream's schema agreement after DDL")
            }
            Err(_) => tracing::warn!(
                "the upstream's nodes did not agree on the schema within {} s after DDL",
                SCHEMA_AGREEMENT_TIMEOUT.as_secs()
            ),
        }
    }

    async fn poll_schema_versions(&self) -> Result<u32, String> {
        let password = self
            .credential
            .password()
            .await
            .map_err(|e| e.to_string())?;
        let version = self.max_version.min(4);
        let startup = check_startup(version);
        let (mut tls, login, mut buf, rejected) = self
            .connect_and_login(&startup, &password)
            .await
            .map_err(|f| f.message)?;
        if let Some((_, code, message, _)) = rejected {
            return Err(format!("login refused: {code:#06x} {message}"));
        }
        let (mut dec, mut enc) = login.into_codec();
        let mut polls = 0;
        loop {
            polls += 1;
            let mut versions = Vec::new();
            for (stream, cql) in [
                (1, "SELECT schema_version FROM system.local"),
                (2, "SELECT schema_version FROM system.peers"),
            ] {
                let mut out = BytesMut::new();
                enc.encode(&query_frame(version, stream, cql), &mut out);
                tls.write_all(&out).await.map_err(|e| e.to_string())?;
                let frame = loop {
                    if let Some(f) = dec.decode(&mut buf).map_err(|e| e.to_string())? {
                        break f;
                    }
                    if tls.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                        return Err("the upstream closed the connection".into());
                    }
                };
                versions.extend(schema_versions(&frame).map_err(|e| e.to_string())?);
            }
            if versions.windows(2).all(|w| w[0] == w[1]) {
                let _ = tls.shutdown().await;
                return Ok(polls);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `entra-db-proxy check`: acquires the password and logs in upstream once.
    pub async fn check(&self) -> Result<String, String> {
        let password = self
            .credential
            .password()
            .await
            .map_err(|e| format!("credential: {e}"))?;
        let startup = check_startup(self.max_version.min(4));
        match self.connect_and_login(&startup, &password).await {
            Ok((mut tls, _, _, None)) => {
                let _ = tls.shutdown().await;
                Ok(format!("logged in as {}", self.username))
            }
            Ok((_, _, _, Some((_, code, message, _)))) => Err(format!(
                "the upstream refused the login: {code:#06x} {message}"
            )),
            Err(f) => Err(f.message),
        }
    }
}

/// How long a DDL result may be held while the upstream's nodes converge (drivers' own limit).
const SCHEMA_AGREEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A STARTUP of the proxy's own (check, schema agreement).
fn check_startup(version: u8) -> Startup {
    let frame = dbproxy_cassandra::messages::startup_frame(version, 0, &[("CQL_VERSION", "3.0.0")]);
    Startup {
        version,
        stream: 0,
        options: vec![("CQL_VERSION".into(), "3.0.0".into())],
        raw_body: frame.body,
    }
}

/// The relay of one session after READY.
struct Relay<'a> {
    service: &'a CassandraService,
    rewriter: Mutex<TopologyRewriter>,
    compression: BodyCompression,
    metrics: &'a ListenerMetrics,
    started: Instant,
    last_activity_ms: AtomicU64,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
}

impl Relay<'_> {
    fn touch(&self) {
        self.last_activity_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Runs both directions until one ends; returns the outcome for the log.
    #[allow(clippy::too_many_arguments)]
    async fn run<U>(
        &self,
        client: &mut ClientStream,
        upstream: &mut U,
        cbuf: BytesMut,
        cdec: FrameDecoder,
        cenc: FrameEncoder,
        ubuf: BytesMut,
        udec: FrameDecoder,
        uenc: FrameEncoder,
        idle_timeout: Option<Duration>,
    ) -> &'static str
    where
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut cr, mut cw) = tokio::io::split(client);
        let (mut ur, mut uw) = tokio::io::split(upstream);
        // Frames the proxy itself answers go to the client writer: local replies, and the ERROR
        // for garbage from the client, after which the session closes.
        let (reply_tx, mut reply_rx) = tokio::sync::mpsc::channel::<(Frame, bool)>(4);

        let client_to_upstream = async {
            let (mut buf, mut dec, mut enc) = (cbuf, cdec, uenc);
            let mut out = BytesMut::new();
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let action = match self.rewriter.lock() {
                            Ok(mut r) => r.on_client_frame(&frame, self.compression),
                            Err(_) => return "internal error",
                        };
                        match action {
                            Ok(ClientAction::Forward) => enc.encode(&frame, &mut out),
                            Ok(ClientAction::Reply(reply)) => {
                                if reply_tx.send((reply, false)).await.is_err() {
                                    return "closed";
                                }
                            }
                            Err(e) => {
                                let error =
                                    e.to_error_frame(frame.header.version, frame.header.stream);
                                let _ = reply_tx.send((error, true)).await;
                                return "client protocol error";
                            }
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let (version, stream) = addressee(&buf);
                        tracing::warn!(error = %e, "garbage from the client; answering with an ERROR and closing");
                        let _ = reply_tx
                            .send((e.to_error_frame(version, stream), true))
                            .await;
                        return "client protocol error";
                    }
                }
                if !out.is_empty() {
                    if uw.write_all(&out).await.is_err() {
                        return "upstream closed";
                    }
                    out.clear();
                }
                match cr.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = uw.shutdown().await;
                        return "closed";
                    }
                    Ok(n) => {
                        self.to_upstream.fetch_add(n as u64, Ordering::Relaxed);
                        self.metrics.bytes_to_upstream.inc_by(n as u64);
                        self.touch();
                    }
                }
            }
        };

        let upstream_to_client = async {
            let (mut buf, mut dec, mut enc) = (ubuf, udec, cenc);
            let mut out = BytesMut::new();
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let action = match self.rewriter.lock() {
                            Ok(mut r) => r.on_upstream_frame(frame, self.compression),
                            Err(_) => return "internal error",
                        };
                        match action {
                            Ok(UpstreamAction::Forward(f)) => {
                                if is_schema_change(&f, self.compression) {
                                    // The driver cannot see the peers to wait for agreement.
                                    self.service.wait_schema_agreement().await;
                                }
                                enc.encode(&f, &mut out)
                            }
                            Ok(UpstreamAction::Drop) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "unreadable topology answer from the upstream; closing rather than exposing it");
                                return "upstream protocol error";
                            }
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable frame from the upstream; closing");
                        return "upstream protocol error";
                    }
                }
                if !out.is_empty() {
                    if cw.write_all(&out).await.is_err() {
                        return "client closed";
                    }
                    out.clear();
                }
                tokio::select! {
                    r = ur.read_buf(&mut buf) => match r {
                        Ok(0) | Err(_) => {
                            let _ = cw.shutdown().await;
                            return "upstream closed";
                        }
                        Ok(n) => {
                            self.to_client.fetch_add(n as u64, Ordering::Relaxed);
                            self.metrics.bytes_to_client.inc_by(n as u64);
                            self.touch();
                        }
                    },
                    reply = reply_rx.recv() => match reply {
                        Some((frame, close)) => {
                            enc.encode(&frame, &mut out);
                            if close {
                                let _ = cw.write_all(&out).await;
                                let _ = cw.shutdown().await;
                                return "client protocol error";
                            }
                        }
                        None => return "closed",
                    }
                }
            }
        };

        let idle = async {
            let Some(limit) = idle_timeout else {
                return std::future::pending().await;
            };
            loop {
                let last = self.last_activity_ms.load(Ordering::Relaxed);
                let deadline = self.started + Duration::from_millis(last) + limit;
                if Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep_until(deadline.into()).await;
            }
        };

        // The client→upstream side finishing first (client closed) still lets the upstream's
        // last answers through, up to a short bound.
        tokio::select! {
            end = upstream_to_client => end,
            end = async {
                let end = client_to_upstream.await;
                if end == "client protocol error" {
                    // Wait for the reply to be written by the other side.
                    std::future::pending::<()>().await;
                }
                end
            } => end,
            _ = idle => "idle timeout",
        }
    }
}
