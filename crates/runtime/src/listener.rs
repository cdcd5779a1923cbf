//! Accepting clients.
//!
//! A [`Listener`] owns a bound socket and a service (the protocol handler). Each accepted
//! connection runs in its own task, tracked so that shutdown can wait for open sessions; one
//! client's failure never reaches another's task. With a connection cap, a permit is taken for
//! each session and returned when its task ends; a client over the cap gets the protocol's own
//! "too many connections" error (through [`Service::reject_busy`]) instead of a silent close.
//! Accept errors (for example too many open files) are logged and retried after a short pause
//! instead of ending the listener. With [`Listener::on_workers`], sessions run on the session
//! threads of [`Workers`] rather than on the runtime that accepts.

use std::{
    future::Future,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};

use crate::{stream::ClientStream, workers::Workers};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::metrics::ListenerMetrics;

/// A protocol handler: serves one client connection to its end.
pub trait Service: Send + Sync + 'static {
    /// Serves `stream`, accepted from `peer`, until the session ends.
    fn serve(
        self: Arc<Self>,
        stream: ClientStream,
        peer: String,
    ) -> impl Future<Output = ()> + Send;

    /// Tells a client over the connection cap, in the protocol's terms, and closes.
    fn reject_busy(self: Arc<Self>, stream: ClientStream) -> impl Future<Output = ()> + Send;
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

/// Where a listener accepts clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix domain socket at `path`, created with `mode` (e.g. 0o600, owner only).
    Unix {
        /// The socket file.
        path: PathBuf,
        /// Its permissions.
        mode: u32,
    },
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix { path, .. } => write!(f, "unix:{}", path.display()),
        }
    }
}

enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Binds a Unix socket at `path`: a stale socket (nobody answers) is removed first; a live one,
/// or a file that is not a socket, is an error.
fn bind_unix(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        tracing::info!(path = %path.display(), "removing a stale socket");
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// A bound listener and the service it feeds.
pub struct Listener<S> {
    name: String,
    socket: Socket,
    service: Arc<S>,
    /// Session permits (None: no cap).
    limit: Option<Arc<Semaphore>>,
    rejections: Arc<Semaphore>,
    metrics: ListenerMetrics,
    /// Where sessions run (None: on the accepting runtime).
    workers: Option<Arc<Workers>>,
}

impl<S: Service> Listener<S> {
    /// Binds `addr` for the listener called `name`; `max_connections` 0 means no cap.
    pub async fn bind(
        name: &str,
        addr: &ListenAddr,
        service: Arc<S>,
        max_connections: usize,
        metrics: ListenerMetrics,
    ) -> std::io::Result<Self> {
        let socket = match addr {
            ListenAddr::Tcp(a) => Socket::Tcp(TcpListener::bind(a).await?),
            ListenAddr::Unix { path, mode } => Socket::Unix(bind_unix(path, *mode)?, path.clone()),
        };
        Ok(Listener {
            name: name.to_owned(),
            socket,
            service,
            limit: (max_connections > 0).then(|| Arc::new(Semaphore::new(max_connections))),
            rejections: Arc::new(Semaphore::new(MAX_PENDING_REJECTIONS)),
            metrics,
            workers: None,
        })
    }

    /// Runs this listener's sessions on `workers` instead of the accepting runtime.
    pub fn on_workers(mut self, workers: Arc<Workers>) -> Self {
        self.workers = Some(workers);
        self
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<ListenAddr> {
        match &self.socket {
            Socket::Tcp(t) => Ok(ListenAddr::Tcp(t.local_addr()?)),
            Socket::Unix(_, path) => Ok(ListenAddr::Unix {
                path: path.clone(),
                mode: std::fs::metadata(path)?.permissions().mode() & 0o777,
            }),
        }
    }

    async fn accept(&self) -> std::io::Result<(ClientStream, String)> {
        match &self.socket {
            Socket::Tcp(t) => {
                let (stream, peer) = t.accept().await?;
                crate::upstream::configure_socket(&stream);
                Ok((ClientStream::Tcp(stream), peer.to_string()))
            }
            Socket::Unix(u, path) => {
                let (stream, _) = u.accept().await?;
                Ok((
                    ClientStream::Unix(stream),
                    format!("unix:{}", path.display()),
                ))
            }
        }
    }

    /// Accepts clients until `shutdown.stop_accepting` is cancelled.
    pub async fn run(self, shutdown: Shutdown) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.stop_accepting.cancelled() => break,
                accepted = self.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = %self.name, error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            self.metrics.total.inc();
            let span = tracing::info_span!("session", listener = %self.name, client = %peer);
            let permit = match &self.limit {
                None => None,
                Some(limit) => match limit.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        self.metrics
                            .handshake_failed(crate::session::CloseReason::TooManyConnections);
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
            let tracked = shutdown.sessions.clone();
            let session = move |stream| {
                tracked.track_future(
                    async move {
                        service.serve(stream, peer).await;
                        drop(active);
                        drop(permit);
                    }
                    .instrument(span),
                )
            };
            match &self.workers {
                Some(workers) => workers.spawn(stream, session),
                None => drop(tokio::spawn(session(stream))),
            }
        }
        tracing::info!(listener = %self.name, "stopped accepting connections");
        if let Socket::Unix(_, path) = &self.socket {
            let _ = std::fs::remove_file(path);
        }
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
