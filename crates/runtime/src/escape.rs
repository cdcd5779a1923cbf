//! Client-controlled text in log lines.
//!
//! A client chooses its database name, `application_name`, CQL keyspace and more. Written raw
//! into a text log, a newline in one of them would let the client forge whole log lines
//! (`level=ERROR …`) that operators and log pipelines trust. [`Escaped`] displays such a value
//! so that it can never leave its field: control characters, quotes and backslashes are
//! escaped as Rust does (`\n`, `\u{1b}`, `\"`), and a value that is empty or holds a space or
//! `=` is quoted, so a fake `key=value` pair stays inside its field. JSON logs encode every
//! field as a JSON string already; with [`set_json`] the value is written as it is.

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

static JSON: AtomicBool = AtomicBool::new(false);

/// Tells [`Escaped`] that log lines are JSON, whose encoding escapes every field itself.
pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

/// Displays a client-controlled string safely for a log line.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if JSON.load(Ordering::Relaxed) {
            return f.write_str(self.0);
        }
        let quote = self.0.is_empty()
            || self
                .0
                .chars()
                .any(|c| c == ' ' || c == '=' || c == '"' || c == '\\' || !is_plain(c));
        if !quote {
            return f.write_str(self.0);
        }
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                c if is_plain(c) || c == ' ' => write!(f, "{c}")?,
                c => write!(f, "{}", c.escape_default())?,
            }
        }
        f.write_str("\"")
    }
}

/// Printable and not a line or format control (bidi overrides, zero-width characters).
fn is_plain(c: char) -> bool {
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'))
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn plain_values_are_unchanged() {
        assert_eq!(Escaped("orders").to_string(), "orders");
        assert_eq!(Escaped("app-1.β").to_string(), "app-1.β");
    }

    #[test]
    fn hostile_values_stay_in_their_field() {
        let forged = "x\nlevel=ERROR msg=\"pwned\"";
        let shown = Escaped(forged).to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert_eq!(shown, r#""x\nlevel=ERROR msg=\"pwned\"""#);
        assert_eq!(Escaped("\u{1b}[31mred").to_string(), r#""\u{1b}[31mred""#);
        assert_eq!(Escaped("a=b").to_string(), r#""a=b""#);
        assert_eq!(Escaped("").to_string(), r#""""#);
        assert_eq!(Escaped("\r\t\u{202e}").to_string(), r#""\r\t\u{202e}""#);
    }
}
