//! The credential sources' responses (`dbproxy_credentials::fuzzing`, the `fuzzing` feature):
//! what a token endpoint, IMDS, App Service, the Azure CLI or ARM `listKeys` can answer.
//!
//! Byte 0 selects the parser (`% 8`), its bits 3–4 the Cosmos DB key kind; the rest is the
//! answer:
//! 0. Entra v2 token endpoint, 1. IMDS, 2. App Service / Container Apps: a successful token
//!    response (`parse_token_response`);
//! 3. `az account get-access-token -o json` stdout (`parse_az_output`);
//! 4. ARM `listKeys` / `readonlykeys` JSON (`parse_list_keys`);
//! 5. an error body (`parse_error_body`): byte 1 is the length of a secret taken from the
//!    following bytes, the rest is the body;
//! 6. a `Retry-After` header value (`retry_after`);
//! 7. any body as JSON (`json_body`).
//!
//! Invariants besides "no panic":
//! * an error's Display and Debug never depend on the answer's content, only on its size:
//!   without their digits they are one of the messages the parser gives for a few fixed
//!   answers (so no token, key or other value from the body ever appears in one);
//! * a parsed token or key is the body's non-empty string field, and the token's Debug shows
//!   no part of it;
//! * the code and description of an error body never contain the secret (scrubbed).
#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dbproxy_credentials::fuzzing::{
    AccessToken, CosmosKeyKind, CredentialError, json_body, parse_az_output, parse_error_body,
    parse_list_keys, parse_token_response, retry_after,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// (who, endpoint) of the token endpoints, as the sources name them.
const TOKEN_ENDPOINTS: [(&str, &str); 3] = [
    (
        "client secret (tenant=t, client=c)",
        "https://login.microsoftonline.com/t/oauth2/v2.0/token",
    ),
    (
        "managed identity (IMDS, system-assigned)",
        "http://169.254.169.254/metadata/identity/oauth2/token",
    ),
    (
        "managed identity (App Service, system-assigned)",
        "http://localhost:42356/msi/token",
    ),
];
const ARM: (&str, &str) = (
    "Cosmos DB primary key from https://management.azure.com/subscriptions/s/resourceGroups/g/providers/Microsoft.DocumentDB/databaseAccounts/a/listKeys",
    "https://management.azure.com/subscriptions/s/resourceGroups/g/providers/Microsoft.DocumentDB/databaseAccounts/a/listKeys",
);
const KINDS: [CosmosKeyKind; 4] = [
    CosmosKeyKind::Primary,
    CosmosKeyKind::Secondary,
    CosmosKeyKind::ReadOnlyPrimary,
    CosmosKeyKind::ReadOnlySecondary,
];
/// Answers that reach every error of the parsers (the canonical messages).
const FIXED: &[&[u8]] = &[
    b"",
    b"{}",
    br#"{"access_token":"x"}"#,
    br#"{"access_token":"x","expires_in":1e300}"#,
    br#"{"access_token":"x","expires_on":1e300}"#,
    br#"{"accessToken":"x"}"#,
];

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn without_digits(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_digit()).collect()
}

fn canonical(e: &CredentialError) -> String {
    without_digits(&format!("{e}\n{e:?}"))
}

/// The canonical error messages of parser `mode` (key kind `kind` for listKeys).
fn messages(mode: usize, kind: usize) -> &'static HashSet<String> {
    static SETS: OnceLock<Vec<HashSet<String>>> = OnceLock::new();
    let sets = SETS.get_or_init(|| {
        (0..3 + 1 + 4 + 1)
            .map(|i| {
                FIXED
                    .iter()
                    .filter_map(|b| match i {
                        0..=2 => {
                            let (who, ep) = TOKEN_ENDPOINTS[i];
                            parse_token_response(b, now(), who, ep).err()
                        }
                        3 => parse_az_output(b).err(),
                        4..=7 => parse_list_keys(KINDS[i - 4], b, ARM.0, ARM.1).err(),
                        _ => json_body(b, ARM.0, ARM.1).err(),
                    })
                    .map(|e| canonical(&e))
                    .collect()
            })
            .collect()
    });
    match mode {
        0..=3 => &sets[mode],
        4 => &sets[4 + kind],
        _ => &sets[8],
    }
}

