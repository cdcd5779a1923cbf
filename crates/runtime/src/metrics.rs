//! Prometheus metrics, one registry per process (no global state).
//!
//! Per listener (labels `listener`, `protocol`): connections active and total, handshake
//! failures by cause, sessions that relayed by how they ended (`client_closed`,
//! `upstream_closed`, `idle_timeout`), handshake latency (client accept → ready), upstream connect latency, bytes
//! each way. Per credential (label `listener`): refreshes ok/failed, seconds until expiry, last
//! success time — read from the credential's status at scrape time. PostgreSQL listeners with
//! warm sessions: hits, misses by reason, sessions discarded by reason, sessions ready. Per process: start time and
//! build info. No label or value ever holds a secret.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dbproxy_credentials::CacheStatus;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Labels of per-listener metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: String,
    /// `postgres` or `cassandra`.
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    listener: String,
    protocol: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    listener: String,
    protocol: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabels {
    listener: String,
    service_account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    listener: String,
    service_account: String,
    reason: String,
}

/// Distinct `service_account` label values per listener; later ones are counted as `other`.
pub const MAX_IDENTITY_LABELS: usize = 100;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// A credential's status, read at scrape time.
pub type StatusFn = Arc<dyn Fn() -> CacheStatus + Send + Sync>;

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    active: Family<ListenerLabels, Gauge>,
    total: Family<ListenerLabels, Counter>,
    failures: Family<CauseLabels, Counter>,
    ended: Family<CauseLabels, Counter>,
    handshake: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    connect: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    bytes_to_upstream: Family<ListenerLabels, Counter>,
    bytes_to_client: Family<ListenerLabels, Counter>,
    warm_hits: Family<ListenerLabels, Counter>,
    warm_misses: Family<ReasonLabels, Counter>,
    warm_discarded: Family<ReasonLabels, Counter>,
    warm_ready: Family<ListenerLabels, Gauge>,
    refresh_ok: Family<CredentialLabels, Counter>,
    refresh_failed: Family<CredentialLabels, Counter>,
    expiry: Family<CredentialLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    last_success: Family<CredentialLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    credentials: Mutex<Vec<(String, StatusFn, CacheStatus)>>,
    identity_sessions: Family<IdentityLabels, Counter>,
    identity_refusals: Family<RefusalLabels, Counter>,
    cosmos: CosmosFamilies,
}

/// Per-listener Cosmos DB families (label `listener`), filled only for Cosmos listeners.
#[derive(Default)]
struct CosmosFamilies {
    request_units: Family<CredentialLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    throttled: Family<CredentialLabels, Counter>,
    retried: Family<CredentialLabels, Counter>,
    given_up: Family<CredentialLabels, Counter>,
    wait: Family<CredentialLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
}

