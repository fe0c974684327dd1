//! A Golomb-Rice coded set of sorted pseudorandom values (as in BIP 158's
//! filters): `n` distinct values in `[0, n * 2^p)` cost about `p + 1.6` bits
//! each instead of a fixed-width hash. The sender of ECDH-PSI sends its
//! evaluated set this way.

use serde::{Deserialize, Serialize};

use crate::PsiError;

/// The largest Rice parameter accepted.
pub const MAX_PARAM_BITS: u8 = 64;

/// A compressed set of values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressedSet {
    /// The number of values (a value may repeat when two elements collide).
    pub count: u32,
    /// The Rice parameter `p`: values lie in `[0, count * 2^p)`.
    pub param_bits: u8,
    /// The coded bits: per value, the quotient of its gap to the previous
    /// value by `2^p` in unary (ones, then a zero), then the remainder's `p`
    /// low bits, most significant first; zero padding to a byte.
    pub data: Vec<u8>,
}

struct BitWriter {
    out: Vec<u8>,
    acc: u8,
    used: u8,
}

impl BitWriter {
    fn bit(&mut self, b: bool) {
        self.acc = (self.acc << 1) | u8::from(b);
        self.used += 1;
        if self.used == 8 {
            self.out.push(self.acc);
            self.acc = 0;
            self.used = 0;
        }
    }
    fn bits(&mut self, v: u64, n: u8) {
        for i in (0..n).rev() {
            self.bit((v >> i) & 1 == 1);
        }
    }
    fn finish(mut self) -> Vec<u8> {
        if self.used > 0 {
            self.out.push(self.acc << (8 - self.used));
        }
        self.out
    }
}

struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl BitReader<'_> {
    fn bit(&mut self) -> Option<bool> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - (self.pos % 8))) & 1 == 1;
        self.pos += 1;
        Some(b)
    }
}

impl CompressedSet {
    /// The range the values lie in: `max(count, 1) * 2^param_bits`;
    /// refused for a parameter above [`MAX_PARAM_BITS`].
    pub fn range(count: usize, param_bits: u8) -> Result<u128, PsiError> {
        if param_bits > MAX_PARAM_BITS {
            return Err(PsiError::Malformed {
                what: "Rice parameter",
                detail: format!("{param_bits} bits is above the largest, {MAX_PARAM_BITS}"),
            });
        }
        // count < 2^64 and param_bits <= 64: the product fits in u128.
        Ok((count.max(1) as u128) << param_bits)
    }

    /// Codes sorted values (all below `range(values.len(), p)`).
    pub(crate) fn encode(values: &[u128], param_bits: u8) -> Self {
        let mut w = BitWriter {
            out: Vec::with_capacity(values.len() * (usize::from(param_bits) + 2) / 8 + 1),
            acc: 0,
            used: 0,
        };
        let mask = if param_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << param_bits) - 1
        };
        let mut prev = 0u128;
        for &v in values {
            let gap = v - prev;
            prev = v;
            let q = gap >> param_bits;
            for _ in 0..q {
                w.bit(true);
            }
            w.bit(false);
            w.bits((gap as u64) & mask, param_bits);
        }
        CompressedSet {
            count: u32::try_from(values.len()).unwrap_or(u32::MAX),
            param_bits,
            data: w.finish(),
        }
    }

    /// Decodes, checking: at most `bound` values, the agreed parameter,
    /// non-decreasing values below the range, no bits left over.
    pub(crate) fn decode(
        &self,
        what: &'static str,
        bound: usize,
        expected_param: u8,
    ) -> Result<Vec<u128>, PsiError> {
        let n = self.count as usize;
        if n > bound {
            return Err(PsiError::TooManyElements {
                what,
                got: n,
                bound,
            });
        }
        if self.param_bits != expected_param {
            return Err(PsiError::Malformed {
                what,
                detail: format!(
                    "Rice parameter {} where the agreed sizes give {expected_param}",
                    self.param_bits
                ),
            });
        }
        // Each value takes at least p + 1 bits.
        let min_bits = n.saturating_mul(usize::from(self.param_bits) + 1);
        if self.data.len().saturating_mul(8) < min_bits {
            return Err(PsiError::WrongLength {
                what,
                expected: min_bits.div_ceil(8),
                got: self.data.len(),
            });
        }
        let range = Self::range(n, self.param_bits)?;
        let p = self.param_bits;
        let mut r = BitReader {
            data: &self.data,
            pos: 0,
        };
        let truncated = || PsiError::Malformed {
            what,
            detail: "the coded bits end before the declared count of values".into(),
        };
        let mut out = Vec::with_capacity(n);
        let mut prev = 0u128;
        for i in 0..n {
            let mut q = 0u128;
            while r.bit().ok_or_else(truncated)? {
                q += 1;
                if (q << p) >= range {
                    return Err(PsiError::Malformed {
                        what,
                        detail: format!("value {i} runs past the range {range}"),
                    });
                }
            }
            let mut rem = 0u128;
            for _ in 0..p {
                rem = (rem << 1) | u128::from(r.bit().ok_or_else(truncated)?);
            }
            let gap = (q << p) | rem;
            let v = prev + gap;
            if v >= range {
                return Err(PsiError::Malformed {
                    what,
                    detail: format!("value {i} lies past the range {range}"),
                });
            }
            out.push(v);
            prev = v;
        }
        let used_bytes = r.pos.div_ceil(8);
        if used_bytes != self.data.len() {
            return Err(PsiError::WrongLength {
                what,
                expected: used_bytes,
                got: self.data.len(),
            });
        }
        while !r.pos.is_multiple_of(8) {
            if r.bit() == Some(true) {
                return Err(PsiError::Malformed {
                    what,
                    detail: "non-zero padding bits".into(),
                });
            }
        }
        Ok(out)
    }
}
