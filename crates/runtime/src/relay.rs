//! The relay: after login, bytes flow both ways unparsed until either side closes.
//!
//! `tokio::io::copy_bidirectional` does the work; when one direction reaches end of stream it
//! shuts the other side's write half down, so a client's Terminate and close propagate. The
//! client stream is wrapped in [`Metered`], which counts bytes into the listener's metrics as
//! they pass (so long sessions show up before they end) and counts its reads and writes for the
//! optional idle timeout, which looks at that count every eighth of the timeout (no clock is
//! read per message; a session closes between the timeout and an eighth more after its last
//! byte). Which side reached end of stream first is noted, so that the log
//! line and the metrics say whether the client or the upstream ended the session (a database
//! restart ends sessions from the upstream side); an I/O error after that (writing to a side
//! that has gone) is part of the same close, not a relay failure. A server that ends the session
//! says so first with a FATAL ErrorResponse ([`dbproxy_postgres::FatalWatch`] follows the
//! server's framing on the side): from then on the session is the upstream's to have closed,
//! though the client, told, may close before the server's own close is read. Ends of stream
//! seen in the same wake-up count as the upstream's too.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// Bytes moved by a finished relay.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    /// Client → upstream.
    pub to_upstream: u64,
    /// Upstream → client.
    pub to_client: u64,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client closed first.
    ClientClosed,
    /// The upstream closed first (e.g. the database restarted).
    UpstreamClosed,
    /// Nothing moved for the idle timeout.
    Idle,
}

/// When each side's end of stream was read, counted in polls of the relay (`u64::MAX`: not
/// yet).
struct EofMarks {
    polls: AtomicU64,
    client: AtomicU64,
    upstream: AtomicU64,
}

impl EofMarks {
    fn new() -> EofMarks {
        EofMarks {
            polls: AtomicU64::new(0),
            client: AtomicU64::new(u64::MAX),
            upstream: AtomicU64::new(u64::MAX),
        }
    }

    /// Notes an end of stream on `side` if `r` (a read into a buffer that had room) is one.
    fn note(&self, side: Side, r: &Poll<std::io::Result<()>>, read: usize, room: bool) {
        if matches!(r, Poll::Ready(Ok(()))) && read == 0 && room {
            self.closed(side);
        }
    }

    /// Notes that `side` closed now (unless it did before).
    fn closed(&self, side: Side) {
        let mark = match side {
            Side::Client => &self.client,
            Side::Upstream => &self.upstream,
        };
        let now = self.polls.load(Ordering::SeqCst);
        let _ = mark.compare_exchange(u64::MAX, now, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Who closed first (`None`: neither has); a tie is the upstream's (see the module docs).
    fn first(&self) -> Option<RelayEnd> {
        let (c, u) = (
            self.client.load(Ordering::SeqCst),
            self.upstream.load(Ordering::SeqCst),
        );
        match (c, u) {
            (u64::MAX, u64::MAX) => None,
            (c, u) if u <= c => Some(RelayEnd::UpstreamClosed),
            _ => Some(RelayEnd::ClientClosed),
        }
    }
}

#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

/// Counters and limits for one relay.
pub struct RelayOptions {
    /// Client → upstream byte counter.
    pub to_upstream: Counter,
    /// Upstream → client byte counter.
    pub to_client: Counter,
    /// Close after this long without a byte in either direction.
    pub idle_timeout: Option<Duration>,
    /// Follows the server's messages (fed what the client was sent before the relay).
    pub server: dbproxy_postgres::FatalWatch,
}

/// Relays until both directions are closed, one fails, or the session idles out.
pub async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    options: RelayOptions,
) -> std::io::Result<(Transferred, RelayEnd)>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let activity = Arc::new(AtomicU64::new(0));
    let eof = Arc::new(EofMarks::new());
    let mut metered = Metered {
        inner: client,
        to_upstream: options.to_upstream,
        to_client: options.to_client,
        activity: activity.clone(),
        moved: Transferred::default(),
        eof: eof.clone(),
    };
    let mut upstream = UpstreamEof {
        inner: upstream,
        eof: eof.clone(),
        server: options.server,
    };
    let idle = async {
        let Some(limit) = options.idle_timeout else {
            return std::future::pending().await;
        };
        let tick = (limit / 8).max(Duration::from_millis(1));
        let (mut seen, mut since) = (activity.load(Ordering::Relaxed), Instant::now());
        loop {
            tokio::time::sleep(tick).await;
            let now = activity.load(Ordering::Relaxed);
            if now != seen {
                (seen, since) = (now, Instant::now());
            } else if since.elapsed() >= limit {
                return;
            }
        }
    };
    let outcome = {
        let mut copy = std::pin::pin!(tokio::io::copy_bidirectional(&mut metered, &mut upstream));
        let counted = std::future::poll_fn(|cx| {
            eof.polls.fetch_add(1, Ordering::SeqCst);
            copy.as_mut().poll(cx)
        });
        tokio::select! {
            r = counted => Some(r),
            _ = idle => None,
        }
    };
    let Some(r) = outcome else {
        return Ok((metered.moved, RelayEnd::Idle));
    };
    let first = eof.first();
    let end = first.unwrap_or(RelayEnd::ClientClosed);
    match r {
        Ok((to_upstream, to_client)) => Ok((
            Transferred {
                to_upstream,
                to_client,
            },
            end,
        )),
        // An error once a side has closed (writing to the side that went) is that close.
        Err(_) if first.is_some() => Ok((metered.moved, end)),
        Err(e) => Err(e),
    }
}

