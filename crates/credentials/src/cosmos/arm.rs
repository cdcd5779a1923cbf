//! The ARM `listKeys` exchange: the request, the answer, retries and error messages.
//!
//! ```text
//! POST {AZURE_COSMOS_LISTKEYURL}   (…/listKeys, or …/readonlykeys for read-only kinds)
//! Authorization: Bearer <ARM token>
//! Accept: application/json
//! Content-Length: 0
//! ```
//!
//! * Retries: 429 honours `Retry-After` (seconds), 5xx and transport errors back off
//!   exponentially from the source's retry base; at most [`MAX_ATTEMPTS`] requests and
//!   [`MAX_TOTAL_WAIT`] of waiting per fetch. A 401 invalidates the ARM token in its cache and
//!   retries once with a fresh one.
//! * Errors name the endpoint without its query string, ARM's error code and the first line of
//!   its message, scrubbed of the token and of the known keys, plus a hint (the missing
//!   permission and the roles that grant it for a 403).
//! * Only https URLs get a token (plain http only for loopback test fakes).

use std::{sync::Arc, time::Duration};

use reqwest::{
    StatusCode,
    header::{ACCEPT, CONTENT_LENGTH},
};
use serde_json::Value;
use url::Url;

use super::{
    COSMOS_ARM_SCOPE,
    keys::{CosmosKeyKind, Pair},
};
use crate::{
    cache::TokenCache,
    error::{CredentialError, endpoint_of},
    refresh::{RefreshPolicy, backoff},
    secret::Secret,
    wire::{json_body, parse_error_body, retry_after},
};

/// Most requests per key fetch (the ARM token retry after a 401 included).
pub(super) const MAX_ATTEMPTS: u32 = 4;
/// Longest total wait between the attempts of one fetch.
const MAX_TOTAL_WAIT: Duration = Duration::from_secs(30);
/// The `api-version` added when the listKeys URL has none.
const DEFAULT_API_VERSION: &str = "2021-04-15";

