/*!
Warm sessions, sans-IO: what the proxy needs to hand a client an upstream session that logged
in before the client arrived, so that the client sees what a cold login would have shown it.

```text
warm login (no client yet)                       client arrives
UpstreamLogin ── AuthenticationOk ──▶ Greeting   plan(client's StartupMessage) → Vec<(name, value)>
               ParameterStatus*, BackendKeyData,  apply_request ── Parse/Bind/Execute…/Close/Sync ──▶
               ReadyForQuery ─────▶ (captured)   ApplyReader ◀── ParameterStatus*, …, ReadyForQuery
                                                 Greeting::render(changed) ──▶ client
```

- [`Greeting`] reads the server's messages from AuthenticationOk up to ReadyForQuery and keeps
  them, ParameterStatus values included.
- [`plan`] turns a client's startup parameters into the settings to apply with
  `set_config(name, value, false)`, in PostgreSQL's order (the `options` `-c` switches first,
  then the other parameters as sent), or says why that cannot be exact ([`Miss`]).
- [`apply_request`] is one extended-protocol round trip applying them: the values travel as
  bind parameters, never inside SQL text. [`ApplyReader`] reads its answer and collects the
  ParameterStatus messages the server sends for the settings that changed.
- [`Greeting::render`] writes what the client sees: the captured messages in their order, each
  ParameterStatus with its value after the settings were applied.
- [`predicted_reports`]: for an `application_name` that PostgreSQL keeps as sent, the reports
  are known beforehand, so the greeting can go to the client before the apply's answer (the
  answer is then checked against the prediction).
*/

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::frontend;

use crate::backend::{
    AUTH_OK, AUTHENTICATION_TAG, BACKEND_KEY_DATA_TAG, ERROR_RESPONSE_TAG, Header,
    NOTICE_RESPONSE_TAG, PARAMETER_STATUS_TAG, READY_FOR_QUERY_TAG, parse_error_fields,
};
use crate::startup::{ProtocolVersion, StartupMessage};

/// The largest message accepted while reading a greeting or an apply answer.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// The most bytes a greeting may hold.
pub const MAX_GREETING_LEN: usize = 256 * 1024;

/// The statement that applies one setting as `SET` does (`is_local` false: for the session).
pub const SET_CONFIG: &str = "SELECT pg_catalog.set_config($1, $2, false)";

/// Why a warm session could not be read or applied: the session is discarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WarmError {
    /// A message the exchange does not allow.
    #[error("unexpected message {tag:?} {during}")]
    Unexpected {
        /// The message's tag.
        tag: char,
        /// Where it came.
        during: &'static str,
    },
    /// A length word out of bounds.
    #[error("invalid message length {0}")]
    Length(i64),
    /// The greeting grew past [`MAX_GREETING_LEN`].
    #[error("the login greeting is too long")]
    TooLong,
    /// The server refused a setting (or sent a notice about one): not exact.
    #[error("the server answered {code} {message}")]
    Refused {
        /// SQLSTATE.
        code: String,
        /// Message text.
        message: String,
    },
    /// The session is not idle.
    #[error("the session is not idle (ReadyForQuery status {0:?})")]
    NotIdle(char),
}

/// One whole backend message at the front of `buf`, split off; `Ok(None)` if incomplete.
fn next_message(buf: &mut BytesMut) -> Result<Option<BytesMut>, WarmError> {
    let Some(header) = Header::parse(buf) else {
        return Ok(None);
    };
    let frame = header
        .frame_len()
        .filter(|len| *len - 1 <= MAX_MESSAGE_LEN)
        .ok_or(WarmError::Length(i64::from(header.length())))?;
    if buf.len() < frame {
        buf.reserve(frame - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(frame)))
}

/// `name\0value\0` of a ParameterStatus message.
fn parameter_status(message: &[u8]) -> Option<(&[u8], &[u8])> {
    let body = message.get(Header::SIZE..)?;
    let mut parts = body.split(|b| *b == 0);
    let name = parts.next()?;
    let value = parts.next()?;
    Some((name, value))
}

/// Writes a ParameterStatus message.
pub fn write_parameter_status(name: &[u8], value: &[u8], out: &mut BytesMut) {
    out.put_u8(PARAMETER_STATUS_TAG);
    out.put_i32((4 + name.len() + 1 + value.len() + 1) as i32);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(value);
    out.put_u8(0);
}

