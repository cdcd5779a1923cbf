//! Faults: what the client sees, how soon, and what /readiness and the metrics say. Each fault
//! is a loopback stand-in for the real one (a token endpoint that hangs, ARM throttling, a
//! database restarted), and each test polls for the condition it waits for, with a deadline.
//! docs/RELIABILITY.md ("Faults") tabulates the outcomes.
//!
//! * `upstream`: a server that never answers TLS, a name that does not resolve (PostgreSQL).
//! * `identity`: the Entra token endpoint and IMDS hanging, at the first fetch and at a refresh.
//! * `arm`: ARM listKeys answering 429 (Retry-After) and 500/503, for the Cosmos DB key (CQL).
//! * `restart`: PostgreSQL and Cassandra restarted under live sessions.

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::util::http_get;

pub(crate) mod arm;
mod identity;
mod restart;
mod upstream;

/// Polls `f` every 200 ms until it returns `Some`, for at most `within`; panics with `what`.
pub async fn poll<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `path` on the admin server answers `want`; returns its body.
pub async fn wait_status(admin: SocketAddr, path: &str, want: u16, within: Duration) -> String {
    poll(&format!("{path} answering {want}"), within, || async {
        let (status, body) = http_get(admin, path).await;
        (status == want).then_some(body)
    })
    .await
}

/// The value of the sample `name{labels}` in a Prometheus text exposition (`labels` as written
/// in it, e.g. `listener="postgres"`; empty for none).
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

/// The sample, 0 when absent (a counter that never moved has no sample yet).
pub async fn metric(admin: SocketAddr, name: &str, labels: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics").await;
    sample(&text, name, labels).unwrap_or(0.0)
}
