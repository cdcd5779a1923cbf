//! The default credential chain ([`CredentialSpec::Default`](crate::CredentialSpec::Default)).
//!
//! Sources are considered in this order, from the [`Env`](crate::Env) snapshot:
//! 1. environment service principal: `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` +
//!    `AZURE_CLIENT_SECRET` (or `AZURE_CLIENT_CERTIFICATE_PATH`, a PEM file);
//! 2. workload identity: `AZURE_FEDERATED_TOKEN_FILE` + `AZURE_CLIENT_ID` + `AZURE_TENANT_ID`;
//! 3. managed identity (user-assigned by client id if `AZURE_CLIENT_ID` is set); IMDS is
//!    probed with [`CredentialOptions::imds_probe_timeout`] first, so that a laptop moves on
//!    within about a second;
//! 4. Azure CLI.
//!
//! Sources whose variables are missing are skipped at build time (logged at debug level with
//! the reason). At run time, a source that is unavailable (no IMDS, no `az`, not logged in)
//! or a managed identity that fails for any reason makes the chain try the next one; an
//! explicitly configured service principal or workload identity that is *rejected* by Entra
//! ends the walk with that error rather than silently authenticating as someone else.
//! The first source that answers is remembered: later calls go to it only (logged at info).

use std::sync::{Arc, OnceLock};

use crate::{
    cli::AzureCli,
    entra::EntraSource,
    error::{CredentialError, ErrorKind},
    managed_identity::ManagedIdentity,
    secret::{AccessToken, Secret},
    source::{CredentialOptions, TokenSource, UserAssignedId},
};

struct Entry {
    source: Arc<dyn TokenSource>,
    /// Move on to the next source whatever the error.
    fall_through: bool,
}

/// The default chain.
pub(crate) struct DefaultChain {
    entries: Vec<Entry>,
    chosen: OnceLock<usize>,
}

impl DefaultChain {
    pub(crate) fn from_env(opts: &CredentialOptions) -> Result<Self, CredentialError> {
        let env = &opts.env;
        let mut entries = Vec::new();
        let tenant = env.get("AZURE_TENANT_ID");
        let client = env.get("AZURE_CLIENT_ID");

        // 1. Environment service principal.
        let secret = env.get("AZURE_CLIENT_SECRET");
        let cert = env.get("AZURE_CLIENT_CERTIFICATE_PATH");
        match (tenant, client, secret, cert) {
            (Some(t), Some(c), Some(s), _) => entries.push(Entry {
                source: Arc::new(EntraSource::client_secret(t, c, Secret::new(s), opts)?),
                fall_through: false,
            }),
            (Some(t), Some(c), None, Some(p)) => {
                if env.get("AZURE_CLIENT_CERTIFICATE_PASSWORD").is_some() {
                    return Err(CredentialError::config(
                        "environment service principal",
                        "AZURE_CLIENT_CERTIFICATE_PASSWORD is set, but only unencrypted PEM certificates are supported",
                    ));
                }
                entries.push(Entry {
                    source: Arc::new(EntraSource::client_certificate(t, c, p.into(), opts)?),
                    fall_through: false,
                })
            }
            (_, _, None, None) => tracing::debug!(
                "default chain: skipping the environment service principal (AZURE_CLIENT_SECRET / AZURE_CLIENT_CERTIFICATE_PATH not set)"
            ),
            _ => tracing::info!(
                "default chain: skipping the environment service principal: a secret or certificate is set but AZURE_TENANT_ID or AZURE_CLIENT_ID is not"
            ),
        }

        // 2. Workload identity.
        match (env.get("AZURE_FEDERATED_TOKEN_FILE"), tenant, client) {
            (Some(_), Some(_), Some(_)) => entries.push(Entry {
                source: Arc::new(EntraSource::workload_identity(None, None, None, opts)?),
                fall_through: false,
            }),
            (None, _, _) => tracing::debug!(
                "default chain: skipping workload identity (AZURE_FEDERATED_TOKEN_FILE not set)"
            ),
            _ => tracing::info!(
                "default chain: skipping workload identity: AZURE_FEDERATED_TOKEN_FILE is set but AZURE_TENANT_ID or AZURE_CLIENT_ID is not"
            ),
        }

        // 3. Managed identity.
        let id = client.map(|c| UserAssignedId::ClientId(c.to_owned()));
        match ManagedIdentity::from_env(id, opts, true) {
            Ok(mi) => entries.push(Entry {
                source: Arc::new(mi),
                fall_through: true,
            }),
            Err(e) => tracing::info!(reason = %e, "default chain: skipping managed identity"),
        }

        // 4. Azure CLI.
        entries.push(Entry {
            source: Arc::new(AzureCli::new(None, opts)?),
            fall_through: true,
        });

        Ok(DefaultChain {
            entries,
            chosen: OnceLock::new(),
        })
    }
}

#[async_trait::async_trait]
impl TokenSource for DefaultChain {
    fn describe(&self) -> String {
        match self.chosen.get().and_then(|i| self.entries.get(*i)) {
            Some(e) => format!("default chain → {}", e.source.describe()),
            None => format!(
                "default chain [{}]",
                self.entries
                    .iter()
                    .map(|e| e.source.describe())
                    .collect::<Vec<_>>()
                    .join(" → ")
            ),
        }
    }

