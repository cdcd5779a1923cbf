//! Open-file limits.
//!
//! Every session holds two file descriptors (the client's socket and the upstream's), so the
//! default soft limit of many systems (1,024) caps a proxy at about 500 sessions, well below
//! what it can serve. At start the soft `RLIMIT_NOFILE` is raised to the hard limit (what an
//! unprivileged process may do), and a warning says when the configured connection caps need
//! more than that.

use crate::config::Config;

/// Descriptors kept for everything but sessions: listeners, the admin server, HTTP clients to
/// Entra ID and ARM, the log.
const RESERVED: u64 = 64;

/// Raises the soft open-file limit to the hard one; warns when the caps exceed it.
pub fn raise_open_files(config: &Config) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            return;
        }
    };
    tracing::debug!(limit, "open-file limit");
    let capped: u64 = config
        .listeners
        .iter()
        .map(|l| l.max_connections as u64)
        .sum();
    let needed = capped.saturating_mul(2).saturating_add(RESERVED);
    if capped > 0 && needed > limit {
        tracing::warn!(
            limit,
            needed,
            "the listeners' connection caps need more open files than the limit allows; sessions past it fail to connect upstream (raise the hard limit, e.g. LimitNOFILE= in systemd, or lower --max-connections)"
        );
    }
}
