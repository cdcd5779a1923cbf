//! Connecting to the upstream database.
//!
//! TCP with a connect timeout (each resolved address tried in turn), `TCP_NODELAY`, and keepalive
//! (Azure's load balancers drop idle flows after about four minutes). TLS is done by the caller
//! because PostgreSQL first negotiates it in clear (SSLRequest → 'S'), while CQL starts TLS at once.
//! The TLS handshake always verifies the certificate chain against [`dbproxy_tls::Trust`] and the
//! server name against [`Upstream::server_name`].

use std::{future::Future, sync::Arc, time::Duration};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

/// How a session reaches its upstream: a connected stream, TLS already established.
///
/// [`Upstream`] connects over TCP and starts TLS at once (CQL); the PostgreSQL module wraps it
/// to negotiate TLS first (SSLRequest). Tests implement it over `tokio::io::duplex`, so a
/// whole session runs without a socket.
pub trait Connector: std::fmt::Display + Send + Sync + 'static {
    /// The connected stream.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens a connection, ready for the protocol's login.
    fn connect(&self) -> impl Future<Output = Result<Self::Stream, ConnectError>> + Send;

    /// Whether an idle, logged-in stream can no longer be handed to a client: the peer closed
    /// it, or sent something nobody asked for (a FATAL, a ParameterStatus). Never waits.
    fn idle_closed(stream: &mut Self::Stream) -> bool {
        poll_idle(stream)
    }
}

/// Polls `stream` for one byte without waiting: anything but "nothing yet" (a byte, EOF, an
/// error) means it is no longer idle.
pub fn poll_idle<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    use std::{pin::Pin, task::Context, task::Poll, task::Waker};
    let mut cx = Context::from_waker(Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    !matches!(Pin::new(stream).poll_read(&mut cx, &mut buf), Poll::Pending)
}

impl Connector for Upstream {
    type Stream = TlsStream<TcpStream>;

    async fn connect(&self) -> Result<Self::Stream, ConnectError> {
        let tcp = self.connect_tcp().await?;
        self.tls(tcp).await
    }
}

/// Where a listener's sessions go.
#[derive(Clone)]
pub struct Upstream {
    /// DNS name or IP address to connect to.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The name the server certificate must be valid for (usually `host`).
    pub server_name: ServerName<'static>,
    /// TLS client configuration (trust roots).
    pub tls: Arc<ClientConfig>,
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why the upstream could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// DNS, refused, unreachable, or timed out.
    #[error("cannot connect to {target}: {reason}")]
    Tcp {
        /// host:port
        target: String,
        /// What happened.
        reason: String,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol).
    #[error("TLS handshake with {target} failed: {reason}")]
    Tls {
        /// host:port
        target: String,
        /// rustls's reason, e.g. "invalid peer certificate: NotValidForName".
        reason: String,
    },
    /// The server would not start TLS (PostgreSQL answered an SSLRequest with 'N').
    #[error(
        "the database server {target} does not accept TLS ({reason}); entra-db-proxy never sends a credential in clear"
    )]
    NoTls {
        /// host:port
        target: String,
        /// What it answered.
        reason: String,
    },
}

impl Upstream {
    /// Opens a TCP connection (timeout, nodelay, keepalive).
    pub async fn connect_tcp(&self) -> Result<TcpStream, ConnectError> {
        let target = self.to_string();
        let err = |reason: String| ConnectError::Tcp {
            target: target.clone(),
            reason,
        };
        let addrs = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::lookup_host((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| err("DNS lookup timed out".into()))?
        .map_err(|e| err(format!("DNS lookup failed: {e}")))?;
        let mut last = String::from("no address found");
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    configure_socket(&stream);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => {
                    last = format!(
                        "{addr}: timed out after {} ms",
                        self.connect_timeout.as_millis()
                    )
                }
            }
        }
        Err(err(last))
    }

    /// Runs the TLS handshake over an open connection, verifying the server name.
    pub async fn tls(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, ConnectError> {
        let connector = TlsConnector::from(self.tls.clone());
        tokio::time::timeout(
            self.connect_timeout,
            connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| ConnectError::Tls {
            target: self.to_string(),
            reason: "timed out".into(),
        })?
        .map_err(|e| ConnectError::Tls {
            target: self.to_string(),
            reason: e.to_string(),
        })
    }
}

/// Sets TCP_NODELAY and keepalive (60 s idle, 15 s interval) on a socket.
pub fn configure_socket(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let sock = socket2_ref(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15));
    let _ = sock.set_tcp_keepalive(&keepalive);
}

fn socket2_ref(stream: &TcpStream) -> socket2::SockRef<'_> {
    socket2::SockRef::from(stream)
}
