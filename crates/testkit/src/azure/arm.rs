//! ARM: Cosmos DB `listKeys` / `readonlykeys` on the fake's https listener.
//!
//! `POST /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/databaseAccounts/{acct}/listKeys?api-version=…`
//! with `Authorization: Bearer <token this fake issued for https://management.azure.com/.default>`
//! answers `{"primaryMasterKey","secondaryMasterKey","primaryReadonlyMasterKey","secondaryReadonlyMasterKey"}`;
//! `…/readonlykeys` (GET or POST) only the read-only pair. Errors are ARM's
//! `{"error":{"code","message"}}`: 400 MissingApiVersionParameter, 401 AuthenticationFailed /
//! InvalidAuthenticationToken / InvalidAuthenticationTokenAudience / ExpiredAuthenticationToken,
//! 403 AuthorizationFailed ([`FakeAzure::set_arm_forbidden`](super::FakeAzure::set_arm_forbidden),
//! or an identity without a role assignment: [`FakeAzure::set_arm_authorized`](super::FakeAzure::set_arm_authorized)),
//! 404 ResourceNotFound, and the faults of [`super::faults`] (429 TooManyRequests with
//! `Retry-After`, 500, 503) before any other check. ARM is not affected by `set_down`.

use std::{collections::VecDeque, sync::Arc};

use axum::{
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use base64::Engine as _;
use rand::Rng as _;

use super::{
    Shared,
    faults::{ArmFault, arm_error},
    json_response, lock, obj, param, query_pairs, s,
};
use crate::tokens;

/// A Cosmos DB account's keys (88-char base64, like Azure's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosmosKeys {
    /// `primaryMasterKey`
    pub primary_master_key: String,
    /// `secondaryMasterKey`
    pub secondary_master_key: String,
    /// `primaryReadonlyMasterKey`
    pub primary_readonly_master_key: String,
    /// `secondaryReadonlyMasterKey`
    pub secondary_readonly_master_key: String,
}

impl CosmosKeys {
    /// Four fresh random keys.
    pub fn random() -> Self {
        CosmosKeys {
            primary_master_key: random_key(),
            secondary_master_key: random_key(),
            primary_readonly_master_key: random_key(),
            secondary_readonly_master_key: random_key(),
        }
    }
}

impl Default for CosmosKeys {
    fn default() -> Self {
        Self::random()
    }
}

/// 64 random bytes, standard base64 (88 chars ending in `==`).
pub fn random_key() -> String {
    let bytes: [u8; 64] = rand::rng().random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Default)]
pub(crate) struct ArmState {
    pub(crate) keys: CosmosKeys,
    pub(crate) forbidden: bool,
    /// When set, the only client ids with a role assignment on the account (Azure RBAC): a
    /// token of any other identity is refused 403 AuthorizationFailed.
    pub(crate) authorized: Option<Vec<String>>,
    /// Answers for the next requests, in order (see [`super::faults`]).
    pub(crate) queued: VecDeque<ArmFault>,
    /// The answer to every request while set.
    pub(crate) failing: Option<ArmFault>,
}

const ARM_AUDIENCES: [&str; 4] = [
    "https://management.azure.com",
    "https://management.azure.com/",
    "https://management.core.windows.net",
    "https://management.core.windows.net/",
];

