//! Cosmos DB account keys as the database password (Azure Cosmos DB for Apache Cassandra).
//!
//! The Cassandra API takes an account key as the password. [`CosmosKeySource`] obtains it with
//! an Entra identity: an access token for ARM (`https://management.azure.com/.default`, from a
//! [`TokenCache`]) and
//!
//! ```text
//! POST https://management.azure.com/subscriptions/{sub}/resourceGroups/{rg}/providers/
//!      Microsoft.DocumentDB/databaseAccounts/{account}/listKeys?api-version=2021-04-15
//! Authorization: Bearer <ARM token>
//! Content-Length: 0
//! ```
//!
//! (Service Connector puts that URL into `AZURE_COSMOS_LISTKEYURL`.) The answer is
//! `{"primaryMasterKey","secondaryMasterKey","primaryReadonlyMasterKey","secondaryReadonlyMasterKey"}`;
//! read-only kinds POST `…/readonlykeys` instead (same query string), which answers with the
//! read-only pair only. The key kind chosen ([`CosmosKeyKind`]) is tried first and the other
//! key of its pair is the fallback.
//!
//! * Retries: 429 honours `Retry-After` (seconds), 5xx and transport errors back off
//!   exponentially; at most 4 requests and 30 s of waiting per fetch. A 401
//!   (`ExpiredAuthenticationToken` / `InvalidAuthenticationToken`) invalidates the ARM token in
//!   its cache and retries once with a fresh one. A 403 names the missing permission
//!   (`Microsoft.DocumentDB/databaseAccounts/listKeys/action`, or `…/readonlykeys/action`).
//! * Caching: like [`TokenCache`], concurrent callers share one fetch (single-flight, in its
//!   own task so a caller giving up does not cancel it), and [`PasswordSource::password`]
//!   never waits while a key is cached. Keys do not expire: a key is used until the database
//!   refuses it or the periodic refresh ([`CosmosKeySource::spawn_refresher`], hourly by
//!   default) brings different keys. A failed refresh keeps serving the old key and is
//!   reported in [`CacheStatus::last_error`].
//! * Rejections ([`PasswordSource::after_rejection`]): the keys are fetched again (they may
//!   have been rotated). The current key stays while it is in the fetched pair and was not
//!   refused; otherwise the kind's key, then the other key of the pair; `None` once both were
//!   refused. Refusals are remembered for a minute, so a transient refusal heals.
//! * Keys are [`Secret`]s: never in `Debug`, errors or logs; ARM error messages are scrubbed
//!   of the token and of known keys.

use std::{
    str::FromStr,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use reqwest::{
    StatusCode,
    header::{ACCEPT, CONTENT_LENGTH},
};
use serde_json::Value;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use url::Url;

use crate::{
    cache::{CacheStatus, RefreshPolicy, TokenCache, backoff},
    error::{CredentialError, describe_reqwest, endpoint_of},
    password::PasswordSource,
    secret::Secret,
    wire::parse_error_body,
};

/// The scope of the ARM token used to list keys (the default of `AZURE_COSMOS_SCOPE`).
pub const COSMOS_ARM_SCOPE: &str = "https://management.azure.com/.default";

/// The default interval of the periodic key refresh.
pub const DEFAULT_KEY_REFRESH: Duration = Duration::from_secs(3600);

/// Most requests per key fetch (the ARM token retry after a 401 included).
const MAX_ATTEMPTS: u32 = 4;

/// The `api-version` added when the listKeys URL has none.
const DEFAULT_API_VERSION: &str = "2021-04-15";
/// Longest total wait between the attempts of one fetch.
const MAX_TOTAL_WAIT: Duration = Duration::from_secs(30);
/// Limit for one whole fetch (attempts, waits and the ARM token included).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a refused key is remembered.
const REFUSAL_MEMORY: Duration = Duration::from_secs(60);
/// Right after a failed fetch, `password()` reports that failure again for this long.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Retry schedule of the refresher after a failed fetch.
const REFRESHER_BACKOFF: RefreshPolicy = RefreshPolicy {
    refresh_before: Duration::ZERO,
    min_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
    timeout: FETCH_TIMEOUT,
};

/// Which account key is the password (the other key of the same pair is the fallback).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CosmosKeyKind {
    /// `primaryMasterKey` (fallback `secondaryMasterKey`).
    #[default]
    Primary,
    /// `secondaryMasterKey` (fallback `primaryMasterKey`).
    Secondary,
    /// `primaryReadonlyMasterKey` from `…/readonlykeys` (fallback `secondaryReadonlyMasterKey`).
    ReadOnlyPrimary,
    /// `secondaryReadonlyMasterKey` from `…/readonlykeys` (fallback `primaryReadonlyMasterKey`).
    ReadOnlySecondary,
}

impl CosmosKeyKind {
    /// True for the read-only kinds (fetched from `…/readonlykeys`).
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            CosmosKeyKind::ReadOnlyPrimary | CosmosKeyKind::ReadOnlySecondary
        )
    }

    /// The configuration spelling: `primary`, `secondary`, `readonly-primary`, `readonly-secondary`.
    pub fn as_str(self) -> &'static str {
        match self {
            CosmosKeyKind::Primary => "primary",
            CosmosKeyKind::Secondary => "secondary",
            CosmosKeyKind::ReadOnlyPrimary => "readonly-primary",
            CosmosKeyKind::ReadOnlySecondary => "readonly-secondary",
        }
    }

    /// (the kind's key field, the fallback's field) in the ARM answer.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            CosmosKeyKind::Primary => ("primaryMasterKey", "secondaryMasterKey"),
            CosmosKeyKind::Secondary => ("secondaryMasterKey", "primaryMasterKey"),
            CosmosKeyKind::ReadOnlyPrimary => {
                ("primaryReadonlyMasterKey", "secondaryReadonlyMasterKey")
            }
            CosmosKeyKind::ReadOnlySecondary => {
                ("secondaryReadonlyMasterKey", "primaryReadonlyMasterKey")
            }
        }
    }

    /// The last path segment of the ARM action.
    fn action(self) -> &'static str {
        if self.is_read_only() {
            "readonlykeys"
        } else {
            "listKeys"
        }
    }
}

