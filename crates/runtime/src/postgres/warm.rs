//! Warm upstream sessions: a listener with `warm_sessions = N` keeps N upstream sessions
//! logged in (as its Entra user, to its default database) so that a client connecting to that
//! database is served at once instead of waiting for TLS and a login.
//!
//! - **Filled in the background** ([`PostgresService::spawn_warm`]): up to N logins at once,
//!   through the same path as a cold session ([`PostgresService::attempt`] under
//!   [`session::login_with_retry`]); the greeting (AuthenticationOk through ReadyForQuery) is
//!   captured ([`Greeting`]), then the backend is primed (`prime_request`: the hand-over's
//!   statement parsed, a setting read) so its first-statement costs are paid before a client
//!   waits. A failed login backs off (200 ms doubling to 30 s, with jitter).
//! - **Retired** before `warm_session_max_age` (each at a random point in its last quarter, so
//!   they do not all go at once), and discarded as soon as the server closes one or sends it
//!   anything ([`Connector::idle_closed`], checked every second and before every hand-over).
//! - **Handed over** ([`PostgresService::take_warm`]) to a client that names the default
//!   database (or none) with protocol 3.0 and parameters that can be applied exactly
//!   ([`dbproxy_postgres::warm::plan`]): they are set in one round trip, and the client gets
//!   the captured greeting with the server's own reports for what changed, BackendKeyData (so
//!   cancel works unchanged) and ReadyForQuery. Anything else takes the cold path, counted as
//!   a miss by reason. One client per session: it is closed when the client leaves.
//! - **Deferred apply**: when the settings are only an `application_name` PostgreSQL keeps as
//!   sent ([`dbproxy_postgres::warm::predicted_reports`]; pgbench, psql and most libpq apps
//!   send just that), the apply is sent upstream and the greeting goes to the client at once,
//!   with the predicted report; the apply's answer is read before the client's first query
//!   is relayed ([`PostgresService::confirm_handover`]) and must match the prediction byte for
//!   byte, else the client gets a FATAL error instead of a session that differs from a cold
//!   one. The client's connect saves the round trip.