/// One Cosmos listener's metrics (cheap to clone).
#[derive(Clone, Default)]
pub struct CosmosMetrics {
    /// Sum of the request charges Cosmos reported on responses.
    pub request_units: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Responses that were Cosmos's request-rate Overloaded.
    pub throttled: Counter,
    /// Requests resent after a wait.
    pub retried: Counter,
    /// Rate-limit errors relayed to the client (budget spent, or the request not kept).
    pub given_up: Counter,
    /// Seconds spent waiting before retries.
    pub wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("entra_db_proxy");
        let m = Metrics {
            active: Family::default(),
            total: Family::default(),
            failures: Family::default(),
            ended: Family::default(),
            handshake: Family::new_with_constructor(latency_histogram),
            connect: Family::new_with_constructor(latency_histogram),
            bytes_to_upstream: Family::default(),
            bytes_to_client: Family::default(),
            warm_hits: Family::default(),
            warm_misses: Family::default(),
            warm_discarded: Family::default(),
            warm_ready: Family::default(),
            refresh_ok: Family::default(),
            refresh_failed: Family::default(),
            expiry: Family::default(),
            last_success: Family::default(),
            credentials: Mutex::new(Vec::new()),
            identity_sessions: Family::default(),
            identity_refusals: Family::default(),
            cosmos: CosmosFamilies::default(),
            registry: Registry::default(),
        };
        registry.register(
            "cosmos_request_units",
            "Request units Cosmos DB charged, summed from the RequestCharge of its responses",
            m.cosmos.request_units.clone(),
        );
        registry.register(
            "cosmos_throttled",
            "Responses that were Cosmos DB's request-rate Overloaded (429)",
            m.cosmos.throttled.clone(),
        );
        registry.register(
            "cosmos_retried",
            "Throttled requests the proxy resent after Cosmos DB's RetryAfterMs",
            m.cosmos.retried.clone(),
        );
        registry.register(
            "cosmos_given_up",
            "Throttled requests whose error reached the client (retry budget spent, or not kept)",
            m.cosmos.given_up.clone(),
        );
        registry.register(
            "cosmos_retry_wait_seconds",
            "Seconds throttled requests waited before being resent",
            m.cosmos.wait.clone(),
        );
        registry.register(
            "connections_active",
            "Client connections open now",
            m.active.clone(),
        );
        registry.register(
            "connections",
            "Client connections accepted",
            m.total.clone(),
        );
        registry.register(
            "handshake_failures",
            "Connections that ended before the session started, by cause",
            m.failures.clone(),
        );
        registry.register(
            "sessions_ended",
            "Sessions that relayed, by how they ended (client_closed, upstream_closed, idle_timeout; cancel: a forwarded CancelRequest)",
            m.ended.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Client accept until the session is ready (upstream login done)",
            m.handshake.clone(),
        );
        registry.register(
            "upstream_connect_duration_seconds",
            "TCP connect plus TLS handshake to the upstream",
            m.connect.clone(),
        );
        registry.register(
            "upstream_bytes",
            "Bytes relayed from clients to the upstream",
            m.bytes_to_upstream.clone(),
        );
        registry.register(
            "client_bytes",
            "Bytes relayed from the upstream to clients",
            m.bytes_to_client.clone(),
        );
        registry.register(
            "warm_session_hits",
            "Clients handed a warm upstream session (PostgreSQL, warm_sessions > 0)",
            m.warm_hits.clone(),
        );
        registry.register(
            "warm_session_misses",
            "Clients that took the cold path although warm sessions are on, by reason (empty, database, startup, options, parameter, apply_failed)",
            m.warm_misses.clone(),
        );
        registry.register(
            "warm_sessions_discarded",
            "Warm sessions closed without serving a client, by reason (closed: the server ended it; aged: warm_session_max_age; apply_failed)",
            m.warm_discarded.clone(),
        );
        registry.register(
            "warm_sessions",
            "Warm upstream sessions ready now",
            m.warm_ready.clone(),
        );
        registry.register(
            "credential_refreshes",
            "Successful credential acquisitions",
            m.refresh_ok.clone(),
        );
        registry.register(
            "credential_refresh_failures",
            "Failed credential acquisitions",
            m.refresh_failed.clone(),
        );
        registry.register(
            "credential_expiry_seconds",
            "Seconds until the cached credential expires (negative: expired; absent: none yet)",
            m.expiry.clone(),
        );
        registry.register(
            "credential_last_success_timestamp_seconds",
            "Unix time of the last successful acquisition",
            m.last_success.clone(),
        );
        registry.register(
            "identity_sessions",
            "Clients admitted by a listener's identity check, by service account (pod identity) or uid; past the first 100 values per listener, service_account=\"other\"",
            m.identity_sessions.clone(),
        );
        registry.register(
            "identity_refusals",
            "Clients refused by a listener's identity check, by service account (\"unknown\" when unidentified; past 100 values, \"other\") and reason",
            m.identity_refusals.clone(),
        );
        let start: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        start.set(unix_seconds(SystemTime::now()));
        registry.register("start_time_seconds", "Unix time the process started", start);
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "Build information", build);
        Metrics { registry, ..m }
    }

    /// The metrics of one listener.
    pub fn listener(&self, name: &str, protocol: &str) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: name.to_owned(),
            protocol: protocol.to_owned(),
        };
        ListenerMetrics {
            active: self.active.get_or_create(&labels).clone(),
            total: self.total.get_or_create(&labels).clone(),
            handshake: self.handshake.get_or_create(&labels).clone(),
            connect: self.connect.get_or_create(&labels).clone(),
            bytes_to_upstream: self.bytes_to_upstream.get_or_create(&labels).clone(),
            bytes_to_client: self.bytes_to_client.get_or_create(&labels).clone(),
            failures: self.failures.clone(),
            ended: self.ended.clone(),
            warm_hits: self.warm_hits.clone(),
            warm_ready: self.warm_ready.clone(),
            warm_misses: self.warm_misses.clone(),
            warm_discarded: self.warm_discarded.clone(),
            labels,
        }
    }

    /// The per-identity counters of one listener.
    pub fn identities(&self, listener: &str) -> IdentityMetrics {
        IdentityMetrics {
            listener: listener.to_owned(),
            sessions: self.identity_sessions.clone(),
            refusals: self.identity_refusals.clone(),
            seen: Arc::new(Mutex::new(std::collections::HashSet::new())),
        }
    }

    /// The Cosmos DB metrics of listener `name` (only Cosmos listeners call this, so the
    /// families show no series for others).
    pub fn cosmos(&self, name: &str) -> CosmosMetrics {
        let l = CredentialLabels {
            listener: name.to_owned(),
        };
        let c = &self.cosmos;
        CosmosMetrics {
            request_units: c.request_units.get_or_create(&l).clone(),
            throttled: c.throttled.get_or_create(&l).clone(),
            retried: c.retried.get_or_create(&l).clone(),
            given_up: c.given_up.get_or_create(&l).clone(),
            wait_seconds: c.wait.get_or_create(&l).clone(),
        }
    }

    /// Adds a credential whose status is read at every scrape.
    pub fn credential(&self, listener: &str, status: StatusFn) {
        if let Ok(mut c) = self.credentials.lock() {
            c.push((listener.to_owned(), status, CacheStatus::default()));
        }
    }

    /// The Prometheus text exposition (OpenMetrics flavour).
    pub fn encode(&self) -> String {
        self.update_credentials();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    fn update_credentials(&self) {
        let Ok(mut creds) = self.credentials.lock() else {
            return;
        };
        let now = SystemTime::now();
        for (listener, status, seen) in creds.iter_mut() {
            let s = status();
            let labels = CredentialLabels {
                listener: listener.clone(),
            };
            self.refresh_ok
                .get_or_create(&labels)
                .inc_by(s.refreshes_ok.saturating_sub(seen.refreshes_ok));
            self.refresh_failed
                .get_or_create(&labels)
                .inc_by(s.refreshes_failed.saturating_sub(seen.refreshes_failed));
            if let Some(exp) = s.expires_on {
                let left = match exp.duration_since(now) {
                    Ok(d) => d.as_secs_f64(),
                    Err(e) => -e.duration().as_secs_f64(),
                };
                self.expiry.get_or_create(&labels).set(left);
            }
            if let Some(t) = s.last_success {
                self.last_success
                    .get_or_create(&labels)
                    .set(unix_seconds(t));
            }
            *seen = s;
        }
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Handles to one listener's metrics (cheap to clone).
#[derive(Clone)]
pub struct ListenerMetrics {
    labels: ListenerLabels,
    /// Open connections.
    pub active: Gauge,
    /// Accepted connections.
    pub total: Counter,
    failures: Family<CauseLabels, Counter>,
    ended: Family<CauseLabels, Counter>,
    /// Accept → ready latency.
    pub handshake: Histogram,
    /// Upstream TCP + TLS latency.
    pub connect: Histogram,
    /// Client → upstream bytes.
    pub bytes_to_upstream: Counter,
    /// Upstream → client bytes.
    pub bytes_to_client: Counter,
    // Warm sessions (created on first use: listeners without them show none).
    warm_hits: Family<ListenerLabels, Counter>,
    warm_ready: Family<ListenerLabels, Gauge>,
    warm_misses: Family<ReasonLabels, Counter>,
    warm_discarded: Family<ReasonLabels, Counter>,
}

impl ListenerMetrics {
    /// Counts a connection that failed before its session started.
    pub fn handshake_failed(&self, reason: crate::session::CloseReason) {
        self.failures
            .get_or_create(&CauseLabels {
                listener: self.labels.listener.clone(),
                protocol: self.labels.protocol.clone(),
                cause: reason.cause().to_owned(),
            })
            .inc();
    }

    /// Counts a session that relayed and ended for `reason`.
    pub fn session_ended(&self, reason: crate::session::CloseReason) {
        self.ended
            .get_or_create(&CauseLabels {
                listener: self.labels.listener.clone(),
                protocol: self.labels.protocol.clone(),
                cause: reason.cause().to_owned(),
            })
            .inc();
    }

    /// Counts a client handed a warm session.
    pub fn warm_hit(&self) {
        self.warm_hits.get_or_create(&self.labels).inc();
    }

    /// Sets how many warm sessions are ready.
    pub fn set_warm_ready(&self, n: usize) {
        self.warm_ready
            .get_or_create(&self.labels)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a client that took the cold path although warm sessions are on.
    pub fn warm_miss(&self, reason: &'static str) {
        self.reason(&self.warm_misses, reason).inc();
    }

    /// Counts a warm session closed without serving a client.
    pub fn warm_discarded(&self, reason: &'static str) {
        self.reason(&self.warm_discarded, reason).inc();
    }

    fn reason(&self, family: &Family<ReasonLabels, Counter>, reason: &'static str) -> Counter {
        family
            .get_or_create(&ReasonLabels {
                listener: self.labels.listener.clone(),
                protocol: self.labels.protocol.clone(),
                reason: reason.to_owned(),
            })
            .clone()
    }

    /// Metrics not attached to any registry (for tests and `check`).
    pub fn detached(name: &str, protocol: &str) -> ListenerMetrics {
        Metrics::new().listener(name, protocol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_family() {
        let m = Metrics::new();
        let l = m.listener("orders", "postgres");
        l.total.inc();
        l.active.inc();
        l.handshake_failed(crate::session::CloseReason::Credential);
        l.session_ended(crate::session::CloseReason::UpstreamClosed);
        l.handshake.observe(0.01);
        l.bytes_to_client.inc_by(10);
        l.warm_hit();
        l.set_warm_ready(2);
        l.warm_miss("empty");
        l.warm_discarded("aged");
        let status = Arc::new(|| CacheStatus {
            expires_on: Some(SystemTime::now() + Duration::from_secs(100)),
            last_success: Some(SystemTime::now()),
            last_error: None,
            refreshes_ok: 3,
            refreshes_failed: 1,
        });
        m.credential("orders", status);
        let text = m.encode();
        for needle in [
            "entra_db_proxy_connections_total{listener=\"orders\",protocol=\"postgres\"} 1",
            "entra_db_proxy_connections_active{listener=\"orders\",protocol=\"postgres\"} 1",
            "entra_db_proxy_handshake_failures_total{listener=\"orders\",protocol=\"postgres\",cause=\"credential\"} 1",
            "entra_db_proxy_sessions_ended_total{listener=\"orders\",protocol=\"postgres\",cause=\"upstream_closed\"} 1",
            "entra_db_proxy_handshake_duration_seconds_count{listener=\"orders\",protocol=\"postgres\"} 1",
            "entra_db_proxy_client_bytes_total{listener=\"orders\",protocol=\"postgres\"} 10",
            "entra_db_proxy_credential_refreshes_total{listener=\"orders\"} 3",
            "entra_db_proxy_warm_session_hits_total{listener=\"orders\",protocol=\"postgres\"} 1",
            "entra_db_proxy_warm_sessions{listener=\"orders\",protocol=\"postgres\"} 2",
            "entra_db_proxy_warm_session_misses_total{listener=\"orders\",protocol=\"postgres\",reason=\"empty\"} 1",
            "entra_db_proxy_warm_sessions_discarded_total{listener=\"orders\",protocol=\"postgres\",reason=\"aged\"} 1",
            "entra_db_proxy_credential_refresh_failures_total{listener=\"orders\"} 1",
            "entra_db_proxy_build_info{version=",
            "entra_db_proxy_start_time_seconds ",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        let expiry: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("entra_db_proxy_credential_expiry_seconds{listener=\"orders\"} ")
            })
            .and_then(|v| v.parse().ok())
            .expect("expiry gauge");
        assert!((90.0..=101.0).contains(&expiry), "{expiry}");
        // A second scrape does not double-count refreshes.
        let text = m.encode();
        assert!(text.contains("entra_db_proxy_credential_refreshes_total{listener=\"orders\"} 3"));
    }
}

/// Sessions and refusals per identity of one listener. The `service_account` label takes the
/// first [`MAX_IDENTITY_LABELS`] distinct values seen (plus `unknown`); any later one is
/// counted as `other`, so a cluster with many service accounts cannot grow the registry
/// without bound (label values never leave the registry once created).
#[derive(Clone)]
pub struct IdentityMetrics {
    listener: String,
    sessions: Family<IdentityLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    seen: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl IdentityMetrics {
    /// Counters not registered anywhere (tests, embedding).
    pub fn unregistered(listener: &str) -> IdentityMetrics {
        Metrics::new().identities(listener)
    }

    fn label(&self, identity: &str) -> String {
        if identity == "unknown" {
            return identity.to_owned();
        }
        let Ok(mut seen) = self.seen.lock() else {
            return "other".into();
        };
        if seen.contains(identity) {
            identity.to_owned()
        } else if seen.len() < MAX_IDENTITY_LABELS {
            seen.insert(identity.to_owned());
            identity.to_owned()
        } else {
            "other".into()
        }
    }

    /// Counts an admitted client.
    pub fn admitted(&self, identity: &str) {
        let service_account = self.label(identity);
        self.sessions
            .get_or_create(&IdentityLabels {
                listener: self.listener.clone(),
                service_account,
            })
            .inc();
    }

    /// Counts a refused client.
    pub fn refused(&self, identity: &str, reason: &str) {
        let service_account = self.label(identity);
        self.refusals
            .get_or_create(&RefusalLabels {
                listener: self.listener.clone(),
                service_account,
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;

    #[test]
    fn identity_labels_are_bounded() {
        let m = Metrics::new();
        let ids = m.identities("pg");
        for i in 0..(MAX_IDENTITY_LABELS + 20) {
            ids.admitted(&format!("ns/sa-{i}"));
        }
        ids.refused("unknown", "unknown_pod");
        let text = m.encode();
        let lines = text
            .lines()
            .filter(|l| l.starts_with("entra_db_proxy_identity_sessions_total{"))
            .count();
        assert_eq!(lines, MAX_IDENTITY_LABELS + 1, "{text}");
        assert!(
            text.contains(r#"entra_db_proxy_identity_sessions_total{listener="pg",service_account="other"} 20"#),
            "{text}"
        );
        assert!(
            text.contains(r#"service_account="unknown",reason="unknown_pod"} 1"#),
            "{text}"
        );
    }
}