impl std::fmt::Display for CosmosKeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CosmosKeyKind {
    type Err = String;

    /// Accepts the [`as_str`](Self::as_str) spellings, case-insensitively, with `-`, `_` or
    /// nothing between the words (`readonly` may also be `read-only`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .collect::<String>()
            .to_ascii_lowercase();
        match norm.as_str() {
            "primary" => Ok(CosmosKeyKind::Primary),
            "secondary" => Ok(CosmosKeyKind::Secondary),
            "readonlyprimary" | "primaryreadonly" => Ok(CosmosKeyKind::ReadOnlyPrimary),
            "readonlysecondary" | "secondaryreadonly" => Ok(CosmosKeyKind::ReadOnlySecondary),
            _ => Err(format!(
                "unknown Cosmos DB key kind {s:?} (expected primary, secondary, readonly-primary or readonly-secondary)"
            )),
        }
    }
}

/// The URL to POST for `kind`: `list_keys_url` with its last segment set to the kind's action
/// (`listKeys` or `readonlykeys`; appended if the URL names the account itself) and an
/// `api-version` if it has none.
fn key_url(list_keys_url: &Url, kind: CosmosKeyKind) -> Url {
    let mut u = list_keys_url.clone();
    let last = u
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("")
        .to_owned();
    if let Ok(mut segs) = u.path_segments_mut() {
        if last.eq_ignore_ascii_case("listKeys") || last.eq_ignore_ascii_case("readonlykeys") {
            segs.pop();
        } else {
            segs.pop_if_empty();
        }
        segs.push(kind.action());
    }
    if !u.query_pairs().any(|(k, _)| k == "api-version") {
        u.query_pairs_mut()
            .append_pair("api-version", DEFAULT_API_VERSION);
    }
    u
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp.headers().get(reqwest::header::RETRY_AFTER)?;
    v.to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// The kind's key and the other key of its pair.
#[derive(Clone)]
struct Pair {
    preferred: Secret,
    other: Option<Secret>,
}

impl Pair {
    fn keys(&self) -> impl Iterator<Item = &Secret> {
        std::iter::once(&self.preferred).chain(self.other.iter())
    }

    fn contains(&self, k: &Secret) -> bool {
        self.keys().any(|x| x == k)
    }
}

impl PartialEq for Pair {
    fn eq(&self, o: &Self) -> bool {
        self.preferred == o.preferred && self.other == o.other
    }
}

type Outcome = Option<Result<(), CredentialError>>;

#[derive(Default)]
struct State {
    pair: Option<Pair>,
    /// The key `password()` answers with.
    current: Option<Secret>,
    /// Keys the database refused, and when.
    refused: Vec<(Secret, Instant)>,
    inflight: Option<watch::Receiver<Outcome>>,
    /// When keys were last obtained.
    fetched_at: Option<Instant>,
    last_success: Option<SystemTime>,
    last_error: Option<CredentialError>,
    last_failure_at: Option<Instant>,
    retry_at: Option<Instant>,
    consecutive_failures: u32,
    refreshes_ok: u64,
    refreshes_failed: u64,
}

impl State {
    fn is_refused(&self, k: &Secret) -> bool {
        self.refused.iter().any(|(r, _)| r == k)
    }

    fn forget_old_refusals(&mut self, now: Instant) {
        self.refused
            .retain(|(_, at)| now.saturating_duration_since(*at) < REFUSAL_MEMORY);
    }

    /// The current key while it is in the pair and not refused, else the first key of the
    /// pair that was not refused.
    fn choose(&self) -> Option<Secret> {
        let pair = self.pair.as_ref()?;
        if let Some(c) = &self.current {
            if pair.contains(c) && !self.is_refused(c) {
                return Some(c.clone());
            }
        }
        pair.keys().find(|k| !self.is_refused(k)).cloned()
    }
}

struct Inner {
    token: Arc<TokenCache>,
    url: Url,
    kind: CosmosKeyKind,
    http: reqwest::Client,
    refresh_every: Duration,
    /// First delay after a 5xx or transport error (doubles, with jitter).
    retry_base: Duration,
    state: Mutex<State>,
}

/// Shared between the source and its refresher, outliving both.
struct Signal {
    wake: Notify,
    closed: AtomicBool,
}

/// A Cosmos DB account key, fetched from ARM with an Entra token (see the module notes).
pub struct CosmosKeySource {
    inner: Arc<Inner>,
    signal: Arc<Signal>,
}

impl std::fmt::Debug for CosmosKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosmosKeySource")
            .field("kind", &self.inner.kind)
            .field("url", &endpoint_of(&self.inner.url))
            .field("token", &self.inner.token)
            .field("refresh_every", &self.inner.refresh_every)
            .finish_non_exhaustive()
    }
}

