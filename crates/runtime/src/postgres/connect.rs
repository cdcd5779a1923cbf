//! Step 3 of a PostgreSQL session: reaching the server over TLS.
//!
//! PostgreSQL negotiates TLS in clear first: the proxy sends an SSLRequest, the server answers
//! one byte, `'S'` (go ahead) or `'N'`, and only then does the TLS handshake start. A server
//! that answers `'N'` is refused: the token never travels in clear. Azure Database for
//! PostgreSQL always answers `'S'`.

use bytes::BytesMut;
use dbproxy_postgres::messages;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use crate::upstream::{ConnectError, Connector, Upstream};

/// An [`Upstream`] reached the PostgreSQL way: SSLRequest, then TLS.
#[derive(Clone, Debug)]
pub struct PostgresUpstream(pub Upstream);

impl std::fmt::Display for PostgresUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Connector for PostgresUpstream {
    type Stream = TlsStream<TcpStream>;

    async fn connect(&self) -> Result<Self::Stream, ConnectError> {
        let mut tcp = self.0.connect_tcp().await?;
        let mut req = BytesMut::new();
        messages::ssl_request(&mut req);
        let mut answer = [0u8; 1];
        let exchange = async {
            tcp.write_all(&req).await?;
            tcp.read_exact(&mut answer).await
        };
        let reason = match tokio::time::timeout(self.0.connect_timeout, exchange).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!(
                "the server closed the connection during TLS negotiation: {e}"
            )),
            Err(_) => Some(format!(
                "the server did not answer the SSLRequest within {} ms",
                self.0.connect_timeout.as_millis()
            )),
        };
        if let Some(reason) = reason {
            return Err(ConnectError::Tcp {
                target: self.0.to_string(),
                reason,
            });
        }
        if answer[0] != messages::SSL_SUPPORTED {
            return Err(ConnectError::NoTls {
                target: self.0.to_string(),
                reason: format!("answered {:?} to SSLRequest", answer[0] as char),
            });
        }
        self.0.tls(tcp).await
    }

    /// A byte or EOF waiting in the socket (looked at without reading it, so that a close the
    /// runtime has not polled yet counts too), or plaintext rustls already holds.
    fn idle_closed(stream: &mut Self::Stream) -> bool {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        match socket2::SockRef::from(stream.get_ref().0).peek(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                crate::upstream::poll_idle(stream)
            }
            _ => true,
        }
    }
}
