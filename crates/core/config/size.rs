//! Byte sizes in flags, `ENTRA_DB_PROXY_*` variables and the TOML file, written the way
//! `cassandra.yaml` writes them: `16MiB`, `512KiB`, `1GiB`, or a bare number of bytes.
//!
//! Units are binary (`KiB` = 1024 bytes) and case-insensitive; `B`, `K`/`KB`, `M`/`MB` and
//! `G`/`GB` are read as their binary counterparts too. A space between number and unit is
//! allowed.

use std::fmt;

use serde::{Deserializer, de};

/// What a size looks like, for error messages and `--help`.
pub const EXPECTED: &str = "a size such as 16MiB, 512KiB or 1GiB, or a number of bytes";

/// Parses `16MiB`, `512 KiB`, `1GiB`, `16777216`, …
pub fn parse(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("expected {EXPECTED}, got {s:?} (unknown unit)")),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("expected {EXPECTED}, got {s:?}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("expected {EXPECTED}, got {s:?} (too large)"))
}

/// For `#[serde(default, deserialize_with = "size::deserialize")]` on an `Option<usize>`: a
/// TOML integer (bytes) or a string [`parse`] accepts.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("expected {EXPECTED}, got {v}")))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
            usize::try_from(v).map_err(|_| E::custom(format!("expected {EXPECTED}, got {v}")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_any(Visitor).map(Some)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn sizes() {
        assert_eq!(parse("16MiB"), Ok(16 << 20));
        assert_eq!(parse("16 mib"), Ok(16 << 20));
        assert_eq!(parse("512KiB"), Ok(512 << 10));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("16777216"), Ok(16 << 20));
        assert_eq!(parse("100B"), Ok(100));
        assert!(parse("16 parsecs").unwrap_err().contains("unknown unit"));
        assert!(parse("MiB").is_err());
        assert!(parse("-1").is_err());
        assert!(parse("99999999999999999999GiB").is_err());
    }
}