impl Drop for CosmosKeySource {
    fn drop(&mut self) {
        self.signal.closed.store(true, Ordering::SeqCst);
        self.signal.wake.notify_one();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data behind: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn describe(&self) -> String {
        format!(
            "Cosmos DB {} key from {} (ARM token: {})",
            self.kind,
            endpoint_of(&self.url),
            self.token.describe()
        )
    }

    /// The fetch in progress, or a new one (in its own task).
    fn flight(self: &Arc<Self>, st: &mut State) -> watch::Receiver<Outcome> {
        if let Some(rx) = &st.inflight {
            // A dropped sender means the task died without an answer: start over.
            if rx.has_changed().is_ok() {
                return rx.clone();
            }
        }
        let (tx, rx) = watch::channel(None);
        st.inflight = Some(rx.clone());
        let inner = self.clone();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(FETCH_TIMEOUT, inner.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(CredentialError::Timeout {
                    who: inner.describe(),
                    after: FETCH_TIMEOUT,
                }),
            };
            let outcome = {
                let mut st = inner.lock();
                st.inflight = None;
                inner.record(&mut st, result)
            };
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    fn record(
        &self,
        st: &mut State,
        result: Result<Pair, CredentialError>,
    ) -> Result<(), CredentialError> {
        let now = Instant::now();
        match result {
            Ok(pair) => {
                let changed = st.pair.as_ref().is_some_and(|p| p != &pair);
                st.forget_old_refusals(now);
                st.refused.retain(|(k, _)| pair.contains(k));
                st.pair = Some(pair);
                let before = st.current.clone();
                match st.choose() {
                    Some(k) => st.current = Some(k),
                    None => {
                        // Both keys were refused: keep answering with one of them.
                        let pair = st.pair.as_ref().expect("just set");
                        if !st.current.as_ref().is_some_and(|c| pair.contains(c)) {
                            st.current = Some(pair.preferred.clone());
                        }
                    }
                }
                st.fetched_at = Some(now);
                st.last_success = Some(SystemTime::now());
                st.last_error = None;
                st.retry_at = None;
                st.consecutive_failures = 0;
                st.refreshes_ok += 1;
                let which = match &st.pair {
                    Some(p) if st.current.as_ref() == Some(&p.preferred) => "the configured key",
                    _ => "the other key of the pair",
                };
                tracing::info!(
                    source = %self.describe(),
                    keys_changed = changed,
                    key_switched = before.is_some() && before != st.current,
                    using = which,
                    "Cosmos DB account keys obtained"
                );
                Ok(())
            }
            Err(e) => {
                st.refreshes_failed += 1;
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                st.last_error = Some(e.clone());
                st.last_failure_at = Some(now);
                let delay = backoff(&REFRESHER_BACKOFF, st.consecutive_failures);
                st.retry_at = Some(now + delay);
                tracing::warn!(
                    source = %self.describe(),
                    error = %e,
                    failures = st.consecutive_failures,
                    keeps_old_key = st.current.is_some(),
                    retry_in_ms = delay.as_millis() as u64,
                    "Cosmos DB account key fetch failed"
                );
                Err(e)
            }
        }
    }

    /// Values to scrub from ARM's error messages.
    fn known_keys(&self) -> Vec<Secret> {
        let st = self.lock();
        let mut v: Vec<Secret> = st.pair.iter().flat_map(|p| p.keys().cloned()).collect();
        v.extend(st.current.iter().cloned());
        v
    }

    fn retry_delay(&self, attempt: u32) -> Duration {
        let policy = RefreshPolicy {
            min_backoff: self.retry_base,
            max_backoff: self.retry_base.saturating_mul(8),
            ..RefreshPolicy::default()
        };
        backoff(&policy, attempt)
    }

    fn permission(&self) -> String {
        format!(
            "Microsoft.DocumentDB/databaseAccounts/{}/action",
            self.kind.action()
        )
    }

    fn hint(&self, status: StatusCode) -> String {
        match status.as_u16() {
            401 => format!(
                "ARM refused the access token even after fetching a new one: check that the token is for {COSMOS_ARM_SCOPE} (AZURE_COSMOS_SCOPE) and that the identity belongs to the subscription's tenant"
            ),
            403 => {
                let roles = if self.kind.is_read_only() {
                    "\"Cosmos DB Account Reader Role\" or \"DocumentDB Account Contributor\""
                } else {
                    "\"DocumentDB Account Contributor\" (\"Cosmos DB Account Reader Role\" grants only …/readonlykeys/action: use a read-only key kind with it)"
                };
                format!(
                    "the identity lacks the permission {} on the Cosmos DB account: assign it a role that includes it on the account, such as {roles}",
                    self.permission()
                )
            }
            404 => "the Cosmos DB account or the listKeys URL was not found: check AZURE_COSMOS_LISTKEYURL (subscription, resource group, account name, api-version)".into(),
            429 => format!("ARM kept throttling the request (gave up after {MAX_ATTEMPTS} attempts or 30 s of waiting)"),
            s if s >= 500 => format!("ARM kept failing (gave up after {MAX_ATTEMPTS} attempts)"),
            _ => "check AZURE_COSMOS_LISTKEYURL and the identity's role on the account".into(),
        }
    }

    /// Fetches the key pair, with retries (see the module notes).
    async fn fetch(&self) -> Result<Pair, CredentialError> {
        let who = self.describe();
        let endpoint = endpoint_of(&self.url);
        if self.url.scheme() != "https" && !(self.url.scheme() == "http" && is_loopback(&self.url))
        {
            return Err(CredentialError::config(
                who,
                format!("the listKeys URL {endpoint} must be an https URL"),
            ));
        }
        let mut waited = Duration::ZERO;
        let mut reauthorized = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let token = self.token.get().await?;
            let sent = self
                .http
                .post(self.url.clone())
                .bearer_auth(token.token.expose())
                .header(ACCEPT, "application/json")
                .header(CONTENT_LENGTH, 0)
                .body(Vec::new())
                .send()
                .await;
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let wait = retry_after(&resp);
                    resp.bytes().await.map(|b| (status, wait, b))
                }
                Err(e) => Err(e),
            };
            let (failure, delay) = match answer {
                Err(e) => (
                    CredentialError::Transport {
                        who: who.clone(),
                        endpoint: endpoint.clone(),
                        message: describe_reqwest(e),
                    },
                    Some(self.retry_delay(attempt)),
                ),
                Ok((status, _, body)) if status.is_success() => {
                    return self.parse(&body, &who, &endpoint);
                }
                Ok((status, wait, body)) => {
                    let mut secrets = self.known_keys();
                    secrets.push(token.token.clone());
                    let secrets: Vec<&str> = secrets.iter().map(Secret::expose).collect();
                    let (code, message) = parse_error_body(&body, &secrets);
                    if status == StatusCode::UNAUTHORIZED && !reauthorized {
                        reauthorized = true;
                        tracing::info!(
                            source = %who,
                            code = %code,
                            "ARM refused the access token; fetching a new one"
                        );
                        self.token.invalidate(&token.token);
                        continue;
                    }
                    let delay = if status == StatusCode::TOO_MANY_REQUESTS {
                        Some(wait.unwrap_or_else(|| self.retry_delay(attempt)))
                    } else if status.is_server_error() {
                        Some(wait.unwrap_or_else(|| self.retry_delay(attempt)))
                    } else {
                        None
                    };
                    let failure = CredentialError::Rejected {
                        who: who.clone(),
                        endpoint: endpoint.clone(),
                        status: status.as_u16(),
                        error: if code.is_empty() {
                            status.canonical_reason().unwrap_or("error").to_owned()
                        } else {
                            code
                        },
                        description: message,
                        hint: self.hint(status),
                    };
                    (failure, delay)
                }
            };
            match delay {
                Some(d) if attempt < MAX_ATTEMPTS && waited + d <= MAX_TOTAL_WAIT => {
                    tracing::warn!(
                        source = %who,
                        attempt,
                        error = %failure,
                        retry_in_ms = d.as_millis() as u64,
                        "listing the Cosmos DB keys failed; retrying"
                    );
                    tokio::time::sleep(d).await;
                    waited += d;
                }
                _ => return Err(failure),
            }
        }
    }

    fn parse(&self, body: &[u8], who: &str, endpoint: &str) -> Result<Pair, CredentialError> {
        let v: Value = serde_json::from_slice(body).map_err(|_| {
            CredentialError::invalid(
                who,
                endpoint,
                format!("the body is not JSON ({} bytes)", body.len()),
            )
        })?;
        let key = |field: &str| match v.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Some(Secret::new(s.clone())),
            _ => None,
        };
        let (preferred, other) = self.kind.fields();
        let Some(preferred_key) = key(preferred) else {
            return Err(CredentialError::invalid(
                who,
                endpoint,
                format!("no {preferred} in the answer"),
            ));
        };
        Ok(Pair {
            preferred: preferred_key,
            other: key(other),
        })
    }

    /// When the refresher should fetch next (`None`: now).
    fn next_refresh(&self) -> Option<Instant> {
        let st = self.lock();
        let at = if st.consecutive_failures > 0 {
            st.retry_at?
        } else {
            st.fetched_at? + self.refresh_every
        };
        (at > Instant::now()).then_some(at)
    }
}

