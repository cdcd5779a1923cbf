//! The single-flight refresher shared by [`TokenCache`](crate::TokenCache) (an access token)
//! and [`CosmosKeySource`](crate::CosmosKeySource) (a Cosmos DB key pair).
//!
//! Both keep one value that costs a network round trip to obtain, and both want the same
//! things from the machinery around it, so it lives here once, generic over an [`Acquire`]
//! implementation that says how to obtain the value, what to keep of it and when it is due:
//!
//! * [`Refreshed::get`] answers from what is held without waiting whenever
//!   [`Acquire::cached`] can. Otherwise it joins the acquisition in progress or starts one:
//!   concurrent callers share a single request (single-flight). The acquisition runs in its
//!   own task, so a caller that gives up does not cancel it for the others, and is bounded by
//!   [`RefreshPolicy::timeout`]. Right after a failure (within [`RefreshPolicy::min_backoff`])
//!   `get` returns that failure again instead of hammering the server.
//! * [`Refreshed::spawn_refresher`] starts a task that acquires again when
//!   [`Acquire::refresh_at`] says (right away when nothing is held) and, after a failure,
//!   retries with exponential backoff: `min_backoff` doubling up to `max_backoff`, each delay
//!   drawn uniformly from the upper half of its step (jitter). The task holds only a weak
//!   reference and ends when the [`Refreshed`] is dropped.
//! * The counters and the last error are kept for [`CacheStatus`] (health checks, metrics).
//!
//! Time is tokio's monotonic clock, so wall-clock jumps do not matter and tests can use
//! `tokio::time::pause`.

use std::{
    future::Future,
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

use crate::error::CredentialError;

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

/// How a [`Refreshed`] value is obtained, kept and judged.
pub(crate) trait Acquire: Send + Sync + Sized + 'static {
    /// What one successful acquisition brings (an access token, a key pair).
    type Fetched: Send + 'static;
    /// What callers are answered with (an access token, the key in use).
    type Answer: Clone + Send + Sync + 'static;
    /// What is kept between acquisitions (the cached value and what goes with it).
    type Held: Default + Send + 'static;

    /// Who acquires, for errors and logs (never a secret).
    fn describe(&self) -> String;

    /// One acquisition (the caller bounds it by [`RefreshPolicy::timeout`]). `held` lets it
    /// read what is held, e.g. the values to scrub from error messages.
    fn acquire(
        &self,
        held: &Guarded<Self>,
    ) -> impl Future<Output = Result<Self::Fetched, CredentialError>> + Send;

    /// The answer that needs no acquisition, if `held` has one at `now`.
    fn cached(&self, held: &Self::Held, now: Instant) -> Option<Self::Answer>;

    /// Keeps a successful acquisition made at `now` (and logs it); returns what the callers
    /// that waited for it are answered with.
    fn store(&self, held: &mut Self::Held, fetched: Self::Fetched, now: Instant) -> Self::Answer;

    /// Logs a failed acquisition: the `failures`-th in a row, retried in `retry_in`.
    fn log_failure(
        &self,
        held: &Self::Held,
        error: &CredentialError,
        failures: u32,
        retry_in: Duration,
    );

    /// When the refresher acquires again after a success (`None`: now, e.g. nothing held).
    fn refresh_at(&self, held: &Self::Held, policy: &RefreshPolicy) -> Option<Instant>;

    /// The expiry [`CacheStatus::expires_on`] reports.
    fn expires_on(&self, held: &Self::Held) -> Option<SystemTime>;
}

/// The result of one acquisition as its waiters see it (`None` until it is known).
type Outcome<A> = Option<Result<<A as Acquire>::Answer, CredentialError>>;

struct State<A: Acquire> {
    held: A::Held,
    inflight: Option<watch::Receiver<Outcome<A>>>,
    last_success: Option<SystemTime>,
    last_error: Option<CredentialError>,
    last_failure_at: Option<Instant>,
    /// When the refresher retries after a failure.
    retry_at: Option<Instant>,
    consecutive_failures: u32,
    refreshes_ok: u64,
    refreshes_failed: u64,
}

impl<A: Acquire> Default for State<A> {
    fn default() -> Self {
        State {
            held: A::Held::default(),
            inflight: None,
            last_success: None,
            last_error: None,
            last_failure_at: None,
            retry_at: None,
            consecutive_failures: 0,
            refreshes_ok: 0,
            refreshes_failed: 0,
        }
    }
}

impl<A: Acquire> State<A> {
    /// An acquisition is running (a dropped sender means its task died without an answer).
    fn live_flight(&self) -> Option<&watch::Receiver<Outcome<A>>> {
        self.inflight.as_ref().filter(|rx| rx.has_changed().is_ok())
    }
}