/// A client stream that counts the bytes read from it (→ upstream) and written to it (→ client).
struct Metered<'a, C: ?Sized> {
    inner: &'a mut C,
    to_upstream: Counter,
    to_client: Counter,
    /// Reads and writes that moved bytes (only this relay writes it: a load and a store).
    activity: Arc<AtomicU64>,
    moved: Transferred,
    eof: Arc<EofMarks>,
}

/// The upstream stream, noting when it reaches end of stream.
struct UpstreamEof<'a, U: ?Sized> {
    inner: &'a mut U,
    eof: Arc<EofMarks>,
    server: dbproxy_postgres::FatalWatch,
}

impl<U: AsyncRead + Unpin + ?Sized> AsyncRead for UpstreamEof<'_, U> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.eof.note(Side::Upstream, &r, read, room);
        if read > 0 && !this.server.saw_fatal() && this.server.feed(&buf.filled()[before..]) {
            // The server ends the session: what the client does next is its answer.
            this.eof.closed(Side::Upstream);
        }
        r
    }
}

impl<U: AsyncWrite + Unpin + ?Sized> AsyncWrite for UpstreamEof<'_, U> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<C: ?Sized> Metered<'_, C> {
    fn touch(&self) {
        let n = self.activity.load(Ordering::Relaxed);
        self.activity.store(n.wrapping_add(1), Ordering::Relaxed);
    }
}

impl<C: AsyncRead + Unpin + ?Sized> AsyncRead for Metered<'_, C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        let r = Pin::new(&mut *this.inner).poll_read(cx, buf);
        this.eof
            .note(Side::Client, &r, buf.filled().len() - before, room);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            this.to_upstream.inc_by(n);
            this.moved.to_upstream += n;
            this.touch();
        }
        r
    }
}

