//! The token cache: one scope, one source, refreshed ahead of expiry.
//!
//! * [`TokenCache::get`] returns the cached token while it has more than
//!   [`EXPIRY_MARGIN`] (10 s) left, without waiting for anything. Otherwise it joins the
//!   acquisition in progress or starts one: concurrent callers share a single request
//!   (single-flight). The acquisition runs in its own task, so a caller that gives up does
//!   not cancel it for the others, and is bounded by [`RefreshPolicy::timeout`].
//!   Right after a failure (within [`RefreshPolicy::min_backoff`]) `get` returns that
//!   failure again instead of hammering the identity provider.
//! * [`TokenCache::spawn_refresher`] starts a task that fetches a new token
//!   `refresh_before` (5 min by default, at most half the token's lifetime) before expiry,
//!   and after a failure retries with exponential backoff (`min_backoff` doubling up to
//!   `max_backoff`, each delay drawn uniformly from its upper half: jitter). The task ends
//!   when the cache is dropped.
//! * [`TokenCache::invalidate`] drops a token the database rejected (if it is still the
//!   cached one) so the next `get` fetches a new one, and wakes the refresher. Token sources
//!   of this crate keep no cache of their own, so the rejected token cannot come back from an
//!   SDK cache (IMDS may still return it from its server-side cache; this is logged).
//!
//! Expiry is tracked on tokio's monotonic clock (converted from `expires_on` when a token
//! arrives), so wall-clock jumps do not matter and tests can use `tokio::time::pause`.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use rand::Rng;
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use crate::{
    error::CredentialError,
    secret::{AccessToken, Secret},
    source::TokenSource,
};

/// A token with less than this left counts as expired for [`TokenCache::get`].
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// When and how the cache refreshes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// Refresh this long before expiry (but at most half the token lifetime). Default 5 min.
    pub refresh_before: Duration,
    /// First retry delay after a failure. Default 1 s.
    pub min_backoff: Duration,
    /// Longest retry delay. Default 60 s.
    pub max_backoff: Duration,
    /// Limit for one acquisition. Default 30 s.
    pub timeout: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            refresh_before: Duration::from_secs(300),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A snapshot of the cache's health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Expiry of the cached token, if there is one.
    pub expires_on: Option<SystemTime>,
    /// When a token was last obtained.
    pub last_success: Option<SystemTime>,
    /// The error of the last acquisition, if it failed (cleared by a success).
    pub last_error: Option<String>,
    /// Successful acquisitions.
    pub refreshes_ok: u64,
    /// Failed acquisitions.
    pub refreshes_failed: u64,
}

type Outcome = Option<Result<AccessToken, CredentialError>>;

struct Cached {
    token: AccessToken,
    obtained: Instant,
    valid_until: Instant,
}

impl Cached {
    fn usable(&self, now: Instant) -> bool {
        now + EXPIRY_MARGIN < self.valid_until
    }

    /// `refresh_before` (at most half the lifetime) ahead of expiry, but never sooner than
    /// `min_backoff` after the token arrived (a source handing out already-expired tokens,
    /// e.g. with a skewed clock, must not make the refresher spin).
    fn refresh_at(&self, policy: &RefreshPolicy) -> Instant {
        let lifetime = self.valid_until.saturating_duration_since(self.obtained);
        (self.valid_until - policy.refresh_before.min(lifetime / 2))
            .max(self.obtained + policy.min_backoff)
    }
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    inflight: Option<watch::Receiver<Outcome>>,
    last_success: Option<SystemTime>,
    last_error: Option<CredentialError>,
    last_failure_at: Option<Instant>,
    /// When the refresher retries after a failure.
    retry_at: Option<Instant>,
    consecutive_failures: u32,
    refreshes_ok: u64,
    refreshes_failed: u64,
    /// The token the database rejected last (to notice if the source hands it back).
    rejected: Option<Secret>,
}

struct Inner {
    source: Arc<dyn TokenSource>,
    scope: String,
    policy: RefreshPolicy,
    state: Mutex<State>,
}

/// Shared between the cache and its refresher, outliving both.
struct Signal {
    wake: Notify,
    closed: AtomicBool,
}

/// A cached, refreshed access token for one scope.
pub struct TokenCache {
    inner: Arc<Inner>,
    signal: Arc<Signal>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("source", &self.inner.source.describe())
            .field("scope", &self.inner.scope)
            .finish_non_exhaustive()
    }
}

