//! PostgreSQL bytes for the hostile cases: opening packets and messages as a client writes
//! them (including wrong ones), and backend messages as read back.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol 3.0's version code.
pub(crate) const V3_0: u32 = 196_608;
/// SSLRequest (1234.5679).
pub(crate) const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
/// GSSENCRequest (1234.5680).
pub(crate) const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
/// The CancelRequest code (1234.5678).
pub(crate) const CANCEL_CODE: u32 = 80_877_102;

/// An untagged opening packet: length word (counting itself), `code`, `body`.
pub(crate) fn packet(code: u32, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of a StartupMessage: `name\0value\0`… then the terminator.
pub(crate) fn params(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in pairs {
        body.extend_from_slice(k);
        body.push(0);
        body.extend_from_slice(v);
        body.push(0);
    }
    body.push(0);
    body
}

/// A StartupMessage (protocol 3.0) with text parameters.
pub(crate) fn startup(pairs: &[(&str, &str)]) -> Vec<u8> {
    let pairs: Vec<(&[u8], &[u8])> = pairs
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    packet(V3_0, &params(&pairs))
}

/// A tagged frontend message.
pub(crate) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query message.
pub(crate) fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// Terminate.
pub(crate) fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// The complete backend messages at the front of `bytes`, and what is left over.
pub(crate) fn messages(mut bytes: &[u8]) -> (Vec<(u8, Vec<u8>)>, &[u8]) {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if len < 4 || bytes.len() < 1 + len {
            break;
        }
        out.push((bytes[0], bytes[5..1 + len].to_vec()));
        bytes = &bytes[1 + len..];
    }
    (out, bytes)
}

/// A field of an ErrorResponse body (`C` SQLSTATE, `M` message, `S` severity…).
pub(crate) fn field(body: &[u8], code: u8) -> String {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

/// What a client received before the close, for messages.
pub(crate) fn describe(bytes: &[u8]) -> String {
    let (msgs, rest) = messages(bytes);
    let mut parts: Vec<String> = msgs
        .iter()
        .map(|(t, b)| match t {
            b'E' => format!(
                "E[{} {} {:?}]",
                field(b, b'S'),
                field(b, b'C'),
                field(b, b'M')
            ),
            t => (*t as char).to_string(),
        })
        .collect();
    if !rest.is_empty() {
        parts.push(format!(
            "+{} raw bytes {:?}",
            rest.len(),
            &rest[..rest.len().min(16)]
        ));
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(" ")
    }
}

/// The single FATAL ErrorResponse in `bytes`, as (SQLSTATE, message); Err otherwise.
pub(crate) fn single_fatal(bytes: &[u8]) -> Result<(String, String), String> {
    let (msgs, rest) = messages(bytes);
    match (&msgs[..], rest.is_empty()) {
        ([(b'E', body)], true) if field(body, b'S') == "FATAL" => {
            Ok((field(body, b'C'), field(body, b'M')))
        }
        _ => Err(format!(
            "expected one FATAL ErrorResponse, got {}",
            describe(bytes)
        )),
    }
}

/// Reads backend messages until `tag` has been seen `n` times; Err on a close or after `limit`.
pub(crate) async fn read_until<S: AsyncRead + Unpin>(
    s: &mut S,
    tag: u8,
    n: usize,
    limit: Duration,
) -> Result<Vec<(u8, Vec<u8>)>, String> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    let read = async {
        while out.iter().filter(|(t, _)| *t == tag).count() < n {
            let mut head = [0u8; 5];
            s.read_exact(&mut head).await.map_err(|e| e.to_string())?;
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0; len.saturating_sub(4)];
            s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
            out.push((head[0], body));
        }
        Ok::<(), String>(())
    };
    let got = tokio::time::timeout(limit, read).await;
    let seen = || {
        out.iter()
            .map(|(t, b)| {
                if *t == b'E' {
                    format!("E[{} {:?}]", field(b, b'C'), field(b, b'M'))
                } else {
                    (*t as char).to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    match got {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(format!(
            "closed ({e}) before {n} '{}'; got: {}",
            tag as char,
            seen()
        )),
        Err(_) => Err(format!(
            "no {n} '{}' within {limit:?}; got: {}",
            tag as char,
            seen()
        )),
    }
}
