//! Accepting clients.
//!
//! A [`Listener`] owns a bound socket and a service (the protocol handler). Each accepted
//! connection runs in its own task, tracked so that shutdown can wait for open sessions; one
//! client's failure never reaches another's task. Accept errors (for example too many open
//! files) are logged and retried after a short pause instead of ending the listener.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

/// A protocol handler: serves one client connection to its end.
pub trait Service: Send + Sync + 'static {
    /// Serves `stream`, accepted from `peer`, until the session ends.
    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send;
}

/// Shared shutdown state: a token cancelled on the first signal, and the set of running sessions.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when listeners must stop accepting.
    pub stop_accepting: CancellationToken,
    /// Every session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

/// A bound listener and the service it feeds.
pub struct Listener<S> {
    name: String,
    socket: TcpListener,
    service: Arc<S>,
}

impl<S: Service> Listener<S> {
    /// Binds `addr` for the listener called `name`.
    pub async fn bind(name: &str, addr: SocketAddr, service: Arc<S>) -> std::io::Result<Self> {
        let socket = TcpListener::bind(addr).await?;
        Ok(Listener {
            name: name.to_owned(),
            socket,
            service,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts clients until `shutdown.stop_accepting` is cancelled.
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.stop_accepting.cancelled() => break,
                accepted = self.socket.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    crate::upstream::configure_socket(&stream);
                    let span =
                        tracing::info_span!("session", listener = %self.name, client = %peer);
                    let service = self.service.clone();
                    shutdown
                        .sessions
                        .spawn(service.serve(stream, peer).instrument(span));
                }
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        tracing::info!(listener = %self.name, "stopped accepting connections");
    }
}
