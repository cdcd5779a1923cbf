//! Entra ID access tokens for entra-db-proxy.
//!
//! The proxy logs in to Azure Database for PostgreSQL (and to ARM, for Cosmos DB keys) with
//! an Entra ID access token as the password. This crate obtains those tokens from the
//! credential the deployment provides and keeps one fresh per scope.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use dbproxy_credentials::{CredentialOptions, CredentialSpec, RefreshPolicy, TokenCache, build};
//! let http = dbproxy_tls::Trust::new(None)?.http_client()?;
//! let source = build(&CredentialSpec::Default, &CredentialOptions::new(http))?;
//! let cache = TokenCache::new(
//!     source,
//!     "https://ossrdbms-aad.database.windows.net/.default".into(),
//!     RefreshPolicy::default(),
//! );
//! cache.spawn_refresher();
//! let password = cache.get().await?.token;
//! # let _ = password; Ok(()) }
//! ```
//!
//! # Layout
//! * [`secret`](crate::Secret) — `Secret` (redacted everywhere) and `AccessToken`.
//! * `error` — [`CredentialError`] and [`ErrorKind`]; messages never hold secrets.
//! * `env` — [`Env`], the snapshot of environment variables the sources read.
//! * `source` — the [`TokenSource`] trait, [`CredentialSpec`], [`CredentialOptions`], [`build`].
//! * `managed_identity` — IMDS and App Service / Container Apps identity endpoints.
//! * `entra` — Entra v2 token endpoint: client secret, client certificate, workload identity.
//! * `federated` — [`AssertionSource`] and [`federated()`]: workload identity with an assertion
//!   obtained per acquisition (per-pod identity: a Kubernetes TokenRequest).
//! * `certificate` — RS256 client assertion JWTs signed with aws-lc-rs (no OpenSSL).
//! * `cli` — `az account get-access-token`.
//! * `chain` — the default chain (environment → workload identity → managed identity → CLI).
//! * `refresh` — the single-flight refresher (refresh-ahead, backoff with jitter, a background
//!   task, [`CacheStatus`]) that [`TokenCache`] and [`CosmosKeySource`] are built on.
//! * `cache` — [`TokenCache`]: access tokens kept fresh per scope, invalidation.
//! * `wire` — wire-format helpers shared by the HTTP sources.
//! * `password` — [`PasswordSource`]: what a listener logs in with ([`TokenCache`] implements it:
//!   the token is the password).
//! * `cosmos` — [`CosmosKeySource`]: a Cosmos DB account key from ARM `listKeys` (Cassandra API):
//!   `cosmos::arm` (the HTTP exchange) and `cosmos::keys` (key kinds, choice, refusals).
//! * `password_file` — [`PasswordFile`]: a password kept in a file (development only).
//! * `fuzzing` (only with the `fuzzing` feature, for `fuzz/`): the response parsers above.
//!
//! All sources are hand-written over reqwest rather than wrapping `azure_identity` (see each
//! module's notes): the SDK's credentials cache tokens internally (defeating
//! [`TokenCache::invalidate`]), read the process environment, hard-code the IMDS address
//! and retry IMDS for up to 72 s, and its certificate credential needs OpenSSL.

#![warn(missing_docs)]

mod cache;
mod certificate;
mod chain;
mod cli;
mod cosmos;
mod entra;
mod env;
mod error;
mod federated;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod managed_identity;
mod password;
mod password_file;
mod refresh;
mod secret;
mod source;
#[cfg(test)]
mod testutil;
mod wire;

pub use cache::{EXPIRY_MARGIN, FORCED_REFRESH_INTERVAL, Invalidated, TokenCache};
pub use cosmos::{
    COSMOS_ARM_SCOPE, CosmosKeyKind, CosmosKeySource, DEFAULT_KEY_REFRESH, LOCAL_AUTH_HINT,
    local_auth_disabled,
};
pub use env::Env;
pub use error::{CredentialError, ErrorKind};
pub use federated::{AssertionSource, federated};
pub use password::PasswordSource;
pub use password_file::PasswordFile;
pub use refresh::{CacheStatus, RefreshPolicy};
pub use secret::{AccessToken, Secret};
pub use source::{CredentialOptions, CredentialSpec, TokenSource, UserAssignedId, build};

#[cfg(test)]
mod leak_tests {
    //! Secrets must not appear in Debug, Display, errors or logs.

    use crate::testutil::{FakeHttp, Reply, opts_with};
    use crate::*;

