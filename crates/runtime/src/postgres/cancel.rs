//! Cancelling a running query.
//!
//! A client cancels by opening a new connection and sending a CancelRequest with the backend's
//! process id and secret key, which it learnt from the BackendKeyData the server sent at login.
//! The proxy relayed that message unchanged, so the key is the upstream backend's own: the
//! request is forwarded as-is over a new TLS connection, and the server closes it once read.
//! No credential is needed; the server answers nothing.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::PostgresService;
use crate::{session::SessionError, upstream::Connector};

impl<C: Connector> PostgresService<C> {
    /// Forwards a CancelRequest to the upstream over a fresh TLS connection.
    pub(crate) async fn forward_cancel(&self, packet: &[u8]) -> Result<(), SessionError> {
        let mut upstream = self.connect_upstream().await?;
        let _ = upstream.write_all(packet).await;
        let _ = upstream.flush().await;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), upstream.read(&mut sink)).await;
        Ok(())
    }
}
