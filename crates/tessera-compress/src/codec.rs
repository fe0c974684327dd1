//! Codecs: what a vector of `f32` becomes on the wire, and back.
//!
//! A codec is at most one sparsifier followed by at most one value coding,
//! written `topk:0.01+q8`, `randk:0.1`, `fp16`, `q4` or `none`.
//!
//! The encoding is self-describing (a decoder needs only the expected length):
//!
//! ```text
//! byte 0      sparsity << 4 | values      sparsity: 0 dense, 1 index-coded, 2 seeded
//!                                         values:   0 f32, 1 f16, 2 q8, 3 q4, 4 q2
//! varint      n, the vector's length
//! sparse:     varint k; index-coded: k varints, each index minus the previous minus 1;
//!             seeded: 8 bytes of seed (the indices are `random_k_indices(n, k, seed)`)
//! quantised:  varint chunk; then per chunk of `chunk` values: f32 low, f32 high,
//!             the levels packed little-endian, `bits` each
//! f32 / f16:  the values, little-endian
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tessera_core::SeededRng;

use crate::CompressError;
use crate::fp16::{f16_to_f32, f32_to_f16};

/// How coordinates are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sparsifier {
    /// The `fraction` of coordinates largest in magnitude; indices travel.
    TopK(f64),
    /// A seeded random `fraction` of coordinates; only the seed travels.
    RandomK(f64),
}

/// How the kept values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// 32-bit floats, exact.
    F32,
    /// IEEE binary16, round to nearest.
    F16,
    /// Unbiased stochastic uniform quantisation with `bits` (8, 4 or 2) per value,
    /// between each chunk's minimum and maximum.
    Uniform(u8),
}

/// A codec: an optional sparsifier, then a value coding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Codec {
    /// Which coordinates are sent.
    pub sparsifier: Option<Sparsifier>,
    /// How their values are written.
    pub values: Values,
    /// Values per quantisation chunk (each chunk carries its own low and high).
    pub chunk: usize,
}

/// The default quantisation chunk.
pub const DEFAULT_CHUNK: usize = 256;

impl Default for Codec {
    fn default() -> Self {
        Codec::NONE
    }
}

/// A vector as encoded, with what the receiver will decode.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The wire bytes.
    pub bytes: Vec<u8>,
    /// `decode(bytes)`: what the receiver gets (zeros where nothing was sent).
    pub decoded: Vec<f32>,
}

impl Codec {
    /// Dense 32-bit floats: no compression.
    pub const NONE: Codec = Codec {
        sparsifier: None,
        values: Values::F32,
        chunk: DEFAULT_CHUNK,
    };

    /// Whether this codec changes nothing.
    pub fn is_identity(&self) -> bool {
        self.sparsifier.is_none() && self.values == Values::F32
    }

    /// Whether the decoded vector depends on random draws (stochastic
    /// rounding or random coordinates).
    pub fn is_random(&self) -> bool {
        matches!(self.sparsifier, Some(Sparsifier::RandomK(_)))
            || matches!(self.values, Values::Uniform(_))
    }

    /// How many coordinates of `n` are sent.
    pub fn kept(&self, n: usize) -> usize {
        match self.sparsifier {
            None => n,
            Some(Sparsifier::TopK(f) | Sparsifier::RandomK(f)) => kept(n, f),
        }
    }

    /// Bytes of the encoding of an `n`-vector: exact, except for top-k's
    /// index gaps, counted here at their largest (the encoding may be shorter).
    pub fn max_encoded_len(&self, n: usize) -> usize {
        let k = self.kept(n);
        let mut len = 1 + varint_len(n as u64);
        match self.sparsifier {
            None => {}
            Some(Sparsifier::TopK(_)) => {
                len += varint_len(k as u64);
                // k gaps summing to at most n - k: at most the largest gap's width each.
                len += k * varint_len(n.saturating_sub(k) as u64);
            }
            Some(Sparsifier::RandomK(_)) => len += varint_len(k as u64) + 8,
        }
        len + self.values_len(k)
    }

    fn values_len(&self, k: usize) -> usize {
        match self.values {
            Values::F32 => 4 * k,
            Values::F16 => 2 * k,
            Values::Uniform(bits) => {
                let chunk = self.chunk.max(1);
                let full = k / chunk;
                let rest = k % chunk;
                let packed = |len: usize| (len * usize::from(bits)).div_ceil(8);
                varint_len(chunk as u64)
                    + full * (8 + packed(chunk))
                    + if rest > 0 { 8 + packed(rest) } else { 0 }
            }
        }
    }

