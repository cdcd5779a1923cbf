//! The token cache: one scope, one source, refreshed ahead of expiry.
//!
//! [`TokenCache`] is the [`Refreshed`] single-flight refresher (see `refresh`) applied to
//! access tokens; this module says what is cached and when it is due:
//!
//! * [`TokenCache::get`] returns the cached token while it has more than
//!   [`EXPIRY_MARGIN`] (10 s) left, without waiting for anything. Otherwise it joins the
//!   acquisition in progress or starts one (single-flight, in its own task, bounded by
//!   [`RefreshPolicy::timeout`]); right after a failure (within
//!   [`RefreshPolicy::min_backoff`]) it returns that failure again.
//! * [`TokenCache::spawn_refresher`] starts a task that fetches a new token
//!   `refresh_before` (5 min by default, at most half the token's lifetime) before expiry,
//!   and after a failure retries with exponential backoff and jitter (`min_backoff` doubling
//!   up to `max_backoff`). The task ends when the cache is dropped.
//! * [`TokenCache::invalidate`] drops a token the database rejected (if it is still the
//!   cached one) so the next `get` fetches a new one, and wakes the refresher. Token sources
//!   of this crate keep no cache of their own, so the rejected token cannot come back from an
//!   SDK cache (IMDS may still return it from its server-side cache; this is logged).
//!
//! Expiry is tracked on tokio's monotonic clock (converted from `expires_on` when a token
//! arrives), so wall-clock jumps do not matter and tests can use `tokio::time::pause`.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;

use crate::{
    error::CredentialError,
    refresh::{Acquire, CacheStatus, Guarded, RefreshPolicy, Refreshed},
    secret::{AccessToken, Secret},
    source::TokenSource,
};

/// A token with less than this left counts as expired for [`TokenCache::get`].
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// The cache drops a token the database rejected at most once per this interval. A refusal
/// that repeats right after a forced refresh is not about the token's age (a revoked role, a
/// wrong audience): fetching yet another token would only load Entra ID, once per client
/// connection, until it throttles every client of the proxy.
pub const FORCED_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// What [`TokenCache::invalidate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidated {
    /// The rejected token was the cached one and is gone; the next `get` fetches a new one.
    Dropped,
    /// The cache already holds another token (a concurrent session replaced it).
    NotCurrent,
    /// The rejected token is the cached one, but a rejected token was dropped less than
    /// [`FORCED_REFRESH_INTERVAL`] ago: it is kept, and no new one is fetched.
    TooSoon,
}

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

/// What the cache keeps.
#[derive(Default)]
struct Held {
    cached: Option<Cached>,
    /// The token the database rejected last (to notice if the source hands it back).
    rejected: Option<Secret>,
}

/// Tokens for one scope from one source.
struct Tokens {
    source: Arc<dyn TokenSource>,
    scope: String,
}

impl Acquire for Tokens {
    type Fetched = AccessToken;
    type Answer = AccessToken;
    type Held = Held;

    fn describe(&self) -> String {
        self.source.describe()
    }

    async fn acquire(&self, _held: &Guarded<Self>) -> Result<AccessToken, CredentialError> {
        self.source.get_token(&self.scope).await
    }

    fn cached(&self, held: &Held, now: Instant) -> Option<AccessToken> {
        held.cached
            .as_ref()
            .filter(|c| c.usable(now))
            .map(|c| c.token.clone())
    }

    fn store(&self, held: &mut Held, token: AccessToken, now: Instant) -> AccessToken {
        let left = token
            .expires_on
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if held.rejected.as_ref() == Some(&token.token) {
            tracing::warn!(
                source = %self.describe(),
                scope = %self.scope,
                "the credential source returned the token the database just rejected (IMDS caches tokens server-side); check the database user and the token's audience"
            );
        }
        held.rejected = None;
        held.cached = Some(Cached {
            token: token.clone(),
            obtained: now,
            valid_until: now + left,
        });
        tracing::info!(
            source = %self.describe(),
            scope = %self.scope,
            expires_in_secs = left.as_secs(),
            "access token obtained"
        );
        token
    }

    fn log_failure(
        &self,
        _held: &Held,
        error: &CredentialError,
        failures: u32,
        retry_in: Duration,
    ) {
        tracing::warn!(
            source = %self.describe(),
            scope = %self.scope,
            error = %error,
            failures,
            retry_in_ms = retry_in.as_millis() as u64,
            "access token acquisition failed"
        );
    }

