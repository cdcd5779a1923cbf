//! Warm upstream sessions (`--postgres-warm-sessions`) against the real PostgreSQL: that a
//! client got a warm session is proven by the hit counter, never by timing.
//!
//! - `state`: two clients in a row never see each other's state (temp table, SET, prepared
//!   statement, advisory lock); `application_name` and the other startup parameters reach
//!   the server (pg_stat_activity) and the client's ParameterStatus.
//! - `greeting`: a warm client receives message for message what a cold one does (the
//!   ParameterStatus values after its parameters, BackendKeyData, ReadyForQuery), and what
//!   cannot be exact (another database, options that are not `-c`, a parameter the server
//!   refuses) takes the cold path, with the cold path's own answer.
//! - `faults`: cancel on a warm session; the database restarting under warm sessions costs
//!   no client an error.

mod faults;
mod greeting;
mod raw;
mod state;

use std::{net::SocketAddr, time::Duration};

use crate::{faults::metric, faults::poll, stack::Stack, util::ProxyCmd};

pub const HITS: &str = "entra_db_proxy_warm_session_hits_total";
pub const MISSES: &str = "entra_db_proxy_warm_session_misses_total";
pub const READY: &str = "entra_db_proxy_warm_sessions";
pub const DISCARDED: &str = "entra_db_proxy_warm_sessions_discarded_total";
pub const LABELS: &str = r#"listener="postgres",protocol="postgres""#;

/// `metric{listener="postgres",protocol="postgres",reason="…"}`.
pub async fn by_reason(admin: SocketAddr, name: &str, reason: &str) -> f64 {
    metric(admin, name, &format!(r#"{LABELS},reason="{reason}""#)).await
}

/// The stack's proxy with `n` warm sessions and the admin server.
pub fn warm_proxy(s: &Stack, n: usize) -> ProxyCmd {
    s.proxy_sp()
        .args(["--postgres-warm-sessions", &n.to_string()])
        .args(["--admin-listen", "127.0.0.1:0"])
}

/// Waits until `n` warm sessions are ready.
pub async fn wait_ready(admin: SocketAddr, n: usize) {
    poll(
        &format!("{n} warm sessions ready"),
        Duration::from_secs(30),
        || async { (metric(admin, READY, LABELS).await >= n as f64).then_some(()) },
    )
    .await
}
