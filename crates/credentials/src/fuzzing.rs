//! The parsers of the credential sources' responses, exposed for the fuzz targets in `fuzz/`
//! (the `fuzzing` feature; not part of the crate's API). Each wraps the function the source
//! itself calls: the token endpoint and managed identity answers
//! ([`parse_token_response`], [`parse_error_body`], [`json_body`]), `Retry-After`
//! ([`retry_after`]), `az account get-access-token`'s output ([`parse_az_output`]) and ARM
//! `listKeys` ([`parse_list_keys`]).

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

pub use crate::{
    CosmosKeyKind,
    error::CredentialError,
    secret::{AccessToken, Secret},
};

/// A successful token response (Entra v2, IMDS, App Service), as the sources parse it.
pub fn parse_token_response(
    body: &[u8],
    now: SystemTime,
    who: &str,
    endpoint: &str,
) -> Result<AccessToken, CredentialError> {
    crate::wire::parse_token_response(body, now, who, endpoint)
}

/// An error response: (code, first line of the description), `secrets` scrubbed.
pub fn parse_error_body(body: &[u8], secrets: &[&str]) -> (String, String) {
    crate::wire::parse_error_body(body, secrets)
}

/// `body` as JSON, or the error naming its size.
pub fn json_body(body: &[u8], who: &str, endpoint: &str) -> Result<(), CredentialError> {
    crate::wire::json_body(body, who, endpoint).map(drop)
}

/// The delay asked by a `Retry-After` header with this value (`None` if the bytes are no
/// header value, as reqwest would never hand them over).
pub fn retry_after(value: &[u8]) -> Option<Duration> {
    let mut h = HeaderMap::new();
    h.insert(RETRY_AFTER, HeaderValue::from_bytes(value).ok()?);
    crate::wire::retry_after(&h)
}

/// The Azure CLI's stdout.
pub fn parse_az_output(stdout: &[u8]) -> Result<AccessToken, CredentialError> {
    crate::cli::parse_output(stdout)
}

/// A successful ARM `listKeys` / `readonlykeys` answer: (the kind's key, the other one).
pub fn parse_list_keys(
    kind: CosmosKeyKind,
    body: &[u8],
    who: &str,
    endpoint: &str,
) -> Result<(Secret, Option<Secret>), CredentialError> {
    crate::cosmos::parse_list_keys(kind, body, who, endpoint)
}