/// What the server sent a session from AuthenticationOk through ReadyForQuery.
#[derive(Debug, Clone, Default)]
pub struct Greeting {
    /// The messages in order, as sent.
    messages: Vec<BytesMut>,
    len: usize,
    done: bool,
}

impl Greeting {
    /// An empty greeting, to be fed the login's `to_client` bytes and what follows.
    pub fn new() -> Greeting {
        Greeting::default()
    }

    /// Takes the messages at the front of `buf`. `Ok(true)` once ReadyForQuery (status idle)
    /// was read; bytes after it stay in `buf`.
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<bool, WarmError> {
        while !self.done {
            let Some(message) = next_message(buf)? else {
                return Ok(false);
            };
            let during = "in the login greeting";
            match message[0] {
                AUTHENTICATION_TAG if self.messages.is_empty() => {
                    if message.len() != Header::SIZE + 4 || message[5..9] != AUTH_OK.to_be_bytes() {
                        return Err(WarmError::Unexpected { tag: 'R', during });
                    }
                }
                PARAMETER_STATUS_TAG | BACKEND_KEY_DATA_TAG | NOTICE_RESPONSE_TAG
                    if !self.messages.is_empty() => {}
                READY_FOR_QUERY_TAG if !self.messages.is_empty() => {
                    let status = message.get(Header::SIZE).copied().unwrap_or(0);
                    if status != b'I' {
                        return Err(WarmError::NotIdle(char::from(status)));
                    }
                    self.done = true;
                }
                ERROR_RESPONSE_TAG => {
                    let (code, text) = parse_error_fields(&message[Header::SIZE..]);
                    return Err(WarmError::Refused {
                        code: code.unwrap_or_default(),
                        message: text.unwrap_or_default(),
                    });
                }
                tag => {
                    return Err(WarmError::Unexpected {
                        tag: char::from(tag),
                        during,
                    });
                }
            }
            self.len += message.len();
            if self.len > MAX_GREETING_LEN {
                return Err(WarmError::TooLong);
            }
            self.messages.push(message);
        }
        Ok(true)
    }

    /// Whether ReadyForQuery was read.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// The value the server reported for `name` (the last ParameterStatus for it).
    pub fn parameter(&self, name: &str) -> Option<&[u8]> {
        self.messages
            .iter()
            .filter(|m| m[0] == PARAMETER_STATUS_TAG)
            .filter_map(|m| parameter_status(m))
            .filter(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
            .next_back()
    }

    /// What the client is sent: the captured messages in order, each ParameterStatus with the
    /// value `changed` reports for it (the server's own reports after applying settings, in
    /// order: the last one for a name wins), and reports for names the greeting lacked after
    /// its last ParameterStatus.
    pub fn render(&self, changed: &[(Vec<u8>, Vec<u8>)]) -> BytesMut {
        let latest = |name: &[u8]| {
            changed
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_slice())
        };
        let known = |name: &[u8]| {
            self.messages
                .iter()
                .filter(|m| m[0] == PARAMETER_STATUS_TAG)
                .filter_map(|m| parameter_status(m))
                .any(|(n, _)| n == name)
        };
        let last_status = self
            .messages
            .iter()
            .rposition(|m| m[0] == PARAMETER_STATUS_TAG);
        let mut out = BytesMut::with_capacity(self.len + 256);
        let mut appended: Vec<&[u8]> = Vec::new();
        let mut append_new = |out: &mut BytesMut| {
            for (name, _) in changed {
                if !known(name) && !appended.contains(&name.as_slice()) {
                    appended.push(name);
                    write_parameter_status(name, latest(name).unwrap_or_default(), out);
                }
            }
        };
        for (i, m) in self.messages.iter().enumerate() {
            match (m[0], parameter_status(m)) {
                (PARAMETER_STATUS_TAG, Some((name, value))) => {
                    write_parameter_status(name, latest(name).unwrap_or(value), &mut out);
                }
                (READY_FOR_QUERY_TAG, _) if last_status.is_none() => {
                    append_new(&mut out);
                    out.extend_from_slice(m);
                }
                _ => out.extend_from_slice(m),
            }
            if Some(i) == last_status {
                append_new(&mut out);
            }
        }
        out
    }
}

/// Why a client cannot be given a warm session exactly (it takes the cold path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Another protocol version, `replication`, or a `_pq_.` protocol option.
    Startup,
    /// `options` holds something other than `-c name=value` / `--name=value` switches.
    Options,
    /// A parameter that cannot be applied after login exactly as at login.
    Parameter,
}

