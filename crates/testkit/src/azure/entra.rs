//! The Entra ID v2 token endpoint: `POST /{tenant}/oauth2/v2.0/token` (form-encoded), client
//! credentials grant.
//!
//! Accepted credentials (all for [`FakeAzureConfig::client_id`](super::FakeAzureConfig)):
//! * `client_secret` equal to the configured secret;
//! * `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` with
//!   `client_assertion` equal to the configured federated token (workload identity);
//! * the same with a Kubernetes service-account token matching one of the
//!   [`FakeAzureConfig::federated_credentials`](super::FakeAzureConfig) of `client_id`
//!   (issuer, subject, audience, signature, time: see [`super::federated`]);
//! * the same with a certificate assertion: header `alg` RS256 + `x5t` (base64url SHA-1 of the
//!   certificate) or PS256 + `x5t#S256`, signature valid for the configured certificate's key,
//!   `aud` = this token URL (`127.0.0.1` or `localhost`), `iss` = `sub` = client_id, `exp` in the
//!   future, `nbf` not in the future.
//!
//! `scope` must be one `…/.default` value. 200 (integers):
//! `{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"…"}`.
//! Errors are Azure's shape: `{"error","error_description":"AADSTSnnn: …\r\nTrace ID: …\r\nCorrelation ID: …\r\nTimestamp: …",
//! "error_codes":[n],"timestamp","trace_id","correlation_id","error_uri"}` — 401 `invalid_client`
//! AADSTS7000215 for a bad secret, 400 `invalid_scope` AADSTS1002012, 400 `invalid_request`
//! AADSTS90002 for an unknown tenant, 503 `temporarily_unavailable` while down.

use std::sync::{Arc, atomic::Ordering};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use base64::Engine as _;

use super::{
    Shared, TokenSource, entra_timestamp, json_response, obj, param, query_pairs,
    resource_of_scope, s,
};
use crate::{certs::ClientCert, tokens};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An Entra error: status, `error`, AADSTS code, message.
pub(crate) struct EntraError {
    status: StatusCode,
    error: &'static str,
    pub(crate) code: u32,
    message: String,
}

pub(crate) fn err(
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: impl Into<String>,
) -> EntraError {
    EntraError {
        status,
        error,
        code,
        message: message.into(),
    }
}

/// Azure's error body (also used by the az helper for its stderr text).
pub(crate) fn error_response(e: &EntraError) -> Response {
    let trace = tokens::random_guid();
    let corr = tokens::random_guid();
    let ts = entra_timestamp();
    let description = format!(
        "AADSTS{}: {}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}",
        e.code, e.message
    );
    json_response(
        e.status,
        obj(&[
            ("error", s(e.error)),
            ("error_description", s(&description)),
            ("error_codes", format!("[{}]", e.code)),
            ("timestamp", s(&ts)),
            ("trace_id", s(&trace)),
            ("correlation_id", s(&corr)),
            (
                "error_uri",
                s(&format!(
                    "https://login.microsoftonline.com/error?code={}",
                    e.code
                )),
            ),
        ]),
    )
}

pub(crate) fn tenant_not_found(tenant: &str) -> EntraError {
    err(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        90002,
        format!(
            "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
        ),
    )
}

pub(crate) fn entra_down() -> EntraError {
    err(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        90033,
        "A transient error has occurred. Please try again.",
    )
}

