//! Managed identity: IMDS and the App Service identity endpoint.
//!
//! IMDS — `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=R`, header
//! `Metadata: true`. Selectors `client_id`, `object_id`, `msi_res_id` (at most one). Without a
//! selector: the system-assigned identity, or the only user-assigned one. 200, every value a
//! string:
//! ```json
//! {"access_token":"…","refresh_token":"","expires_in":"3599","expires_on":"1506484173",
//!  "not_before":"1506480273","resource":"R","token_type":"Bearer"}
//! ```
//! Errors: 400 `{"error":"invalid_request","error_description":"Required metadata header not specified"}`,
//! 400 `…"Identity not found"`, 400 `invalid_resource` for a `…/.default` resource, 503 while down.
//!
//! App Service — `GET /MSI/token?resource=R&api-version=2019-08-01`, header
//! `X-IDENTITY-HEADER`. Selectors `client_id`, `principal_id` (alias `object_id`), `mi_res_id`
//! (alias `msi_res_id`). 200 `{"access_token","expires_on" (string),"resource","token_type","client_id"}`;
//! errors `{"statusCode":…,"message":…,"correlationId":…}` (401 for a missing/wrong header, 400
//! otherwise, 503 while down).

use std::sync::{Arc, atomic::Ordering};

use axum::{
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::Response,
};

use super::{Shared, TokenSource, json_response, obj, param, query_pairs, s};
use crate::tokens;

fn imds_error(status: StatusCode, error: &str, description: &str) -> Response {
    json_response(
        status,
        obj(&[("error", s(error)), ("error_description", s(description))]),
    )
}

/// Which identity a request selects: `(client_id, object_id)`, or an error message.
enum Selected {
    Identity {
        client_id: String,
        object_id: String,
    },
    NotFound,
    Ambiguous,
}

fn select(
    shared: &Shared,
    client_id: Option<&str>,
    object_id: Option<&str>,
    resource_id: Option<&str>,
) -> Selected {
    let cfg = shared.config();
    let given = [client_id, object_id, resource_id]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given > 1 {
        return Selected::Ambiguous;
    }
    let user = cfg
        .managed_identity_client_id
        .clone()
        .map(|c| Selected::Identity {
            client_id: c,
            object_id: cfg.managed_identity_object_id.clone(),
        });
    let matches = match (client_id, object_id, resource_id) {
        (Some(c), _, _) => cfg
            .managed_identity_client_id
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case(c)),
        (_, Some(o), _) => {
            cfg.managed_identity_client_id.is_some()
                && cfg.managed_identity_object_id.eq_ignore_ascii_case(o)
        }
        (_, _, Some(r)) => {
            cfg.managed_identity_client_id.is_some()
                && cfg.managed_identity_resource_id.eq_ignore_ascii_case(r)
        }
        (None, None, None) => {
            return if cfg.system_assigned {
                Selected::Identity {
                    client_id: cfg.system_assigned_client_id.clone(),
                    object_id: shared.system_object_id.clone(),
                }
            } else {
                user.unwrap_or(Selected::NotFound)
            };
        }
    };
    if matches {
        user.unwrap_or(Selected::NotFound)
    } else {
        Selected::NotFound
    }
}

fn header_is(headers: &HeaderMap, name: &str, want: &str) -> Option<bool> {
    headers
        .get(name)
        .map(|v| v.to_str().is_ok_and(|v| v.eq_ignore_ascii_case(want)))
}