/// Parameters that are not a session's GUCs or whose `SET` differs from the login's.
const NOT_APPLIED: &[&str] = &[
    "user",
    "database",
    "replication",
    "options",
    "session_authorization",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
];

/// The settings to apply to a warm session for a client whose startup (as it would go
/// upstream: the proxy's user and database already set) is `startup`, in the order
/// PostgreSQL applies them at login: `options` first, then the others as sent. `utf8` says
/// whether values outside ASCII are taken as the session takes them at login (both the
/// client and the server encoding are UTF8).
pub fn plan(startup: &StartupMessage, utf8: bool) -> Result<Vec<(String, String)>, Miss> {
    if startup.version != ProtocolVersion::V3_0 {
        return Err(Miss::Startup);
    }
    let mut out = Vec::new();
    if let Some(options) = startup.get("options") {
        for (name, value) in split_options(options)? {
            out.push(checked(name, value, utf8)?);
        }
    }
    for (name, value) in &startup.params {
        match name.as_str() {
            "user" | "database" | "options" => continue,
            "replication" => return Err(Miss::Startup),
            n if n.starts_with("_pq_.") => return Err(Miss::Startup),
            _ => out.push(checked(name.clone(), value.clone(), utf8)?),
        }
    }
    Ok(out)
}

fn checked(name: String, value: Vec<u8>, utf8: bool) -> Result<(String, String), Miss> {
    let lower = name.to_ascii_lowercase();
    if name.is_empty() || NOT_APPLIED.contains(&lower.as_str()) {
        return Err(Miss::Parameter);
    }
    let value = String::from_utf8(value).map_err(|_| Miss::Parameter)?;
    if !(utf8 || name.is_ascii() && value.is_ascii()) {
        return Err(Miss::Parameter);
    }
    Ok((name, value))
}

/// PostgreSQL's `pg_split_opts` and switch parsing for the `options` parameter: words split at
/// unescaped whitespace (`\` escapes the next byte), each a `-c name=value`, `-cname=value` or
/// `--name=value` switch (`-` in the name read as `_`). Anything else is a [`Miss::Options`].
pub fn split_options(options: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Miss> {
    let mut words: Vec<Vec<u8>> = Vec::new();
    let mut bytes = options.iter().copied().peekable();
    loop {
        while bytes.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            bytes.next();
        }
        if bytes.peek().is_none() {
            break;
        }
        let mut word = Vec::new();
        while let Some(b) = bytes.next() {
            match b {
                b if b.is_ascii_whitespace() => break,
                b'\\' => {
                    if let Some(next) = bytes.next() {
                        word.push(next);
                    }
                }
                b => word.push(b),
            }
        }
        words.push(word);
    }
    let mut out = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if let Some(rest) = word.strip_prefix(b"--") {
            rest.to_vec()
        } else if word == b"-c" {
            words.next().ok_or(Miss::Options)?
        } else if let Some(rest) = word.strip_prefix(b"-c") {
            rest.to_vec()
        } else {
            return Err(Miss::Options);
        };
        let eq = setting
            .iter()
            .position(|b| *b == b'=')
            .ok_or(Miss::Options)?;
        let name = String::from_utf8(setting[..eq].to_vec()).map_err(|_| Miss::Options)?;
        out.push((name.replace('-', "_"), setting[eq + 1..].to_vec()));
    }
    Ok(out)
}

/// One round trip applying `settings`: Parse [`SET_CONFIG`], a Bind and Execute per setting,
/// Close of the unnamed statement (the client finds none), Sync.
pub fn apply_request(settings: &[(String, String)]) -> BytesMut {
    let mut out = BytesMut::new();
    // Encoding only fails for lengths over i32::MAX, which a startup packet cannot carry.
    let _ = frontend::parse("", SET_CONFIG, [25, 25], &mut out);
    for (name, value) in settings {
        bind_text(&[name.as_bytes(), value.as_bytes()], &mut out);
        let _ = frontend::execute("", 0, &mut out);
    }
    let _ = frontend::close(b'S', "", &mut out);
    frontend::sync(&mut out);
    out
}

/// The longest `application_name` PostgreSQL keeps as sent (NAMEDATALEN − 1); a longer one is
/// truncated, with a NOTICE.
pub const MAX_PREDICTABLE_NAME: usize = 63;

