//! Workload identity with an assertion that is not a file: [`AssertionSource`] hands the
//! Kubernetes service-account token (audience `api://AzureADTokenExchange`) to the Entra v2
//! token endpoint's federated-assertion flow (`client_assertion_type=…jwt-bearer`, see
//! `entra`). Per-pod identity uses it with a TokenRequest for the pod's service account,
//! bound to the pod; it is asked afresh on every acquisition, so nothing but the
//! [`crate::TokenCache`] in front of it caches.

use std::sync::Arc;

use crate::{CredentialError, CredentialOptions, Secret, TokenSource};

/// Where a federated assertion comes from.
#[async_trait::async_trait]
pub trait AssertionSource: Send + Sync + 'static {
    /// For logs (never a secret): e.g. "TokenRequest for ns/sa".
    fn describe(&self) -> String;
    /// A fresh assertion.
    async fn assertion(&self) -> Result<Secret, CredentialError>;
}

/// A token source for the Entra identity `client_id` in `tenant_id` that proves itself with
/// assertions from `assertion`.
pub fn federated(
    tenant_id: &str,
    client_id: &str,
    assertion: Arc<dyn AssertionSource>,
    opts: &CredentialOptions,
) -> Result<Arc<dyn TokenSource>, CredentialError> {
    Ok(Arc::new(crate::entra::EntraSource::federated(
        tenant_id, client_id, assertion, opts,
    )?))
}

impl CredentialError {
    /// An assertion source failed (`who` and `message` are logged: never a secret).
    pub fn assertion_unavailable(who: impl Into<String>, message: impl Into<String>) -> Self {
        CredentialError::unavailable(who, message)
    }
}
