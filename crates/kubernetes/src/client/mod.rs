//! A small Kubernetes API client: the four calls per-pod identity needs.
//!
//! | call | request |
//! |---|---|
//! | [`KubeClient::list_pods`] | `GET /api/v1/pods?fieldSelector=spec.nodeName%3DNODE` |
//! | [`KubeClient::watch_pods`] | the same with `watch=true&resourceVersion=RV&allowWatchBookmarks=true`: one JSON event a line (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR` with a Status; 410 Gone = list again) |
//! | [`KubeClient::service_account`] | `GET /api/v1/namespaces/NS/serviceaccounts/NAME` |
//! | [`KubeClient::token_request`] | `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token` (`authentication.k8s.io/v1` TokenRequest: audiences, expirationSeconds, boundObjectRef to the pod) |
//!
//! Authentication is the proxy's own service-account token, re-read from its file on every
//! request (the kubelet rotates it); the server is verified against the cluster CA. The
//! in-cluster defaults ([`KubeConfig::in_cluster`]) are `KUBERNETES_SERVICE_HOST` /
//! `KUBERNETES_SERVICE_PORT` and `/var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt}`,
//! each overridable. Errors never hold a token: a TokenRequest's response body is never echoed.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use dbproxy_credentials::{Env, Secret};
use serde::Deserialize;
use url::Url;

pub(crate) mod parse;
use parse::{WatchLines, status_message};

/// Where the service-account files are mounted in a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the Kubernetes API.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// `https://HOST:PORT`.
    pub api_server: Url,
    /// The proxy's service-account token (re-read on each request).
    pub token_file: PathBuf,
    /// The cluster CA (PEM).
    pub ca_file: PathBuf,
}

impl KubeConfig {
    /// The in-cluster configuration, each part overridable (`None`: the default).
    pub fn in_cluster(
        env: &Env,
        api_server: Option<Url>,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Result<KubeConfig, KubeError> {
        let api_server = match api_server {
            Some(u) => u,
            None => {
                let host = env.get("KUBERNETES_SERVICE_HOST").ok_or_else(|| {
                    KubeError::Config(
                        "KUBERNETES_SERVICE_HOST is not set (not in a pod?): give the API server with --kubernetes-api".into(),
                    )
                })?;
                let port = env.get("KUBERNETES_SERVICE_PORT").unwrap_or("443");
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_owned()
                };
                Url::parse(&format!("https://{host}:{port}"))
                    .map_err(|e| KubeError::Config(format!("KUBERNETES_SERVICE_HOST/PORT: {e}")))?
            }
        };
        if api_server.scheme() != "https" {
            return Err(KubeError::Config(format!(
                "the Kubernetes API server {api_server} must be an https URL"
            )));
        }
        Ok(KubeConfig {
            api_server,
            token_file: token_file
                .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR).join("token")),
            ca_file: ca_file.unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR).join("ca.crt")),
        })
    }
}

/// A Kubernetes API failure (never holds a token).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KubeError {
    /// Bad configuration (missing variables, unreadable files).
    #[error("Kubernetes API configuration: {0}")]
    Config(String),
    /// The API could not be reached.
    #[error("Kubernetes API {endpoint} unreachable: {message}")]
    Transport {
        /// Method and path.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// The API answered with an error status.
    #[error("Kubernetes API {endpoint} answered {status}: {message}")]
    Status {
        /// Method and path.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The Status object's message (or reason).
        message: String,
    },
    /// The answer could not be parsed.
    #[error("Kubernetes API {endpoint}: unexpected answer: {message}")]
    Parse {
        /// Method and path.
        endpoint: String,
        /// What was wrong.
        message: String,
    },
}

impl KubeError {
    /// The HTTP status, if the API answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            KubeError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The parts of a Pod the proxy reads.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodObject {
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: PodSpec,
    /// Status.
    #[serde(default)]
    pub status: PodStatus,
}

/// Object metadata.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// UID.
    #[serde(default)]
    pub uid: String,
    /// Resource version.
    #[serde(default)]
    pub resource_version: String,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// Pod spec.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// The service account (`default` when unset).
    #[serde(default)]
    pub service_account_name: Option<String>,
    /// The node.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Whether the pod shares the node's network namespace.
    #[serde(default)]
    pub host_network: bool,
}

/// Pod status.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// `Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`.
    #[serde(default)]
    pub phase: String,
    /// The primary IP.
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    /// Every IP (dual stack).
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
}

/// One pod IP.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct PodIp {
    /// The address.
    pub ip: String,
}

/// One event of a watch.
#[derive(Debug, Clone)]
pub enum WatchEvent {
    /// A pod appeared.
    Added(PodObject),
    /// A pod changed.
    Modified(PodObject),
    /// A pod is gone.
    Deleted(PodObject),
    /// Only a new resource version.
    Bookmark(String),
    /// The server ended the watch with an error status (410: list again).
    Error {
        /// The Status's code.
        code: u16,
        /// Its message.
        message: String,
    },
}

/// A service account's parts the proxy reads.
#[derive(Debug, Clone, Default)]
pub struct ServiceAccount {
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
}