    /// Encodes `values`; `rng` draws stochastic rounding and random-k's seed.
    pub fn encode(&self, values: &[f32], rng: &mut SeededRng) -> Encoded {
        let seed = rng.next_u64();
        self.encode_with_seed(values, seed, rng)
    }

    /// Encodes `values`, random-k choosing its coordinates from `seed` (a
    /// seed shared by a round's participants makes them choose the same ones).
    pub fn encode_with_seed(&self, values: &[f32], seed: u64, rng: &mut SeededRng) -> Encoded {
        let n = values.len();
        let indices: Option<Vec<usize>> = match self.sparsifier {
            None => None,
            Some(Sparsifier::TopK(f)) => Some(top_k_indices(values, kept(n, f))),
            Some(Sparsifier::RandomK(f)) => Some(random_k_indices(n, kept(n, f), seed)),
        };
        let picked: Vec<f32> = match &indices {
            None => values.to_vec(),
            Some(ix) => ix.iter().map(|&i| values[i]).collect(),
        };
        let mut bytes = Vec::with_capacity(self.max_encoded_len(n));
        let sparsity = match self.sparsifier {
            None => 0u8,
            Some(Sparsifier::TopK(_)) => 1,
            Some(Sparsifier::RandomK(_)) => 2,
        };
        bytes.push(sparsity << 4 | value_code(self.values));
        put_varint(&mut bytes, n as u64);
        if let Some(ix) = &indices {
            put_varint(&mut bytes, ix.len() as u64);
            match self.sparsifier {
                Some(Sparsifier::TopK(_)) => {
                    let mut next = 0usize;
                    for &i in ix {
                        put_varint(&mut bytes, (i - next) as u64);
                        next = i + 1;
                    }
                }
                _ => bytes.extend_from_slice(&seed.to_le_bytes()),
            }
        }
        let coded = write_values(&mut bytes, self.values, self.chunk.max(1), &picked, rng);
        let decoded = match indices {
            None => coded,
            Some(ix) => scatter(n, &ix, &coded),
        };
        Encoded { bytes, decoded }
    }
}

/// Decodes an encoding of a vector of `expected` values. Every malformation
/// is an error naming it; nothing panics on hostile bytes.
pub fn decode(bytes: &[u8], expected: usize) -> Result<Vec<f32>, CompressError> {
    let mut r = Reader { bytes, at: 0 };
    let head = r.byte()?;
    let (sparsity, values) = (head >> 4, head & 0x0f);
    let values = match values {
        0 => Values::F32,
        1 => Values::F16,
        2 => Values::Uniform(8),
        3 => Values::Uniform(4),
        4 => Values::Uniform(2),
        other => return Err(malformed(format!("unknown value coding {other}"))),
    };
    let n = r.varint()?;
    if n != expected as u64 {
        return Err(malformed(format!(
            "encodes {n} values, the model has {expected}"
        )));
    }
    let indices = match sparsity {
        0 => None,
        1 | 2 => {
            let k = r.varint()?;
            if k > n {
                return Err(malformed(format!("keeps {k} of {n} values")));
            }
            let k = k as usize;
            if sparsity == 1 {
                let mut ix = Vec::with_capacity(k.min(bytes.len()));
                let mut next = 0u64;
                for _ in 0..k {
                    let i = next
                        .checked_add(r.varint()?)
                        .filter(|&i| i < n)
                        .ok_or_else(|| malformed(format!("an index is past the {n} values")))?;
                    ix.push(i as usize);
                    next = i + 1;
                }
                Some(ix)
            } else {
                let seed = u64::from_le_bytes(r.array::<8>()?);
                Some(random_k_indices(expected, k, seed))
            }
        }
        other => return Err(malformed(format!("unknown sparsity {other}"))),
    };
    let k = indices.as_ref().map_or(expected, Vec::len);
    let coded = read_values(&mut r, values, k)?;
    if r.at != bytes.len() {
        return Err(malformed(format!(
            "{} bytes left over after the values",
            bytes.len() - r.at
        )));
    }
    if let Some(bad) = coded.iter().position(|v| !v.is_finite()) {
        return Err(malformed(format!("value {bad} is not finite")));
    }
    Ok(match indices {
        None => coded,
        Some(ix) => scatter(expected, &ix, &coded),
    })
}

fn kept(n: usize, fraction: f64) -> usize {
    if n == 0 {
        return 0;
    }
    ((fraction * n as f64).ceil() as usize).clamp(1, n)
}

/// A vector of `n` zeros with `values` at `indices` (indices must be below `n`).
pub fn scatter(n: usize, indices: &[usize], values: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; n];
    for (&i, &v) in indices.iter().zip(values) {
        out[i] = v;
    }
    out
}

