//! The protocol's primitive notations (spec §3), read from a byte slice and written to a
//! `BytesMut`. Big-endian throughout.
//!
//! ```text
//! [int] 4 bytes   [short] 2 bytes unsigned   [string] [short] n + n bytes UTF-8
//! [long string] [int] n + n bytes   [bytes] [int] n + n bytes (n < 0: null)
//! [short bytes] [short] n + n bytes   [string list] [short] n + n [string]
//! [string map] [short] n + n ([string] [string])   [string multimap] [short] n + n ([string] [string list])
//! [bytes map] [short] n + n ([string] [bytes])   [uuid] 16 bytes
//! ```
//!
//! Every read is bounds-checked against the slice: a length can never make the reader
//! allocate more than the bytes it was given.

use bytes::{BufMut, BytesMut};

use crate::error::CqlError;

/// A cursor over a message body.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the structure in error messages.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CqlError> {
        if self.remaining() < n {
            return Err(CqlError::malformed(
                self.what,
                format!(
                    "needs {n} more bytes at offset {}, only {} left",
                    self.pos,
                    self.remaining()
                ),
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), CqlError> {
        self.take(n).map(|_| ())
    }

    pub(crate) fn short(&mut self) -> Result<u16, CqlError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn int(&mut self) -> Result<i32, CqlError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn string(&mut self) -> Result<&'a str, CqlError> {
        let n = self.short()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|e| CqlError::malformed(self.what, e.to_string()))
    }

    pub(crate) fn long_string(&mut self) -> Result<&'a str, CqlError> {
        let n = self.int()?;
        let n = usize::try_from(n)
            .map_err(|_| CqlError::malformed(self.what, format!("negative string length {n}")))?;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|e| CqlError::malformed(self.what, e.to_string()))
    }

    /// `[bytes]`: `None` for a null (negative length).
    pub(crate) fn bytes(&mut self) -> Result<Option<&'a [u8]>, CqlError> {
        let n = self.int()?;
        match usize::try_from(n) {
            Ok(n) => self.take(n).map(Some),
            Err(_) => Ok(None),
        }
    }

    pub(crate) fn short_bytes(&mut self) -> Result<&'a [u8], CqlError> {
        let n = self.short()? as usize;
        self.take(n)
    }

    pub(crate) fn string_list(&mut self) -> Result<Vec<&'a str>, CqlError> {
        let n = self.short()?;
        (0..n).map(|_| self.string()).collect()
    }

    /// `[string map]`, in wire order.
    pub(crate) fn string_map(&mut self) -> Result<Vec<(String, String)>, CqlError> {
        let n = self.short()?;
        (0..n)
            .map(|_| Ok((self.string()?.to_owned(), self.string()?.to_owned())))
            .collect()
    }

    pub(crate) fn skip_bytes_map(&mut self) -> Result<(), CqlError> {
        let n = self.short()?;
        for _ in 0..n {
            self.string()?;
            self.bytes()?;
        }
        Ok(())
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `[string]`; a longer string is cut to 65,535 bytes (the proxy writes short texts only).
pub(crate) fn put_string(out: &mut BytesMut, s: &str) {
    let s = truncate(s, u16::MAX as usize);
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// `[string list]`; at most 65,535 entries.
pub(crate) fn put_string_list(out: &mut BytesMut, list: &[&str]) {
    let n = list.len().min(u16::MAX as usize);
    out.put_u16(n as u16);
    for s in &list[..n] {
        put_string(out, s);
    }
}

/// `[bytes]`; `None` writes a null.
pub(crate) fn put_bytes(out: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        Some(b) => {
            out.put_i32(b.len() as i32);
            out.put_slice(b);
        }
        None => out.put_i32(-1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let mut r = Reader::new(&[0x00, 0x05, b'a'], "test");
        assert!(matches!(r.string(), Err(CqlError::Malformed { .. })));
        let mut r = Reader::new(&[0x7f, 0xff, 0xff, 0xff], "test");
        assert!(r.bytes().is_err());
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff], "test");
        assert_eq!(r.bytes().unwrap(), None);
    }

    #[test]
    fn string_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(40_000);
        let mut out = BytesMut::new();
        put_string(&mut out, &long);
        let mut r = Reader::new(&out, "test");
        let s = r.string().unwrap();
        assert!(s.len() <= 65_535);
        assert!(s.chars().all(|c| c == 'é'));
    }
}
