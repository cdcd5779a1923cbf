//! The client side of a session: TCP, a Unix domain socket, or TLS over either.
//!
//! Listeners accept [`ClientStream`]s; the protocol handlers read and write them without
//! knowing which kind they are, and can upgrade one to TLS (PostgreSQL's SSLRequest, CQL's
//! TLS-on-connect) with [`ClientStream::accept_tls`].

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::DuplexStream,
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpStream, UnixStream},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// A client connection.
pub enum ClientStream {
    /// TCP.
    Tcp(TcpStream),
    /// A Unix domain socket.
    Unix(UnixStream),
    /// TLS over one of the others.
    Tls(Box<TlsStream<ClientStream>>),
    /// An in-memory stream: sessions driven without a socket (unit tests, embedding).
    Memory(DuplexStream),
}

impl ClientStream {
    /// Runs the server side of a TLS handshake over this stream.
    pub async fn accept_tls(self, acceptor: &TlsAcceptor) -> std::io::Result<ClientStream> {
        Ok(ClientStream::Tls(Box::new(acceptor.accept(self).await?)))
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The first byte the client sent, without consuming it (TCP only; None otherwise).
    pub async fn peek_first_byte(&self) -> Option<u8> {
        match self {
            ClientStream::Tcp(t) => {
                let mut b = [0u8; 1];
                match t.peek(&mut b).await {
                    Ok(1) => Some(b[0]),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Memory(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, data),
            ClientStream::Unix(s) => Pin::new(s).poll_write(cx, data),
            ClientStream::Memory(s) => Pin::new(s).poll_write(cx, data),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Memory(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Memory(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