/// The lock over a [`Refreshed`]'s state; an acquisition reads what is held through it.
pub(crate) struct Guarded<A: Acquire>(Mutex<State<A>>);

impl<A: Acquire> Guarded<A> {
    fn lock(&self) -> MutexGuard<'_, State<A>> {
        // A panic while holding the lock leaves consistent data behind: keep going.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `f` applied to what is held.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&A::Held) -> R) -> R {
        f(&self.lock().held)
    }
}

/// Owned by the flight tasks and (weakly) by the refresher.
struct Shared<A: Acquire> {
    acq: A,
    policy: RefreshPolicy,
    /// What an acquisition is called in messages ("token acquisition", "key fetch").
    what: &'static str,
    state: Guarded<A>,
}

/// Shared between the owner and its refresher, outliving both.
struct Signal {
    wake: Notify,
    closed: AtomicBool,
}

/// A value obtained by `A`, refreshed ahead of need, single-flight (see the module notes).
pub(crate) struct Refreshed<A: Acquire> {
    shared: Arc<Shared<A>>,
    signal: Arc<Signal>,
}

impl<A: Acquire> Drop for Refreshed<A> {
    fn drop(&mut self) {
        self.signal.closed.store(true, Ordering::SeqCst);
        self.signal.wake.notify_one();
    }
}

impl<A: Acquire> Shared<A> {
    /// The acquisition in progress, or a new one (in its own task).
    fn flight(self: &Arc<Self>, st: &mut State<A>) -> watch::Receiver<Outcome<A>> {
        if let Some(rx) = st.live_flight() {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        st.inflight = Some(rx.clone());
        let shared = self.clone();
        tokio::spawn(async move {
            let result = shared.acquire().await;
            let outcome = {
                let mut st = shared.state.lock();
                st.inflight = None;
                shared.record(&mut st, result)
            };
            let _ = tx.send(Some(outcome));
        });
        rx
    }

    async fn acquire(&self) -> Result<A::Fetched, CredentialError> {
        let timeout = self.policy.timeout;
        match tokio::time::timeout(timeout, self.acq.acquire(&self.state)).await {
            Ok(r) => r,
            Err(_) => Err(CredentialError::Timeout {
                who: self.acq.describe(),
                after: timeout,
            }),
        }
    }

    fn record(
        &self,
        st: &mut State<A>,
        result: Result<A::Fetched, CredentialError>,
    ) -> Result<A::Answer, CredentialError> {
        let now = Instant::now();
        match result {
            Ok(fetched) => {
                let answer = self.acq.store(&mut st.held, fetched, now);
                st.last_success = Some(SystemTime::now());
                st.last_error = None;
                st.retry_at = None;
                st.consecutive_failures = 0;
                st.refreshes_ok += 1;
                Ok(answer)
            }
            Err(e) => {
                st.refreshes_failed += 1;
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                st.last_error = Some(e.clone());
                st.last_failure_at = Some(now);
                let delay = backoff(&self.policy, st.consecutive_failures);
                st.retry_at = Some(now + delay);
                self.acq
                    .log_failure(&st.held, &e, st.consecutive_failures, delay);
                Err(e)
            }
        }
    }

    /// The outcome of the flight `rx` belongs to.
    async fn wait(
        &self,
        rx: &mut watch::Receiver<Outcome<A>>,
    ) -> Result<A::Answer, CredentialError> {
        let ended = |how: &str| {
            CredentialError::unavailable(self.acq.describe(), format!("the {} {how}", self.what))
        };
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v
                .clone()
                .unwrap_or_else(|| Err(ended("ended without an answer"))),
            Err(_) => Err(ended("was interrupted")),
        }
    }

    /// When the refresher should acquire next (`None`: now).
    fn next_refresh(&self) -> Option<Instant> {
        let st = self.state.lock();
        let at = if st.consecutive_failures > 0 {
            st.retry_at?
        } else {
            self.acq.refresh_at(&st.held, &self.policy)?
        };
        (at > Instant::now()).then_some(at)
    }
}