fn check_error(e: &CredentialError, mode: usize, kind: usize) {
    let c = canonical(e);
    assert!(
        messages(mode, kind).contains(&c),
        "the error depends on the answer's content: {e} / {e:?}"
    );
}

/// The string field `field` of the JSON body.
fn field(body: &[u8], field: &str) -> Option<String> {
    match serde_json::from_slice::<Value>(body).ok()?.get(field)? {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn check_token(t: &AccessToken, body: &[u8], name: &str) {
    let token = t.token.expose();
    assert!(!token.is_empty(), "an empty token was accepted");
    assert_eq!(field(body, name).as_deref(), Some(token));
    let debug = without_digits(&format!("{t:?} {}", t.token));
    assert_eq!(
        debug,
        "AccessToken { token: Secret(<redacted>), expires_on: SystemTime { tv_sec: , tv_nsec:  } } Secret(<redacted>)"
    );
}

fn check_scrubbed(out: &str, secret: &str) {
    // The placeholder itself could spell a secret made of its characters.
    if secret.len() >= 4 && !secret.chars().any(|c| "<redacted>…".contains(c)) {
        assert!(!out.contains(secret), "{out:?} holds the secret {secret:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let mode = usize::from(sel % 8);
    let kind = usize::from((sel >> 3) % 4);
    match mode {
        0..=2 => {
            let (who, ep) = TOKEN_ENDPOINTS[mode];
            match parse_token_response(body, now(), who, ep) {
                Ok(t) => check_token(&t, body, "access_token"),
                Err(e) => check_error(&e, mode, kind),
            }
        }
        3 => match parse_az_output(body) {
            Ok(t) => check_token(&t, body, "accessToken"),
            Err(e) => check_error(&e, mode, kind),
        },
        4 => match parse_list_keys(KINDS[kind], body, ARM.0, ARM.1) {
            Ok((preferred, other)) => {
                let (a, b) = match KINDS[kind] {
                    CosmosKeyKind::Primary => ("primaryMasterKey", "secondaryMasterKey"),
                    CosmosKeyKind::Secondary => ("secondaryMasterKey", "primaryMasterKey"),
                    CosmosKeyKind::ReadOnlyPrimary => {
                        ("primaryReadonlyMasterKey", "secondaryReadonlyMasterKey")
                    }
                    _ => ("secondaryReadonlyMasterKey", "primaryReadonlyMasterKey"),
                };
                assert!(!preferred.is_empty());
                assert_eq!(field(body, a).as_deref(), Some(preferred.expose()));
                let other_field = field(body, b).filter(|s| !s.is_empty());
                assert_eq!(other_field.as_deref(), other.as_ref().map(|s| s.expose()));
            }
            Err(e) => check_error(&e, mode, kind),
        },
        5 => {
            let Some((&n, rest)) = body.split_first() else {
                return;
            };
            let (secret, body) = rest.split_at(usize::from(n).min(rest.len()));
            let secret = String::from_utf8_lossy(secret);
            let (code, description) = parse_error_body(body, &[&secret]);
            for out in [&code, &description] {
                check_scrubbed(out, &secret);
                check_scrubbed(out, secret.trim());
                assert!(!out.contains('\n'), "more than one line: {out:?}");
                assert!(out.chars().count() <= 301, "longer than 300 characters");
            }
        }
        6 => {
            if let Some(d) = retry_after(body) {
                let text = std::str::from_utf8(body).expect("a header value read as text");
                assert_eq!(text.trim().parse::<u64>().ok(), Some(d.as_secs()));
            }
        }
        _ => {
            if let Err(e) = json_body(body, ARM.0, ARM.1) {
                check_error(&e, mode, kind);
                assert!(serde_json::from_slice::<Value>(body).is_err());
            }
        }
    }
});