/// Checks throttling, api-version, the bearer token, the account, and permissions.
fn check(
    shared: &Shared,
    headers: &HeaderMap,
    q: Option<&str>,
    sub: &str,
    rg: &str,
    acct: &str,
    action: &str,
) -> Result<(), Box<Response>> {
    {
        let mut arm = lock(&shared.arm);
        if let Some(fault) = arm.queued.pop_front().or(arm.failing) {
            return Err(Box::new(fault.response()));
        }
    }
    if param(&query_pairs(q), "api-version").is_none() {
        return Err(Box::new(arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )));
    }
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Err(Box::new(arm_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is missing.",
        )));
    };
    let token = auth
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Err(Box::new(arm_error(
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "Authentication failed. The 'Authorization' header is provided in an invalid format.",
        )));
    };
    let issued = lock(&shared.issued)
        .iter()
        .find(|t| t.token == token)
        .cloned();
    let Some(issued) = issued else {
        return Err(Box::new(arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The access token is invalid.",
        )));
    };
    if !ARM_AUDIENCES.contains(&issued.resource.as_str()) {
        return Err(Box::new(arm_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationTokenAudience",
            &format!(
                "The access token has been obtained for wrong audience or resource '{}'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'.",
                issued.resource
            ),
        )));
    }
    if issued.expires_on <= tokens::now_epoch() {
        return Err(Box::new(arm_error(
            StatusCode::UNAUTHORIZED,
            "ExpiredAuthenticationToken",
            "The access token expiry UTC time is earlier than current UTC time.",
        )));
    }
    let cfg = shared.config();
    let exists = sub.eq_ignore_ascii_case(&cfg.subscription_id)
        && rg.eq_ignore_ascii_case(&cfg.resource_group)
        && cfg
            .cosmos_account
            .as_deref()
            .is_none_or(|a| a.eq_ignore_ascii_case(acct));
    if !exists {
        return Err(Box::new(arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!(
                "The Resource 'Microsoft.DocumentDB/databaseAccounts/{acct}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"
            ),
        )));
    }
    let forbidden = {
        let arm = lock(&shared.arm);
        arm.forbidden
            || arm.authorized.as_ref().is_some_and(|ids| {
                !issued
                    .client_id
                    .as_ref()
                    .is_some_and(|c| ids.iter().any(|a| a.eq_ignore_ascii_case(c)))
            })
    };
    if forbidden {
        let oid = tokens::claims(token)
            .and_then(|c| c["oid"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let client = issued.client_id.unwrap_or_else(|| oid.clone());
        return Err(Box::new(arm_error(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            &format!(
                "The client '{client}' with object id '{oid}' does not have authorization to perform action 'Microsoft.DocumentDB/databaseAccounts/{action}/action' over scope '/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/databaseAccounts/{acct}' or the scope is invalid. If access was recently granted, please refresh your credentials."
            ),
        )));
    }
    Ok(())
}

type AccountPath = Path<(String, String, String)>;

/// `POST …/listKeys` and `GET|POST …/readonlykeys`, told apart by the path.
pub(crate) async fn keys(
    State(shared): State<Arc<Shared>>,
    Path((sub, rg, acct)): AccountPath,
    uri: axum::http::Uri,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let read_write = uri.path().ends_with("/listKeys");
    let action = if read_write {
        "listKeys"
    } else {
        "readonlykeys"
    };
    let request = KeysRequest { sub, rg, acct, q };
    keys_response(&shared, &headers, request, action, read_write)
}

/// The account and query of a keys request.
struct KeysRequest {
    sub: String,
    rg: String,
    acct: String,
    q: Option<String>,
}

/// The keys an action returns, once the request passes ARM's checks: all four for listKeys,
/// the read-only pair for readonlykeys.
fn keys_response(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    r: KeysRequest,
    action: &str,
    read_write: bool,
) -> Response {
    if let Err(resp) = check(
        shared,
        headers,
        r.q.as_deref(),
        &r.sub,
        &r.rg,
        &r.acct,
        action,
    ) {
        return *resp;
    }
    let k = lock(&shared.arm).keys.clone();
    let mut fields = Vec::new();
    if read_write {
        fields.push(("primaryMasterKey", s(&k.primary_master_key)));
        fields.push(("secondaryMasterKey", s(&k.secondary_master_key)));
    }
    fields.push((
        "primaryReadonlyMasterKey",
        s(&k.primary_readonly_master_key),
    ));
    fields.push((
        "secondaryReadonlyMasterKey",
        s(&k.secondary_readonly_master_key),
    ));
    json_response(StatusCode::OK, obj(&fields))
}
