//! Secrets and access tokens.
//!
//! A [`Secret`] owns a sensitive string (an access token, a client secret, a federated
//! assertion, the App Service identity header). It can only be read through
//! [`Secret::expose`], so every place that uses the value is easy to find; its `Debug` and
//! `Display` print `Secret(<redacted>)` and it deliberately implements no `Serialize`.
//!
//! An [`AccessToken`] is what every token source returns: the bearer token the proxy uses
//! as the database password, and the instant it stops being valid.

use std::{fmt, time::SystemTime};

/// A sensitive string that never shows up in logs, errors or `Debug` output.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a sensitive value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself. Call this only where the value must leave the process
    /// (an HTTP form field, a database password message).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True if the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl PartialEq for Secret {
    /// Compares in time that depends on the lengths only, not on where the values differ.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// A bearer access token and its expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessToken {
    /// The token (a JWT), used as the database password.
    pub token: Secret,
    /// When the token stops being accepted.
    pub expires_on: SystemTime,
}

impl AccessToken {
    /// Time left until expiry (zero if already expired).
    pub fn remaining(&self) -> std::time::Duration {
        self.expires_on
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_and_comparable() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{s}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(s, Secret::new(String::from("hunter2")));
        assert_ne!(s, Secret::new("hunter3"));
        assert_ne!(s, Secret::new("hunter22"));
        let t = AccessToken {
            token: s,
            expires_on: SystemTime::now(),
        };
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
