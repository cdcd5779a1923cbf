//! Durations in flags, `ENTRA_DB_PROXY_*` variables and the TOML file, written the way
//! cloud-sql-proxy and Kubernetes users write them: `30s`, `2m`, `500ms`, `1h`, `1m30s`.
//!
//! Units and combinations are `humantime`'s (`ms`, `s`, `m`, `h`, `d`, spelled-out names,
//! `1m30s` or `1m 30s`). A bare number is seconds, as it always was here (humantime refuses
//! bare numbers, hence this wrapper): `30` in a flag, `"30"` or `30` in the file.

use std::{fmt, time::Duration};

use serde::{Deserializer, de};

/// What a duration looks like, for error messages and `--help`.
pub const EXPECTED: &str =
    "a duration such as 30s, 2m, 500ms, 1h or 1m30s, or a number of seconds such as 30";

/// Parses `30s`, `2m`, `500ms`, `1h`, `1m30s`, … or a bare number of seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| format!("expected {EXPECTED}, got {s:?} (too large)"));
    }
    humantime::parse_duration(t).map_err(|e| format!("expected {EXPECTED}, got {s:?} ({e})"))
}

/// For `#[serde(default, deserialize_with = "duration::deserialize")]` on an
/// `Option<Duration>`: a TOML integer (seconds) or a string [`parse`] accepts.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("expected {EXPECTED}, got {v}")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_any(Visitor).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_combinations_and_bare_seconds() {
        let ok = |s: &str| parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1m 30s"), Duration::from_secs(90));
        assert_eq!(ok(" 45s "), Duration::from_secs(45));
        // Bare numbers are seconds (humantime alone refuses them).
        assert!(humantime::parse_duration("30").is_err());
        assert_eq!(ok("30"), Duration::from_secs(30));
        assert_eq!(ok("0"), Duration::ZERO);
    }

    #[test]
    fn errors_show_an_example() {
        for bad in ["", "abc", "30x", "-5", "1.5.2s", "99999999999999999999999"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("30s") && e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