impl<C: AsyncWrite + Unpin + ?Sized> AsyncWrite for Metered<'_, C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut *this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &r
            && *n > 0
        {
            this.to_client.inc_by(*n as u64);
            this.moved.to_client += *n as u64;
            this.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;

    /// Options with fresh counters.
    fn options(idle_timeout: Option<Duration>) -> RelayOptions {
        RelayOptions {
            to_upstream: Counter::default(),
            to_client: Counter::default(),
            idle_timeout,
            server: Default::default(),
        }
    }

    /// A relay between two in-memory pipes of `size` bytes, in a task of its own: the client
    /// application's end, the server's end, and the relay.
    fn spawn_relay(
        size: usize,
        opts: RelayOptions,
    ) -> (
        DuplexStream,
        DuplexStream,
        JoinHandle<(Transferred, RelayEnd)>,
    ) {
        let (client_app, mut client_side) = tokio::io::duplex(size);
        let (mut upstream_side, server) = tokio::io::duplex(size);
        let relay = tokio::spawn(async move {
            relay(&mut client_side, &mut upstream_side, opts)
                .await
                .unwrap()
        });
        (client_app, server, relay)
    }

    #[tokio::test]
    async fn counts_both_ways_and_propagates_close() {
        let opts = options(None);
        let (to_upstream, to_client) = (opts.to_upstream.clone(), opts.to_client.clone());
        let (mut client_app, mut server, relay) = spawn_relay(64, opts);
        client_app.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        server.read_exact(&mut buf).await.unwrap();
        server.write_all(b"world!!").await.unwrap();
        let mut buf = [0u8; 7];
        client_app.read_exact(&mut buf).await.unwrap();
        drop(client_app);
        // The relay passes the client's close on; then the server closes too.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        drop(server);
        let (t, end) = relay.await.unwrap();
        assert_eq!(
            (t.to_upstream, t.to_client, end),
            (5, 7, RelayEnd::ClientClosed)
        );
        assert_eq!((to_upstream.get(), to_client.get()), (5, 7));
    }

    /// The upstream goes away first (a database restart): its last bytes reach the client,
    /// the client's side is closed, and the end is the upstream's.
    #[tokio::test]
    async fn an_upstream_close_is_told_apart() {
        let (mut client_app, mut server, relay) = spawn_relay(64, options(None));
        server.write_all(b"bye").await.unwrap();
        drop(server);
        let mut got = Vec::new();
        client_app.read_to_end(&mut got).await.unwrap();
        assert_eq!(
            got, b"bye",
            "the client sees the last bytes, then the close"
        );
        // The client, told, closes too (writing first: the upstream is gone).
        let _ = client_app.write_all(b"late").await;
        drop(client_app);
        let (t, end) = relay.await.unwrap();
        assert_eq!((t.to_client, end), (3, RelayEnd::UpstreamClosed));
    }

    /// The server says FATAL and lingers; the client, told, closes first: the upstream ended
    /// the session (a PostgreSQL restart).
    #[tokio::test]
    async fn a_fatal_from_the_server_makes_its_close_the_end() {
        let (mut client_app, mut server, relay) = spawn_relay(256, options(None));
        let body =
            b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";
        let mut fatal = vec![b'E'];
        fatal.extend(((body.len() + 4) as i32).to_be_bytes());
        fatal.extend(body);
        server.write_all(&fatal).await.unwrap();
        let mut got = vec![0; fatal.len()];
        client_app.read_exact(&mut got).await.unwrap();
        drop(client_app);
        // The relay passes the client's close on before the server closes.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        drop(server);
        let (_, end) = relay.await.unwrap();
        assert_eq!(end, RelayEnd::UpstreamClosed);
    }

    /// Both ends of stream in the same wake-up (a client closing at once on the server's
    /// FATAL and close): the upstream's.
    #[tokio::test]
    async fn ends_seen_together_are_the_upstreams() {
        let (client_app, mut client_side) = tokio::io::duplex(64);
        let (mut upstream_side, server) = tokio::io::duplex(64);
        drop((client_app, server));
        let (_, end) = relay(&mut client_side, &mut upstream_side, options(None))
            .await
            .unwrap();
        assert_eq!(end, RelayEnd::UpstreamClosed);
    }

    /// Bytes moved restart the idle clock; the close comes within an eighth of the timeout
    /// after it has run out (virtual time).
    #[tokio::test(start_paused = true)]
    async fn activity_defers_the_idle_close() {
        let limit = Duration::from_secs(30);
        let (mut client_app, mut server, relay) = spawn_relay(64, options(Some(limit)));
        tokio::time::sleep(Duration::from_secs(20)).await;
        client_app.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        let last = Instant::now();
        let (_, end) = relay.await.unwrap();
        let idle = last.elapsed();
        assert_eq!(end, RelayEnd::Idle);
        assert!(
            idle >= limit && idle <= limit + limit / 8 + Duration::from_millis(10),
            "closed after {idle:?} idle"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_sessions_are_closed() {
        let (_client_app, mut client_side) = tokio::io::duplex(64);
        let (mut upstream_side, _server) = tokio::io::duplex(64);
        let opts = options(Some(Duration::from_secs(30)));
        let (_, end) = relay(&mut client_side, &mut upstream_side, opts)
            .await
            .unwrap();
        assert_eq!(end, RelayEnd::Idle);
    }
}