impl Drop for TokenCache {
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
        self.source.describe()
    }

    /// The acquisition in progress, or a new one.
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
            let result = inner.acquire().await;
            {
                let mut st = inner.lock();
                inner.record(&mut st, &result);
                st.inflight = None;
            }
            let _ = tx.send(Some(result));
        });
        rx
    }

    async fn acquire(&self) -> Result<AccessToken, CredentialError> {
        match tokio::time::timeout(self.policy.timeout, self.source.get_token(&self.scope)).await {
            Ok(r) => r,
            Err(_) => Err(CredentialError::Timeout {
                who: self.describe(),
                after: self.policy.timeout,
            }),
        }
    }

    fn record(&self, st: &mut State, result: &Result<AccessToken, CredentialError>) {
        let now = Instant::now();
        match result {
            Ok(token) => {
                let left = token
                    .expires_on
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                if st.rejected.as_ref() == Some(&token.token) {
                    tracing::warn!(
                        source = %self.describe(),
                        scope = %self.scope,
                        "the credential source returned the token the database just rejected (IMDS caches tokens server-side); check the database user and the token's audience"
                    );
                }
                st.rejected = None;
                st.cached = Some(Cached {
                    token: token.clone(),
                    obtained: now,
                    valid_until: now + left,
                });
                st.last_success = Some(SystemTime::now());
                st.last_error = None;
                st.retry_at = None;
                st.consecutive_failures = 0;
                st.refreshes_ok += 1;
                tracing::info!(
                    source = %self.describe(),
                    scope = %self.scope,
                    expires_in_secs = left.as_secs(),
                    "access token obtained"
                );
            }
            Err(e) => {
                st.refreshes_failed += 1;
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                st.last_error = Some(e.clone());
                st.last_failure_at = Some(now);
                let delay = backoff(&self.policy, st.consecutive_failures);
                st.retry_at = Some(now + delay);
                tracing::warn!(
                    source = %self.describe(),
                    scope = %self.scope,
                    error = %e,
                    failures = st.consecutive_failures,
                    retry_in_ms = delay.as_millis() as u64,
                    "access token acquisition failed"
                );
            }
        }
    }
}

/// Delay before retry number `failures` (≥ 1): `min_backoff · 2^(failures-1)` capped at
/// `max_backoff`, drawn uniformly from the upper half of that.
pub(crate) fn backoff(policy: &RefreshPolicy, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = policy
        .min_backoff
        .saturating_mul(1u32 << exp)
        .min(policy.max_backoff.max(policy.min_backoff));
    let half = base / 2;
    let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

async fn wait(
    rx: &mut watch::Receiver<Outcome>,
    who: String,
) -> Result<AccessToken, CredentialError> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone().unwrap_or_else(|| {
            Err(CredentialError::unavailable(
                who,
                "the token acquisition ended without an answer",
            ))
        }),
        Err(_) => Err(CredentialError::unavailable(
            who,
            "the token acquisition was interrupted",
        )),
    }
}

