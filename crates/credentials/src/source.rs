//! The [`TokenSource`] trait, the credential configuration ([`CredentialSpec`],
//! [`CredentialOptions`]) and [`build`], which turns a configuration into a source.
//!
//! | spec | protocol | module |
//! |---|---|---|
//! | `ManagedIdentity` | IMDS or App Service / Container Apps identity endpoint | `managed_identity` |
//! | `WorkloadIdentity` | Entra v2 token endpoint, federated assertion read from a file | `entra` |
//! | `ClientSecret` | Entra v2 token endpoint, `client_secret` | `entra` |
//! | `ClientCertificate` | Entra v2 token endpoint, RS256 assertion signed by us | `entra`, `certificate` |
//! | `AzureCli` | `az account get-access-token` | `cli` |
//! | `Default` | the chain of the above, selected by environment variables | `chain` |
//!
//! A source fetches a token every time it is asked: caching, refresh-ahead and single-flight
//! live in [`crate::TokenCache`] only, so that a token the database rejected is really gone
//! after [`crate::TokenCache::invalidate`].

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::{env::Env, error::CredentialError, secret::AccessToken, secret::Secret};

/// Something that can obtain an access token for a scope.
#[async_trait::async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// short description for logs, e.g. "managed identity (IMDS, client_id=…)" — never a secret
    fn describe(&self) -> String;
    /// Obtains a fresh token for `scope` (e.g. `https://ossrdbms-aad.database.windows.net/.default`).
    async fn get_token(&self, scope: &str) -> Result<AccessToken, CredentialError>;
}

/// How a user-assigned managed identity is named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserAssignedId {
    /// The identity's client (application) id.
    ClientId(String),
    /// The identity's object (principal) id.
    ObjectId(String),
    /// The identity's ARM resource id (`/subscriptions/…/userAssignedIdentities/…`).
    ResourceId(String),
}

impl std::fmt::Display for UserAssignedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserAssignedId::ClientId(v) => write!(f, "client_id={v}"),
            UserAssignedId::ObjectId(v) => write!(f, "object_id={v}"),
            UserAssignedId::ResourceId(v) => write!(f, "resource_id={v}"),
        }
    }
}

/// Which credential to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSpec {
    /// Environment service principal → workload identity → managed identity → Azure CLI.
    Default,
    /// A managed identity: system-assigned (`None`) or user-assigned.
    ManagedIdentity {
        /// The user-assigned identity, if any.
        id: Option<UserAssignedId>,
    },
    /// Workload identity federation (AKS): a Kubernetes service account token exchanged for an
    /// Entra token. `None` fields come from `AZURE_TENANT_ID` / `AZURE_CLIENT_ID` /
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    WorkloadIdentity {
        /// Tenant id.
        tenant_id: Option<String>,
        /// Client id of the app registration or user-assigned identity.
        client_id: Option<String>,
        /// File holding the federated token (re-read on every acquisition: it rotates).
        token_file: Option<PathBuf>,
    },
    /// A service principal with a client secret.
    ClientSecret {
        /// Tenant id.
        tenant_id: String,
        /// Client (application) id.
        client_id: String,
        /// The client secret.
        secret: Secret,
    },
    /// A service principal with a certificate.
    ClientCertificate {
        /// Tenant id.
        tenant_id: String,
        /// Client (application) id.
        client_id: String,
        /// PEM file: certificate(s) + private key (PKCS#8 or PKCS#1 RSA, unencrypted).
        certificate: PathBuf,
    },
    /// The signed-in Azure CLI user (`az login`).
    AzureCli {
        /// Tenant to ask for (`--tenant`), if not the CLI's default.
        tenant_id: Option<String>,
    },
}

/// Everything a source needs besides its [`CredentialSpec`].
#[derive(Clone, Debug)]
pub struct CredentialOptions {
    /// HTTP client (from `dbproxy_tls::Trust::http_client()`).
    pub http: reqwest::Client,
    /// Entra authority host; else `AZURE_AUTHORITY_HOST`, else `https://login.microsoftonline.com`.
    pub authority_host: Option<url::Url>,
    /// Override of `http://169.254.169.254` (else `AZURE_POD_IDENTITY_AUTHORITY_HOST`).
    pub imds_endpoint: Option<url::Url>,
    /// Environment variables the sources read.
    pub env: Env,
    /// How long the default chain waits for IMDS to answer a probe before moving on.
    pub imds_probe_timeout: Duration,
}

impl Default for CredentialOptions {
    /// A plain HTTP client (OS roots, no extra CA: prefer `dbproxy_tls::Trust::http_client()`),
    /// the process environment, the default endpoints and a 1 s IMDS probe.
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        CredentialOptions::new(http)
    }
}

impl CredentialOptions {
    /// Options with the given HTTP client, the process environment and default settings.
    pub fn new(http: reqwest::Client) -> Self {
        CredentialOptions {
            http,
            authority_host: None,
            imds_endpoint: None,
            env: Env::from_process(),
            imds_probe_timeout: Duration::from_secs(1),
        }
    }
}

/// Builds the token source described by `spec`.
///
/// Fails on configuration errors that can be seen without a network call (missing
/// environment variables, unreadable certificate, invalid URLs).
pub fn build(
    spec: &CredentialSpec,
    opts: &CredentialOptions,
) -> Result<Arc<dyn TokenSource>, CredentialError> {
    Ok(match spec {
        CredentialSpec::Default => Arc::new(crate::chain::DefaultChain::from_env(opts)?),
        CredentialSpec::ManagedIdentity { id } => Arc::new(
            crate::managed_identity::ManagedIdentity::from_env(id.clone(), opts, false)?,
        ),
        CredentialSpec::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        } => Arc::new(crate::entra::EntraSource::workload_identity(
            tenant_id.clone(),
            client_id.clone(),
            token_file.clone(),
            opts,
        )?),
        CredentialSpec::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => Arc::new(crate::entra::EntraSource::client_secret(
            tenant_id,
            client_id,
            secret.clone(),
            opts,
        )?),
        CredentialSpec::ClientCertificate {
            tenant_id,
            client_id,
            certificate,
        } => Arc::new(crate::entra::EntraSource::client_certificate(
            tenant_id,
            client_id,
            certificate.clone(),
            opts,
        )?),
        CredentialSpec::AzureCli { tenant_id } => {
            Arc::new(crate::cli::AzureCli::new(tenant_id.clone(), opts)?)
        }
    })
}