/// `GET /metadata/identity/oauth2/token`
pub(crate) async fn imds(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if shared.down.load(Ordering::SeqCst) {
        return imds_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "The service is temporarily unavailable. Please retry later.",
        );
    }
    if header_is(&headers, "metadata", "true") != Some(true) {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let q = query_pairs(q.as_deref());
    if param(&q, "api-version").is_none() {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let Some(resource) = param(&q, "resource").filter(|r| !r.is_empty()) else {
        return imds_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    if resource.ends_with("/.default") {
        let tenant = shared.config().tenant_id;
        return imds_error(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            &format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
            ),
        );
    }
    let resource_id = param(&q, "msi_res_id").or(param(&q, "mi_res_id"));
    let (client_id, object_id) = match select(
        &shared,
        param(&q, "client_id"),
        param(&q, "object_id"),
        resource_id,
    ) {
        Selected::Identity {
            client_id,
            object_id,
        } => (client_id, object_id),
        Selected::NotFound => {
            return imds_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Identity not found",
            );
        }
        Selected::Ambiguous => {
            return imds_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Multiple identity selectors specified; use only one of client_id, object_id, msi_res_id",
            );
        }
    };
    let t = shared
        .issue(
            TokenSource::Imds,
            resource,
            resource,
            Some(client_id),
            &object_id,
        )
        .await;
    let now = tokens::now_epoch();
    json_response(
        StatusCode::OK,
        obj(&[
            ("access_token", s(&t.token)),
            ("refresh_token", s("")),
            (
                "expires_in",
                s(&t.expires_on.saturating_sub(now).to_string()),
            ),
            ("expires_on", s(&t.expires_on.to_string())),
            ("not_before", s(&now.to_string())),
            ("resource", s(resource)),
            ("token_type", s("Bearer")),
        ]),
    )
}

fn app_service_error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        obj(&[
            ("statusCode", status.as_u16().to_string()),
            ("message", s(message)),
            ("correlationId", s(&tokens::random_guid())),
        ]),
    )
}

/// `GET /MSI/token`
pub(crate) async fn app_service(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    if shared.down.load(Ordering::SeqCst) {
        return app_service_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The managed identity endpoint is temporarily unavailable.",
        );
    }
    let want = shared.config().identity_header;
    match headers.get("x-identity-header").map(|v| v.as_bytes()) {
        None => {
            return app_service_error(
                StatusCode::UNAUTHORIZED,
                "Missing X-IDENTITY-HEADER header.",
            );
        }
        Some(v) if v != want.as_bytes() => {
            return app_service_error(
                StatusCode::UNAUTHORIZED,
                "X-IDENTITY-HEADER header value is invalid.",
            );
        }
        Some(_) => {}
    }
    let q = query_pairs(q.as_deref());
    match param(&q, "api-version") {
        Some("2019-08-01") => {}
        Some(v) => {
            return app_service_error(
                StatusCode::BAD_REQUEST,
                &format!("The api-version '{v}' is not supported. Supported version: 2019-08-01."),
            );
        }
        None => {
            return app_service_error(
                StatusCode::BAD_REQUEST,
                "The api-version query parameter is required.",
            );
        }
    }
    let Some(resource) = param(&q, "resource").filter(|r| !r.is_empty()) else {
        return app_service_error(
            StatusCode::BAD_REQUEST,
            "The resource query parameter is required.",
        );
    };
    if resource.ends_with("/.default") {
        return app_service_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant."
            ),
        );
    }
    let object_id = param(&q, "principal_id").or(param(&q, "object_id"));
    let resource_id = param(&q, "mi_res_id").or(param(&q, "msi_res_id"));
    let (client_id, oid) = match select(&shared, param(&q, "client_id"), object_id, resource_id) {
        Selected::Identity {
            client_id,
            object_id,
        } => (client_id, object_id),
        Selected::NotFound | Selected::Ambiguous => {
            return app_service_error(
                StatusCode::BAD_REQUEST,
                "No Managed Identity found for specified ClientId/ResourceId/PrincipalId.",
            );
        }
    };
    let t = shared
        .issue(
            TokenSource::AppService,
            resource,
            resource,
            Some(client_id.clone()),
            &oid,
        )
        .await;
    json_response(
        StatusCode::OK,
        obj(&[
            ("access_token", s(&t.token)),
            ("expires_on", s(&t.expires_on.to_string())),
            ("resource", s(resource)),
            ("token_type", s("Bearer")),
            ("client_id", s(&client_id)),
        ]),
    )
}
