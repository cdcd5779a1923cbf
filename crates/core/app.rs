//! Start-up, shutdown, and `check`: turns a [`Config`] into running listeners.
//!
//! Start-up, in order:
//! 1. Signal handlers are installed before anything is spawned.
//! 2. Outbound trust (OS roots, SSL_CERT_FILE/SSL_CERT_DIR, CA files) and the HTTP client for
//!    Entra ID are built once.
//! 3. Each listener gets a credential and a token cache whose refresher starts at once, so the
//!    first token is usually there before the first client.
//! 4. Every listener is bound before any accepts: an address in use stops start-up with an error.
//!    The admin server (if any) starts last; `/startup` turns 200 once credentials are in.
//!
//! Shutdown, on SIGTERM/SIGINT:
//! 1. `/readiness` fails at once; listeners keep accepting for `min_shutdown_delay` so load
//!    balancers notice.
//! 2. Listeners stop accepting; open sessions get up to `max_shutdown_delay` to finish.
//! 3. Return (exit 0); dropping the runtime closes whatever is left. A second signal skips the
//!    waiting.

use std::sync::{Arc, atomic::Ordering};

use anyhow::Context;
use dbproxy_credentials::{CredentialOptions, RefreshPolicy, TokenCache};
use dbproxy_runtime::{
    AdminServer, Health, Listener, Metrics, PostgresService, Shutdown, Upstream, metrics::StatusFn,
};
use dbproxy_tls::Trust;
use rustls_pki_types::ServerName;

use crate::config::{Config, EnvSnapshot, ListenerConfig, Protocol};

/// A listener's service before it is bound.
struct Prepared {
    config_index: usize,
    service: Arc<PostgresService>,
    cache: Arc<TokenCache>,
}

/// Builds credentials and services for every listener.
fn prepare(config: &Config, env: EnvSnapshot, metrics: &Metrics) -> anyhow::Result<Vec<Prepared>> {
    let http_trust = Trust::new(config.ca_file.as_deref()).context("outbound TLS trust")?;
    let cred_options = CredentialOptions {
        http: http_trust
            .http_client()
            .context("HTTP client for Entra ID")?,
        authority_host: config.authority_host.clone(),
        imds_endpoint: config.imds_endpoint.clone(),
        env,
        ..CredentialOptions::default()
    };
    let mut prepared = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let source = dbproxy_credentials::build(&l.credential, &cred_options)
            .with_context(|| format!("listener {}: credential", l.name))?;
        let cache = TokenCache::new(source, l.scope.clone(), RefreshPolicy::default());
        // The listener's CA file adds to the global one (and the OS roots).
        let trust = match &l.tls_ca_file {
            None => http_trust.clone(),
            Some(ca) => {
                Trust::with_ca_files(config.ca_file.as_deref().into_iter().chain([ca.as_path()]))
                    .with_context(|| format!("listener {}: tls.ca_file", l.name))?
            }
        };
        let upstream = upstream(l, config, &trust)?;
        let service = match l.protocol {
            Protocol::Postgres => Arc::new(PostgresService {
                name: l.name.clone(),
                upstream,
                user: l.user.clone(),
                default_database: l.database.clone(),
                credential: cache.clone(),
                handshake_timeout: config.handshake_timeout,
                idle_timeout: config.idle_timeout,
                metrics: metrics.listener(&l.name, "postgres"),
            }),
        };
        prepared.push(Prepared {
            config_index: i,
            service,
            cache,
        });
    }
    Ok(prepared)
}

fn upstream(l: &ListenerConfig, config: &Config, trust: &Trust) -> anyhow::Result<Upstream> {
    let server_name = ServerName::try_from(l.tls_server_name.clone()).with_context(|| {
        format!(
            "listener {}: {:?} is not a valid TLS server name",
            l.name, l.tls_server_name
        )
    })?;
    Ok(Upstream {
        host: l.upstream_host.clone(),
        port: l.upstream_port,
        server_name,
        tls: trust.client_config()?,
        connect_timeout: config.connect_timeout,
    })
}

