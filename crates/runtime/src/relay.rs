//! The relay: after login, bytes flow both ways unparsed until either side closes.
//!
//! `tokio::io::copy_bidirectional` does the work; when one direction reaches end of stream it
//! shuts the other side's write half down, so a client's Terminate and close propagate.

use tokio::io::{AsyncRead, AsyncWrite};

/// Bytes moved by a finished relay.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    /// Client → upstream.
    pub to_upstream: u64,
    /// Upstream → client.
    pub to_client: u64,
}

/// Relays until both directions are closed or one fails; returns the byte counts.
pub async fn relay<C, U>(client: &mut C, upstream: &mut U) -> std::io::Result<Transferred>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (to_upstream, to_client) = tokio::io::copy_bidirectional(client, upstream).await?;
    Ok(Transferred {
        to_upstream,
        to_client,
    })
}