/// The reports an [`apply_request`] of `settings` will bring, when they can be known without
/// asking: only `application_name`, of printable ASCII within [`MAX_PREDICTABLE_NAME`] bytes,
/// which PostgreSQL keeps byte for byte (it replaces other bytes and truncates longer names).
/// Such settings can be applied after the client has its greeting, in the same round trip as
/// its first query, and the answer then confirms the prediction. `None`: apply first.
pub fn predicted_reports(settings: &[(String, String)]) -> Option<Reports> {
    let predictable = |(name, value): &(String, String)| {
        name == "application_name"
            && value.len() <= MAX_PREDICTABLE_NAME
            && value.bytes().all(|b| (0x20..=0x7e).contains(&b))
    };
    (!settings.is_empty() && settings.iter().all(predictable)).then(|| {
        settings
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    })
}

/// Bind of the unnamed statement to `values`, all in text format, text results.
fn bind_text(values: &[&[u8]], out: &mut BytesMut) {
    // Encoding only fails for lengths over i32::MAX, which a startup packet cannot carry.
    let _ = frontend::bind(
        "",
        "",
        [0i16],
        values.iter().copied(),
        |v, buf| {
            buf.put_slice(v);
            Ok(postgres_protocol::IsNull::No)
        },
        [0i16],
        out,
    );
}

/// The statement that primes a new warm session: it reads a setting and changes none.
pub const PRIME: &str = "SELECT pg_catalog.current_setting($1)";

/// One round trip that readies a new backend for [`apply_request`] without changing anything:
/// Parse [`SET_CONFIG`] (its catalog lookups), then Parse, Bind and Execute [`PRIME`] (the
/// executor's first run), Close, Sync. Its answer reads with [`ApplyReader`] and reports nothing.
pub fn prime_request() -> BytesMut {
    let mut out = BytesMut::new();
    let _ = frontend::parse("", SET_CONFIG, [25, 25], &mut out);
    let _ = frontend::parse("", PRIME, [25], &mut out);
    bind_text(&[b"application_name"], &mut out);
    let _ = frontend::execute("", 0, &mut out);
    let _ = frontend::close(b'S', "", &mut out);
    frontend::sync(&mut out);
    out
}

/// ParameterStatus reports as (name, value), in the order sent.
pub type Reports = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads the answer to [`apply_request`].
#[derive(Debug, Default)]
pub struct ApplyReader {
    changed: Reports,
    refused: Option<WarmError>,
}

impl ApplyReader {
    /// A reader for one [`apply_request`].
    pub fn new() -> ApplyReader {
        ApplyReader::default()
    }

    /// Takes the messages at the front of `buf`. `Ok(Some(changed))` at ReadyForQuery: the
    /// ParameterStatus reports in order. A refusal (an ErrorResponse, or any NoticeResponse,
    /// which a login would not have shown) is an error once ReadyForQuery arrives.
    pub fn feed(&mut self, buf: &mut BytesMut) -> Result<Option<Reports>, WarmError> {
        while let Some(message) = next_message(buf)? {
            match message[0] {
                // ParseComplete, BindComplete, DataRow, CommandComplete, CloseComplete.
                b'1' | b'2' | b'D' | b'C' | b'3' => {}
                PARAMETER_STATUS_TAG => {
                    if let Some((name, value)) = parameter_status(&message) {
                        self.changed.push((name.to_vec(), value.to_vec()));
                    }
                }
                ERROR_RESPONSE_TAG | NOTICE_RESPONSE_TAG => {
                    let (code, text) = parse_error_fields(&message[Header::SIZE..]);
                    self.refused.get_or_insert(WarmError::Refused {
                        code: code.unwrap_or_default(),
                        message: text.unwrap_or_default(),
                    });
                }
                READY_FOR_QUERY_TAG => {
                    if let Some(e) = self.refused.take() {
                        return Err(e);
                    }
                    let status = message.get(Header::SIZE).copied().unwrap_or(0);
                    if status != b'I' {
                        return Err(WarmError::NotIdle(char::from(status)));
                    }
                    return Ok(Some(std::mem::take(&mut self.changed)));
                }
                tag => {
                    return Err(WarmError::Unexpected {
                        tag: char::from(tag),
                        during: "applying the client's parameters",
                    });
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
#[path = "warm_tests.rs"]
mod tests;