/// Runs the proxy until a shutdown signal.
pub async fn run(config: Config, env: EnvSnapshot) -> anyhow::Result<()> {
    let mut signals = signals().context("cannot install signal handlers")?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let prepared = prepare(&config, env, &metrics)?;

    let shutdown = Shutdown::default();
    let mut bound = Vec::new();
    for p in &prepared {
        let l = &config.listeners[p.config_index];
        p.cache.spawn_refresher();
        let status: StatusFn = {
            let cache = p.cache.clone();
            Arc::new(move || cache.status())
        };
        metrics.credential(&l.name, status.clone());
        health.add_credential(&l.name, status);
        let listener_metrics = p.service.metrics.clone();
        health.add_listener(&l.name, listener_metrics.active.clone(), l.max_connections);
        let listener = Listener::bind(
            &l.name,
            l.listen,
            p.service.clone(),
            l.max_connections,
            listener_metrics,
        )
        .await
        .with_context(|| format!("listener {}: cannot listen on {}", l.name, l.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            listener = %l.name,
            protocol = "postgres",
            addr = %addr,
            upstream = %p.service.upstream,
            user = %l.user,
            credential = %p.cache.describe(),
            max_connections = l.max_connections,
            "listening"
        );
        if !addr.ip().is_loopback() {
            tracing::warn!(listener = %l.name, addr = %addr, "listening beyond loopback: anyone who can reach this address uses the database as {}", l.user);
        }
        bound.push(listener);
    }
    for listener in bound {
        tokio::spawn(listener.run(shutdown.clone()));
    }
    health.listening.store(true, Ordering::SeqCst);
    if let Some(addr) = config.admin_listen {
        let admin = AdminServer::bind(addr, health.clone(), metrics.clone())
            .await
            .with_context(|| format!("admin server: cannot listen on {addr}"))?;
        tracing::info!(addr = %admin.local_addr()?, "admin server listening (/startup /liveness /readiness /metrics)");
        tokio::spawn(admin.run());
    }
    tracing::info!(listeners = config.listeners.len(), "entra-db-proxy ready");

    let first = signals.recv().await;
    health.shutting_down.store(true, Ordering::SeqCst);
    tracing::info!(
        signal = first,
        min_shutdown_delay_s = config.min_shutdown_delay.as_secs(),
        max_shutdown_delay_s = config.max_shutdown_delay.as_secs(),
        "shutting down: readiness now fails"
    );
    let mut interrupted = false;
    if !config.min_shutdown_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(config.min_shutdown_delay) => {}
            s = signals.recv() => { tracing::warn!(signal = s, "second signal; exiting now"); interrupted = true; }
        }
    }
    shutdown.stop_accepting.cancel();
    shutdown.sessions.close();
    if interrupted {
        return Ok(());
    }
    tracing::info!(
        open = shutdown.sessions.len(),
        "no new connections; waiting for open sessions"
    );
    tokio::select! {
        _ = shutdown.sessions.wait() => tracing::info!("all sessions finished"),
        _ = tokio::time::sleep(config.max_shutdown_delay) => {
            tracing::warn!(open = shutdown.sessions.len(), "max shutdown delay reached; closing open sessions")
        }
        s = signals.recv() => tracing::warn!(signal = s, "second signal; exiting now"),
    }
    Ok(())
}

/// `entra-db-proxy check`: one credential acquisition and one upstream login per listener.
/// Prints a table to stdout; `Ok(false)` if any failed.
pub async fn check(config: Config, env: EnvSnapshot) -> anyhow::Result<bool> {
    let metrics = Metrics::new();
    let prepared = prepare(&config, env, &metrics)?;
    let mut rows = Vec::new();
    let mut all_ok = true;
    for p in &prepared {
        let l = &config.listeners[p.config_index];
        let result = p.service.check().await;
        all_ok &= result.is_ok();
        rows.push([
            l.name.clone(),
            "postgres".to_owned(),
            p.service.upstream.to_string(),
            p.cache.describe(),
            match result {
                Ok(what) => format!("ok: {what}"),
                Err(why) => format!("FAILED: {why}"),
            },
        ]);
    }
    print_table(
        &["LISTENER", "PROTOCOL", "UPSTREAM", "CREDENTIAL", "RESULT"],
        &rows,
    );
    Ok(all_ok)
}

fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A stream of signal names (SIGTERM, SIGINT).
fn signals() -> std::io::Result<tokio::sync::mpsc::Receiver<&'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if tx.send(name).await.is_err() {
                break;
            }
        }
    });
    Ok(rx)
}
