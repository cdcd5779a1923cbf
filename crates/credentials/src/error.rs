//! Errors of the token sources and of the cache.
//!
//! Every message says which source failed, against which endpoint, and what to check. No
//! message ever contains a token, a client secret, an assertion or the identity header:
//! response bodies are never copied verbatim (only Entra's `error` code and the first line
//! of `error_description`, e.g. `AADSTS7000215: Invalid client secret is provided.`, or the
//! first line of the Azure CLI's stderr), and known secret values are scrubbed from those
//! too (see [`scrub`]).
//!
//! Errors are `Clone` because one failed acquisition is reported to every caller that
//! waited for it.

use std::time::Duration;

/// The broad class of a [`CredentialError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Missing or invalid configuration (environment variables, certificate file, …).
    Config,
    /// The source cannot work here (no IMDS endpoint, no Azure CLI, not logged in).
    /// A credential chain moves on to its next source.
    Unavailable,
    /// The identity provider answered with an error (bad secret, unknown identity, …).
    Rejected,
    /// The request could not be sent or the connection failed.
    Transport,
    /// The identity provider answered something that could not be understood.
    InvalidResponse,
    /// No answer in time.
    Timeout,
    /// Every source of a chain failed.
    Exhausted,
}

/// Why no access token could be obtained.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// Missing or invalid configuration.
    #[error("{who}: {message}")]
    Config {
        /// The source (e.g. "workload identity").
        who: String,
        /// What is wrong and what to set.
        message: String,
    },
    /// The source is not available in this environment.
    #[error("{who}: {message}")]
    Unavailable {
        /// The source.
        who: String,
        /// Why, and what to check.
        message: String,
    },
    /// The identity provider refused to issue a token.
    #[error(
        "{who}: {endpoint} answered HTTP {status}: {error}{}{}",
        opt_sep(description),
        hint_sep(hint)
    )]
    Rejected {
        /// The source.
        who: String,
        /// Endpoint URL (no query string).
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The OAuth `error` code, or a short summary.
        error: String,
        /// First line of the `error_description` (e.g. "AADSTS7000215: Invalid client secret is provided.").
        description: String,
        /// What to check.
        hint: String,
    },
    /// The request failed before an HTTP answer arrived.
    #[error("{who}: request to {endpoint} failed: {message}")]
    Transport {
        /// The source.
        who: String,
        /// Endpoint URL (no query string).
        endpoint: String,
        /// The I/O error.
        message: String,
    },
    /// The answer could not be understood.
    #[error("{who}: unexpected answer from {endpoint}: {message}")]
    InvalidResponse {
        /// The source.
        who: String,
        /// Endpoint URL or command.
        endpoint: String,
        /// What was wrong (never the body itself).
        message: String,
    },
    /// No answer (a token, a key) within the allowed time.
    #[error("{who}: timed out: no answer within {}s", after.as_secs_f32())]
    Timeout {
        /// The source.
        who: String,
        /// The time limit.
        after: Duration,
    },
    /// Every source of the default chain failed.
    #[error("no credential source produced a token: {}", format_attempts(attempts))]
    Exhausted {
        /// (source description, error message) for each source tried.
        attempts: Vec<(String, String)>,
    },
}

fn opt_sep(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" ({s})")
    }
}

fn hint_sep(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; {s}")
    }
}

