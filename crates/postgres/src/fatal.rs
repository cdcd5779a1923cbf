//! [`FatalWatch`]: notices, in a relayed stream of server messages, an ErrorResponse of
//! severity FATAL or PANIC — the server ending the session (a restart's 57P01 "terminating
//! connection due to administrator command", an idle-session timeout, `pg_terminate_backend`).
//!
//! The relay forwards bytes unparsed; this follows their framing (tag, length) on the side,
//! without buffering a message: it keeps at most a 5-byte header and the first
//! [`HEAD_LEN`] bytes of an ErrorResponse's body, where the severity fields (`S`, and `V`, the
//! untranslated one, PostgreSQL 9.6+) come first. A length word below 4 means the framing is
//! lost; the watch then stops looking.

use crate::backend::Header;

const ERROR_RESPONSE_TAG: u8 = b'E';
/// How much of an ErrorResponse body is looked at.
pub const HEAD_LEN: usize = 48;

/// See the module docs. Feed it every byte the server sends, in order, from a message boundary.
#[derive(Debug, Default, Clone)]
pub struct FatalWatch {
    header: [u8; Header::SIZE],
    have: usize,
    /// Body bytes of the current message still to come.
    left: usize,
    /// The first body bytes of the current ErrorResponse.
    head: Option<Vec<u8>>,
    fatal: bool,
    lost: bool,
}

impl FatalWatch {
    /// A watch at a message boundary.
    pub fn new() -> FatalWatch {
        FatalWatch::default()
    }

    /// Whether a FATAL or PANIC ErrorResponse went by.
    pub fn saw_fatal(&self) -> bool {
        self.fatal
    }

    /// Follows `bytes`; returns [`FatalWatch::saw_fatal`].
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() && !self.fatal && !self.lost {
            if self.left == 0 && self.head.is_none() {
                let take = (Header::SIZE - self.have).min(bytes.len());
                self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have < Header::SIZE {
                    break;
                }
                self.have = 0;
                let Some(h) = Header::parse(&self.header) else {
                    break;
                };
                let Some(frame) = h.frame_len() else {
                    self.lost = true;
                    break;
                };
                self.left = frame - Header::SIZE;
                if h.tag() == ERROR_RESPONSE_TAG {
                    self.head = Some(Vec::with_capacity(self.left.min(HEAD_LEN)));
                }
                if self.left == 0 {
                    self.end_of_message();
                }
                continue;
            }
            let take = self.left.min(bytes.len());
            if let Some(head) = self.head.as_mut() {
                let room = HEAD_LEN.saturating_sub(head.len()).min(take);
                head.extend_from_slice(&bytes[..room]);
            }
            self.left -= take;
            bytes = &bytes[take..];
            if self.left == 0 {
                self.end_of_message();
            }
        }
        self.fatal
    }

    fn end_of_message(&mut self) {
        if let Some(head) = self.head.take() {
            self.fatal = is_fatal(&head);
        }
    }
}

/// Whether the severity fields at the front of an ErrorResponse body say FATAL or PANIC.
fn is_fatal(mut body: &[u8]) -> bool {
    while let Some((&field, after)) = body.split_first() {
        let Some(end) = after.iter().position(|b| *b == 0) else {
            return false;
        };
        let value = &after[..end];
        if matches!(field, b'S' | b'V') && matches!(value, b"FATAL" | b"PANIC") {
            return true;
        }
        if !matches!(field, b'S' | b'V') {
            return false;
        }
        body = &after[end + 1..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend(((body.len() + 4) as i32).to_be_bytes());
        m.extend(body);
        m
    }

    #[test]
    fn a_fatal_error_is_seen_in_any_chunking() {
        let mut stream = msg(
            b'T',
            b"\0\x01x\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        );
        stream.extend(msg(b'E', b"SERROR\0VERROR\0C42601\0Msyntax error\0\0"));
        stream.extend(msg(b'Z', b"I"));
        let fatal = msg(
            b'E',
            b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
        );
        for chunk in [1, 2, 3, 7, 1000] {
            let mut w = FatalWatch::new();
            for c in stream.chunks(chunk) {
                assert!(!w.feed(c), "an ERROR is not the end (chunks of {chunk})");
            }
            let mut seen = false;
            for c in fatal.chunks(chunk) {
                seen = w.feed(c);
            }
            assert!(seen, "chunks of {chunk}");
        }
    }

    #[test]
    fn translated_severity_and_panic_and_lost_framing() {
        let mut w = FatalWatch::new();
        assert!(w.feed(&msg(b'E', b"SFATAL\0C57P01\0\0")));
        let mut w = FatalWatch::new();
        assert!(
            w.feed(&msg(b'E', b"SFEHLER\0VPANIC\0\0")),
            "V is untranslated"
        );
        let mut w = FatalWatch::new();
        assert!(!w.feed(&msg(b'N', b"SFATAL\0\0")), "a notice is no error");
        let mut w = FatalWatch::new();
        assert!(
            !w.feed(b"E\0\0\0\x02SFATAL\0\0"),
            "a bad length loses the framing"
        );
        assert!(
            !w.feed(&msg(b'E', b"SFATAL\0\0")),
            "and the watch stays blind"
        );
    }
}
