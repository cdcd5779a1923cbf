//! Start-up and shutdown: turns a [`Config`] into running listeners.
//!
//! 1. Signal handlers are installed before anything is spawned.
//! 2. Outbound trust (OS roots, SSL_CERT_FILE/SSL_CERT_DIR, CA files) and the HTTP client for
//!    Entra ID are built once.
//! 3. Each listener gets a credential and a token cache whose refresher starts at once, so the
//!    first token is usually there before the first client.
//! 4. Every listener is bound before any accepts: an address in use stops start-up with an error.
//! 5. On SIGTERM/SIGINT: stop accepting, let sessions finish for up to `max_shutdown_delay`,
//!    then return (dropping the runtime closes what is left). A second signal exits at once.

use std::sync::Arc;

use anyhow::Context;
use dbproxy_credentials::{CredentialOptions, RefreshPolicy, TokenCache};
use dbproxy_runtime::{Listener, PostgresService, Shutdown, Upstream};
use dbproxy_tls::Trust;
use rustls_pki_types::ServerName;

use crate::config::{Config, EnvSnapshot, Protocol};

/// Runs the proxy until a shutdown signal.
pub async fn run(config: Config, env: EnvSnapshot) -> anyhow::Result<()> {
    let signals = signals().context("cannot install signal handlers")?;

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

    let shutdown = Shutdown::default();
    let mut bound = Vec::new();
    for l in &config.listeners {
        let source = dbproxy_credentials::build(&l.credential, &cred_options)
            .with_context(|| format!("listener {}: credential", l.name))?;
        let cache = TokenCache::new(source, l.scope.clone(), RefreshPolicy::default());
        cache.spawn_refresher();

        // The listener's CA file adds to the global one (and the OS roots).
        let trust = match &l.tls_ca_file {
            None => http_trust.clone(),
            Some(ca) => {
                Trust::with_ca_files(config.ca_file.as_deref().into_iter().chain([ca.as_path()]))
                    .with_context(|| format!("listener {}: tls.ca_file", l.name))?
            }
        };
        let server_name = ServerName::try_from(l.tls_server_name.clone()).with_context(|| {
            format!(
                "listener {}: {:?} is not a valid TLS server name",
                l.name, l.tls_server_name
            )
        })?;
        let upstream = Upstream {
            host: l.upstream_host.clone(),
            port: l.upstream_port,
            server_name,
            tls: trust.client_config()?,
            connect_timeout: config.connect_timeout,
        };
        match l.protocol {
            Protocol::Postgres => {
                let service = Arc::new(PostgresService {
                    name: l.name.clone(),
                    upstream: upstream.clone(),
                    user: l.user.clone(),
                    default_database: l.database.clone(),
                    credential: cache.clone(),
                    handshake_timeout: config.handshake_timeout,
                });
                let listener = Listener::bind(&l.name, l.listen, service)
                    .await
                    .with_context(|| {
                        format!("listener {}: cannot listen on {}", l.name, l.listen)
                    })?;
                let addr = listener.local_addr()?;
                tracing::info!(
                    listener = %l.name,
                    protocol = "postgres",
                    addr = %addr,
                    upstream = %upstream,
                    user = %l.user,
                    credential = %cache.describe(),
                    "listening"
                );
                bound.push(listener);
            }
        }
    }
    for listener in bound {
        tokio::spawn(listener.run(shutdown.clone()));
    }
    tracing::info!(listeners = config.listeners.len(), "entra-db-proxy ready");

    let mut signals = signals;
    let first = signals.recv().await;
    tracing::info!(
        signal = first,
        "shutting down: no new connections; waiting for open sessions"
    );
    shutdown.stop_accepting.cancel();
    shutdown.sessions.close();
    tokio::select! {
        _ = shutdown.sessions.wait() => tracing::info!("all sessions finished"),
        _ = tokio::time::sleep(config.max_shutdown_delay) => {
            tracing::warn!(open = shutdown.sessions.len(), "max shutdown delay reached; closing open sessions")
        }
        s = signals.recv() => tracing::warn!(signal = s, "second signal; exiting now"),
    }
    Ok(())
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