/// The URL to POST for `kind`: `list_keys_url` with its last segment set to the kind's action
/// (`listKeys` or `readonlykeys`; appended if the URL names the account itself) and an
/// `api-version` if it has none.
pub(super) fn key_url(list_keys_url: &Url, kind: CosmosKeyKind) -> Url {
    let mut u = list_keys_url.clone();
    let last = u
        .path_segments()
        .and_then(|mut s| s.next_back())
        .unwrap_or("")
        .to_owned();
    if let Ok(mut segs) = u.path_segments_mut() {
        if last.eq_ignore_ascii_case("listKeys") || last.eq_ignore_ascii_case("readonlykeys") {
            segs.pop();
        } else {
            segs.pop_if_empty();
        }
        segs.push(kind.action());
    }
    if !u.query_pairs().any(|(k, _)| k == "api-version") {
        u.query_pairs_mut()
            .append_pair("api-version", DEFAULT_API_VERSION);
    }
    u
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Lists the keys of one account with tokens from one cache.
pub(super) struct Arm {
    pub(super) token: Arc<TokenCache>,
    /// The URL POSTed ([`key_url`]).
    pub(super) url: Url,
    pub(super) kind: CosmosKeyKind,
    pub(super) http: reqwest::Client,
    /// First delay after a 5xx or transport error (doubles, with jitter).
    pub(super) retry_base: Duration,
}

impl Arm {
    pub(super) fn describe(&self) -> String {
        format!(
            "Cosmos DB {} key from {} (ARM token: {})",
            self.kind,
            endpoint_of(&self.url),
            self.token.describe()
        )
    }

    fn retry_delay(&self, attempt: u32) -> Duration {
        let policy = RefreshPolicy {
            min_backoff: self.retry_base,
            max_backoff: self.retry_base.saturating_mul(8),
            ..RefreshPolicy::default()
        };
        backoff(&policy, attempt)
    }

    fn permission(&self) -> String {
        format!(
            "Microsoft.DocumentDB/databaseAccounts/{}/action",
            self.kind.action()
        )
    }

    fn hint(&self, status: StatusCode) -> String {
        // (A refusal that names disabled local authentication gets LOCAL_AUTH_HINT instead.)
        match status.as_u16() {
            401 => format!(
                "ARM refused the access token even after fetching a new one: check that the token is for {COSMOS_ARM_SCOPE} (AZURE_COSMOS_SCOPE) and that the identity belongs to the subscription's tenant"
            ),
            403 => {
                let roles = if self.kind.is_read_only() {
                    "\"Cosmos DB Account Reader Role\" or \"DocumentDB Account Contributor\""
                } else {
                    "\"DocumentDB Account Contributor\" (\"Cosmos DB Account Reader Role\" grants only …/readonlykeys/action: use a read-only key kind with it)"
                };
                format!(
                    "the identity lacks the permission {} on the Cosmos DB account: assign it a role that includes it on the account, such as {roles}",
                    self.permission()
                )
            }
            404 => "the Cosmos DB account or the listKeys URL was not found: check AZURE_COSMOS_LISTKEYURL (subscription, resource group, account name, api-version)".into(),
            429 => format!("ARM kept throttling the request (gave up after {MAX_ATTEMPTS} attempts or 30 s of waiting)"),
            s if s >= 500 => format!("ARM kept failing (gave up after {MAX_ATTEMPTS} attempts)"),
            _ => "check AZURE_COSMOS_LISTKEYURL and the identity's role on the account".into(),
        }
    }

    /// Fetches the key pair, with retries (see the module notes). `known_keys` are scrubbed
    /// from error messages (with the token).
    pub(super) async fn fetch(
        &self,
        known_keys: impl Fn() -> Vec<Secret> + Send + Sync,
    ) -> Result<Pair, CredentialError> {
        let who = self.describe();
        let endpoint = endpoint_of(&self.url);
        if self.url.scheme() != "https" && !(self.url.scheme() == "http" && is_loopback(&self.url))
        {
            return Err(CredentialError::config(
                who,
                format!("the listKeys URL {endpoint} must be an https URL"),
            ));
        }
        let mut waited = Duration::ZERO;
        let mut reauthorized = false;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let token = self.token.get().await?;
            let sent = self
                .http
                .post(self.url.clone())
                .bearer_auth(token.token.expose())
                .header(ACCEPT, "application/json")
                .header(CONTENT_LENGTH, 0)
                .body(Vec::new())
                .send()
                .await;
            let answer = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let wait = retry_after(resp.headers());
                    resp.bytes().await.map(|b| (status, wait, b))
                }
                Err(e) => Err(e),
            };
            let (failure, delay) = match answer {
                Err(e) => (
                    CredentialError::transport(&who, &endpoint, e),
                    Some(self.retry_delay(attempt)),
                ),
                Ok((status, _, body)) if status.is_success() => {
                    return parse_keys(self.kind, &body, &who, &endpoint);
                }
                Ok((status, wait, body)) => {
                    let mut secrets = known_keys();
                    secrets.push(token.token.clone());
                    let secrets: Vec<&str> = secrets.iter().map(Secret::expose).collect();
                    let (code, message) = parse_error_body(&body, &secrets);
                    if status == StatusCode::UNAUTHORIZED && !reauthorized {
                        reauthorized = true;
                        tracing::info!(
                            source = %who,
                            code = %code,
                            "ARM refused the access token; fetching a new one"
                        );
                        self.token.invalidate(&token.token);
                        continue;
                    }
                    let delay = (status == StatusCode::TOO_MANY_REQUESTS
                        || status.is_server_error())
                    .then(|| wait.unwrap_or_else(|| self.retry_delay(attempt)));
                    let hint = if local_auth_disabled(&message) {
                        LOCAL_AUTH_HINT.to_owned()
                    } else {
                        self.hint(status)
                    };
                    let failure =
                        CredentialError::rejected(&who, &endpoint, status, code, message, hint);
                    (failure, delay)
                }
            };
            match delay {
                Some(d) if attempt < MAX_ATTEMPTS && waited + d <= MAX_TOTAL_WAIT => {
                    tracing::warn!(
                        source = %who,
                        attempt,
                        error = %failure,
                        retry_in_ms = d.as_millis() as u64,
                        "listing the Cosmos DB keys failed; retrying"
                    );
                    tokio::time::sleep(d).await;
                    waited += d;
                }
                _ => return Err(failure),
            }
        }
    }
}

/// Parses a successful `listKeys` / `readonlykeys` answer: the `kind`'s key (required) and
/// the other key of its pair (optional). Errors never quote the body.
pub(super) fn parse_keys(
    kind: CosmosKeyKind,
    body: &[u8],
    who: &str,
    endpoint: &str,
) -> Result<Pair, CredentialError> {
    let v = json_body(body, who, endpoint)?;
    let key = |field: &str| match v.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Some(Secret::new(s.clone())),
        _ => None,
    };
    let (preferred, other) = kind.fields();
    let Some(preferred_key) = key(preferred) else {
        return Err(CredentialError::invalid(
            who,
            endpoint,
            format!("no {preferred} in the answer"),
        ));
    };
    Ok(Pair {
        preferred: preferred_key,
        other: key(other),
    })
}

/// What to do when the account refuses keys: ARM refusals that mention it (an Azure Policy
/// that forbids local authentication: RequestDisallowedByPolicy "Local authentication methods
/// are not allowed"), and Cosmos's own login refusal ("Local Authorization is disabled. Use an
/// AAD token to authorize all requests.").
pub const LOCAL_AUTH_HINT: &str = "the Cosmos DB account has key (local) authentication disabled (disableLocalAuth): switch the listener to token mode (--cassandra-password token, or password = \"token\" in the file), which logs in with an Entra token for https://cosmos.azure.com/.default, and give the proxy's identity a Cassandra role assignment on the account";

/// True if an ARM or Cosmos message says local (key) authentication is disabled.
pub fn local_auth_disabled(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("local authorization is disabled")
        || m.contains("local authentication methods are not allowed")
        || m.contains("disablelocalauth")
}