use std::{
    collections::VecDeque,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::BytesMut;
use dbproxy_postgres::{
    ProtocolVersion,
    startup::StartupMessage,
    warm::{
        ApplyReader, Greeting, Miss, Reports, apply_request, plan, predicted_reports, prime_request,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Notify,
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{HINT_CREDENTIAL, PostgresService, fatal};
use crate::{
    escape::Escaped,
    session::{self, CloseReason},
    upstream::Connector,
};

/// A listener's warm-session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmSettings {
    /// Sessions kept ready (0: off).
    pub sessions: usize,
    /// A session is closed unused before it is this old.
    pub max_age: Duration,
}

/// `warm_session_max_age` when not set.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

impl Default for WarmSettings {
    fn default() -> Self {
        WarmSettings {
            sessions: 0,
            max_age: DEFAULT_MAX_AGE,
        }
    }
}

/// How often ready sessions are checked for a server close and for age.
const TICK: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A logged-in upstream session waiting for a client.
struct Warm<S> {
    stream: S,
    greeting: Greeting,
    retire_at: Instant,
}

/// A warm session taken for one client.
pub(crate) struct Handover<S> {
    /// The upstream session.
    pub stream: S,
    /// What the client is sent: AuthenticationOk through ReadyForQuery.
    pub greeting: BytesMut,
    /// An apply already sent whose answer is still to be read and checked.
    pending: Option<Pending>,
}

/// A deferred apply: the captured greeting and the reports predicted for it.
struct Pending {
    captured: Greeting,
    predicted: Reports,
}

/// A listener's ready sessions.
pub struct WarmPool<S> {
    settings: WarmSettings,
    ready: Mutex<VecDeque<Warm<S>>>,
    wake: Notify,
}

impl<S> WarmPool<S> {
    /// A pool with these settings (empty until [`PostgresService::spawn_warm`] fills it).
    pub fn new(settings: WarmSettings) -> WarmPool<S> {
        WarmPool {
            settings,
            ready: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> WarmSettings {
        self.settings
    }

    /// Sessions ready now.
    pub(crate) fn len(&self) -> usize {
        self.ready.lock().map_or(0, |r| r.len())
    }
}

impl<S> Default for WarmPool<S> {
    fn default() -> Self {
        WarmPool::new(WarmSettings::default())
    }
}

/// A random fraction in [0, 1) (jitter; no cryptographic use).
fn random_unit() -> f64 {
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Why a client was not handed a warm session: the metric's label.
fn miss_label(miss: Miss) -> &'static str {
    match miss {
        Miss::Startup => "startup",
        Miss::Options => "options",
        Miss::Parameter => "parameter",
    }
}

impl<C: Connector> PostgresService<C> {
    /// Starts filling the warm pool (when `warm_sessions` > 0) until `stop` is cancelled; then
    /// the ready sessions are closed.
    pub fn spawn_warm(self: &Arc<Self>, stop: CancellationToken) {
        if self.warm.settings.sessions > 0 {
            tokio::spawn(self.clone().replenish(stop));
        }
    }

    async fn replenish(self: Arc<Self>, stop: CancellationToken) {
        let want = self.warm.settings.sessions;
        let mut logins = JoinSet::new();
        let mut backoff = BACKOFF_FIRST;
        let mut retry_at: Option<Instant> = None;
        let mut failing = false;
        loop {
            self.prune();
            let now = Instant::now();
            if retry_at.is_none_or(|t| now >= t) {
                retry_at = None;
                while self.warm.len() + logins.len() < want {
                    let svc = self.clone();
                    logins.spawn(async move { svc.warm_login().await });
                }
            }
            let next_tick = retry_at.map_or(now + TICK, |t| t.min(now + TICK));
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(done) = logins.join_next(), if !logins.is_empty() => match done {
                    Ok(Ok(warm)) => {
                        if failing {
                            tracing::info!(listener = %self.name, "warm sessions: logging in again");
                        }
                        failing = false;
                        backoff = BACKOFF_FIRST;
                        if let Ok(mut ready) = self.warm.ready.lock() {
                            ready.push_back(warm);
                            self.metrics.set_warm_ready(ready.len());
                        }
                    }
                    Ok(Err(e)) => {
                        let wait = backoff.mul_f64(0.5 + 0.5 * random_unit());
                        if failing {
                            tracing::debug!(listener = %self.name, error = %Escaped(&e), "warm session login failed again");
                        } else {
                            tracing::warn!(
                                listener = %self.name,
                                error = %Escaped(&e),
                                retry_in_ms = wait.as_millis() as u64,
                                "warm session login failed; clients take the cold path until it succeeds"
                            );
                        }
                        failing = true;
                        retry_at = Some(Instant::now() + wait);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                    Err(e) => tracing::error!(listener = %self.name, error = %e, "warm session login task failed"),
                },
                _ = self.warm.wake.notified() => {}
                _ = tokio::time::sleep_until(next_tick) => {}
            }
        }
        logins.abort_all();
        let closing: Vec<_> = match self.warm.ready.lock() {
            Ok(mut ready) => ready.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        self.metrics.set_warm_ready(0);
        for warm in closing {
            terminate(warm.stream).await;
        }
    }

    /// Closes ready sessions the server closed (or wrote to) and those due to retire.
    fn prune(&self) {
        let now = Instant::now();
        let mut aged = Vec::new();
        if let Ok(mut ready) = self.warm.ready.lock() {
            let mut keep = VecDeque::with_capacity(ready.len());
            for mut warm in ready.drain(..) {
                if now >= warm.retire_at {
                    self.metrics.warm_discarded("aged");
                    aged.push(warm.stream);
                } else if C::idle_closed(&mut warm.stream) {
                    self.metrics.warm_discarded("closed");
                } else {
                    keep.push_back(warm);
                }
            }
            *ready = keep;
            self.metrics.set_warm_ready(ready.len());
        }
        if !aged.is_empty() {
            tokio::spawn(async move {
                for stream in aged {
                    terminate(stream).await;
                }
            });
        }
    }

    /// One warm login: the listener's user, its default database, no client parameters.
    async fn warm_login(&self) -> Result<Warm<C::Stream>, String> {
        let startup = self.upstream_startup(StartupMessage::new(ProtocolVersion::V3_0));
        let no_password = |e: String| {
            fatal(
                CloseReason::Credential,
                dbproxy_postgres::sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("no Entra ID token: {e}"),
                Some(HINT_CREDENTIAL),
            )
        };
        let (mut stream, mut buf) = session::login_with_retry(
            self.credential.as_ref(),
            2,
            self.handshake_timeout,
            no_password,
            |password| self.attempt(startup.clone(), password.expose().as_bytes().to_vec()),
        )
        .await
        .map_err(|e| e.message)?;
        let mut greeting = Greeting::new();
        let read = async {
            while !greeting.feed(&mut buf).map_err(|e| e.to_string())? {
                if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("the server closed the session after login".to_owned());
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.handshake_timeout, read).await {
            Ok(Ok(())) if buf.is_empty() => {}
            Ok(Ok(())) => return Err("the server sent more after ReadyForQuery".into()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("no ReadyForQuery within the handshake timeout".into()),
        }
        // Prime the new backend (`prime_request`: parse the hand-over's statement, run a read
        // of a setting) so that a backend's first-statement costs (milliseconds: catalog
        // lookups, the executor's first run; docs/PERFORMANCE.md) are paid now, not while a
        // client waits. Nothing is changed or kept.
        match self.exchange(&mut stream, prime_request()).await {
            Ok(changed) if changed.is_empty() => {}
            Ok(_) => return Err("the server reported a parameter while priming".into()),
            Err(e) => return Err(format!("priming: {e}")),
        }
        let max_age = self.warm.settings.max_age;
        let lifetime = max_age.mul_f64(0.75 + 0.25 * random_unit());
        Ok(Warm {
            stream,
            greeting,
            retire_at: Instant::now() + lifetime,
        })
    }

    /// A warm session for a client whose startup (as it would go upstream) is `startup`, with
    /// its parameters applied, and the greeting to send the client; `None` (a miss, counted)
    /// when it must take the cold path. Counts nothing when warm sessions are off.
    pub(crate) async fn take_warm(&self, startup: &StartupMessage) -> Option<Handover<C::Stream>> {
        if self.warm.settings.sessions == 0 {
            return None;
        }
        let miss = |reason: &'static str| {
            self.metrics.warm_miss(reason);
            None
        };
        let database = self.default_database.as_deref().map(str::as_bytes);
        if startup.get("database") != database {
            return miss("database");
        }
        let Some(mut warm) = self.pop_live() else {
            return miss("empty");
        };
        let utf8 = [
            warm.greeting.parameter("client_encoding"),
            warm.greeting.parameter("server_encoding"),
        ]
        .iter()
        .all(|e| *e == Some(b"UTF8"));
        let settings = match plan(startup, utf8) {
            Ok(settings) => settings,
            Err(m) => {
                // Untouched: back to the front for the next client.
                if let Ok(mut ready) = self.warm.ready.lock() {
                    ready.push_front(warm);
                    self.metrics.set_warm_ready(ready.len());
                }
                return miss(miss_label(m));
            }
        };
        let apply_failed = |e: String| {
            tracing::debug!(error = %Escaped(&e), "parameters not applied to a warm session; cold path");
            self.metrics.warm_discarded("apply_failed");
            self.warm.wake.notify_one();
            self.metrics.warm_miss("apply_failed");
        };
        let (changed, pending) = match predicted_reports(&settings) {
            _ if settings.is_empty() => (Vec::new(), None),
            Some(predicted) => {
                // Sent now, read in `confirm_handover` once the client has its greeting.
                if let Err(e) = send(&mut warm.stream, apply_request(&settings)).await {
                    apply_failed(e);
                    return None;
                }
                let pending = Pending {
                    captured: warm.greeting.clone(),
                    predicted: predicted.clone(),
                };
                (predicted, Some(pending))
            }
            None => match self.apply(&mut warm.stream, &settings).await {
                Ok(changed) => (changed, None),
                Err(e) => {
                    apply_failed(e);
                    return None;
                }
            },
        };
        // The refill starts once this client has its session: a login's TLS handshake is CPU
        // work on the same runtime, and would delay this hand-over's round trip.
        self.warm.wake.notify_one();
        self.metrics.warm_hit();
        Some(Handover {
            stream: warm.stream,
            greeting: warm.greeting.render(&changed),
            pending,
        })
    }

    /// After the client got `handover.greeting`: reads the answer of a deferred apply and
    /// checks that the greeting the server's own reports make is the one the client was sent.
    /// An error means the session is not what a cold login would have given: the client must
    /// be closed.
    pub(crate) async fn confirm_handover(
        &self,
        handover: &mut Handover<C::Stream>,
    ) -> Result<(), String> {
        let Some(pending) = handover.pending.take() else {
            return Ok(());
        };
        let reports =
            tokio::time::timeout(self.handshake_timeout, read_reports(&mut handover.stream))
                .await
                .unwrap_or_else(|_| Err("no answer within the handshake timeout".to_owned()))?;
        if pending.captured.render(&reports) != pending.captured.render(&pending.predicted) {
            return Err(
                "the server reported the applied parameters otherwise than predicted".to_owned(),
            );
        }
        Ok(())
    }

    /// The oldest ready session that is still usable (others are dropped on the way).
    fn pop_live(&self) -> Option<Warm<C::Stream>> {
        let now = Instant::now();
        let mut ready = self.warm.ready.lock().ok()?;
        let mut found = None;
        while let Some(mut warm) = ready.pop_front() {
            if now >= warm.retire_at {
                self.metrics.warm_discarded("aged");
            } else if C::idle_closed(&mut warm.stream) {
                self.metrics.warm_discarded("closed");
            } else {
                found = Some(warm);
                break;
            }
        }
        self.metrics.set_warm_ready(ready.len());
        found
    }

    /// Applies `settings` in one round trip; returns the server's ParameterStatus reports.
    async fn apply(
        &self,
        stream: &mut C::Stream,
        settings: &[(String, String)],
    ) -> Result<dbproxy_postgres::warm::Reports, String> {
        self.exchange(stream, apply_request(settings)).await
    }

    /// Sends `request` (an [`apply_request`] or a [`prime_request`]) and reads its answer.
    async fn exchange(
        &self,
        stream: &mut C::Stream,
        request: BytesMut,
    ) -> Result<dbproxy_postgres::warm::Reports, String> {
        let exchange = async {
            send(stream, request).await?;
            read_reports(stream).await
        };
        tokio::time::timeout(self.handshake_timeout, exchange)
            .await
            .unwrap_or_else(|_| Err("no answer within the handshake timeout".to_owned()))
    }
}

/// Writes an [`apply_request`] or a [`prime_request`].
async fn send<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    request: BytesMut,
) -> Result<(), String> {
    stream
        .write_all(&request)
        .await
        .map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}

/// Reads the answer to an [`apply_request`] or a [`prime_request`]: the ParameterStatus
/// reports, up to ReadyForQuery (nothing may follow it).
async fn read_reports<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<Reports, String> {
    let mut reader = ApplyReader::new();
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some(changed) = reader.feed(&mut buf).map_err(|e| e.to_string())? {
            if !buf.is_empty() {
                return Err("the server sent more after ReadyForQuery".to_owned());
            }
            return Ok(changed);
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the server closed the session".to_owned());
        }
    }
}

/// Ends an unused session politely: Terminate, then close (bounded).
async fn terminate<S: tokio::io::AsyncWrite + Unpin>(mut stream: S) {
    let bye = async {
        let _ = stream.write_all(&[b'X', 0, 0, 0, 4]).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
}
