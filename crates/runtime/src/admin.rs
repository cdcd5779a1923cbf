//! The admin HTTP server (off unless `--admin-listen` is given): probes and metrics.
//!
//! - `/startup`: 200 once every listener is bound and every credential has been acquired once.
//! - `/liveness`: 200 while the process serves.
//! - `/readiness`: 200 when started, not shutting down, every listener below its connection
//!   cap, and every credential valid (not expired; a failed refresh with time left is ready).
//! - `/metrics`: Prometheus text.
//!
//! No probe dials a database: probes must stay cheap and must not turn a database hiccup into
//! a restart loop. Each answer's body says why, for humans reading `kubectl describe`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{Metrics, StatusFn};

/// What the probes look at.
#[derive(Default)]
pub struct Health {
    /// Every listener is bound.
    pub listening: AtomicBool,
    /// A shutdown signal arrived.
    pub shutting_down: AtomicBool,
    listeners: std::sync::Mutex<Vec<(String, Gauge, usize)>>,
    credentials: std::sync::Mutex<Vec<(String, StatusFn)>>,
}

impl Health {
    /// Watches a listener's open-connection gauge against its cap (0 = no cap).
    pub fn add_listener(&self, name: &str, active: Gauge, cap: usize) {
        if let Ok(mut l) = self.listeners.lock() {
            l.push((name.to_owned(), active, cap));
        }
    }

    /// Watches a credential.
    pub fn add_credential(&self, listener: &str, status: StatusFn) {
        if let Ok(mut c) = self.credentials.lock() {
            c.push((listener.to_owned(), status));
        }
    }

    /// `Ok` once started: every listener bound, every credential acquired once.
    pub fn startup(&self) -> Result<(), String> {
        if !self.listening.load(Ordering::SeqCst) {
            return Err("listeners not bound yet".into());
        }
        let creds = self.credentials.lock().map_err(|_| "poisoned".to_owned())?;
        let waiting: Vec<&str> = creds
            .iter()
            .filter(|(_, s)| s().last_success.is_none())
            .map(|(n, _)| n.as_str())
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "no credential acquired yet for: {}",
                waiting.join(", ")
            ))
        }
    }

    /// `Ok` when the proxy should receive new connections.
    pub fn readiness(&self) -> Result<(), String> {
        self.startup()?;
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        if let Ok(listeners) = self.listeners.lock() {
            for (name, active, cap) in listeners.iter() {
                if *cap > 0 && active.get() >= *cap as i64 {
                    return Err(format!("listener {name} is at its connection cap ({cap})"));
                }
            }
        }
        let now = SystemTime::now();
        let creds = self.credentials.lock().map_err(|_| "poisoned".to_owned())?;
        for (name, status) in creds.iter() {
            let s = status();
            let valid = match s.expires_on {
                Some(exp) => exp > now,
                // Keys (Cosmos DB) and password files do not expire: valid once acquired.
                None => s.last_success.is_some(),
            };
            if !valid {
                return Err(format!(
                    "credential of listener {name} is not valid{}",
                    s.last_error.map(|e| format!(": {e}")).unwrap_or_default()
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

fn probe(result: Result<(), String>) -> (StatusCode, String) {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn startup(State(s): State<AdminState>) -> impl IntoResponse {
    probe(s.health.startup())
}

async fn liveness() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}

async fn readiness(State(s): State<AdminState>) -> impl IntoResponse {
    probe(s.health.readiness())
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// The bound admin server.
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    state: AdminState,
}

impl AdminServer {
    /// Binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<AdminServer> {
        Ok(AdminServer {
            listener: tokio::net::TcpListener::bind(addr).await?,
            state: AdminState { health, metrics },
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends (probes must keep answering during shutdown).
    pub async fn run(self) {
        let app = Router::new()
            .route("/startup", get(startup))
            .route("/liveness", get(liveness))
            .route("/readiness", get(readiness))
            .route("/metrics", get(metrics))
            .with_state(self.state);
        if let Err(e) = axum::serve(self.listener, app).await {
            tracing::error!(error = %e, "admin server stopped");
        }
    }
}
