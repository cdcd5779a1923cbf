//! The client side of a session: TCP, a Unix domain socket, or TLS over either.
//!
//! Listeners accept [`ClientStream`]s; the protocol handlers read and write them without
//! knowing which kind they are, and can upgrade one to TLS (PostgreSQL's SSLRequest and direct
//! TLS, CQL's TLS-on-connect) with [`ClientStream::accept_tls`]. Bytes a handler read to tell
//! which opening the client chose can be put back in front with [`ClientStream::replay`], so
//! that the TLS handshake reads them again.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BytesMut};
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
    /// Bytes already read from a stream, read again before the rest of it.
    Replay(Box<Replay>),
}

/// A stream with some of its bytes read already: those are read first, then the stream's own.
pub struct Replay {
    prefix: BytesMut,
    inner: ClientStream,
}

impl ClientStream {
    /// Runs the server side of a TLS handshake over this stream.
    pub async fn accept_tls(self, acceptor: &TlsAcceptor) -> std::io::Result<ClientStream> {
        Ok(ClientStream::Tls(Box::new(acceptor.accept(self).await?)))
    }

    /// `stream` with `prefix` (bytes already read from it) put back in front.
    pub fn replay(prefix: BytesMut, stream: ClientStream) -> ClientStream {
        if prefix.is_empty() {
            return stream;
        }
        ClientStream::Replay(Box::new(Replay {
            prefix,
            inner: stream,
        }))
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// The ALPN protocol the TLS handshake selected (None: not TLS, or no ALPN).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            ClientStream::Tls(s) => s.get_ref().1.alpn_protocol(),
            _ => None,
        }
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
            ClientStream::Replay(r) => {
                if r.prefix.is_empty() {
                    return Pin::new(&mut r.inner).poll_read(cx, buf);
                }
                let n = r.prefix.len().min(buf.remaining());
                buf.put_slice(&r.prefix[..n]);
                r.prefix.advance(n);
                Poll::Ready(Ok(()))
            }
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
            ClientStream::Replay(r) => Pin::new(&mut r.inner).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Memory(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Replay(r) => Pin::new(&mut r.inner).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Memory(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Replay(r) => Pin::new(&mut r.inner).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn replay_reads_the_prefix_first_and_writes_through() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        theirs.write_all(b" world").await.unwrap();
        let mut s = ClientStream::replay(BytesMut::from(&b"hello"[..]), ClientStream::Memory(ours));
        let mut small = [0u8; 3];
        s.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        let mut rest = [0u8; 8];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"lo world");
        s.write_all(b"back").await.unwrap();
        let mut got = [0u8; 4];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"back");
        assert!(!s.is_tls());
        assert_eq!(s.alpn_protocol(), None);
    }

    #[test]
    fn an_empty_prefix_is_no_wrapper() {
        let (ours, _theirs) = tokio::io::duplex(8);
        let s = ClientStream::replay(BytesMut::new(), ClientStream::Memory(ours));
        assert!(matches!(s, ClientStream::Memory(_)));
    }
}
