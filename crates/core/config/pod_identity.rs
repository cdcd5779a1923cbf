//! Per-pod identity and Unix-socket uid allowlists: a listener's `pod_identity` and
//! `allow_uids`, and the process-wide `[kubernetes]` settings (the API server, the node).
//!
//! File:
//! ```toml
//! [kubernetes]                 # all optional; in a pod the defaults are right
//! node_name = "aks-nodepool1-0"   # else --node-name / ENTRA_DB_PROXY_NODE_NAME
//! # api_server, token_file, ca_file, tenant_id, max_identities
//!
//! [[listener]]
//! pod_identity = { allow = ["shop/api", "batch/*"], users = { "shop/api" = "shop_api" } }
//! ```
//! Flags: `--pod-identity-allow`, `--pod-identity-user`, `--allow-uid`, `--node-name`,
//! `--kubernetes-api`, `--kubernetes-token-file`, `--kubernetes-ca-file`,
//! `--pod-identity-tenant-id`, `--pod-identity-max-identities`.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use super::{Flags, ListenAddr};

/// A listener's per-pod identity policy (see `dbproxy_kubernetes::Policy`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PodIdentityConfig {
    /// `NS/SA` or `NS/*` entries that may use the listener.
    #[serde(default)]
    pub allow: Vec<String>,
    /// `NS/SA` → database user (wins over the service account's annotation).
    #[serde(default)]
    pub users: BTreeMap<String, String>,
}

/// The file's `[kubernetes]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKubernetes {
    api_server: Option<String>,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    node_name: Option<String>,
    tenant_id: Option<String>,
    max_identities: Option<usize>,
}

/// How the proxy reaches the Kubernetes API (only used when a listener has pod identity).
#[derive(Debug, Clone, Default)]
pub struct KubernetesConfig {
    /// The API server (default: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`).
    pub api_server: Option<url::Url>,
    /// The proxy's service-account token (default: the mounted one).
    pub token_file: Option<PathBuf>,
    /// The cluster CA (default: the mounted one).
    pub ca_file: Option<PathBuf>,
    /// This node (the downward API's `spec.nodeName`).
    pub node_name: Option<String>,
    /// Tenant of service accounts without `azure.workload.identity/tenant-id`.
    pub tenant_id: Option<String>,
    /// At most this many identities (token caches) per listener (default 256).
    pub max_identities: usize,
}

/// Default of [`KubernetesConfig::max_identities`].
pub const DEFAULT_MAX_IDENTITIES: usize = 256;

impl KubernetesConfig {
    /// Flags over the file.
    pub fn merge(flags: &Flags, file: Option<&FileKubernetes>) -> anyhow::Result<KubernetesConfig> {
        let f = file.cloned().unwrap_or_default();
        let api = flags.kubernetes_api.clone().or(f.api_server);
        let api_server = match api {
            Some(s) => Some(url::Url::parse(&s).with_context(|| {
                format!(
                    "kubernetes api_server (--kubernetes-api): expected an https URL, got {s:?}"
                )
            })?),
            None => None,
        };
        Ok(KubernetesConfig {
            api_server,
            token_file: flags.kubernetes_token_file.clone().or(f.token_file),
            ca_file: flags.kubernetes_ca_file.clone().or(f.ca_file),
            node_name: flags
                .node_name
                .clone()
                .or(f.node_name)
                .filter(|n| !n.is_empty()),
            tenant_id: flags.pod_identity_tenant_id.clone().or(f.tenant_id),
            max_identities: flags
                .pod_identity_max_identities
                .or(f.max_identities)
                .unwrap_or(DEFAULT_MAX_IDENTITIES)
                .max(1),
        })
    }
}

/// The flags' pod identity for their listeners (`--pod-identity-allow` turns it on).
pub fn from_flags(flags: &Flags) -> anyhow::Result<Option<PodIdentityConfig>> {
    if flags.pod_identity_allow.is_empty() {
        if !flags.pod_identity_user.is_empty() {
            bail!("--pod-identity-user needs --pod-identity-allow (which turns pod identity on)");
        }
        return Ok(None);
    }
    let mut users = BTreeMap::new();
    for m in &flags.pod_identity_user {
        let (k, v) = m.split_once('=').with_context(|| {
            format!("--pod-identity-user: expected NAMESPACE/SERVICEACCOUNT=USER, got {m:?}")
        })?;
        users.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(Some(PodIdentityConfig {
        allow: flags.pod_identity_allow.clone(),
        users,
    }))
}

/// Checks a listener's identity settings against its address.
pub fn validate(
    listen: &ListenAddr,
    pod_identity: Option<&PodIdentityConfig>,
    allow_uids: &[u32],
) -> anyhow::Result<()> {
    if let Some(p) = pod_identity {
        if matches!(listen, ListenAddr::Unix { .. }) {
            bail!(
                "pod_identity: needs a TCP listener (pods are told apart by source IP); use allow_uids on a Unix socket"
            );
        }
        dbproxy_kubernetes::Policy::new(&p.allow, &p.users).map_err(anyhow::Error::msg)?;
    }
    if !allow_uids.is_empty() && !matches!(listen, ListenAddr::Unix { .. }) {
        bail!(
            "allow_uids (--allow-uid): only for Unix-socket listeners (the uid comes from SO_PEERCRED)"
        );
    }
    Ok(())
}
