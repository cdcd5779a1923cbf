//! A stand-in for Azure Cosmos DB for Apache Cassandra in front of a real Cassandra.
//!
//! It behaves as Cosmos does according to its public documentation, where the proxy can tell:
//!
//! * TLS on its front (a certificate from the test CA for 127.0.0.1), plain or TLS behind it.
//! * Protocol v4 only: any other version is refused with ERROR 0x000A `Invalid or unsupported
//!   protocol version (N); supported versions are (4/v4)`, so drivers downgrade.
//! * A STARTUP asking for compression is refused (0x000A, `Cql request had unsupported headers
//!   Compression`, what gocql users report from Cosmos).
//! * The login: `PasswordAuthenticator`; the user must be the account name and the password an
//!   account key (unless local auth is disabled: then Cosmos's `Local Authorization is
//!   disabled. Use an AAD token to authorize all requests.`) or an Entra access token that the
//!   fake Entra issued for `https://cosmos.azure.com` (RBAC); a token for another audience, or
//!   an expired one, is refused with 0x0100. See [`LoginCheck`] and
//!   [`FakeAzure::cosmos_login_check`](crate::azure::FakeAzure::cosmos_login_check). The
//!   exact refusal texts of real Cosmos for tokens are not documented; these say what is wrong.
//!   The stand-in then logs in to Cassandra itself with the account role's real password.
//! * Throttling: a configurable fraction of QUERY / EXECUTE / BATCH requests (each drawn at
//!   random; 1.0 is every one) is answered with Cosmos's request-rate Overloaded
//!   (0x1001, `Request rate is large: ActivityID=…, RetryAfterMs=N, Additional details='…`)
//!   and not forwarded.
//! * Request charge: every RESULT carries a custom payload (flag 0x04) `{"RequestCharge":
//!   <8-byte big-endian double>}`. Charges are multiples of 0.25 so that sums are exact in
//!   any order, and their running total is [`CosmosStandin::charged`].

mod conn;
pub(crate) mod wire;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::certs::TestCa;

/// Decides whether a login is accepted: `(user, password)` → `Ok`, or the refusal's message.
pub type LoginCheck = Arc<dyn Fn(&str, &str) -> Result<(), String> + Send + Sync>;

/// How to start a [`CosmosStandin`].
#[derive(Clone)]
pub struct CosmosConfig {
    /// The real Cassandra's native port.
    pub upstream: SocketAddr,
    /// TLS to it (None: plain).
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// The role the stand-in logs in to Cassandra as, and its real password.
    pub upstream_login: (String, String),
    /// Who may log in to the stand-in.
    pub login: LoginCheck,
    /// Fraction of QUERY / EXECUTE / BATCH answered with the request-rate Overloaded.
    pub throttle: f64,
    /// The `RetryAfterMs` of those answers.
    pub retry_after_ms: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    /// (fraction, unused) of the throttle.
    throttle: Mutex<(f64, f64)>,
    retry_after_ms: AtomicU64,
    throttled: AtomicU64,
    forwarded: AtomicU64,
    charged: Mutex<f64>,
    logins: AtomicU64,
    refused_logins: Mutex<Vec<String>>,
}

impl Stats {
    /// True if this request is to be throttled.
    pub(crate) fn throttle_next(&self) -> bool {
        let fraction = self.throttle.lock().unwrap_or_else(|p| p.into_inner()).0;
        if fraction >= 1.0 || rand::random::<f64>() < fraction {
            self.throttled.fetch_add(1, Ordering::SeqCst);
            true
        } else {
            self.forwarded.fetch_add(1, Ordering::SeqCst);
            false
        }
    }

    pub(crate) fn charge(&self, c: f64) {
        *self.charged.lock().unwrap_or_else(|p| p.into_inner()) += c;
    }
}

/// The running stand-in; stops on drop.
pub struct CosmosStandin {
    addr: SocketAddr,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for CosmosStandin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosmosStandin")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl CosmosStandin {
    /// Listens on a free port of 127.0.0.1 with a certificate from `ca`.
    pub async fn start(ca: &TestCa, config: CosmosConfig) -> anyhow::Result<CosmosStandin> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the Cosmos stand-in")?;
        let addr = listener.local_addr()?;
        let tls = tokio_rustls::TlsAcceptor::from(
            ca.try_server_cert(&["127.0.0.1", "localhost"])?
                .rustls_server_config()?,
        );
        let stats = Arc::new(Stats::default());
        *stats.throttle.lock().unwrap_or_else(|p| p.into_inner()) = (config.throttle, 0.0);
        stats
            .retry_after_ms
            .store(config.retry_after_ms, Ordering::SeqCst);
        let config = Arc::new(config);
        let s = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (tls, config, stats) = (tls.clone(), config.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    if let Ok(stream) = tls.accept(tcp).await {
                        conn::serve(stream, config, stats).await;
                    }
                });
            }
        });
        Ok(CosmosStandin { addr, stats, task })
    }

    /// Where drivers (or the proxy) connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the throttled fraction (0.0 ..= 1.0) from now on.
    pub fn set_throttle(&self, fraction: f64) {
        *self
            .stats
            .throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (fraction, 0.0);
    }

    /// Changes the `RetryAfterMs` of later throttling answers.
    pub fn set_retry_after_ms(&self, ms: u64) {
        self.stats.retry_after_ms.store(ms, Ordering::SeqCst);
    }

    /// Requests answered with the request-rate Overloaded so far.
    pub fn throttled(&self) -> u64 {
        self.stats.throttled.load(Ordering::SeqCst)
    }

    /// QUERY / EXECUTE / BATCH requests forwarded to Cassandra so far.
    pub fn forwarded(&self) -> u64 {
        self.stats.forwarded.load(Ordering::SeqCst)
    }

    /// The sum of the request charges put on responses so far.
    pub fn charged(&self) -> f64 {
        *self.stats.charged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logins accepted so far.
    pub fn logins(&self) -> u64 {
        self.stats.logins.load(Ordering::SeqCst)
    }

    /// The messages of the logins refused so far.
    pub fn refused_logins(&self) -> Vec<String> {
        self.stats
            .refused_logins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for CosmosStandin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Cosmos's request-rate Overloaded message, shaped as in the Cosmos docs and the Java
/// extension's retry policy (the quote after `details=` is never closed in real logs).
pub fn request_rate_message(retry_after_ms: u64) -> String {
    let a = crate::tokens::random_guid();
    format!(
        "Request rate is large: ActivityID={a}, RetryAfterMs={retry_after_ms}, Additional details='Response status code does not indicate success: TooManyRequests (429); Substatus: 3200; ActivityId: {a}; Reason: ({{ \"Errors\": [ \"Request rate is large. More Request Units may be needed, so no changes were made. Please retry this request later. Learn more: http://aka.ms/cosmosdb-error-429\" ] }});"
    )
}

/// The charge the stand-in puts on a RESULT with a body of `body_len` bytes.
pub(crate) fn charge_for(body_len: usize) -> f64 {
    1.0 + (body_len % 16) as f64 * 0.25
}