    async fn get_token(&self, scope: &str) -> Result<AccessToken, CredentialError> {
        if let Some(e) = self.chosen.get().and_then(|i| self.entries.get(*i)) {
            return e.source.get_token(scope).await;
        }
        let mut attempts = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            match e.source.get_token(scope).await {
                Ok(t) => {
                    if self.chosen.set(i).is_ok() {
                        tracing::info!(
                            source = %e.source.describe(),
                            "default chain: using this credential source from now on"
                        );
                    }
                    return Ok(t);
                }
                Err(err) if e.fall_through || err.kind() == ErrorKind::Unavailable => {
                    tracing::info!(
                        source = %e.source.describe(),
                        error = %err,
                        "default chain: source not usable, trying the next one"
                    );
                    attempts.push((e.source.describe(), err.to_string()));
                }
                Err(err) => return Err(err),
            }
        }
        Err(CredentialError::Exhausted { attempts })
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::testutil::{FakeHttp, Reply, fake_az, opts_with, path_with};
    use std::time::{Duration, Instant};

    const SCOPE: &str = "https://ossrdbms-aad.database.windows.net/.default";

    fn dead_url() -> url::Url {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let u = url::Url::parse(&format!("http://{}", l.local_addr().unwrap())).unwrap();
        drop(l);
        u
    }

    #[tokio::test]
    async fn laptop_falls_through_to_cli_quickly_and_sticks() {
        let dir = fake_az(
            r#"echo x >> "$(dirname "$0")/calls"
echo '{"accessToken":"cli","expires_on":2147385600}'"#,
        );
        let mut opts = opts_with(&[("PATH", path_with(&dir).as_str())]);
        opts.imds_endpoint = Some(dead_url());
        let chain = DefaultChain::from_env(&opts).unwrap();
        assert_eq!(chain.entries.len(), 2, "{}", chain.describe());
        let start = Instant::now();
        assert_eq!(chain.get_token(SCOPE).await.unwrap().token.expose(), "cli");
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(
            chain.describe().starts_with("default chain → Azure CLI"),
            "{}",
            chain.describe()
        );
        chain.get_token(SCOPE).await.unwrap();
        let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
        assert_eq!(calls.lines().count(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn env_service_principal_first() {
        let fake = FakeHttp::start(vec![Reply::json(
            200,
            r#"{"access_token":"sp","expires_in":3599}"#,
        )])
        .await;
        let opts = opts_with(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "sec-ret"),
            ("AZURE_AUTHORITY_HOST", fake.url().as_str()),
            ("PATH", "/nonexistent"),
        ]);
        let chain = DefaultChain::from_env(&opts).unwrap();
        assert_eq!(chain.entries.len(), 3);
        assert_eq!(chain.get_token(SCOPE).await.unwrap().token.expose(), "sp");
        assert!(chain.describe().contains("client secret"));
    }

    #[tokio::test]
    async fn rejected_service_principal_stops_the_chain() {
        let fake = FakeHttp::start(vec![Reply::json(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret is provided."}"#,
        )])
        .await;
        let dir = fake_az(r#"echo '{"accessToken":"cli","expires_on":2147385600}'"#);
        let mut opts = opts_with(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "sec-ret"),
            ("AZURE_AUTHORITY_HOST", fake.url().as_str()),
            ("PATH", path_with(&dir).as_str()),
        ]);
        opts.imds_endpoint = Some(dead_url());
        let chain = DefaultChain::from_env(&opts).unwrap();
        let e = chain.get_token(SCOPE).await.unwrap_err();
        assert!(e.to_string().contains("AADSTS7000215"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn managed_identity_user_assigned_from_client_id() {
        let fake = FakeHttp::start(vec![
            Reply::json(400, r#"{"error":"bad_request_102"}"#),
            Reply::json(200, r#"{"access_token":"mi","expires_on":"1906484173"}"#),
        ])
        .await;
        let mut opts = opts_with(&[("AZURE_CLIENT_ID", "uami"), ("PATH", "/nonexistent")]);
        opts.imds_endpoint = Some(fake.url());
        let chain = DefaultChain::from_env(&opts).unwrap();
        assert_eq!(chain.get_token(SCOPE).await.unwrap().token.expose(), "mi");
        assert_eq!(
            fake.requests()[1].query("client_id").as_deref(),
            Some("uami")
        );
    }

    #[tokio::test]
    async fn everything_missing_is_explained() {
        let mut opts = opts_with(&[("PATH", "/nonexistent")]);
        opts.imds_endpoint = Some(dead_url());
        let chain = DefaultChain::from_env(&opts).unwrap();
        let e = chain.get_token(SCOPE).await.unwrap_err();
        let m = e.to_string();
        assert_eq!(e.kind(), ErrorKind::Exhausted);
        assert!(m.contains("no IMDS endpoint answered"), "{m}");
        assert!(m.contains("`az` was not found"), "{m}");
    }
}