    fn refresh_at(&self, held: &Held, policy: &RefreshPolicy) -> Option<Instant> {
        held.cached.as_ref().map(|c| c.refresh_at(policy))
    }

    fn expires_on(&self, held: &Held) -> Option<SystemTime> {
        held.cached.as_ref().map(|c| c.token.expires_on)
    }
}

/// A cached, refreshed access token for one scope.
pub struct TokenCache {
    tokens: Refreshed<Tokens>,
    /// When a rejected token was last dropped.
    last_forced: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.tokens.acquirer();
        f.debug_struct("TokenCache")
            .field("source", &t.source.describe())
            .field("scope", &t.scope)
            .finish_non_exhaustive()
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
            tokens: Refreshed::new(Tokens { source, scope }, policy, "token acquisition"),
            last_forced: std::sync::Mutex::new(None),
        })
    }

    /// Starts the background refresher: it fetches a token right away, then again ahead of
    /// each expiry, retrying with backoff after failures. It stops when the cache is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.tokens.spawn_refresher()
    }

    /// The cached token if it is still valid (no waiting), else the result of a (shared)
    /// acquisition.
    pub async fn get(&self) -> Result<AccessToken, CredentialError> {
        self.tokens.get().await
    }

    /// The database rejected `rejected`: forget it if it is still the cached token, unless a
    /// rejected token was dropped less than [`FORCED_REFRESH_INTERVAL`] ago.
    pub fn invalidate(&self, rejected: &Secret) -> Invalidated {
        let mut last = self.last_forced.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let too_soon = last.is_some_and(|t| now < t + FORCED_REFRESH_INTERVAL);
        let outcome = self.tokens.with_held(|held| {
            let is_current = held
                .cached
                .as_ref()
                .is_some_and(|c| &c.token.token == rejected);
            if !is_current {
                Invalidated::NotCurrent
            } else if too_soon {
                Invalidated::TooSoon
            } else {
                held.cached = None;
                held.rejected = Some(rejected.clone());
                Invalidated::Dropped
            }
        });
        match outcome {
            Invalidated::Dropped => {
                *last = Some(now);
                drop(last);
                tracing::info!(
                    source = %self.tokens.acquirer().describe(),
                    scope = %self.scope(),
                    "the database rejected the cached access token; fetching a new one"
                );
                self.tokens.wake();
            }
            Invalidated::TooSoon => tracing::warn!(
                source = %self.tokens.acquirer().describe(),
                scope = %self.scope(),
                "the database rejected the access token again within {} s of fetching a new one; keeping it (the refusal is not about the token's age)",
                FORCED_REFRESH_INTERVAL.as_secs()
            ),
            Invalidated::NotCurrent => {}
        }
        outcome
    }

    /// Health and counters.
    pub fn status(&self) -> CacheStatus {
        self.tokens.status()
    }

    /// The scope tokens are requested for.
    pub fn scope(&self) -> &str {
        &self.tokens.acquirer().scope
    }

    /// The source's description and the scope, for logs.
    pub fn describe(&self) -> String {
        format!("{} for {}", self.tokens.acquirer().describe(), self.scope())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    };

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
    async fn a_rejection_right_after_a_forced_refresh_keeps_the_token() {
        let fake = Fake::new(Duration::ZERO, vec![Ok(HOUR)]);
        let c = cache(&fake, RefreshPolicy::default());
        let t0 = c.get().await.unwrap();
        assert_eq!(c.invalidate(&t0.token), Invalidated::Dropped);
        let t1 = c.get().await.unwrap();
        assert_eq!(fake.calls(), 2);
        // Refused again at once: not the token's fault; no Entra request per client.
        for _ in 0..10 {
            assert_eq!(c.invalidate(&t1.token), Invalidated::TooSoon);
            assert_eq!(c.get().await.unwrap(), t1);
        }
        assert_eq!(fake.calls(), 2);
        // After the interval, a refusal may force a refresh again.
        tokio::time::advance(FORCED_REFRESH_INTERVAL).await;
        assert_eq!(c.invalidate(&t1.token), Invalidated::Dropped);
        c.get().await.unwrap();
        assert_eq!(fake.calls(), 3);
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
        assert_eq!(e.to_string(), "fake: timed out: no answer within 30s");
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
}
