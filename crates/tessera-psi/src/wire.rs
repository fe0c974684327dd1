//! Byte framing of the messages: a tag byte, a version byte, then fields
//! (little-endian counts, length-prefixed byte strings). Readers refuse
//! truncated input, unknown tags and versions, and trailing bytes.

use crate::PsiError;

/// The framing version every message carries.
pub(crate) const VERSION: u8 = 1;

/// Builds one message.
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn new(tag: u8, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity + 2);
        out.push(tag);
        out.push(VERSION);
        Writer(out)
    }
    pub(crate) fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn bytes(mut self, v: &[u8]) -> Self {
        // Lengths are bounded by the caller's element bounds (u32 counts of
        // at most 96-byte elements); refuse silently-wrapping lengths anyway.
        let len = u64::try_from(v.len()).unwrap_or(u64::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(v);
        self
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads one message, naming it in every error.
pub(crate) struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, tag: u8, bytes: &'a [u8]) -> Result<Self, PsiError> {
        match bytes {
            [t, v, rest @ ..] if *t == tag && *v == VERSION => Ok(Reader { what, rest }),
            [t, v, ..] if *t == tag => Err(PsiError::Malformed {
                what,
                detail: format!("framing version {v}, this build reads {VERSION}"),
            }),
            [t, ..] => Err(PsiError::Malformed {
                what,
                detail: format!("tag byte {t}, expected {tag}: not this kind of message"),
            }),
            [] => Err(PsiError::Malformed {
                what,
                detail: "empty message".into(),
            }),
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], PsiError> {
        if self.rest.len() < n {
            return Err(PsiError::Malformed {
                what: self.what,
                detail: format!("truncated: {n} more bytes needed, {} left", self.rest.len()),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, PsiError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, PsiError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn bytes(&mut self) -> Result<Vec<u8>, PsiError> {
        let b = self.take(8)?;
        let mut len = [0u8; 8];
        len.copy_from_slice(b);
        let len = u64::from_le_bytes(len);
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= self.rest.len())
            .ok_or_else(|| PsiError::Malformed {
                what: self.what,
                detail: format!(
                    "a field declares {len} bytes but only {} remain",
                    self.rest.len()
                ),
            })?;
        Ok(self.take(len)?.to_vec())
    }
    pub(crate) fn end(self) -> Result<(), PsiError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(PsiError::Malformed {
                what: self.what,
                detail: format!("{} trailing bytes after the last field", self.rest.len()),
            })
        }
    }
}

impl Reader<'_> {
    /// A length-prefixed field that must hold exactly 32 bytes.
    pub(crate) fn array32_field(&mut self, field: &'static str) -> Result<[u8; 32], PsiError> {
        let b = self.bytes()?;
        b.as_slice().try_into().map_err(|_| PsiError::WrongLength {
            what: field,
            expected: 32,
            got: b.len(),
        })
    }
}
