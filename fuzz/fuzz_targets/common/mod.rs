//! Helpers shared by the targets (each includes this file with `#[path]`).
#![allow(dead_code)]

/// Splits `data` into the chunking byte (its first byte) and the payload, and returns the
/// payload's chunks: one chunk for a chunking byte of 0, otherwise lengths drawn from a small
/// xorshift seeded with that byte, so the corpus explores "one byte at a time", "two
/// packets in one read" and everything between.
pub fn chunks(data: &[u8]) -> (u8, Vec<&[u8]>) {
    let Some((&seed, mut rest)) = data.split_first() else {
        return (0, Vec::new());
    };
    if seed == 0 {
        return (0, vec![rest]);
    }
    let max = 1 + usize::from(seed & 0x1f);
    let mut x = u32::from(seed) | 0x100;
    let mut out = Vec::new();
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = 1 + (x as usize % max);
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    (seed, out)
}

/// A byte cursor for targets that build structured input from fuzz bytes.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
    /// A length byte, then that many bytes.
    pub fn short_slice(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.take(n)
    }
}
