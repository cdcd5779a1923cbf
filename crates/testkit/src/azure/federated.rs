//! Federated identity credentials (workload identity federation), checked as Entra checks
//! them: for the `client_id` of the request, a configured [`FederatedCredential`] whose
//! `issuer` equals the assertion's `iss` and whose `subject` equals its `sub` (exact,
//! case-sensitive), one of whose `audiences` is in its `aud` (a string or a list); the
//! signature verified with the issuer's key (RS256; Entra fetches it from the issuer's OIDC
//! discovery document, the fake is given it); `exp` in the future and `nbf` not in it.
//!
//! Errors as Entra words them: AADSTS700211 (no record for the issuer), AADSTS700213
//! (subject), AADSTS700212 (audience), AADSTS50013 (signature), AADSTS700024 (time range).

use axum::http::StatusCode;
use base64::Engine as _;

use super::entra::{EntraError, err};
use crate::tokens;

/// One federated identity credential of an Entra app or user-assigned managed identity.
#[derive(Clone, Debug)]
pub struct FederatedCredential {
    /// The identity's client id.
    pub client_id: String,
    /// The trusted issuer (the cluster's OIDC issuer URL).
    pub issuer: String,
    /// The subject, e.g. `system:serviceaccount:NS:SA`.
    pub subject: String,
    /// Accepted audiences (`api://AzureADTokenExchange`).
    pub audiences: Vec<String>,
    /// The issuer's signing key, RSAPublicKey (PKCS#1) DER.
    pub issuer_key_pkcs1_der: Vec<u8>,
}

fn no_record(code: u32, what: &str, value: &str) -> EntraError {
    err(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        code,
        format!(
            "No matching federated identity record found for presented assertion {what} '{value}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
        ),
    )
}

/// Checks `assertion` against the federated credentials of `client_id`.
pub(crate) fn verify(
    assertion: &str,
    client_id: &str,
    creds: &[FederatedCredential],
) -> Result<(), EntraError> {
    let malformed = || {
        err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        )
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return Err(malformed());
    }
    let header = tokens::header(assertion).ok_or_else(malformed)?;
    let claims = tokens::claims(assertion).ok_or_else(malformed)?;
    let iss = claims["iss"].as_str().unwrap_or("");
    let sub = claims["sub"].as_str().unwrap_or("");
    let auds: Vec<&str> = match &claims["aud"] {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => vec![],
    };
    let mine: Vec<&FederatedCredential> = creds
        .iter()
        .filter(|c| c.client_id.eq_ignore_ascii_case(client_id))
        .collect();
    let by_issuer: Vec<_> = mine.iter().filter(|c| c.issuer == iss).collect();
    if by_issuer.is_empty() {
        return Err(no_record(700211, "issuer", iss));
    }
    let by_subject: Vec<_> = by_issuer.iter().filter(|c| c.subject == sub).collect();
    if by_subject.is_empty() {
        return Err(no_record(700213, "subject", sub));
    }
    let Some(cred) = by_subject
        .iter()
        .find(|c| c.audiences.iter().any(|a| auds.contains(&a.as_str())))
    else {
        return Err(no_record(700212, "audience", &auds.join(",")));
    };
    if header["alg"].as_str() != Some("RS256") {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            5002738,
            format!(
                "Invalid JWT token. '{}' is not a supported signature algorithm.",
                header["alg"].as_str().unwrap_or("")
            ),
        ));
    }
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[2])
        .map_err(|_| malformed())?;
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        &cred.issuer_key_pkcs1_der,
    )
    .verify(signing_input.as_bytes(), &signature)
    .map_err(|_| {
        err(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            50013,
            "Assertion failed signature validation. [Reason - The key was not found.]",
        )
    })?;
    let now = tokens::now_epoch();
    let exp = claims["exp"].as_u64();
    let nbf = claims["nbf"].as_u64().unwrap_or(0);
    if exp.is_none_or(|e| e <= now) || nbf > now + 300 {
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::try_client_rsa_cert;

    fn code(r: Result<(), EntraError>) -> u32 {
        r.err().map_or(0, |e| e.code)
    }

    #[test]
    fn checks_like_entra() {
        let key = try_client_rsa_cert("issuer").unwrap();
        let other = try_client_rsa_cert("other").unwrap();
        let cred = FederatedCredential {
            client_id: "cid".into(),
            issuer: "https://issuer".into(),
            subject: "system:serviceaccount:ns:sa".into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
            issuer_key_pkcs1_der: key.public_key_pkcs1_der.clone(),
        };
        let creds = [cred];
        let now = tokens::now_epoch();
        let make = |k: &crate::certs::ClientCert,
                    iss: &str,
                    sub: &str,
                    aud: serde_json::Value,
                    exp: u64| {
            k.client_assertion_with(
                serde_json::json!({"alg": "RS256", "kid": "k"}),
                serde_json::json!({"iss": iss, "sub": sub, "aud": aud, "exp": exp, "nbf": now, "iat": now}),
            )
            .unwrap()
        };
        let aud = serde_json::json!(["api://AzureADTokenExchange"]);
        let sub = "system:serviceaccount:ns:sa";
        let ok = make(&key, "https://issuer", sub, aud.clone(), now + 600);
        assert_eq!(code(verify(&ok, "cid", &creds)), 0);
        assert_eq!(code(verify(&ok, "other-client", &creds)), 700211);
        assert_eq!(
            code(verify(
                &make(&key, "https://elsewhere", sub, aud.clone(), now + 600),
                "cid",
                &creds
            )),
            700211
        );
        assert_eq!(
            code(verify(
                &make(
                    &key,
                    "https://issuer",
                    "system:serviceaccount:ns:SA",
                    aud.clone(),
                    now + 600
                ),
                "cid",
                &creds
            )),
            700213
        );
        assert_eq!(
            code(verify(
                &make(
                    &key,
                    "https://issuer",
                    sub,
                    serde_json::json!("api://other"),
                    now + 600
                ),
                "cid",
                &creds
            )),
            700212
        );
        assert_eq!(
            code(verify(
                &make(&other, "https://issuer", sub, aud.clone(), now + 600),
                "cid",
                &creds
            )),
            50013
        );
        assert_eq!(
            code(verify(
                &make(&key, "https://issuer", sub, aud, now - 1),
                "cid",
                &creds
            )),
            700024
        );
    }
}
