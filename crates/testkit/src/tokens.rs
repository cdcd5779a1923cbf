//! JWT-shaped access tokens like the ones Entra ID issues.
//!
//! The proxy never validates tokens (PostgreSQL / Azure do), so these are not signed by anything
//! real: `base64url(header).base64url(claims).<random base64url>`. What matters for tests is the
//! shape (three dot-separated base64url parts, realistic claims such as `aud`, `exp`, `oid`,
//! `tid`), the length (managed-identity tokens are ~1,900 chars, user tokens up to ~7,000; the
//! signature part is sized so the whole token has exactly the asked length when it can), and that
//! every call gives a different token.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rand::Rng as _;

use crate::certs::b64url;

/// Seconds since the Unix epoch, now.
pub fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random lower-case GUID (`xxxxxxxx-xxxx-4xxx-8xxx-xxxxxxxxxxxx`).
pub fn random_guid() -> String {
    let b: [u8; 16] = rand::rng().random();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        u16::from_be_bytes([b[8], b[9]]) & 0x0fff,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

/// `n` random base64url characters.
pub fn random_b64url(n: usize) -> String {
    let bytes: Vec<u8> = (0..n.div_ceil(4) * 3 + 3)
        .map(|_| rand::rng().random())
        .collect();
    let mut s = b64url(&bytes);
    s.truncate(n);
    s
}

/// A JWT-shaped token of `len` characters (more if `len` is too small for the header and
/// claims), with `aud` = `audience`, `exp` = `expires_at_epoch`, and random `oid`, `tid`, `uti`,
/// `sub`. Unique per call.
pub fn jwt_like(len: usize, audience: &str, expires_at_epoch: u64) -> String {
    jwt_with_claims(
        len,
        audience,
        expires_at_epoch,
        &random_guid(),
        &random_guid(),
    )
}

/// Like [`jwt_like`] with a given tenant id and object (principal) id.
pub fn jwt_with_claims(
    len: usize,
    audience: &str,
    expires_at_epoch: u64,
    tenant_id: &str,
    object_id: &str,
) -> String {
    let now = now_epoch();
    let iat = now.min(expires_at_epoch);
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "RS256",
        "x5t": random_b64url(27),
        "kid": random_b64url(27),
    });
    let claims = serde_json::json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{tenant_id}/"),
        "iat": iat,
        "nbf": iat,
        "exp": expires_at_epoch,
        "aio": random_b64url(60),
        "appid": random_guid(),
        "appidacr": "2",
        "idp": format!("https://sts.windows.net/{tenant_id}/"),
        "idtyp": "app",
        "oid": object_id,
        "rh": format!("0.{}.", random_b64url(40)),
        "sub": object_id,
        "tid": tenant_id,
        "uti": random_b64url(22),
        "ver": "1.0",
        "xms_tcdt": iat.saturating_sub(86_400 * 365),
    });
    let head = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig_len = len.saturating_sub(head.len() + 1).max(16);
    format!("{head}.{}", random_b64url(sig_len))
}

/// The decoded claims (middle part) of a JWT-shaped token, if it has that shape.
pub fn claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The decoded header (first part) of a JWT-shaped token.
pub fn header(token: &str) -> Option<serde_json::Value> {
    let part = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_length_claims_and_uniqueness() {
        for len in [1300, 1900, 6900, 16 * 1024] {
            let a = jwt_like(
                len,
                "https://ossrdbms-aad.database.windows.net",
                2_000_000_000,
            );
            let b = jwt_like(
                len,
                "https://ossrdbms-aad.database.windows.net",
                2_000_000_000,
            );
            assert_eq!(a.len(), len);
            assert_ne!(a, b);
            assert_eq!(a.split('.').count(), 3);
            assert!(
                a.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
            );
            let c = claims(&a).unwrap();
            assert_eq!(c["aud"], "https://ossrdbms-aad.database.windows.net");
            assert_eq!(c["exp"], 2_000_000_000u64);
            assert_eq!(header(&a).unwrap()["alg"], "RS256");
        }
        // too short: grows to fit the claims
        assert!(jwt_like(10, "x", 1).len() > 10);
    }

    #[test]
    fn guid_shape() {
        let g = random_guid();
        assert_eq!(g.len(), 36);
        assert_eq!(g.matches('-').count(), 4);
    }
}