/// A client of the Kubernetes API.
pub struct KubeClient {
    config: KubeConfig,
    http: reqwest::Client,
    watch_http: reqwest::Client,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("api_server", &self.config.api_server.as_str())
            .finish_non_exhaustive()
    }
}

/// How long the server keeps one watch open before the client starts the next.
const WATCH_SECONDS: u64 = 240;

impl KubeClient {
    /// A client for `config`; `timeout` bounds each non-watch request.
    pub fn new(config: KubeConfig, timeout: Duration) -> Result<KubeClient, KubeError> {
        let trust = dbproxy_tls::Trust::with_ca_files([config.ca_file.as_path()]).map_err(|e| {
            KubeError::Config(format!("cluster CA {}: {e}", config.ca_file.display()))
        })?;
        let http = trust
            .http_client_with_timeout(timeout)
            .map_err(|e| KubeError::Config(e.to_string()))?;
        let watch_http = trust
            .http_client_with_timeout(Duration::from_secs(WATCH_SECONDS + 30))
            .map_err(|e| KubeError::Config(e.to_string()))?;
        Ok(KubeClient {
            config,
            http,
            watch_http,
        })
    }

    /// The API server.
    pub fn api_server(&self) -> &Url {
        &self.config.api_server
    }

    fn bearer(&self) -> Result<Secret, KubeError> {
        let raw = std::fs::read_to_string(&self.config.token_file).map_err(|e| {
            KubeError::Config(format!(
                "cannot read the service-account token {}: {e}",
                self.config.token_file.display()
            ))
        })?;
        Ok(Secret::new(raw.trim()))
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut u = self.config.api_server.clone();
        u.set_path(path);
        if !query.is_empty() {
            u.query_pairs_mut().extend_pairs(query);
        }
        u
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        url: Url,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, KubeError> {
        let endpoint = format!("{method} {}", url.path());
        let mut req = http
            .request(method, url)
            .bearer_auth(self.bearer()?.expose())
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| KubeError::Transport {
            endpoint: endpoint.clone(),
            message: e.without_url().to_string(),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(KubeError::Status {
            endpoint,
            status: status.as_u16(),
            message: status_message(&text),
        })
    }

    async fn body(resp: reqwest::Response, endpoint: &str) -> Result<bytes::Bytes, KubeError> {
        resp.bytes().await.map_err(|e| KubeError::Transport {
            endpoint: endpoint.to_owned(),
            message: e.without_url().to_string(),
        })
    }

    /// The pods on `node`, and the list's resource version.
    pub async fn list_pods(&self, node: &str) -> Result<(Vec<PodObject>, String), KubeError> {
        let selector = format!("spec.nodeName={node}");
        let url = self.url("/api/v1/pods", &[("fieldSelector", &selector)]);
        let resp = self
            .send(&self.http, reqwest::Method::GET, url, None)
            .await?;
        let endpoint = "GET /api/v1/pods";
        parse::pod_list(&Self::body(resp, endpoint).await?, endpoint)
    }

    /// Watches the pods on `node` from `resource_version`; events go to `on_event` as they
    /// arrive. Returns when the server ends the watch (normally after a few minutes).
    pub async fn watch_pods(
        &self,
        node: &str,
        resource_version: &str,
        mut on_event: impl FnMut(WatchEvent),
    ) -> Result<(), KubeError> {
        let selector = format!("spec.nodeName={node}");
        let seconds = WATCH_SECONDS.to_string();
        let url = self.url(
            "/api/v1/pods",
            &[
                ("fieldSelector", selector.as_str()),
                ("watch", "true"),
                ("resourceVersion", resource_version),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", seconds.as_str()),
            ],
        );
        let endpoint = "GET /api/v1/pods?watch=true";
        let mut resp = self
            .send(&self.watch_http, reqwest::Method::GET, url, None)
            .await?;
        let mut lines = WatchLines::default();
        loop {
            let chunk = resp.chunk().await.map_err(|e| KubeError::Transport {
                endpoint: endpoint.into(),
                message: e.without_url().to_string(),
            })?;
            let Some(chunk) = chunk else { return Ok(()) };
            lines.feed(&chunk, endpoint, &mut on_event)?;
        }
    }

    /// The service account `namespace/name`.
    pub async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ServiceAccount, KubeError> {
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}");
        let url = self.url(&path, &[]);
        let resp = self
            .send(&self.http, reqwest::Method::GET, url, None)
            .await?;
        let endpoint = format!("GET {path}");
        parse::service_account(&Self::body(resp, &endpoint).await?, &endpoint)
    }

    /// A token for the service account `namespace/name` with `audience`, valid for
    /// `seconds`, bound to the pod `pod_name` (`pod_uid`): it stops being valid when that pod
    /// is deleted.
    pub async fn token_request(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
        seconds: u64,
        pod_name: &str,
        pod_uid: &str,
    ) -> Result<Secret, KubeError> {
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token");
        let endpoint = format!("POST {path}");
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience],
                "expirationSeconds": seconds,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod_name, "uid": pod_uid},
            },
        });
        let resp = self
            .send(
                &self.http,
                reqwest::Method::POST,
                self.url(&path, &[]),
                Some(body),
            )
            .await?;
        parse::token_response(&Self::body(resp, &endpoint).await?, &endpoint)
    }
}

#[cfg(test)]
mod tests;
