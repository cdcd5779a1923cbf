//! Accepting clients.
//!
//! A [`Listener`] owns a bound socket and a service (the protocol handler). Each accepted
//! connection runs in its own task, tracked so that shutdown can wait for open sessions; one
//! client's failure never reaches another's task. With a connection cap, a permit is taken for
//! each session and returned when its task ends; a client over the cap gets the protocol's own
//! "too many connections" error (through [`Service::reject_busy`]) instead of a silent close.
//! Accept errors (for example too many open files) are logged and retried after a short pause
//! instead of ending the listener.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::metrics::ListenerMetrics;

/// A protocol handler: serves one client connection to its end.
pub trait Service: Send + Sync + 'static {
    /// Serves `stream`, accepted from `peer`, until the session ends.
    fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send;

    /// Tells a client over the connection cap, in the protocol's terms, and closes.
    fn reject_busy(self: Arc<Self>, stream: TcpStream) -> impl Future<Output = ()> + Send;
}

/// Shared shutdown state: a token cancelled when listeners must stop accepting, and the set of
/// running sessions.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when listeners must stop accepting.
    pub stop_accepting: CancellationToken,
    /// Every session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
}

/// How many over-cap clients may be answered at once; beyond that they are just closed.
const MAX_PENDING_REJECTIONS: usize = 64;

/// A bound listener and the service it feeds.
pub struct Listener<S> {
    name: String,
    socket: TcpListener,
    service: Arc<S>,
    /// Session permits (None: no cap).
    limit: Option<Arc<Semaphore>>,
    rejections: Arc<Semaphore>,
    metrics: ListenerMetrics,
}

impl<S: Service> Listener<S> {
    /// Binds `addr` for the listener called `name`; `max_connections` 0 means no cap.
    pub async fn bind(
        name: &str,
        addr: SocketAddr,
        service: Arc<S>,
        max_connections: usize,
        metrics: ListenerMetrics,
    ) -> std::io::Result<Self> {
        let socket = TcpListener::bind(addr).await?;
        Ok(Listener {
            name: name.to_owned(),
            socket,
            service,
            limit: (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections))),
            rejections: Arc::new(Semaphore::new(MAX_PENDING_REJECTIONS)),
            metrics,
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
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            crate::upstream::configure_socket(&stream);
            self.metrics.total.inc();
            let span = tracing::info_span!("session", listener = %self.name, client = %peer);
            let permit = match &self.limit {
                None => None,
                Some(limit) => match limit.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        self.metrics.handshake_failed("too_many_connections");
                        tracing::warn!(parent: &span, "connection cap reached; refusing the client");
                        if let Ok(slot) = self.rejections.clone().try_acquire_owned() {
                            let service = self.service.clone();
                            shutdown.sessions.spawn(
                                async move {
                                    service.reject_busy(stream).await;
                                    drop(slot);
                                }
                                .instrument(span),
                            );
                        }
                        continue;
                    }
                },
            };
            let service = self.service.clone();
            let active = ActiveGuard::new(&self.metrics);
            shutdown.sessions.spawn(
                async move {
                    service.serve(stream, peer).await;
                    drop(active);
                    drop(permit);
                }
                .instrument(span),
            );
        }
        tracing::info!(listener = %self.name, "stopped accepting connections");
    }
}

/// Counts an open connection for as long as it lives (also if its task is aborted).
struct ActiveGuard(prometheus_client::metrics::gauge::Gauge);

impl ActiveGuard {
    fn new(metrics: &ListenerMetrics) -> ActiveGuard {
        metrics.active.inc();
        ActiveGuard(metrics.active.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
