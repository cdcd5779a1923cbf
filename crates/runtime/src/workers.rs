//! Session threads: one single-threaded runtime per core.
//!
//! A relayed message costs the proxy a read, a write, and a sleep in `epoll_wait` with the
//! wake-up that ends it. Under tokio's work-stealing scheduler that wake-up is often another
//! worker's (a `futex` and an inter-processor interrupt, which in a VM is an exit to the
//! hypervisor), and the scheduler keeps per-batch bookkeeping on every poll. Sessions here run on
//! [`Workers`] instead: `N` threads, each with its own current-thread runtime (its own reactor
//! and timers), so a session's sockets, its task and its timers live on one thread.
//!
//! The listener accepts on the main runtime and hands each socket to the worker with the fewest
//! sessions (the socket is taken off the main reactor and registered with the worker's). What a
//! session spawns runs on its worker too. Shared state (credentials, metrics, warm sessions)
//! stays on the main runtime and is reached through wakers, which work across runtimes.
//!
//! Dropping the [`Workers`] (the proxy does it last, after the drain) stops the threads and
//! closes the sessions still running on them, as dropping a runtime does.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::stream::ClientStream;
use tokio::sync::mpsc;

/// A socket taken off the accepting runtime's reactor, to be registered with a worker's.
pub enum Detached {
    /// TCP.
    Tcp(std::net::TcpStream),
    /// A Unix domain socket.
    Unix(std::os::unix::net::UnixStream),
    /// A stream not tied to a reactor (in-memory, tests): moved as it is.
    Other(ClientStream),
}

impl Detached {
    /// Takes `stream` off its reactor (the descriptor stays open and non-blocking).
    pub fn new(stream: ClientStream) -> std::io::Result<Detached> {
        Ok(match stream {
            ClientStream::Tcp(s) => Detached::Tcp(s.into_std()?),
            ClientStream::Unix(s) => Detached::Unix(s.into_std()?),
            other => Detached::Other(other),
        })
    }

    /// Registers the socket with the current runtime's reactor.
    pub fn attach(self) -> std::io::Result<ClientStream> {
        Ok(match self {
            Detached::Tcp(s) => ClientStream::Tcp(tokio::net::TcpStream::from_std(s)?),
            Detached::Unix(s) => ClientStream::Unix(tokio::net::UnixStream::from_std(s)?),
            Detached::Other(s) => s,
        })
    }
}

/// What a worker is sent: a session's future, built on the worker (its socket attached there).
type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

struct Worker {
    jobs: mpsc::UnboundedSender<Job>,
    /// Sessions running on this worker.
    running: Arc<AtomicUsize>,
}

/// `N` session threads, each with a current-thread runtime.
pub struct Workers {
    workers: Vec<Worker>,
    /// Where the search for the least busy worker starts (round-robin among equals).
    next: AtomicUsize,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.workers.len())
            .finish()
    }
}

impl Workers {
    /// Starts `threads` session threads (at least one).
    pub fn start(threads: usize) -> std::io::Result<Arc<Workers>> {
        let mut workers = Vec::with_capacity(threads.max(1));
        for i in 0..threads.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (jobs, mut inbox) = mpsc::unbounded_channel::<Job>();
            std::thread::Builder::new()
                .name(format!("session-{i}"))
                .spawn(move || {
                    runtime.block_on(async {
                        while let Some(job) = inbox.recv().await {
                            drop(tokio::spawn(job()));
                        }
                    });
                    // The runtime is dropped here, with whatever sessions are left.
                })?;
            workers.push(Worker {
                jobs,
                running: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Arc::new(Workers {
            workers,
            next: AtomicUsize::new(0),
        }))
    }

    /// How many session threads there are.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Runs `serve(stream)` on the worker with the fewest sessions. The stream is moved to that
    /// worker's reactor first; if that fails the error is logged and the client closed.
    pub fn spawn<F, Fut>(&self, stream: ClientStream, serve: F)
    where
        F: FnOnce(ClientStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let detached = match Detached::new(stream) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the connection to a session thread; closing it");
                return;
            }
        };
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.workers.len();
        let worker = (0..n)
            .map(|k| &self.workers[(start + k) % n])
            .min_by_key(|w| w.running.load(Ordering::Relaxed))
            .unwrap_or(&self.workers[start % n]);
        let running = worker.running.clone();
        running.fetch_add(1, Ordering::Relaxed);
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _count = Running(running);
                match detached.attach() {
                    Ok(stream) => serve(stream).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot register the connection on its session thread; closing it")
                    }
                }
            })
        });
        if worker.jobs.send(job).is_err() {
            // Only if the worker's thread is gone (it panicked outside a session).
            tracing::error!("a session thread has stopped; closing the connection");
        }
    }
}

/// Counts a session on its worker for as long as it lives.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Sessions run on the session threads, not the accepting runtime, and their sockets work
    /// there: an echo over a real TCP connection.
    #[tokio::test]
    async fn sessions_run_on_a_session_thread_with_their_socket_moved_there() {
        let workers = Workers::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut back = [0u8; 4];
            c.read_exact(&mut back).await.unwrap();
            back
        });
        let (accepted, _) = listener.accept().await.unwrap();
        let (thread_tx, thread_rx) = tokio::sync::oneshot::channel();
        workers.spawn(ClientStream::Tcp(accepted), move |mut s| async move {
            let _ = thread_tx.send(std::thread::current().name().map(str::to_owned));
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        assert_eq!(&client.await.unwrap(), b"ping");
        let name = thread_rx.await.unwrap().unwrap_or_default();
        assert!(name.starts_with("session-"), "ran on {name:?}");
    }

    /// New sessions go to the worker with the fewest; dropping the workers closes the sessions
    /// still running (their tasks are dropped, which closes their sockets).
    #[tokio::test]
    async fn the_least_busy_worker_gets_the_session_and_drop_closes_sessions() {
        let workers = Workers::start(2).unwrap();
        let (names_tx, mut names_rx) = mpsc::unbounded_channel();
        let mut ended = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..4 {
            let (a, b) = tokio::io::duplex(8);
            peers.push(b);
            let names = names_tx.clone();
            let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
            ended.push(end_rx);
            workers.spawn(ClientStream::Memory(a), move |_s| async move {
                let _ = names.send(std::thread::current().name().map(str::to_owned));
                let _end = end_tx;
                std::future::pending::<()>().await;
            });
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(names_rx.recv().await.unwrap().unwrap_or_default());
        }
        seen.sort();
        assert_eq!(seen, ["session-0", "session-0", "session-1", "session-1"]);
        drop(workers);
        for end in ended {
            assert!(end.await.is_err(), "the session was dropped, not finished");
        }
        for mut peer in peers {
            let mut buf = [0u8; 1];
            assert_eq!(
                peer.read(&mut buf).await.unwrap(),
                0,
                "its stream is closed"
            );
        }
    }
}
