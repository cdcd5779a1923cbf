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
//! * `arm` — the HTTP exchange. Retries: 429 honours `Retry-After` (seconds), 5xx and
//!   transport errors back off exponentially; at most 4 requests and 30 s of waiting per
//!   fetch. A 401 (`ExpiredAuthenticationToken` / `InvalidAuthenticationToken`) invalidates
//!   the ARM token in its cache and retries once with a fresh one. A 403 names the missing
//!   permission (`Microsoft.DocumentDB/databaseAccounts/listKeys/action`, or
//!   `…/readonlykeys/action`).
//! * `keys` — key kinds, the fetched pair, refusals and the choice of the key in use.
//! * Caching: the same single-flight refresher as [`TokenCache`] (`refresh`): concurrent
//!   callers share one fetch (in its own task, so a caller giving up does not cancel it), and
//!   [`PasswordSource::password`] never waits while a key is cached. Keys do not expire: a key
//!   is used until the database refuses it or the periodic refresh
//!   ([`CosmosKeySource::spawn_refresher`], hourly by default) brings different keys. A failed
//!   refresh keeps serving the old key and is reported in [`CacheStatus::last_error`].
//! * Rejections ([`PasswordSource::after_rejection`]): the keys are fetched again (they may
//!   have been rotated). The current key stays while it is in the fetched pair and was not
//!   refused; otherwise the kind's key, then the other key of the pair; `None` once both were
//!   refused. Refusals are remembered for a minute, so a transient refusal heals.
//! * Keys are [`Secret`]s: never in `Debug`, errors or logs; ARM error messages are scrubbed
//!   of the token and of known keys.

mod arm;
mod keys;
#[cfg(test)]
mod tests;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::time::Instant;
use url::Url;

pub use self::arm::{LOCAL_AUTH_HINT, local_auth_disabled};
pub use self::keys::CosmosKeyKind;
use self::{
    arm::{Arm, key_url},
    keys::{Keys, Pair},
};
use crate::{
    cache::TokenCache,
    error::{CredentialError, endpoint_of},
    password::PasswordSource,
    refresh::{Acquire, CacheStatus, Guarded, RefreshPolicy, Refreshed},
    secret::Secret,
};

/// [`arm::parse_keys`] for the fuzz targets: (the kind's key, the other key of its pair).
#[cfg(feature = "fuzzing")]
pub(crate) fn parse_list_keys(
    kind: CosmosKeyKind,
    body: &[u8],
    who: &str,
    endpoint: &str,
) -> Result<(Secret, Option<Secret>), CredentialError> {
    arm::parse_keys(kind, body, who, endpoint).map(|p| (p.preferred, p.other))
}

/// The scope of the ARM token used to list keys (the default of `AZURE_COSMOS_SCOPE`).
pub const COSMOS_ARM_SCOPE: &str = "https://management.azure.com/.default";

/// The default interval of the periodic key refresh.
pub const DEFAULT_KEY_REFRESH: Duration = Duration::from_secs(3600);

/// The refresher's policy: a whole fetch (attempts, waits and the ARM token included) within
/// 2 min; after a failure `password()` reports it again for 1 s, and the refresher retries
/// from 1 s doubling up to 5 min. (`refresh_before` is unused: keys do not expire.)
const KEY_POLICY: RefreshPolicy = RefreshPolicy {
    refresh_before: Duration::ZERO,
    min_backoff: Duration::from_secs(1),
    max_backoff: Duration::from_secs(300),
    timeout: Duration::from_secs(120),
};

/// How the refresher obtains keys: from ARM, again every `refresh_every`.
struct KeyFetch {
    arm: Arm,
    refresh_every: Duration,
}

impl Acquire for KeyFetch {
    type Fetched = Pair;
    type Answer = Secret;
    type Held = Keys;

    fn describe(&self) -> String {
        self.arm.describe()
    }