/// The `k` coordinates of `values` largest in magnitude, ascending (ties to the lower index).
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut ix: Vec<usize> = (0..values.len()).collect();
    if k < ix.len() && k > 0 {
        let order =
            |a: &usize, b: &usize| values[*b].abs().total_cmp(&values[*a].abs()).then(a.cmp(b));
        ix.select_nth_unstable_by(k - 1, order);
    }
    ix.truncate(k);
    ix.sort_unstable();
    ix
}

/// `k` distinct coordinates of `0..n` drawn from `seed` (Floyd's algorithm), ascending.
pub fn random_k_indices(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let k = k.min(n);
    let mut rng = SeededRng::new(seed);
    let mut chosen = std::collections::BTreeSet::new();
    for j in (n - k)..n {
        let t = rng.below(j as u64 + 1) as usize;
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    chosen.into_iter().collect()
}

fn value_code(values: Values) -> u8 {
    match values {
        Values::F32 => 0,
        Values::F16 => 1,
        Values::Uniform(8) => 2,
        Values::Uniform(4) => 3,
        Values::Uniform(_) => 4,
    }
}

fn write_values(
    out: &mut Vec<u8>,
    coding: Values,
    chunk: usize,
    values: &[f32],
    rng: &mut SeededRng,
) -> Vec<f32> {
    match coding {
        Values::F32 => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
            values.to_vec()
        }
        Values::F16 => values
            .iter()
            .map(|&v| {
                let h = f32_to_f16(v);
                out.extend_from_slice(&h.to_le_bytes());
                f16_to_f32(h)
            })
            .collect(),
        Values::Uniform(bits) => {
            put_varint(out, chunk as u64);
            let top = (1u32 << bits) - 1;
            let mut decoded = Vec::with_capacity(values.len());
            for part in values.chunks(chunk) {
                let low = part.iter().copied().fold(f32::INFINITY, f32::min);
                let high = part.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                out.extend_from_slice(&low.to_le_bytes());
                out.extend_from_slice(&high.to_le_bytes());
                let width = f64::from(high) - f64::from(low);
                let mut packer = Packer::new(out, bits);
                for &v in part {
                    let level = if width > 0.0 {
                        let t = (f64::from(v) - f64::from(low)) / width * f64::from(top);
                        let floor = t.floor();
                        let up = rng.bernoulli(t - floor);
                        (floor as u32 + u32::from(up)).min(top)
                    } else {
                        0
                    };
                    packer.push(level);
                    decoded.push(level_value(low, high, level, top));
                }
                packer.finish();
            }
            decoded
        }
    }
}

fn level_value(low: f32, high: f32, level: u32, top: u32) -> f32 {
    if level == 0 {
        return low;
    }
    if level == top {
        return high;
    }
    (f64::from(low) + (f64::from(high) - f64::from(low)) * f64::from(level) / f64::from(top)) as f32
}

fn read_values(r: &mut Reader<'_>, coding: Values, k: usize) -> Result<Vec<f32>, CompressError> {
    let mut out = Vec::with_capacity(k.min(r.remaining()));
    match coding {
        Values::F32 => {
            for _ in 0..k {
                out.push(f32::from_le_bytes(r.array::<4>()?));
            }
        }
        Values::F16 => {
            for _ in 0..k {
                out.push(f16_to_f32(u16::from_le_bytes(r.array::<2>()?)));
            }
        }
        Values::Uniform(bits) => {
            let chunk = r.varint()?;
            if chunk == 0 {
                return Err(malformed("a quantisation chunk of 0 values".into()));
            }
            let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
            let top = (1u32 << bits) - 1;
            let mut left = k;
            while left > 0 {
                let len = left.min(chunk);
                let low = f32::from_le_bytes(r.array::<4>()?);
                let high = f32::from_le_bytes(r.array::<4>()?);
                if !(low.is_finite() && high.is_finite() && low <= high) {
                    return Err(malformed(format!(
                        "a chunk's range [{low}, {high}] is empty"
                    )));
                }
                let packed = r.take((len * usize::from(bits)).div_ceil(8))?;
                for j in 0..len {
                    let bit = j * usize::from(bits);
                    let level = u32::from(packed[bit / 8] >> (bit % 8)) & top;
                    out.push(level_value(low, high, level, top));
                }
                left -= len;
            }
        }
    }
    Ok(out)
}

/// Packs `bits`-wide levels little-endian into bytes (8, 4 and 2 divide a byte).
struct Packer<'a> {
    out: &'a mut Vec<u8>,
    bits: u8,
    byte: u8,
    used: u8,
}

impl<'a> Packer<'a> {
    fn new(out: &'a mut Vec<u8>, bits: u8) -> Self {
        Self {
            out,
            bits,
            byte: 0,
            used: 0,
        }
    }