fn format_attempts(attempts: &[(String, String)]) -> String {
    if attempts.is_empty() {
        return "no source is configured".into();
    }
    // A source's errors usually start with its own name: not twice.
    attempts
        .iter()
        .map(|(who, e)| match e.strip_prefix(who.as_str()) {
            Some(rest) if rest.starts_with(": ") => format!("[{e}]"),
            _ => format!("[{who}: {e}]"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl CredentialError {
    /// The broad class of the error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CredentialError::Config { .. } => ErrorKind::Config,
            CredentialError::Unavailable { .. } => ErrorKind::Unavailable,
            CredentialError::Rejected { .. } => ErrorKind::Rejected,
            CredentialError::Transport { .. } => ErrorKind::Transport,
            CredentialError::InvalidResponse { .. } => ErrorKind::InvalidResponse,
            CredentialError::Timeout { .. } => ErrorKind::Timeout,
            CredentialError::Exhausted { .. } => ErrorKind::Exhausted,
        }
    }

    pub(crate) fn config(who: impl Into<String>, message: impl Into<String>) -> Self {
        CredentialError::Config {
            who: who.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unavailable(who: impl Into<String>, message: impl Into<String>) -> Self {
        CredentialError::Unavailable {
            who: who.into(),
            message: message.into(),
        }
    }

    /// The request to `endpoint` failed before an HTTP answer arrived.
    pub(crate) fn transport(
        who: impl Into<String>,
        endpoint: impl Into<String>,
        e: reqwest::Error,
    ) -> Self {
        CredentialError::Transport {
            who: who.into(),
            endpoint: endpoint.into(),
            message: describe_reqwest(e),
        }
    }

    /// The HTTP endpoint answered `status` (not a success). `code` is the error code read from
    /// the body (when there is none, the status's reason phrase stands in), `description` the
    /// first line of its description (both already scrubbed), `hint` what to check.
    pub(crate) fn rejected(
        who: impl Into<String>,
        endpoint: impl Into<String>,
        status: reqwest::StatusCode,
        code: String,
        description: String,
        hint: impl Into<String>,
    ) -> Self {
        CredentialError::Rejected {
            who: who.into(),
            endpoint: endpoint.into(),
            status: status.as_u16(),
            error: if code.is_empty() {
                status.canonical_reason().unwrap_or("error").to_owned()
            } else {
                code
            },
            description,
            hint: hint.into(),
        }
    }

    pub(crate) fn invalid(
        who: impl Into<String>,
        endpoint: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        CredentialError::InvalidResponse {
            who: who.into(),
            endpoint: endpoint.into(),
            message: message.into(),
        }
    }
}

/// Replaces every occurrence of each (non-trivial) secret in `text` by `<redacted>`, and cuts
/// the text to its first non-empty line, at most 300 characters. Secrets are replaced before
/// the cut (a secret spanning lines, or one with surrounding whitespace, leaves no part on the
/// kept line) and also without their surrounding whitespace (a client secret read from a file
/// with its trailing newline).
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut all = text.to_owned();
    for s in secrets {
        for s in [*s, s.trim()] {
            if s.len() >= 4 {
                all = all.replace(s, "<redacted>");
            }
        }
    }
    let mut out = all
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_owned();
    if out.chars().count() > 300 {
        out = out.chars().take(300).collect::<String>() + "…";
    }
    out
}

/// A transport error's message, without the URL (we name the endpoint ourselves) and with
/// its causes (e.g. "connection refused").
pub(crate) fn describe_reqwest(e: reqwest::Error) -> String {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let m = s.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        src = s.source();
    }
    if timeout && !msg.contains("timed out") {
        msg.push_str(" (timed out)");
    }
    msg
}

/// The URL without query and fragment, for messages.
pub(crate) fn endpoint_of(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_first_line_and_secrets() {
        assert_eq!(
            scrub(
                "\n AADSTS7000215: bad secret abcd1234.\r\nTrace ID: x",
                &["abcd1234"]
            ),
            "AADSTS7000215: bad secret <redacted>."
        );
        assert_eq!(scrub("", &[]), "");
        // A secret spanning lines, or kept with its trailing newline, leaves nothing behind.
        assert_eq!(scrub("bad abcd\nefgh.", &["abcd\nefgh"]), "bad <redacted>.");
        assert_eq!(scrub("bad abcd1234.", &["abcd1234\n"]), "bad <redacted>.");
        assert_eq!(scrub("\n  abcd1234  \nx", &["  abcd1234  "]), "<redacted>");
    }

    #[test]
    fn exhausted_names_each_source_once() {
        let e = CredentialError::Exhausted {
            attempts: vec![
                ("Azure CLI".into(), "Azure CLI: not logged in".into()),
                (
                    "managed identity (IMDS)".into(),
                    "no IMDS endpoint answered".into(),
                ),
            ],
        };
        assert_eq!(
            e.to_string(),
            "no credential source produced a token: [Azure CLI: not logged in] [managed identity (IMDS): no IMDS endpoint answered]"
        );
    }

    #[test]
    fn rejected_message_shape() {
        let e = CredentialError::Rejected {
            who: "client secret".into(),
            endpoint: "https://login/t/oauth2/v2.0/token".into(),
            status: 401,
            error: "invalid_client".into(),
            description: "AADSTS7000215: Invalid client secret is provided.".into(),
            hint: "check the client secret".into(),
        };
        assert_eq!(
            e.to_string(),
            "client secret: https://login/t/oauth2/v2.0/token answered HTTP 401: invalid_client (AADSTS7000215: Invalid client secret is provided.); check the client secret"
        );
        assert_eq!(e.kind(), ErrorKind::Rejected);
        let e = CredentialError::rejected(
            "x",
            "https://e/",
            reqwest::StatusCode::SERVICE_UNAVAILABLE,
            String::new(),
            String::new(),
            "",
        );
        assert_eq!(
            e.to_string(),
            "x: https://e/ answered HTTP 503: Service Unavailable"
        );
    }
}
