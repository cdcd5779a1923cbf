//! Shared pieces of the HTTP wire formats (token endpoints, and ARM for Cosmos DB keys).
//!
//! * Scopes: Entra v2 takes `scope=https://…/.default`; the managed identity endpoints take
//!   `resource=https://…` (the scope without `/.default`).
//! * Token responses: `access_token` plus `expires_in` (seconds from now, preferred: immune
//!   to local clock skew) and/or `expires_on` (epoch seconds). Managed identity endpoints send every value as a JSON *string*
//!   (`"expires_on":"1506484173"`), Entra v2 sends integers: both are accepted everywhere.
//! * Error bodies: OAuth `{"error","error_description"}` (Entra, IMDS) or App Service's
//!   `{"statusCode","message"}`. Only the code and the first line of the description are
//!   kept; the body itself is never put into an error.
//! * `Retry-After` (managed identity retries, ARM `listKeys` throttling): delay-seconds only;
//!   an HTTP-date is ignored, and the caller then falls back to its own backoff.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use crate::{
    error::{CredentialError, scrub},
    secret::{AccessToken, Secret},
};

/// `https://x/.default` → `https://x` (the managed identity `resource` parameter).
pub(crate) fn scope_to_resource(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

/// A JSON number or a string holding one.
pub(crate) fn lenient_u64(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Value::String(s) => s.trim().parse::<u64>().ok().or_else(|| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

/// `secs` after the Unix epoch; `None` beyond what [`SystemTime`] holds (a peer's number,
/// e.g. `"expires_on":1e300`, must not overflow the addition).
pub(crate) fn epoch_seconds(secs: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// The delay a `Retry-After: <seconds>` header asks for.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?;
    v.to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// `body` as JSON; the error names its size, never its contents.
pub(crate) fn json_body(body: &[u8], who: &str, endpoint: &str) -> Result<Value, CredentialError> {
    serde_json::from_slice(body).map_err(|_| {
        CredentialError::invalid(
            who,
            endpoint,
            format!("the body is not JSON ({} bytes)", body.len()),
        )
    })
}

/// Parses a successful token response (`access_token` + `expires_on`/`expires_in`).
/// `now` is when the request was sent, so that `expires_in` errs on the early side.
pub(crate) fn parse_token_response(
    body: &[u8],
    now: SystemTime,
    who: &str,
    endpoint: &str,
) -> Result<AccessToken, CredentialError> {
    let v = json_body(body, who, endpoint)?;
    let token = match v.get("access_token") {
        Some(Value::String(t)) if !t.is_empty() => Secret::new(t.clone()),
        _ => {
            return Err(CredentialError::invalid(
                who,
                endpoint,
                "no access_token in the answer",
            ));
        }
    };
    // `expires_in` is relative, so a skewed local clock does not matter: prefer it.
    let (field, expires_on) = if let Some(secs) = lenient_u64(v.get("expires_in")) {
        ("expires_in", now.checked_add(Duration::from_secs(secs)))
    } else if let Some(on) = lenient_u64(v.get("expires_on")) {
        ("expires_on", epoch_seconds(on))
    } else {
        return Err(CredentialError::invalid(
            who,
            endpoint,
            "neither expires_on nor expires_in is a number",
        ));
    };
    let Some(expires_on) = expires_on else {
        return Err(CredentialError::invalid(
            who,
            endpoint,
            format!("{field} is too large to be a time"),
        ));
    };
    Ok(AccessToken { token, expires_on })
}

/// The interesting parts of an error body: (error code, first line of the description).
pub(crate) fn parse_error_body(body: &[u8], secrets: &[&str]) -> (String, String) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (String::new(), String::new());
    };
    let s = |key: &str| match v.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    // OAuth / IMDS / Entra.
    let (code, desc) = match (s("error"), s("error_description")) {
        (Some(c), d) => (c, d.unwrap_or_default()),
        (None, d) => {
            // {"error":{"code":…,"message":…}} (ARM-style) or App Service {"statusCode","message"}.
            let nested = v.get("error").and_then(|e| {
                Some((
                    e.get("code")?.as_str()?.to_owned(),
                    e.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                ))
            });
            match nested {
                Some(x) => x,
                None => (
                    String::new(),
                    d.or_else(|| s("message"))
                        .or_else(|| s("Message"))
                        .unwrap_or_default(),
                ),
            }
        }
    };
    (scrub(&code, secrets), scrub(&desc, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_numbers() {
        let now = SystemTime::now();
        let t = parse_token_response(
            br#"{"access_token":"tok","expires_in":"3599","expires_on":"1506484173","token_type":"Bearer"}"#,
            now,
            "x",
            "e",
        )
        .unwrap();
        assert_eq!(t.token.expose(), "tok");
        assert_eq!(t.expires_on, now + Duration::from_secs(3599));
        let t = parse_token_response(
            br#"{"access_token":"tok","expires_in":3599,"ext_expires_in":3599}"#,
            now,
            "x",
            "e",
        )
        .unwrap();
        assert_eq!(t.expires_on, now + Duration::from_secs(3599));
        let t = parse_token_response(
            br#"{"access_token":"tok","expires_on":1506484173}"#,
            now,
            "x",
            "e",
        )
        .unwrap();
        assert_eq!(t.expires_on, UNIX_EPOCH + Duration::from_secs(1506484173));
        for huge in [
            r#""expires_in":18446744073709551615"#,
            r#""expires_in":"1e300""#,
            r#""expires_on":18446744073709551615"#,
            r#""expires_on":1e300"#,
        ] {
            let body = format!(r#"{{"access_token":"tok",{huge}}}"#);
            let e = parse_token_response(body.as_bytes(), now, "x", "e").unwrap_err();
            assert!(e.to_string().contains("too large to be a time"), "{e}");
        }
        let e = parse_token_response(br#"{"access_token":"tok"}"#, now, "x", "e").unwrap_err();
        assert!(!e.to_string().contains("tok\""), "{e}");
        let e = parse_token_response(b"not json with s3cret", now, "x", "e").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn error_bodies() {
        let (c, d) = parse_error_body(
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret is provided.\r\nTrace ID: 1","error_codes":[7000215]}"#,
            &[],
        );
        assert_eq!(c, "invalid_client");
        assert_eq!(d, "AADSTS7000215: Invalid client secret is provided.");
        let (c, d) = parse_error_body(
            br#"{"statusCode":400,"message":"No Managed Identity found for specified ClientId/ResourceId/PrincipalId.","correlationId":"x"}"#,
            &[],
        );
        assert_eq!(c, "");
        assert!(d.starts_with("No Managed Identity found"));
        assert_eq!(
            parse_error_body(b"<html>", &[]),
            (String::new(), String::new())
        );
        assert_eq!(scope_to_resource("https://a/.default"), "https://a");
        assert_eq!(scope_to_resource("https://a"), "https://a");
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, " 7 ".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None, "HTTP-dates are not supported");
    }
}