async fn wait(rx: &mut watch::Receiver<Outcome>, who: String) -> Result<(), CredentialError> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or_else(|| {
            Err(CredentialError::unavailable(
                who,
                "the key fetch ended without an answer",
            ))
        }),
        Err(_) => Err(CredentialError::unavailable(
            who,
            "the key fetch was interrupted",
        )),
    }
}

impl CosmosKeySource {
    /// A source of the `kind` key of the account named by `list_keys_url`
    /// (`AZURE_COSMOS_LISTKEYURL`, `…/listKeys?api-version=…`; read-only kinds POST
    /// `…/readonlykeys` with the same query string). `token` is a [`TokenCache`] for the ARM
    /// scope (`AZURE_COSMOS_SCOPE`, default [`COSMOS_ARM_SCOPE`]). `refresh_every` is the
    /// interval of the periodic re-fetch ([`DEFAULT_KEY_REFRESH`] by default). Nothing is
    /// fetched until a password is asked for or the refresher runs.
    ///
    /// The URL must be https (plain http is accepted for loopback addresses only, for test
    /// fakes); otherwise every fetch fails with a configuration error.
    pub fn new(
        token: Arc<TokenCache>,
        list_keys_url: Url,
        kind: CosmosKeyKind,
        http: reqwest::Client,
        refresh_every: Duration,
    ) -> Arc<CosmosKeySource> {
        Self::with_retry_base(
            token,
            list_keys_url,
            kind,
            http,
            refresh_every,
            Duration::from_secs(1),
        )
    }