impl TokenCache {
    /// A cache for `scope`, filled from `source`. Nothing is fetched until [`get`](Self::get)
    /// or the refresher (see [`spawn_refresher`](Self::spawn_refresher)) asks.
    pub fn new(
        source: Arc<dyn TokenSource>,
        scope: String,
        policy: RefreshPolicy,
    ) -> Arc<TokenCache> {
        Arc::new(TokenCache {
            inner: Arc::new(Inner {
                source,
                scope,
                policy,
                state: Mutex::new(State::default()),
            }),
            signal: Arc::new(Signal {
                wake: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Starts the background refresher: it fetches a token right away, then again ahead of
    /// each expiry, retrying with backoff after failures. It stops when the cache is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let signal = self.signal.clone();
        tokio::spawn(refresher(weak, signal))
    }

    /// The cached token if it is still valid (no waiting), else the result of a (shared)
    /// acquisition.
    pub async fn get(&self) -> Result<AccessToken, CredentialError> {
        let mut rx = {
            let mut st = self.inner.lock();
            let now = Instant::now();
            if let Some(c) = &st.cached {
                if c.usable(now) {
                    return Ok(c.token.clone());
                }
            }
            let live_flight = st
                .inflight
                .as_ref()
                .is_some_and(|rx| rx.has_changed().is_ok());
            if !live_flight {
                if let (Some(at), Some(err)) = (st.last_failure_at, &st.last_error) {
                    if now < at + self.inner.policy.min_backoff {
                        return Err(err.clone());
                    }
                }
            }
            self.inner.flight(&mut st)
        };
        wait(&mut rx, self.inner.describe()).await
    }

    /// The database rejected `rejected`: forget it if it is still the cached token.
    pub fn invalidate(&self, rejected: &Secret) {
        let mut st = self.inner.lock();
        let is_current = st
            .cached
            .as_ref()
            .is_some_and(|c| &c.token.token == rejected);
        if is_current {
            st.cached = None;
            st.rejected = Some(rejected.clone());
            drop(st);
            tracing::info!(
                source = %self.inner.describe(),
                scope = %self.inner.scope,
                "the database rejected the cached access token; fetching a new one"
            );
            self.signal.wake.notify_one();
        }
    }

    /// Health and counters.
    pub fn status(&self) -> CacheStatus {
        let st = self.inner.lock();
        CacheStatus {
            expires_on: st.cached.as_ref().map(|c| c.token.expires_on),
            last_success: st.last_success,
            last_error: st.last_error.as_ref().map(|e| e.to_string()),
            refreshes_ok: st.refreshes_ok,
            refreshes_failed: st.refreshes_failed,
        }
    }

    /// The scope tokens are requested for.
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// The source's description and the scope, for logs.
    pub fn describe(&self) -> String {
        format!("{} for {}", self.inner.describe(), self.inner.scope)
    }
}

/// What the refresher should do next.
enum Next {
    RefreshNow,
    SleepUntil(Instant),
}

fn plan(inner: &Inner) -> Next {
    let st = inner.lock();
    let now = Instant::now();
    if st.consecutive_failures > 0 {
        return match st.retry_at {
            Some(at) if at > now => Next::SleepUntil(at),
            _ => Next::RefreshNow,
        };
    }
    match &st.cached {
        Some(c) => {
            let at = c.refresh_at(&inner.policy);
            if at > now {
                Next::SleepUntil(at)
            } else {
                Next::RefreshNow
            }
        }
        None => Next::RefreshNow,
    }
}

async fn refresher(weak: Weak<Inner>, signal: Arc<Signal>) {
    loop {
        if signal.closed.load(Ordering::SeqCst) {
            return;
        }
        let next = match weak.upgrade() {
            Some(inner) => plan(&inner),
            None => return,
        };
        match next {
            Next::SleepUntil(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = signal.wake.notified() => {}
                }
            }
            Next::RefreshNow => {
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
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Scripted source: call n returns `script[n]` (the last repeats) after `delay`.
    struct Fake {
        calls: AtomicUsize,
        at: Mutex<Vec<Instant>>,
        delay: Duration,
        /// Ok(lifetime) or Err(()) per call.
        script: Vec<Result<Duration, ()>>,
    }

    impl Fake {
        fn new(delay: Duration, script: Vec<Result<Duration, ()>>) -> Arc<Fake> {
            Arc::new(Fake {
                calls: AtomicUsize::new(0),
                at: Mutex::new(Vec::new()),
                delay,
                script,
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait::async_trait]
    impl TokenSource for Fake {
        fn describe(&self) -> String {
            "fake".into()
        }
        async fn get_token(&self, _scope: &str) -> Result<AccessToken, CredentialError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            self.at.lock().unwrap().push(Instant::now());
            tokio::time::sleep(self.delay).await;
            match self.script[n.min(self.script.len() - 1)] {
                Ok(life) => Ok(AccessToken {
                    token: Secret::new(format!("token-{n}")),
                    expires_on: SystemTime::now() + life,
                }),
                Err(()) => Err(CredentialError::unavailable("fake", format!("failure {n}"))),
            }
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn cache(fake: &Arc<Fake>, policy: RefreshPolicy) -> Arc<TokenCache> {
        TokenCache::new(fake.clone(), "scope/.default".into(), policy)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_gets_share_one_acquisition() {
        let fake = Fake::new(Duration::from_millis(500), vec![Ok(HOUR)]);
        let c = cache(&fake, RefreshPolicy::default());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move { c.get().await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().token.expose(), "token-0");
        }
        assert_eq!(fake.calls(), 1);
        // Cached now.
        assert_eq!(c.get().await.unwrap().token.expose(), "token-0");
        assert_eq!(fake.calls(), 1);
        let s = c.status();
        assert_eq!(s.refreshes_ok, 1);
        assert!(s.expires_on.is_some() && s.last_success.is_some() && s.last_error.is_none());
        assert_eq!(c.scope(), "scope/.default");
        assert_eq!(c.describe(), "fake for scope/.default");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_caller_does_not_cancel_the_flight() {
        let fake = Fake::new(Duration::from_secs(2), vec![Ok(HOUR)]);
        let c = cache(&fake, RefreshPolicy::default());
        assert!(
            tokio::time::timeout(Duration::from_millis(10), c.get())
                .await
                .is_err()
        );
        assert_eq!(c.get().await.unwrap().token.expose(), "token-0");
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_forces_a_new_token() {
        let fake = Fake::new(Duration::ZERO, vec![Ok(HOUR)]);
        let c = cache(&fake, RefreshPolicy::default());
        let t0 = c.get().await.unwrap();
        c.invalidate(&Secret::new("some-other-token"));
        assert_eq!(c.get().await.unwrap(), t0);
        assert_eq!(fake.calls(), 1);
        c.invalidate(&t0.token);
        assert_eq!(c.status().expires_on, None);
        let t1 = c.get().await.unwrap();
        assert_eq!(t1.token.expose(), "token-1");
        assert_eq!(fake.calls(), 2);
        // A stale rejection of the old token does not drop the new one.
        c.invalidate(&t0.token);
        assert_eq!(c.get().await.unwrap(), t1);
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn nearly_expired_counts_as_expired() {
        let fake = Fake::new(Duration::ZERO, vec![Ok(Duration::from_secs(5))]);
        let c = cache(&fake, RefreshPolicy::default());
        c.get().await.unwrap();
        c.get().await.unwrap();
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn refresher_refreshes_ahead_and_get_never_waits() {
        let fake = Fake::new(Duration::from_secs(20), vec![Ok(HOUR)]);
        let c = cache(&fake, RefreshPolicy::default());
        let h = c.spawn_refresher();
        // The refresher fetches the first token right away (get joins it).
        assert_eq!(c.get().await.unwrap().token.expose(), "token-0");
        let start = Instant::now();
        assert_eq!(fake.calls(), 1);
        // Just before the refresh point (expiry − 5 min): nothing new.
        tokio::time::sleep_until(start + HOUR - Duration::from_secs(301)).await;
        assert_eq!(fake.calls(), 1);
        // Just after: a refresh is in flight (it takes 20 s)...
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(fake.calls(), 2);
        // ...and get() answers from the cache without waiting for it.
        let t = tokio::time::timeout(Duration::from_millis(1), c.get())
            .await
            .expect("get() must not wait while a valid token is cached")
            .unwrap();
        assert_eq!(t.token.expose(), "token-0");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(c.get().await.unwrap().token.expose(), "token-1");
        assert_eq!(c.status().refreshes_ok, 2);
        drop(c);
        tokio::time::timeout(Duration::from_secs(1), h)
            .await
            .expect("refresher ends with the cache")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_at_half_lifetime_for_short_tokens() {
        let fake = Fake::new(Duration::ZERO, vec![Ok(Duration::from_secs(120))]);
        let c = cache(&fake, RefreshPolicy::default());
        let _h = c.spawn_refresher();
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(fake.calls(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_with_jitter_after_failures() {
        let fake = Fake::new(
            Duration::ZERO,
            vec![Err(()), Err(()), Err(()), Err(()), Ok(HOUR)],
        );
        let c = cache(&fake, RefreshPolicy::default());
        let _h = c.spawn_refresher();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = c.status();
        assert_eq!(s.refreshes_failed, 1);
        assert_eq!(s.last_error.as_deref(), Some("fake: failure 0"));
        assert!(s.expires_on.is_none());
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(fake.calls(), 5);
        let at = fake.at.lock().unwrap().clone();
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        // min_backoff 1 s doubling; each delay in the upper half of its step.
        for (gap, step) in gaps.iter().zip([1u64, 2, 4, 8]) {
            let step = Duration::from_secs(step);
            assert!(
                *gap >= step / 2 && *gap <= step,
                "gap {gap:?} for step {step:?}"
            );
        }
        let s = c.status();
        assert_eq!((s.refreshes_ok, s.refreshes_failed), (1, 4));
        assert!(s.last_error.is_none());
        assert_eq!(c.get().await.unwrap().token.expose(), "token-4");
    }

    #[tokio::test(start_paused = true)]
    async fn get_after_failure_reports_it_then_retries() {
        let fake = Fake::new(Duration::ZERO, vec![Err(()), Ok(HOUR)]);
        let c = cache(&fake, RefreshPolicy::default());
        let e = c.get().await.unwrap_err();
        assert_eq!(e.to_string(), "fake: failure 0");
        // Within min_backoff: the same error, no new request.
        assert!(c.get().await.is_err());
        assert_eq!(fake.calls(), 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.get().await.unwrap().token.expose(), "token-1");
    }

    #[tokio::test(start_paused = true)]
    async fn acquisition_timeout() {
        let fake = Fake::new(Duration::from_secs(600), vec![Ok(HOUR)]);
        let c = cache(&fake, RefreshPolicy::default());
        let e = c.get().await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Timeout);
        assert_eq!(e.to_string(), "fake: no token within 30s");
        assert_eq!(c.status().refreshes_failed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_tokens_do_not_make_the_refresher_spin() {
        let fake = Fake::new(Duration::ZERO, vec![Ok(Duration::ZERO)]);
        let c = cache(&fake, RefreshPolicy::default());
        let _h = c.spawn_refresher();
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert!(fake.calls() <= 11, "{}", fake.calls());
    }

    #[test]
    fn backoff_bounds() {
        let p = RefreshPolicy::default();
        for n in 1..40 {
            let d = backoff(&p, n);
            assert!(d <= p.max_backoff && d >= p.min_backoff / 2, "{n}: {d:?}");
        }
    }
}