impl<A: Acquire> Refreshed<A> {
    /// Nothing is acquired until [`get`](Self::get), [`fetch`](Self::fetch) or the refresher
    /// asks. `what` names an acquisition in messages.
    pub(crate) fn new(acq: A, policy: RefreshPolicy, what: &'static str) -> Self {
        Refreshed {
            shared: Arc::new(Shared {
                acq,
                policy,
                what,
                state: Guarded(Mutex::new(State::default())),
            }),
            signal: Arc::new(Signal {
                wake: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// How the value is acquired.
    pub(crate) fn acquirer(&self) -> &A {
        &self.shared.acq
    }

    /// The cached answer if there is one (no waiting); else the failure of an acquisition that
    /// ended less than `min_backoff` ago; else the outcome of a (shared) acquisition.
    pub(crate) async fn get(&self) -> Result<A::Answer, CredentialError> {
        let mut rx = {
            let mut st = self.shared.state.lock();
            let now = Instant::now();
            if let Some(answer) = self.shared.acq.cached(&st.held, now) {
                return Ok(answer);
            }
            if st.live_flight().is_none() {
                if let (Some(at), Some(err)) = (st.last_failure_at, &st.last_error) {
                    if now < at + self.shared.policy.min_backoff {
                        return Err(err.clone());
                    }
                }
            }
            self.shared.flight(&mut st)
        };
        self.shared.wait(&mut rx).await
    }

    /// The outcome of the acquisition in progress, or of a new one, whatever is held.
    pub(crate) async fn fetch(&self) -> Result<A::Answer, CredentialError> {
        let mut rx = {
            let mut st = self.shared.state.lock();
            self.shared.flight(&mut st)
        };
        self.shared.wait(&mut rx).await
    }

    /// `f` applied to what is held, under the lock (do not block in it).
    pub(crate) fn with_held<R>(&self, f: impl FnOnce(&mut A::Held) -> R) -> R {
        f(&mut self.shared.state.lock().held)
    }

    /// Makes the refresher look at what is held again (e.g. after the caller dropped the
    /// cached value).
    pub(crate) fn wake(&self) {
        self.signal.wake.notify_one();
    }

    /// Health and counters.
    pub(crate) fn status(&self) -> CacheStatus {
        let st = self.shared.state.lock();
        CacheStatus {
            expires_on: self.shared.acq.expires_on(&st.held),
            last_success: st.last_success,
            last_error: st.last_error.as_ref().map(|e| e.to_string()),
            refreshes_ok: st.refreshes_ok,
            refreshes_failed: st.refreshes_failed,
        }
    }

    /// Starts the background refresher (see the module notes). It ends when `self` is dropped.
    pub(crate) fn spawn_refresher(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(refresher(Arc::downgrade(&self.shared), self.signal.clone()))
    }
}

async fn refresher<A: Acquire>(weak: Weak<Shared<A>>, signal: Arc<Signal>) {
    loop {
        if signal.closed.load(Ordering::SeqCst) {
            return;
        }
        let next = match weak.upgrade() {
            Some(shared) => shared.next_refresh(),
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
                let Some(shared) = weak.upgrade() else { return };
                let mut rx = {
                    let mut st = shared.state.lock();
                    shared.flight(&mut st)
                };
                // Waiting must not keep the owner's state alive.
                drop(shared);
                // The outcome is recorded by the flight itself.
                let _ = rx.wait_for(Option::is_some).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The generic parts not already covered through `TokenCache` and `CosmosKeySource`.

    use std::sync::atomic::AtomicU32;

    use super::*;

    /// Acquires 0, 1, 2, … (100 ms each) and holds the last one.
    #[derive(Default)]
    struct Counter {
        calls: AtomicU32,
    }

    impl Acquire for Counter {
        type Fetched = u32;
        type Answer = u32;
        type Held = Option<u32>;

        fn describe(&self) -> String {
            "counter".into()
        }

        async fn acquire(&self, _held: &Guarded<Self>) -> Result<u32, CredentialError> {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(self.calls.fetch_add(1, Ordering::SeqCst))
        }

        fn cached(&self, held: &Option<u32>, _now: Instant) -> Option<u32> {
            *held
        }

        fn store(&self, held: &mut Option<u32>, n: u32, _now: Instant) -> u32 {
            *held = Some(n);
            n
        }

        fn log_failure(&self, _: &Option<u32>, _: &CredentialError, _: u32, _: Duration) {}

        fn refresh_at(&self, held: &Option<u32>, _policy: &RefreshPolicy) -> Option<Instant> {
            held.map(|_| Instant::now() + Duration::from_secs(3600))
        }

        fn expires_on(&self, _held: &Option<u32>) -> Option<SystemTime> {
            None
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_bypasses_what_is_held_and_shares_the_flight() {
        let r = Refreshed::new(Counter::default(), RefreshPolicy::default(), "count");
        assert_eq!(r.get().await.unwrap(), 0);
        assert_eq!(r.get().await.unwrap(), 0, "answered from what is held");
        let (a, b, c) = tokio::join!(r.fetch(), r.fetch(), r.get());
        assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (1, 1, 0));
        assert_eq!(r.with_held(|h| *h), Some(1));
        assert_eq!(r.acquirer().calls.load(Ordering::SeqCst), 2);
        let s = r.status();
        assert_eq!((s.refreshes_ok, s.refreshes_failed), (2, 0));
        assert!(s.last_success.is_some() && s.expires_on.is_none());
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
