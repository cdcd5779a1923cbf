//! The hostile-client suite: clients that do what clients should not, against one proxy per
//! protocol in front of a real server (PostgreSQL with TLS and `password` auth; Cassandra 5.0
//! with TLS and PasswordAuthenticator).
//!
//! Each protocol runs a table of cases (a case = a name and what the client does and expects)
//! concurrently against one proxy with a short handshake timeout, while an unrelated session
//! runs queries in a loop: every case must get the protocol's exact answer (or a clean close)
//! within a generous bound, the unrelated session must see no error and make progress, and
//! afterwards the proxy's active-connection gauge must be back at its baseline (no leaked
//! session). Failing cases are reported together, by name. Where the real server answers the
//! same bytes, the case also sends them to it directly and compares.
//!
//! - [`postgres`]: the PostgreSQL table; [`pg_wire`] its byte builders and readers.
//! - [`cassandra`]: the CQL table; [`cql_wire`] its byte builders and readers.
//! - [`postgres_legacy`]: whole-proxy cases of their own (log forgery, refusals in a loop).

mod cassandra;
pub(crate) mod cql_wire;
mod pg_wire;
mod postgres;
mod postgres_legacy;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a case returns: Ok, or why it failed.
pub(crate) type Outcome = Result<(), String>;

/// One hostile client: a name and what it does against the shared context `C`.
pub(crate) struct Case<C> {
    pub name: String,
    run: Box<dyn Fn(Arc<C>) -> BoxFuture<'static, Outcome> + Send + Sync>,
}

/// A case named `name` running `f`.
pub(crate) fn case<C, F, Fut>(name: impl Into<String>, f: F) -> Case<C>
where
    F: Fn(Arc<C>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    Case {
        name: name.into(),
        run: Box::new(move |c| Box::pin(f(c))),
    }
}

/// A case named `name` running `f` with `data` (shared by the runs of the case).
pub(crate) fn case_with<C, D, F, Fut>(name: impl Into<String>, data: D, f: F) -> Case<C>
where
    D: Send + Sync + 'static,
    F: Fn(Arc<C>, Arc<D>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let data = Arc::new(data);
    case(name, move |c| f(c, data.clone()))
}

/// Connects to `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

/// Runs `cases`, `parallel` at a time, each bounded by `limit`; returns the failures, one line
/// per failing case ("name: why"). A case that panics or overruns counts as failed.
pub(crate) async fn run_cases<C: Send + Sync + 'static>(
    ctx: Arc<C>,
    cases: Vec<Case<C>>,
    limit: Duration,
    parallel: usize,
) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for c in &cases {
        assert!(names.insert(c.name.clone()), "two cases named {}", c.name);
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::new();
    for c in cases {
        let (ctx, permits) = (ctx.clone(), permits.clone());
        let fut = (c.run)(ctx);
        tasks.push((
            c.name,
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                match tokio::time::timeout(limit, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer or close within {limit:?}")),
                }
            }),
        ));
    }
    let mut failures = Vec::new();
    for (name, task) in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(why)) => failures.push(format!("{name}: {why}")),
            Err(e) => failures.push(format!("{name}: panicked: {e}")),
        }
    }
    failures
}

/// An unrelated session running queries in a loop for as long as the cases run.
pub(crate) struct Background {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<(u64, Vec<String>)>,
}

impl Background {
    /// Runs `query` over and over (a short pause between runs) until [`Background::finish`].
    pub(crate) fn start<F, Fut>(mut query: F) -> Background
    where
        F: FnMut(u64) -> Fut + Send + 'static,
        Fut: Future<Output = Outcome> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let done_count = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), done_count.clone());
        let task = tokio::spawn(async move {
            let (mut done, mut errors) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_secs(30), query(done)).await {
                    Ok(Ok(())) => {
                        done += 1;
                        count.store(done, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => errors.push(e),
                    Err(_) => errors.push("a query took over 30 s".into()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (done, errors)
        });
        Background {
            stop,
            done: done_count,
            task,
        }
    }

    /// Stops the loop once it has run at least `min` queries (waiting for that at most 2
    /// minutes: a loaded machine is slow, not wrong); Err if any query failed or it never
    /// got there.
    pub(crate) async fn finish(self, min: u64) -> Result<u64, String> {
        let start = Instant::now();
        while self.done.load(Ordering::Relaxed) < min
            && start.elapsed() < Duration::from_secs(120)
            && !self.task.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let (done, errors) = self.task.await.map_err(|e| format!("panicked: {e}"))?;
        if !errors.is_empty() {
            return Err(format!(
                "the unrelated session saw {} error(s) over {done} queries: {errors:?}",
                errors.len()
            ));
        }
        if done < min {
            return Err(format!(
                "the unrelated session ran only {done} queries (< {min})"
            ));
        }
        Ok(done)
    }

    /// Queries run so far.
    pub(crate) fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

/// The sum of `entra_db_proxy_connections_active` over the proxy's listeners.
pub(crate) async fn active_connections(admin: SocketAddr) -> f64 {
    let (status, text) = crate::util::http_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| l.starts_with("entra_db_proxy_connections_active{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (at most `limit`) until the active-connection gauge reads `want`.
pub(crate) async fn wait_active(admin: SocketAddr, want: f64, limit: Duration) -> Outcome {
    let start = Instant::now();
    loop {
        let now = active_connections(admin).await;
        if now == want {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(format!(
                "connections_active is {now}, not back at its baseline {want} after {limit:?}: a leaked session"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads until the peer closes, for at most `limit`. A reset counts as a close (the bytes
/// received before it are kept). Err if the peer neither closed nor reset in time.
pub(crate) async fn read_to_close<S: AsyncRead + Unpin>(
    s: &mut S,
    limit: Duration,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    match tokio::time::timeout(limit, read).await {
        Ok(()) => Ok(out),
        Err(_) => Err(format!(
            "not closed within {limit:?}; received {} bytes: {:?}",
            out.len(),
            String::from_utf8_lossy(&out)
        )),
    }
}

/// Reads exactly `n` bytes within `limit`.
pub(crate) async fn read_n<S: AsyncRead + Unpin>(
    s: &mut S,
    n: usize,
    limit: Duration,
) -> Result<Vec<u8>, String> {
    let mut out = vec![0; n];
    match tokio::time::timeout(limit, s.read_exact(&mut out)).await {
        Ok(Ok(_)) => Ok(out),
        Ok(Err(e)) => Err(format!("reading {n} bytes: {e}")),
        Err(_) => Err(format!("{n} bytes did not arrive within {limit:?}")),
    }
}

/// `n` pseudo-random bytes from `seed` (xorshift64*: the same bytes on every run).
pub(crate) fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Checks a condition inside a case: `ensure!(cond, "format", args)` returns Err(message).
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}
pub(crate) use ensure;

/// Connect-and-close storms: `n` connections opened at once, each closed after sending
/// `prefix(i)` (nothing, part of an opening, a whole one); errors on the client side are
/// ignored. What matters is the proxy's state afterwards.
pub(crate) async fn storm(addr: SocketAddr, n: usize, prefix: fn(usize) -> Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(async move {
                if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                    let bytes = prefix(i);
                    if !bytes.is_empty() {
                        let _ = s.write_all(&bytes).await;
                    }
                    if i % 2 == 0 {
                        // Half of them with a reset rather than a FIN (a zero linger does not
                        // block on drop, which is what the deprecation is about).
                        #[allow(deprecated)]
                        let _ = s.set_linger(Some(Duration::ZERO));
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}
