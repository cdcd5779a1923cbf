//! [`PasswordSource`]: what a listener logs in to the database with.
//!
//! | source | password | after a rejection |
//! |---|---|---|
//! | [`TokenCache`] | the Entra access token (PostgreSQL; Cassandra deployments that accept tokens) | invalidate, fetch one fresh token |
//! | [`CosmosKeySource`](crate::CosmosKeySource) | a Cosmos DB account key from ARM `listKeys` | re-fetch the keys (rotation), then the other key of the pair |
//! | [`PasswordFile`](crate::PasswordFile) | the contents of a file (development only) | re-read the file |
//!
//! A listener calls [`PasswordSource::password`] for each login (answered from a cache, without
//! waiting, whenever a valid value is cached). When the database refuses it, the listener calls
//! [`PasswordSource::after_rejection`] with the refused value and tries again with what it
//! returns, until it returns `None`.

use crate::{cache::TokenCache, error::CredentialError, refresh::CacheStatus, secret::Secret};

/// Where a listener's database password comes from.
#[async_trait::async_trait]
pub trait PasswordSource: Send + Sync + 'static {
    /// Short description for logs — never a secret.
    fn describe(&self) -> String;

    /// The password to log in with now (cached; waits only when nothing valid is cached).
    async fn password(&self) -> Result<Secret, CredentialError>;

    /// The database refused `rejected`. Returns the next password to try, or `None` when
    /// there is nothing else to try.
    ///
    /// * Token source: invalidates the token and fetches a fresh one once (`None` if the
    ///   fresh one equals the rejected one).
    /// * Cosmos keys: first re-fetches the keys (rotation); if the re-fetched key differs,
    ///   returns it; otherwise falls back to the other key of the pair (primary ↔ secondary,
    ///   or the read-only pair); `None` once both were refused.
    async fn after_rejection(&self, rejected: &Secret) -> Result<Option<Secret>, CredentialError>;

    /// Health and counters, for health checks and metrics.
    fn status(&self) -> CacheStatus;
}

/// The access token itself is the password.
#[async_trait::async_trait]
impl PasswordSource for TokenCache {
    fn describe(&self) -> String {
        TokenCache::describe(self)
    }

    async fn password(&self) -> Result<Secret, CredentialError> {
        Ok(self.get().await?.token)
    }

    async fn after_rejection(&self, rejected: &Secret) -> Result<Option<Secret>, CredentialError> {
        // A no-op if another connection already replaced the rejected token: `get` then
        // answers with the newer cached one.
        if self.invalidate(rejected) == crate::cache::Invalidated::TooSoon {
            return Ok(None);
        }
        let fresh = self.get().await?.token;
        if &fresh == rejected {
            tracing::warn!(
                source = %TokenCache::describe(self),
                "the fresh access token is the one the database just rejected; giving up on this login"
            );
            Ok(None)
        } else {
            Ok(Some(fresh))
        }
    }

    fn status(&self) -> CacheStatus {
        TokenCache::status(self)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{AccessToken, RefreshPolicy, TokenSource};

    /// Hands out `token-0`, `token-1`, … or, with `repeat`, always `token-0`.
    struct Counting {
        calls: AtomicUsize,
        repeat: bool,
    }

    #[async_trait::async_trait]
    impl TokenSource for Counting {
        fn describe(&self) -> String {
            "counting".into()
        }
        async fn get_token(&self, _scope: &str) -> Result<AccessToken, CredentialError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let n = if self.repeat { 0 } else { n };
            Ok(AccessToken {
                token: Secret::new(format!("token-{n}")),
                expires_on: SystemTime::now() + Duration::from_secs(3600),
            })
        }
    }

    fn cache(repeat: bool) -> (Arc<Counting>, Arc<dyn PasswordSource>) {
        let src = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            repeat,
        });
        let c = TokenCache::new(src.clone(), "s/.default".into(), RefreshPolicy::default());
        (src, c)
    }

    #[tokio::test(start_paused = true)]
    async fn token_cache_after_rejection_gives_a_fresh_token_once() {
        let (src, p) = cache(false);
        assert_eq!(p.describe(), "counting for s/.default");
        let t0 = p.password().await.unwrap();
        assert_eq!(t0.expose(), "token-0");
        assert_eq!(p.password().await.unwrap(), t0, "cached");
        assert_eq!(src.calls.load(Ordering::SeqCst), 1);
        let t1 = p.after_rejection(&t0).await.unwrap().unwrap();
        assert_eq!(t1.expose(), "token-1");
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
        // A second connection reporting the same (old) token gets the new one, no new fetch.
        assert_eq!(p.after_rejection(&t0).await.unwrap(), Some(t1.clone()));
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
        assert_eq!(p.password().await.unwrap(), t1);
        assert_eq!(p.status().refreshes_ok, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn token_cache_same_token_again_is_none() {
        let (src, p) = cache(true);
        let t0 = p.password().await.unwrap();
        assert_eq!(p.after_rejection(&t0).await.unwrap(), None);
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
    }
}