    const SECRETS: &[&str] = &[
        "CLIENT-SECRET-sentinel",
        "ACCESS-TOKEN-sentinel",
        "IDENTITY-HEADER-sentinel",
        "FEDERATED-TOKEN-sentinel",
    ];

    fn assert_clean(what: &str, text: &str) {
        for s in SECRETS {
            assert!(!text.contains(s), "{what} leaks {s}: {text}");
        }
    }

    #[tokio::test]
    async fn no_secret_in_debug_errors_or_logs() {
        let (buf, _guard) = crate::testutil::LogCapture::start();

        // Specs and secrets.
        let specs = [
            CredentialSpec::Default,
            CredentialSpec::ManagedIdentity {
                id: Some(UserAssignedId::ClientId("c".into())),
            },
            CredentialSpec::WorkloadIdentity {
                tenant_id: None,
                client_id: None,
                token_file: None,
            },
            CredentialSpec::ClientSecret {
                tenant_id: "t".into(),
                client_id: "c".into(),
                secret: Secret::new(SECRETS[0]),
            },
            CredentialSpec::ClientCertificate {
                tenant_id: "t".into(),
                client_id: "c".into(),
                certificate: "/x.pem".into(),
            },
            CredentialSpec::AzureCli { tenant_id: None },
        ];
        for s in &specs {
            assert_clean("spec Debug", &format!("{s:?}"));
        }
        let tok = AccessToken {
            token: Secret::new(SECRETS[1]),
            expires_on: std::time::SystemTime::now(),
        };
        assert_clean(
            "token Debug",
            &format!("{tok:?} {} {:?}", tok.token, tok.token),
        );

        // Each source against a server that echoes the secret it received in its error.
        let dir = std::env::temp_dir().join(format!("dbproxy-leak-{}", certificate::uuid_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, SECRETS[3]).unwrap();
        let mut texts = Vec::new();
        let mut opts = opts_with(&[]);
        for (spec, echoed) in [
            (&specs[0], SECRETS[0]),
            (&specs[1], SECRETS[2]),
            (&specs[2], SECRETS[3]),
            (&specs[3], SECRETS[0]),
        ] {
            let echo = format!(
                r#"{{"error":"invalid_client","error_description":"bad {echoed}","message":"{echoed}"}}"#
            );
            let fake = FakeHttp::start(vec![
                Reply::json(
                    200,
                    &format!(
                        r#"{{"access_token":"{}","expires_on":"1906484173","expires_in":3599}}"#,
                        SECRETS[1]
                    ),
                ),
                Reply::json(401, &echo),
            ])
            .await;
            let ep = format!("{}msi", fake.url());
            opts = opts_with(&[
                ("AZURE_TENANT_ID", "t"),
                ("AZURE_CLIENT_ID", "c"),
                ("AZURE_CLIENT_SECRET", SECRETS[0]),
                ("AZURE_FEDERATED_TOKEN_FILE", file.to_str().unwrap()),
                ("IDENTITY_ENDPOINT", ep.as_str()),
                ("IDENTITY_HEADER", SECRETS[2]),
                ("PATH", "/nonexistent"),
            ]);
            opts.authority_host = Some(fake.url());
            assert_clean("options Debug", &format!("{opts:?}"));
            let src = build(spec, &opts).unwrap();
            texts.push(src.describe());
            let cache = TokenCache::new(src, "https://x/.default".into(), RefreshPolicy::default());
            texts.push(format!("{cache:?}"));
            // First call succeeds, the second fails with the echo.
            for _ in 0..2 {
                match cache.get().await {
                    Ok(t) => {
                        texts.push(format!("{t:?}"));
                        cache.invalidate(&t.token);
                    }
                    Err(e) => {
                        texts.push(e.to_string());
                        texts.push(format!("{e:?}"));
                    }
                }
            }
            texts.push(format!("{:?}", cache.status()));
            assert_eq!(cache.status().refreshes_failed, 1, "{texts:?}");
        }
        let e = build(&specs[4], &opts).err().unwrap();
        texts.push(format!("{e} {e:?}"));
        for t in &texts {
            assert_clean("output", t);
        }
        assert!(
            texts.iter().any(|t| t.contains("invalid_client")),
            "the failing path was exercised: {texts:?}"
        );
        drop(_guard);
        let logs = buf.text();
        assert!(logs.contains("access token obtained"), "{logs}");
        assert_clean("logs", &logs);
        let _ = std::fs::remove_dir_all(dir);
    }
}