/// `POST /{tenant}/oauth2/v2.0/token`
pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match token_inner(&shared, &tenant, &headers, &body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn token_inner(
    shared: &Shared,
    tenant: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, EntraError> {
    if shared.down.load(Ordering::SeqCst) {
        return Err(entra_down());
    }
    let cfg = shared.config();
    if !tenant.eq_ignore_ascii_case(&cfg.tenant_id) {
        return Err(tenant_not_found(tenant));
    }
    let form_ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_ct {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        ));
    }
    let form = query_pairs(Some(&String::from_utf8_lossy(body)));
    let required = |name: &str| {
        param(&form, name).filter(|v| !v.is_empty()).ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                format!("The request body must contain the following parameter: '{name}'."),
            )
        })
    };
    let grant_type = required("grant_type")?;
    if grant_type != "client_credentials" {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = required("client_id")?;
    let scope = required("scope")?;
    let federated_client = cfg
        .federated_credentials
        .iter()
        .any(|c| c.client_id.eq_ignore_ascii_case(client_id));
    if !client_id.eq_ignore_ascii_case(&cfg.client_id) && !federated_client {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        ));
    }
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.len() != 1 || !scopes[0].ends_with("/.default") {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    }
    let scope = scopes[0];

    let source = if let Some(secret) = param(&form, "client_secret") {
        if secret != cfg.client_secret {
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                "Invalid client secret is provided.",
            ));
        }
        TokenSource::ClientSecret
    } else if let Some(assertion) = param(&form, "client_assertion") {
        if param(&form, "client_assertion_type") != Some(JWT_BEARER) {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type. (client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer)",
            ));
        }
        if cfg.federated_token.as_deref() == Some(assertion) {
            TokenSource::Federated
        } else if federated_client {
            super::federated::verify(assertion, client_id, &cfg.federated_credentials)?;
            TokenSource::Federated
        } else {
            let header = tokens::header(assertion).ok_or_else(|| {
                err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    50027,
                    "JWT token is invalid or malformed.",
                )
            })?;
            let has_thumbprint = header.get("x5t").is_some() || header.get("x5t#S256").is_some();
            match (&cfg.client_cert, has_thumbprint) {
                (Some(cert), true) => {
                    let urls = token_urls(shared.https_port, tenant);
                    verify_certificate_assertion(assertion, cert, client_id, &urls)?;
                    TokenSource::ClientCertificate
                }
                (None, true) => {
                    return Err(err(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        700027,
                        "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found.]",
                    ));
                }
                (_, false) => {
                    let claims = tokens::claims(assertion).unwrap_or_default();
                    return Err(err(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        700211,
                        format!(
                            "No matching federated identity record found for presented assertion issuer '{}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion.",
                            claims["iss"].as_str().unwrap_or("")
                        ),
                    ));
                }
            }
        }
    } else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    };

    let resource = resource_of_scope(scope);
    let t = shared
        .issue(
            source,
            scope,
            &resource,
            Some(client_id.to_owned()),
            &shared.sp_object_id,
        )
        .await;
    let expires_in = t.expires_on.saturating_sub(tokens::now_epoch());
    Ok(json_response(
        StatusCode::OK,
        obj(&[
            ("token_type", s("Bearer")),
            ("expires_in", expires_in.to_string()),
            ("ext_expires_in", expires_in.to_string()),
            ("access_token", s(&t.token)),
        ]),
    ))
}

/// The audiences a client assertion may carry for this endpoint.
fn token_urls(port: u16, tenant: &str) -> Vec<String> {
    ["127.0.0.1", "localhost"]
        .iter()
        .map(|h| format!("https://{h}:{port}/{tenant}/oauth2/v2.0/token"))
        .collect()
}

fn invalid_assertion(code: u32, message: impl Into<String>) -> EntraError {
    err(StatusCode::UNAUTHORIZED, "invalid_client", code, message)
}