    fn push(&mut self, level: u32) {
        self.byte |= (level as u8) << self.used;
        self.used += self.bits;
        if self.used == 8 {
            self.out.push(self.byte);
            self.byte = 0;
            self.used = 0;
        }
    }

    fn finish(self) {
        if self.used > 0 {
            self.out.push(self.byte);
        }
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    tessera_core::varint_len(value)
}

fn malformed(message: String) -> CompressError {
    CompressError::Malformed(message)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, len: usize) -> Result<&[u8], CompressError> {
        if self.remaining() < len {
            return Err(malformed(format!(
                "ends after {} bytes, {} more expected",
                self.bytes.len(),
                len - self.remaining()
            )));
        }
        let slice = &self.bytes[self.at..self.at + len];
        self.at += len;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, CompressError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CompressError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn varint(&mut self) -> Result<u64, CompressError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed("a varint longer than 64 bits".into()))
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        match self.sparsifier {
            Some(Sparsifier::TopK(x)) => parts.push(format!("topk:{x}")),
            Some(Sparsifier::RandomK(x)) => parts.push(format!("randk:{x}")),
            None => {}
        }
        match self.values {
            Values::F32 => {}
            Values::F16 => parts.push("fp16".into()),
            Values::Uniform(b) => parts.push(format!("q{b}")),
        }
        if parts.is_empty() {
            return f.write_str("none");
        }
        if self.chunk != DEFAULT_CHUNK
            && matches!(self.values, Values::Uniform(_))
            && let Some(last) = parts.last_mut()
        {
            last.push_str(&format!("/{}", self.chunk));
        }
        f.write_str(&parts.join("+"))
    }
}

impl FromStr for Codec {
    type Err = CompressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let spec = text.trim();
        let error = |reason: String| CompressError::Spec {
            spec: text.to_string(),
            reason,
        };
        let mut codec = Codec::NONE;
        let mut saw_values = false;
        for stage in spec.split('+').map(str::trim) {
            let (name, argument) = match stage.split_once(':') {
                Some((name, arg)) => (name, Some(arg)),
                None => (stage, None),
            };
            let fraction = || -> Result<f64, CompressError> {
                let arg = argument.ok_or_else(|| {
                    error(format!(
                        "'{name}' needs the share of values kept, as in {name}:0.01"
                    ))
                })?;
                let f: f64 = arg
                    .parse()
                    .map_err(|_| error(format!("'{arg}' is not a number")))?;
                if f > 0.0 && f <= 1.0 {
                    Ok(f)
                } else {
                    Err(error(format!(
                        "the share of values kept must be in (0, 1], got {arg}"
                    )))
                }
            };
            match name {
                "none" if spec == "none" => {}
                "topk" | "randk" => {
                    if codec.sparsifier.is_some() || saw_values {
                        return Err(error(
                            "one sparsifier at most, before the value coding".into(),
                        ));
                    }
                    let f = fraction()?;
                    codec.sparsifier = Some(if name == "topk" {
                        Sparsifier::TopK(f)
                    } else {
                        Sparsifier::RandomK(f)
                    });
                }
                "fp16" | "q8" | "q4" | "q2" => {
                    if saw_values {
                        return Err(error("one value coding at most".into()));
                    }
                    saw_values = true;
                    codec.values = match name {
                        "fp16" => Values::F16,
                        "q8" => Values::Uniform(8),
                        "q4" => Values::Uniform(4),
                        _ => Values::Uniform(2),
                    };
                    if let Some(arg) = argument {
                        return Err(error(format!("'{name}' takes no argument, got '{arg}'")));
                    }
                }
                _ => {
                    // `q8/128`: a chunk size.
                    if let Some((q, chunk)) = name.split_once('/')
                        && matches!(q, "q8" | "q4" | "q2")
                    {
                        if saw_values {
                            return Err(error("one value coding at most".into()));
                        }
                        saw_values = true;
                        codec.values = Values::Uniform(match q {
                            "q8" => 8,
                            "q4" => 4,
                            _ => 2,
                        });
                        codec.chunk =
                            chunk
                                .parse::<usize>()
                                .ok()
                                .filter(|&c| c > 0)
                                .ok_or_else(|| {
                                    error(format!(
                                        "the chunk size '{chunk}' is not a positive integer"
                                    ))
                                })?;
                        continue;
                    }
                    return Err(error(format!(
                        "unknown stage '{stage}' (expected none, topk:F, randk:F, fp16, q8, q4 or q2, joined by '+')"
                    )));
                }
            }
        }
        Ok(codec)
    }
}

impl Serialize for Codec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Codec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