    async fn acquire(&self, held: &Guarded<Self>) -> Result<Pair, CredentialError> {
        self.arm.fetch(|| held.read(Keys::known)).await
    }

    fn cached(&self, held: &Keys, _now: Instant) -> Option<Secret> {
        held.current.clone()
    }

    fn store(&self, held: &mut Keys, pair: Pair, now: Instant) -> Secret {
        let stored = held.store(pair, now);
        tracing::info!(
            source = %self.describe(),
            keys_changed = stored.keys_changed,
            key_switched = stored.key_switched,
            using = if stored.preferred { "the configured key" } else { "the other key of the pair" },
            "Cosmos DB account keys obtained"
        );
        stored.key
    }

    fn log_failure(&self, held: &Keys, error: &CredentialError, failures: u32, retry_in: Duration) {
        tracing::warn!(
            source = %self.describe(),
            error = %error,
            failures,
            keeps_old_key = held.current.is_some(),
            retry_in_ms = retry_in.as_millis() as u64,
            "Cosmos DB account key fetch failed"
        );
    }

    fn refresh_at(&self, held: &Keys, _policy: &RefreshPolicy) -> Option<Instant> {
        Some(held.fetched_at? + self.refresh_every)
    }

    fn expires_on(&self, _held: &Keys) -> Option<SystemTime> {
        // Keys do not expire.
        None
    }
}

/// A Cosmos DB account key, fetched from ARM with an Entra token (see the module notes).
pub struct CosmosKeySource {
    keys: Refreshed<KeyFetch>,
}

impl std::fmt::Debug for CosmosKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = self.keys.acquirer();
        f.debug_struct("CosmosKeySource")
            .field("kind", &k.arm.kind)
            .field("url", &endpoint_of(&k.arm.url))
            .field("token", &k.arm.token)
            .field("refresh_every", &k.refresh_every)
            .finish_non_exhaustive()
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
        let arm = Arm {
            token,
            url: key_url(&list_keys_url, kind),
            kind,
            http,
            retry_base,
        };
        let fetch = KeyFetch {
            arm,
            refresh_every: refresh_every.max(Duration::from_millis(10)),
        };
        Arc::new(CosmosKeySource {
            keys: Refreshed::new(fetch, KEY_POLICY, "key fetch"),
        })
    }

    /// Starts the periodic background re-fetch: right away if no key is cached, then every
    /// `refresh_every`; after a failure it retries with backoff (1 s doubling up to 5 min)
    /// while the old key stays in use. It stops when the source is dropped.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.keys.spawn_refresher()
    }

    /// The key kind tried first.
    pub fn kind(&self) -> CosmosKeyKind {
        self.keys.acquirer().arm.kind
    }

    /// The URL POSTed (listKeys or readonlykeys, with its query string).
    pub fn url(&self) -> &Url {
        &self.keys.acquirer().arm.url
    }
}

#[async_trait::async_trait]
impl PasswordSource for CosmosKeySource {
    fn describe(&self) -> String {
        self.keys.acquirer().describe()
    }

    async fn password(&self) -> Result<Secret, CredentialError> {
        self.keys.get().await
    }

    async fn after_rejection(&self, rejected: &Secret) -> Result<Option<Secret>, CredentialError> {
        let now = Instant::now();
        if let Some(moved_on) = self.keys.with_held(|k| k.refuse(rejected, now)) {
            // Another connection already moved on.
            return Ok(Some(moved_on));
        }
        tracing::info!(
            source = %self.describe(),
            "the database refused the Cosmos DB account key; fetching the keys again"
        );
        self.keys.fetch().await?;
        let next = self.keys.with_held(Keys::next_key);
        if next.is_none() {
            tracing::warn!(
                source = %self.describe(),
                "the database refused both account keys of the pair; check the user name (the account name) and the key kind"
            );
        }
        Ok(next)
    }

    fn status(&self) -> CacheStatus {
        self.keys.status()
    }
}