    pub(crate) fn with_retry_base(
        token: Arc<TokenCache>,
        list_keys_url: Url,
        kind: CosmosKeyKind,
        http: reqwest::Client,
        refresh_every: Duration,
        retry_base: Duration,
    ) -> Arc<CosmosKeySource> {
        Arc::new(CosmosKeySource {
            inner: Arc::new(Inner {
                token,
                url: key_url(&list_keys_url, kind),
                kind,
                http,
                refresh_every: refresh_every.max(Duration::from_millis(10)),
                retry_base,
                state: Mutex::new(State::default()),
            }),
            signal: Arc::new(Signal {
                wake: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Starts the periodic background re-fetch: right away if no key is cached, then every
    /// `refresh_every`; after a failure it retries with backoff (1 s doubling up to 5 min)
    /// while the old key stays in use. It stops when the source is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let signal = self.signal.clone();
        tokio::spawn(refresher(weak, signal))
    }

    /// The key kind tried first.
    pub fn kind(&self) -> CosmosKeyKind {
        self.inner.kind
    }

    /// The URL POSTed (listKeys or readonlykeys, with its query string).
    pub fn url(&self) -> &Url {
        &self.inner.url
    }
}

#[async_trait::async_trait]
impl PasswordSource for CosmosKeySource {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn password(&self) -> Result<Secret, CredentialError> {
        let mut rx = {
            let mut st = self.inner.lock();
            if let Some(k) = &st.current {
                return Ok(k.clone());
            }
            let live_flight = st
                .inflight
                .as_ref()
                .is_some_and(|rx| rx.has_changed().is_ok());
            if !live_flight {
                if let (Some(at), Some(err)) = (st.last_failure_at, &st.last_error) {
                    if Instant::now() < at + MIN_BACKOFF {
                        return Err(err.clone());
                    }
                }
            }
            self.inner.flight(&mut st)
        };
        wait(&mut rx, self.describe()).await?;
        self.inner.lock().current.clone().ok_or_else(|| {
            CredentialError::unavailable(self.describe(), "no key after a successful fetch")
        })
    }

    async fn after_rejection(&self, rejected: &Secret) -> Result<Option<Secret>, CredentialError> {
        let mut rx = {
            let mut st = self.inner.lock();
            let now = Instant::now();
            st.forget_old_refusals(now);
            if !st.is_refused(rejected) {
                st.refused.push((rejected.clone(), now));
            }
            if let Some(cur) = &st.current {
                if cur != rejected && !st.is_refused(cur) {
                    // Another connection already moved on.
                    return Ok(Some(cur.clone()));
                }
            }
            tracing::info!(
                source = %self.inner.describe(),
                "the database refused the Cosmos DB account key; fetching the keys again"
            );
            self.inner.flight(&mut st)
        };
        wait(&mut rx, self.describe()).await?;
        let mut st = self.inner.lock();
        match st.choose() {
            Some(k) => {
                st.current = Some(k.clone());
                Ok(Some(k))
            }
            None => {
                drop(st);
                tracing::warn!(
                    source = %self.inner.describe(),
                    "the database refused both account keys of the pair; check the user name (the account name) and the key kind"
                );
                Ok(None)
            }
        }
    }

    fn status(&self) -> CacheStatus {
        let st = self.inner.lock();
        CacheStatus {
            // Keys do not expire.
            expires_on: None,
            last_success: st.last_success,
            last_error: st.last_error.as_ref().map(|e| e.to_string()),
            refreshes_ok: st.refreshes_ok,
            refreshes_failed: st.refreshes_failed,
        }
    }
}

async fn refresher(weak: Weak<Inner>, signal: Arc<Signal>) {
    loop {
        if signal.closed.load(Ordering::SeqCst) {
            return;
        }
        let next = match weak.upgrade() {
            Some(inner) => inner.next_refresh(),
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = signal.wake.notified() => {}
                }
            }
            None => {
                let Some(inner) = weak.upgrade() else { return };
                let mut rx = {
                    let mut st = inner.lock();
                    inner.flight(&mut st)
                };
                drop(inner);
                // The outcome is recorded by the flight itself.
                let _ = wait(&mut rx, String::new()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{
        AccessToken, ErrorKind, TokenSource,
        testutil::{FakeHttp, Recorded, Reply},
    };

    const PATH: &str = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.DocumentDB/databaseAccounts/acct/listKeys";

    /// ARM tokens `arm-token-0`, `arm-token-1`, …
    struct Arm {
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl TokenSource for Arm {
        fn describe(&self) -> String {
            "fake arm identity".into()
        }
        async fn get_token(&self, scope: &str) -> Result<crate::AccessToken, CredentialError> {
            assert_eq!(scope, COSMOS_ARM_SCOPE);
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(AccessToken {
                token: Secret::new(format!("arm-token-{n}")),
                expires_on: SystemTime::now() + Duration::from_secs(3600),
            })
        }
    }

    fn keys(tag: &str) -> Reply {
        Reply::json(
            200,
            &format!(
                r#"{{"primaryMasterKey":"{tag}-P","secondaryMasterKey":"{tag}-S","primaryReadonlyMasterKey":"{tag}-RP","secondaryReadonlyMasterKey":"{tag}-RS"}}"#
            ),
        )
    }

    fn arm_error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(
            status,
            &format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#),
        )
    }

    struct Setup {
        fake: FakeHttp,
        arm: Arc<Arm>,
        src: Arc<CosmosKeySource>,
    }

    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    fn source_for(
        url: Url,
        kind: CosmosKeyKind,
        refresh: Duration,
    ) -> (Arc<Arm>, Arc<CosmosKeySource>) {
        let arm = Arc::new(Arm {
            calls: AtomicUsize::new(0),
        });
        let token = TokenCache::new(
            arm.clone(),
            COSMOS_ARM_SCOPE.into(),
            RefreshPolicy::default(),
        );
        let src = CosmosKeySource::with_retry_base(
            token,
            url,
            kind,
            http(),
            refresh,
            Duration::from_millis(20),
        );
        (arm, src)
    }

    async fn setup(replies: Vec<Reply>, kind: CosmosKeyKind, refresh: Duration) -> Setup {
        let fake = FakeHttp::start(replies).await;
        let url = fake
            .url()
            .join(&format!("{PATH}?api-version=2021-04-15"))
            .unwrap();
        let (arm, src) = source_for(url, kind, refresh);
        Setup { fake, arm, src }
    }

    fn headers_named(r: &Recorded, name: &str) -> Vec<String> {
        r.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    #[test]
    fn urls_and_kinds() {
        let u = Url::parse("https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/a/listKeys?api-version=2021-04-15").unwrap();
        assert_eq!(key_url(&u, CosmosKeyKind::Primary), u);
        assert_eq!(
            key_url(&u, CosmosKeyKind::ReadOnlySecondary).as_str(),
            "https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/a/readonlykeys?api-version=2021-04-15"
        );
        let acct = Url::parse("https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/a/").unwrap();
        assert_eq!(
            key_url(&acct, CosmosKeyKind::Secondary).as_str(),
            "https://management.azure.com/subscriptions/s/resourceGroups/r/providers/Microsoft.DocumentDB/databaseAccounts/a/listKeys?api-version=2021-04-15"
        );
        assert_eq!(CosmosKeyKind::default(), CosmosKeyKind::Primary);
        for k in [
            CosmosKeyKind::Primary,
            CosmosKeyKind::Secondary,
            CosmosKeyKind::ReadOnlyPrimary,
            CosmosKeyKind::ReadOnlySecondary,
        ] {
            assert_eq!(k.as_str().parse::<CosmosKeyKind>(), Ok(k));
        }
        assert_eq!(
            "Read_Only_Secondary".parse::<CosmosKeyKind>(),
            Ok(CosmosKeyKind::ReadOnlySecondary)
        );
        assert!("tertiary".parse::<CosmosKeyKind>().is_err());
    }

    #[tokio::test]
    async fn happy_path_request_shape_and_cache() {
        let s = setup(vec![keys("A")], CosmosKeyKind::Primary, DEFAULT_KEY_REFRESH).await;
        assert_eq!(s.src.password().await.unwrap().expose(), "A-P");
        assert_eq!(s.src.password().await.unwrap().expose(), "A-P");
        let reqs = s.fake.requests();
        assert_eq!(reqs.len(), 1, "cached after the first fetch");
        let r = &reqs[0];
        assert_eq!(r.method, "POST");
        assert_eq!(r.path(), PATH);
        assert_eq!(r.query("api-version").as_deref(), Some("2021-04-15"));
        assert_eq!(
            r.header("authorization").as_deref(),
            Some("Bearer arm-token-0")
        );
        assert_eq!(headers_named(r, "content-length"), vec!["0".to_owned()]);
        assert_eq!(r.body, "");
        let st = s.src.status();
        assert_eq!((st.refreshes_ok, st.refreshes_failed), (1, 0));
        assert!(st.last_success.is_some() && st.last_error.is_none() && st.expires_on.is_none());
        assert!(
            s.src
                .describe()
                .contains("Cosmos DB primary key from http://127.0.0.1")
        );
        assert!(s.src.describe().contains("fake arm identity"));
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let s = setup(vec![keys("A")], CosmosKeyKind::Primary, DEFAULT_KEY_REFRESH).await;
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let src = s.src.clone();
            tasks.push(tokio::spawn(async move { src.password().await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().expose(), "A-P");
        }
        assert_eq!(s.fake.requests().len(), 1);
    }

    #[tokio::test]
    async fn read_only_kind_uses_readonlykeys() {
        let ro = Reply::json(
            200,
            r#"{"primaryReadonlyMasterKey":"R-RP","secondaryReadonlyMasterKey":"R-RS"}"#,
        );
        let s = setup(
            vec![ro],
            CosmosKeyKind::ReadOnlyPrimary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        assert_eq!(s.src.kind(), CosmosKeyKind::ReadOnlyPrimary);
        assert_eq!(s.src.password().await.unwrap().expose(), "R-RP");
        let r = &s.fake.requests()[0];
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.path(),
            PATH.replace("/listKeys", "/readonlykeys").as_str()
        );
        assert_eq!(r.query("api-version").as_deref(), Some("2021-04-15"));
        // Fallback is the other read-only key.
        let k = s.src.password().await.unwrap();
        assert_eq!(
            s.src.after_rejection(&k).await.unwrap().unwrap().expose(),
            "R-RS"
        );
    }

    #[tokio::test]
    async fn throttled_429_honours_retry_after() {
        let s = setup(
            vec![
                arm_error(429, "TooManyRequests", "throttled").with_header("Retry-After", "1"),
                keys("A"),
            ],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let start = std::time::Instant::now();
        assert_eq!(s.src.password().await.unwrap().expose(), "A-P");
        assert!(
            start.elapsed() >= Duration::from_millis(950),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(s.fake.requests().len(), 2);
    }

    #[tokio::test]
    async fn server_errors_retry_with_backoff_then_give_up() {
        let s = setup(
            vec![
                arm_error(503, "ServiceUnavailable", "try later"),
                arm_error(500, "InternalServerError", "oops"),
                keys("A"),
            ],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        assert_eq!(s.src.password().await.unwrap().expose(), "A-P");
        assert_eq!(s.fake.requests().len(), 3);

        let s = setup(
            vec![arm_error(503, "ServiceUnavailable", "try later")],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let e = s.src.password().await.unwrap_err();
        assert_eq!(s.fake.requests().len(), MAX_ATTEMPTS as usize);
        assert_eq!(e.kind(), ErrorKind::Rejected);
        let msg = e.to_string();
        assert!(
            msg.contains("HTTP 503: ServiceUnavailable (try later)"),
            "{msg}"
        );
        assert!(msg.contains("gave up"), "{msg}");
        // A throttle longer than the total budget is not waited for.
        let s = setup(
            vec![arm_error(429, "TooManyRequests", "slow down").with_header("Retry-After", "3600")],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let e = tokio::time::timeout(Duration::from_secs(5), s.src.password())
            .await
            .expect("no hour-long wait")
            .unwrap_err();
        assert!(e.to_string().contains("429"), "{e}");
        assert_eq!(s.fake.requests().len(), 1);
    }

    #[tokio::test]
    async fn transport_errors_are_retried_and_reported() {
        // A port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let url = Url::parse(&format!(
            "http://127.0.0.1:{port}{PATH}?api-version=2021-04-15"
        ))
        .unwrap();
        let (arm, src) = source_for(url, CosmosKeyKind::Primary, DEFAULT_KEY_REFRESH);
        let e = src.password().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transport, "{e}");
        assert!(e.to_string().contains("listKeys"), "{e}");
        assert_eq!(
            arm.calls.load(Ordering::SeqCst),
            1,
            "one ARM token for all attempts"
        );
        assert_eq!(src.status().refreshes_failed, 1);
    }

    #[tokio::test]
    async fn non_https_url_is_refused() {
        let url = Url::parse(&format!(
            "http://management.example{PATH}?api-version=2021-04-15"
        ))
        .unwrap();
        let (arm, src) = source_for(url, CosmosKeyKind::Primary, DEFAULT_KEY_REFRESH);
        let e = src.password().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("must be an https URL"), "{e}");
        assert_eq!(
            arm.calls.load(Ordering::SeqCst),
            0,
            "no token sent anywhere"
        );
    }

    #[tokio::test]
    async fn forbidden_names_the_permission() {
        let msg = "The client 'x' with object id 'y' does not have authorization to perform action 'Microsoft.DocumentDB/databaseAccounts/listKeys/action' over scope '/subscriptions/sub' or the scope is invalid.";
        let s = setup(
            vec![arm_error(403, "AuthorizationFailed", msg)],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let e = s.src.password().await.unwrap_err();
        assert_eq!(s.fake.requests().len(), 1, "no retry");
        let text = e.to_string();
        assert_eq!(e.kind(), ErrorKind::Rejected);
        for want in [
            "HTTP 403",
            "AuthorizationFailed",
            "lacks the permission Microsoft.DocumentDB/databaseAccounts/listKeys/action",
            "DocumentDB Account Contributor",
            "Cosmos DB Account Reader",
        ] {
            assert!(text.contains(want), "{want:?} missing from {text}");
        }
        assert!(
            s.src
                .status()
                .last_error
                .unwrap()
                .contains("listKeys/action")
        );

        // Read-only kinds need …/readonlykeys/action.
        let s = setup(
            vec![arm_error(403, "AuthorizationFailed", "no")],
            CosmosKeyKind::ReadOnlySecondary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let text = s.src.password().await.unwrap_err().to_string();
        assert!(
            text.contains("Microsoft.DocumentDB/databaseAccounts/readonlykeys/action"),
            "{text}"
        );
        assert!(text.contains("Cosmos DB Account Reader Role"), "{text}");
    }

    #[tokio::test]
    async fn not_found_says_so() {
        let s = setup(
            vec![arm_error(
                404,
                "ResourceNotFound",
                "The Resource 'Microsoft.DocumentDB/databaseAccounts/acct' under resource group 'rg' was not found.",
            )],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let text = s.src.password().await.unwrap_err().to_string();
        assert!(text.contains("ResourceNotFound"), "{text}");
        assert!(
            text.contains("account or the listKeys URL was not found"),
            "{text}"
        );
        assert!(text.contains("AZURE_COSMOS_LISTKEYURL"), "{text}");
        assert!(!text.contains("api-version="), "no query string: {text}");
    }

    #[tokio::test]
    async fn unauthorized_refreshes_the_arm_token_once() {
        let s = setup(
            vec![
                arm_error(
                    401,
                    "ExpiredAuthenticationToken",
                    "The access token expiry UTC time is earlier than current UTC time.",
                ),
                keys("A"),
            ],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        assert_eq!(s.src.password().await.unwrap().expose(), "A-P");
        let reqs = s.fake.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(
            reqs[0].header("authorization").as_deref(),
            Some("Bearer arm-token-0")
        );
        assert_eq!(
            reqs[1].header("authorization").as_deref(),
            Some("Bearer arm-token-1")
        );
        assert_eq!(s.arm.calls.load(Ordering::SeqCst), 2);

        // Twice in a row: reported, with no further attempts.
        let s = setup(
            vec![arm_error(
                401,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
            )],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let e = s.src.password().await.unwrap_err();
        assert_eq!(s.fake.requests().len(), 2);
        let text = e.to_string();
        assert!(
            text.contains("HTTP 401: InvalidAuthenticationToken"),
            "{text}"
        );
        assert!(text.contains(COSMOS_ARM_SCOPE), "{text}");
    }

    #[tokio::test]
    async fn after_rejection_rotation_then_fallback_then_none() {
        let s = setup(
            vec![keys("A"), keys("B")],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let a = s.src.password().await.unwrap();
        assert_eq!(a.expose(), "A-P");
        // Rotated: the re-fetched primary differs.
        let b = s.src.after_rejection(&a).await.unwrap().unwrap();
        assert_eq!(b.expose(), "B-P");
        assert_eq!(s.fake.requests().len(), 2);
        assert_eq!(s.src.password().await.unwrap(), b);
        // Another connection reporting the old key: moves on without a fetch.
        assert_eq!(s.src.after_rejection(&a).await.unwrap(), Some(b.clone()));
        assert_eq!(s.fake.requests().len(), 2);
        // Same keys again: fall back to the secondary.
        let b2 = s.src.after_rejection(&b).await.unwrap().unwrap();
        assert_eq!(b2.expose(), "B-S");
        assert_eq!(s.fake.requests().len(), 3);
        assert_eq!(s.src.password().await.unwrap(), b2);
        // Both refused.
        assert_eq!(s.src.after_rejection(&b2).await.unwrap(), None);
        assert_eq!(s.fake.requests().len(), 4);
        // password() still answers (without a fetch) with a key of the pair.
        assert_eq!(s.src.password().await.unwrap(), b2);
        assert_eq!(s.fake.requests().len(), 4);
    }

    #[tokio::test]
    async fn secondary_kind_falls_back_to_primary() {
        let s = setup(
            vec![keys("A")],
            CosmosKeyKind::Secondary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let k = s.src.password().await.unwrap();
        assert_eq!(k.expose(), "A-S");
        assert_eq!(
            s.src.after_rejection(&k).await.unwrap().unwrap().expose(),
            "A-P"
        );
    }

    #[tokio::test]
    async fn after_rejection_fetch_failure_is_an_error_and_keeps_the_key() {
        let s = setup(
            vec![keys("A"), arm_error(403, "AuthorizationFailed", "no")],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let a = s.src.password().await.unwrap();
        let e = s.src.after_rejection(&a).await.unwrap_err();
        assert!(e.to_string().contains("listKeys/action"), "{e}");
        assert_eq!(s.src.password().await.unwrap(), a);
    }

    #[test]
    fn refusals_are_forgotten_after_a_while() {
        let now = Instant::now();
        let mut st = State {
            pair: Some(Pair {
                preferred: Secret::new("p"),
                other: Some(Secret::new("s")),
            }),
            current: Some(Secret::new("s")),
            refused: vec![(Secret::new("p"), now), (Secret::new("s"), now)],
            ..State::default()
        };
        assert_eq!(st.choose(), None);
        st.forget_old_refusals(now + REFUSAL_MEMORY + Duration::from_secs(1));
        assert_eq!(st.choose(), Some(Secret::new("s")), "keeps the current key");
        st.current = None;
        assert_eq!(st.choose(), Some(Secret::new("p")));
    }

    #[tokio::test]
    async fn periodic_refresh_replaces_the_key_and_survives_failures() {
        let s = setup(
            vec![
                keys("A"),
                keys("B"),
                arm_error(403, "AuthorizationFailed", "role removed"),
            ],
            CosmosKeyKind::Primary,
            Duration::from_millis(300),
        )
        .await;
        let Setup { fake, src, .. } = s;
        let h = src.spawn_refresher();
        assert_eq!(src.password().await.unwrap().expose(), "A-P");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while src.password().await.unwrap().expose() != "B-P" {
            assert!(std::time::Instant::now() < deadline, "no refresh");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while src.status().refreshes_failed == 0 {
            assert!(std::time::Instant::now() < deadline, "no failing refresh");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The failed refresh keeps the key, answered without waiting.
        let k = tokio::time::timeout(Duration::from_millis(50), src.password())
            .await
            .expect("no waiting while a key is cached")
            .unwrap();
        assert_eq!(k.expose(), "B-P");
        let st = src.status();
        assert_eq!(st.refreshes_ok, 2);
        assert!(st.last_error.unwrap().contains("AuthorizationFailed"));
        assert!(fake.requests().len() >= 3);
        drop(src);
        tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("the refresher ends with the source")
            .unwrap();
    }

    #[tokio::test]
    async fn no_key_or_token_in_debug_errors_or_logs() {
        let (buf, _guard) = crate::testutil::LogCapture::start();

        let s = setup(
            vec![
                keys("SENTINEL-A"),
                keys("SENTINEL-B"),
                // ARM never echoes keys or tokens, but scrub anyway.
                arm_error(
                    403,
                    "AuthorizationFailed",
                    "denied for arm-token-0 SENTINEL-B-P",
                ),
                arm_error(401, "InvalidAuthenticationToken", "bad arm-token-0"),
                // A 200 lacking the wanted key, with the others present.
                Reply::json(200, r#"{"secondaryMasterKey":"SENTINEL-C-S"}"#),
                Reply::json(200, "SENTINEL-D not json"),
            ],
            CosmosKeyKind::Primary,
            DEFAULT_KEY_REFRESH,
        )
        .await;
        let mut texts = vec![format!("{:?}", s.src), s.src.describe()];
        let a = s.src.password().await.unwrap();
        texts.push(format!("{a:?} {a}"));
        let b = s.src.after_rejection(&a).await.unwrap().unwrap();
        texts.push(format!("{b:?}"));
        for _ in 0..4 {
            // Past the 1 s "report the last failure again" window each time.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            match s.src.after_rejection(&b).await {
                Ok(k) => texts.push(format!("{k:?}")),
                Err(e) => {
                    texts.push(e.to_string());
                    texts.push(format!("{e:?}"));
                }
            }
        }
        texts.push(format!("{:?} {:?}", s.src.status(), s.src));
        let all = texts.join("\n");
        drop(_guard);
        let logs = buf.text();
        // Every failure was seen, by a caller or by the background refresh (which one depends on
        // timing on a loaded machine), so the leak checks below cover every error path.
        let seen = format!("{all}\n{logs}");
        assert!(seen.contains("AuthorizationFailed"), "{seen}");
        assert!(seen.contains("no primaryMasterKey in the answer"), "{seen}");
        assert!(seen.contains("not JSON"), "{seen}");
        assert!(
            logs.contains("Cosmos DB account key"),
            "the logs were captured: {logs}"
        );
        for (what, text) in [("output", &all), ("logs", &logs)] {
            assert!(!text.contains("SENTINEL"), "{what} leaks a key: {text}");
            assert!(!text.contains("arm-token-"), "{what} leaks a token: {text}");
        }
    }
}