/// Checks a certificate client assertion like Entra does.
pub(crate) fn verify_certificate_assertion(
    assertion: &str,
    cert: &ClientCert,
    client_id: &str,
    token_urls: &[String],
) -> Result<(), EntraError> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let malformed = || {
        err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        )
    };
    if parts.len() != 3 {
        return Err(malformed());
    }
    let header = tokens::header(assertion).ok_or_else(malformed)?;
    let claims = tokens::claims(assertion).ok_or_else(malformed)?;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[2])
        .map_err(|_| malformed())?;

    let alg: &'static dyn aws_lc_rs::signature::VerificationAlgorithm = match header["alg"].as_str()
    {
        Some("RS256") => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        Some("PS256") => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        other => {
            return Err(invalid_assertion(
                5002738,
                format!(
                    "Invalid JWT token. '{}' is not a supported signature algorithm.",
                    other.unwrap_or("")
                ),
            ));
        }
    };
    let x5t_ok = match (header.get("x5t"), header.get("x5t#S256")) {
        (Some(t), _) if t.as_str() == Some(&cert.x5t()) => true,
        (_, Some(t)) if t.as_str() == Some(&cert.x5t_s256()) => true,
        _ => false,
    };
    if !x5t_ok {
        return Err(invalid_assertion(
            700027,
            "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found.]",
        ));
    }
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    aws_lc_rs::signature::UnparsedPublicKey::new(alg, &cert.public_key_pkcs1_der)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| {
            invalid_assertion(700027, "Client assertion contains an invalid signature.")
        })?;

    let aud = claims["aud"].as_str().unwrap_or("");
    if !token_urls.iter().any(|u| u.eq_ignore_ascii_case(aud)) {
        return Err(invalid_assertion(
            700023,
            format!(
                "Client assertion audience claim does not match Realm issuer. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials . (aud '{aud}', expected '{}')",
                token_urls.first().map(String::as_str).unwrap_or("")
            ),
        ));
    }
    if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
        return Err(invalid_assertion(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
        ));
    }
    let now = tokens::now_epoch();
    let exp = claims["exp"].as_u64();
    let nbf = claims["nbf"].as_u64().unwrap_or(0);
    if exp.is_none_or(|e| e <= now) || nbf > now + 300 {
        return Err(invalid_assertion(
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::client_rsa_cert;

    #[test]
    fn certificate_assertions() {
        let cert = client_rsa_cert("sp");
        let urls = token_urls(4443, "t");
        let ok = cert.client_assertion(&urls[0], "cid").unwrap();
        assert!(verify_certificate_assertion(&ok, &cert, "cid", &urls).is_ok());
        // PS256 with x5t#S256
        let now = tokens::now_epoch();
        let ps = cert
            .client_assertion_with(
                serde_json::json!({"alg":"PS256","typ":"JWT","x5t#S256":cert.x5t_s256()}),
                serde_json::json!({"aud":urls[1],"iss":"cid","sub":"cid","exp":now+60,"nbf":now,"jti":"x"}),
            )
            .unwrap();
        assert!(verify_certificate_assertion(&ps, &cert, "cid", &urls).is_ok());
        let code = |a: &str| {
            verify_certificate_assertion(a, &cert, "cid", &urls)
                .err()
                .map(|e| e.code)
        };
        // wrong client id, wrong audience, expired, other cert, tampered
        assert_eq!(
            code(&cert.client_assertion(&urls[0], "other").unwrap()),
            Some(700021)
        );
        assert_eq!(
            code(
                &cert
                    .client_assertion(
                        "https://login.microsoftonline.com/t/oauth2/v2.0/token",
                        "cid"
                    )
                    .unwrap()
            ),
            Some(700023)
        );
        let expired = cert
            .client_assertion_with(
                serde_json::json!({"alg":"RS256","typ":"JWT","x5t":cert.x5t()}),
                serde_json::json!({"aud":urls[0],"iss":"cid","sub":"cid","exp":now-1,"nbf":now-600}),
            )
            .unwrap();
        assert_eq!(code(&expired), Some(700024));
        let other = client_rsa_cert("other");
        assert_eq!(
            code(&other.client_assertion(&urls[0], "cid").unwrap()),
            Some(700027)
        );
        let forged = other
            .client_assertion_with(
                serde_json::json!({"alg":"RS256","typ":"JWT","x5t":cert.x5t()}),
                serde_json::json!({"aud":urls[0],"iss":"cid","sub":"cid","exp":now+60}),
            )
            .unwrap();
        assert_eq!(code(&forged), Some(700027));
        assert_eq!(code("a.b"), Some(50027));
    }
}
