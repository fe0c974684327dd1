//! Two-party ECDH-PSI on ristretto255 (see the crate docs for the flow, the
//! adversary and what each mode reveals).

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::scalar::Scalar;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::blind::Blinding;
use crate::gcs::CompressedSet;
use crate::gcs::MAX_PARAM_BITS;
use crate::group::{
    POINT_BYTES, blind_points, check_distinct_tokens, check_packed, prf_value, random_scalar,
    random_seed, seeded_bytes, seeded_scalar, sort_packed, tokens_times_two,
};
use crate::wire::{Reader, Writer};
use crate::{PsiError, Token};

/// What the intersection reveals, and to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Both parties learn which of their own elements are shared.
    Both,
    /// Only the receiver learns which of its elements are shared; the sender
    /// learns the receiver's set size.
    ReceiverOnly,
    /// Both learn only the size of the intersection (PSI-cardinality).
    Cardinality,
}

impl Mode {
    fn code(self) -> u8 {
        match self {
            Mode::Both => 1,
            Mode::ReceiverOnly => 2,
            Mode::Cardinality => 3,
        }
    }
    fn from_code(c: u8) -> Result<Self, PsiError> {
        match c {
            1 => Ok(Mode::Both),
            2 => Ok(Mode::ReceiverOnly),
            3 => Ok(Mode::Cardinality),
            _ => Err(PsiError::Malformed {
                what: "query.mode",
                detail: format!("unknown mode code {c} (1 both, 2 receiver-only, 3 cardinality)"),
            }),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Both => "both",
            Mode::ReceiverOnly => "receiver-only",
            Mode::Cardinality => "cardinality",
        })
    }
}

/// What both parties agree before a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsiConfig {
    /// The mode.
    pub mode: Mode,
    /// The most elements either side may hold; longer messages are refused
    /// before anything is allocated for them.
    pub max_elements: usize,
    /// The false-positive parameter `s`: the chance that any element is
    /// wrongly reported shared is at most about `2^-s` per run.
    pub fp_bits: u8,
}

impl PsiConfig {
    /// A configuration with the defaults: at most 2^24 elements a side,
    /// false positives at most about 2^-20 per run.
    pub fn new(mode: Mode) -> Self {
        PsiConfig {
            mode,
            max_elements: 1 << 24,
            fp_bits: 20,
        }
    }

    fn check(&self) -> Result<(), PsiError> {
        if self.max_elements == 0 || self.max_elements > u32::MAX as usize {
            return Err(PsiError::Config(format!(
                "max_elements {} must lie in 1..=2^32-1",
                self.max_elements
            )));
        }
        if !(8..=32).contains(&self.fp_bits) {
            return Err(PsiError::Config(format!(
                "fp_bits {} must lie in 8..=32",
                self.fp_bits
            )));
        }
        Ok(())
    }

    /// The Rice parameter for a receiver of `n` elements: each of its
    /// elements collides with one of the sender's values with probability
    /// `2^-p`, so `p = ceil(log2 n) + fp_bits` bounds the expected number
    /// of false positives by `2^-fp_bits`. Refused above
    /// [`MAX_PARAM_BITS`] (only an unchecked configuration gets there).
    pub fn param_bits(&self, receiver_size: usize) -> Result<u8, PsiError> {
        let log = usize::BITS - receiver_size.max(1).saturating_sub(1).leading_zeros();
        let p = log + u32::from(self.fp_bits);
        if p > u32::from(MAX_PARAM_BITS) {
            return Err(PsiError::Config(format!(
                "fp_bits {} with {receiver_size} elements needs a Rice parameter of {p} bits, above the largest {MAX_PARAM_BITS}: keep fp_bits in 8..=32",
                self.fp_bits
            )));
        }
        Ok(p as u8)
    }
}

fn check_local(what: &'static str, n: usize, config: &PsiConfig) -> Result<(), PsiError> {
    if n > config.max_elements {
        return Err(PsiError::TooManyElements {
            what,
            got: n,
            bound: config.max_elements,
        });
    }
    Ok(())
}

/// Message 1, receiver to sender: the receiver's blinded elements,
/// `2 (H(a) + r_a G)` (modes both, receiver-only) or `alpha * H(a)`
/// (cardinality).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// The mode the receiver runs.
    pub mode: Mode,
    /// The number of points.
    pub count: u32,
    /// The points, 32 bytes each.
    pub points: Vec<u8>,
}

/// Message 2, sender to receiver: the sender's public key, the receiver's
/// points multiplied by `beta` (in the query's order, or sorted by encoding
/// in cardinality mode), and the sender's own elements as the compressed
/// set of `PRF(4 beta H(b))`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The sender's public key `beta * G` (used by additive blinding).
    pub public_key: [u8; 32],
    /// The number of evaluated points.
    pub count: u32,
    /// `beta` times each query point, 32 bytes each.
    pub evaluated: Vec<u8>,
    /// The sender's evaluated set.
    pub set: CompressedSet,
}

/// Message 3, receiver to sender (modes both and cardinality).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reveal {
    /// Mode both: one bit per value of the sender's set (in its sorted
    /// order), set where the value is shared.
    Matches {
        /// The number of bits.
        count: u32,
        /// The bits, least significant first within each byte.
        bits: Vec<u8>,
    },
    /// Mode cardinality: the size of the intersection.
    Size(u32),
}

const TAG_QUERY: u8 = 0x51;
const TAG_RESPONSE: u8 = 0x52;
const TAG_REVEAL: u8 = 0x53;

impl Query {
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        Writer::new(TAG_QUERY, self.points.len() + 16)
            .u8(self.mode.code())
            .u32(self.count)
            .bytes(&self.points)
            .finish()
    }
    /// Parses the framing (the contents are checked when used).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        let mut r = Reader::new("query", TAG_QUERY, bytes)?;
        let q = Query {
            mode: Mode::from_code(r.u8()?)?,
            count: r.u32()?,
            points: r.bytes()?,
        };
        r.end()?;
        Ok(q)
    }
}

impl Response {
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        Writer::new(
            TAG_RESPONSE,
            self.evaluated.len() + self.set.data.len() + 64,
        )
        .bytes(&self.public_key)
        .u32(self.count)
        .bytes(&self.evaluated)
        .u32(self.set.count)
        .u8(self.set.param_bits)
        .bytes(&self.set.data)
        .finish()
    }
    /// Parses the framing (the contents are checked when used).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        let mut r = Reader::new("response", TAG_RESPONSE, bytes)?;
        let out = Response {
            public_key: r.array32_field("response.public_key")?,
            count: r.u32()?,
            evaluated: r.bytes()?,
            set: CompressedSet {
                count: r.u32()?,
                param_bits: r.u8()?,
                data: r.bytes()?,
            },
        };
        r.end()?;
        Ok(out)
    }
}

impl Reveal {
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Reveal::Matches { count, bits } => Writer::new(TAG_REVEAL, bits.len() + 16)
                .u8(1)
                .u32(*count)
                .bytes(bits)
                .finish(),
            Reveal::Size(n) => Writer::new(TAG_REVEAL, 8).u8(2).u32(*n).finish(),
        }
    }
    /// Parses the framing (the contents are checked when used).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        let mut r = Reader::new("reveal", TAG_REVEAL, bytes)?;
        let out = match r.u8()? {
            1 => Reveal::Matches {
                count: r.u32()?,
                bits: r.bytes()?,
            },
            2 => Reveal::Size(r.u32()?),
            k => {
                return Err(PsiError::Malformed {
                    what: "reveal",
                    detail: format!("unknown kind {k} (1 matches, 2 size)"),
                });
            }
        };
        r.end()?;
        Ok(out)
    }
}

/// What the receiver ends up holding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiverOutput {
    /// Positions (into the receiver's tokens, ascending) of the shared
    /// elements; `None` in cardinality mode.
    pub intersection: Option<Vec<usize>>,
    /// The size of the intersection.
    pub size: usize,
    /// The number of values in the sender's set (its distinct tokens).
    pub sender_size: usize,
}

/// What the sender ends up holding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderOutput {
    /// Positions (into the sender's tokens, ascending) of the shared
    /// elements; only in mode both.
    pub intersection: Option<Vec<usize>>,
    /// The size of the intersection; not in receiver-only mode.
    pub size: Option<usize>,
    /// The receiver's set size.
    pub receiver_size: usize,
}

/// The receiver (party A) between its query and the response.
pub struct Receiver {
    config: PsiConfig,
    blinding: Blinding,
    n: usize,
}

impl Receiver {
    /// Starts a run with a secret from the operating system's random
    /// source.
    pub fn start(config: PsiConfig, tokens: &[Token]) -> Result<(Receiver, Query), PsiError> {
        let blinding = match config.mode {
            Mode::Cardinality => Blinding::Multiplicative(random_scalar()?),
            Mode::Both | Mode::ReceiverOnly => Blinding::Additive(random_seed()?),
        };
        Self::start_with(config, tokens, blinding)
    }

    /// Starts a run with a secret derived from `seed`: for tests and
    /// simulation only (anyone who knows the seed can undo the blinding).
    #[cfg(any(test, feature = "test-seeds"))]
    #[doc(hidden)]
    pub fn start_seeded_for_tests(
        config: PsiConfig,
        tokens: &[Token],
        seed: u64,
    ) -> Result<(Receiver, Query), PsiError> {
        Self::start_seeded(config, tokens, seed)
    }

    /// The seeded start, for the seeded runs of
    /// [`crate::multi`].
    pub(crate) fn start_seeded(
        config: PsiConfig,
        tokens: &[Token],
        seed: u64,
    ) -> Result<(Receiver, Query), PsiError> {
        let blinding = match config.mode {
            Mode::Cardinality => {
                Blinding::Multiplicative(seeded_scalar(seed, b"psi receiver alpha"))
            }
            Mode::Both | Mode::ReceiverOnly => {
                Blinding::Additive(seeded_bytes(seed, b"psi receiver masks"))
            }
        };
        Self::start_with(config, tokens, blinding)
    }

    fn start_with(
        config: PsiConfig,
        tokens: &[Token],
        blinding: Blinding,
    ) -> Result<(Receiver, Query), PsiError> {
        config.check()?;
        check_local("receiver's tokens", tokens.len(), &config)?;
        check_distinct_tokens("receiver's tokens", tokens)?;
        let points = blinding.query(tokens);
        let query = Query {
            mode: config.mode,
            count: tokens.len() as u32,
            points,
        };
        Ok((
            Receiver {
                config,
                blinding,
                n: tokens.len(),
            },
            query,
        ))
    }

    /// Finishes from the sender's response: the receiver's result and, in
    /// modes both and cardinality, the message to send back.
    pub fn finish(self, response: &Response) -> Result<(ReceiverOutput, Option<Reveal>), PsiError> {
        let n = check_packed(
            "response.evaluated",
            &response.evaluated,
            response.count,
            POINT_BYTES,
            self.config.max_elements,
        )?;
        if n != self.n {
            return Err(PsiError::Malformed {
                what: "response.evaluated",
                detail: format!("{n} points answer a query of {}", self.n),
            });
        }
        let p = self.config.param_bits(self.n)?;
        let set = response
            .set
            .decode("response.set", self.config.max_elements, p)?;
        let range = CompressedSet::range(set.len(), p)?;
        let unblinded = self
            .blinding
            .unblind(&response.evaluated, &response.public_key)?;
        let positions: Vec<Option<usize>> = unblinded
            .par_chunks(POINT_BYTES)
            .map(|c| set.binary_search(&prf_value(c, range)).ok())
            .collect();
        let size = positions.iter().flatten().count();
        let sender_size = set.len();
        let (intersection, reveal) = match self.config.mode {
            Mode::Cardinality => (None, Some(Reveal::Size(size as u32))),
            Mode::ReceiverOnly | Mode::Both => {
                let mine: Vec<usize> = positions
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| p.map(|_| i))
                    .collect();
                let reveal = (self.config.mode == Mode::Both).then(|| {
                    let mut bits = vec![0u8; sender_size.div_ceil(8)];
                    for k in positions.iter().flatten() {
                        bits[k / 8] |= 1 << (k % 8);
                    }
                    Reveal::Matches {
                        count: sender_size as u32,
                        bits,
                    }
                });
                (Some(mine), reveal)
            }
        };
        Ok((
            ReceiverOutput {
                intersection,
                size,
                sender_size,
            },
            reveal,
        ))
    }
}

/// The sender (party B) after its response.
pub struct Sender {
    config: PsiConfig,
    /// Sorted `(value, token position)`, one entry per token.
    values: Vec<(u128, usize)>,
    /// The values alone, sorted (what the set codes).
    sorted: Vec<u128>,
    receiver_size: usize,
}

impl Sender {
    /// Answers a query with a secret from the operating system's random
    /// source.
    pub fn respond(
        config: PsiConfig,
        tokens: &[Token],
        query: &Query,
    ) -> Result<(Sender, Response), PsiError> {
        Self::respond_with(config, tokens, query, random_scalar()?)
    }

    /// Answers with a secret derived from `seed`: for tests and simulation
    /// only.
    #[cfg(any(test, feature = "test-seeds"))]
    #[doc(hidden)]
    pub fn respond_seeded_for_tests(
        config: PsiConfig,
        tokens: &[Token],
        query: &Query,
        seed: u64,
    ) -> Result<(Sender, Response), PsiError> {
        Self::respond_seeded(config, tokens, query, seed)
    }

    /// The seeded answer, for the seeded runs of
    /// [`crate::multi`].
    pub(crate) fn respond_seeded(
        config: PsiConfig,
        tokens: &[Token],
        query: &Query,
        seed: u64,
    ) -> Result<(Sender, Response), PsiError> {
        Self::respond_with(
            config,
            tokens,
            query,
            seeded_scalar(seed, b"psi sender beta"),
        )
    }

    fn respond_with(
        config: PsiConfig,
        tokens: &[Token],
        query: &Query,
        beta: Scalar,
    ) -> Result<(Sender, Response), PsiError> {
        config.check()?;
        if query.mode != config.mode {
            return Err(PsiError::ModeMismatch {
                ours: config.mode.to_string(),
                theirs: query.mode.to_string(),
            });
        }
        check_local("sender's tokens", tokens.len(), &config)?;
        check_distinct_tokens("sender's tokens", tokens)?;
        let na = check_packed(
            "query.points",
            &query.points,
            query.count,
            POINT_BYTES,
            config.max_elements,
        )?;
        let mut evaluated = blind_points("query.points", &query.points, &beta)?;
        if config.mode == Mode::Cardinality {
            sort_packed::<POINT_BYTES>(&mut evaluated);
        }
        let p = config.param_bits(na)?;
        // compress(4 beta H(b)), the encoding the receiver ends with.
        let own = tokens_times_two(tokens, &(beta + beta));
        let range = CompressedSet::range(tokens.len(), p)?;
        let mut values: Vec<(u128, usize)> = own
            .par_chunks(POINT_BYTES)
            .enumerate()
            .map(|(i, c)| (prf_value(c, range), i))
            .collect();
        values.par_sort_unstable();
        // Two tokens may (with chance below n / 2^p) share a value; the set
        // then holds the value twice and a match maps back to both tokens.
        let sorted: Vec<u128> = values.iter().map(|v| v.0).collect();
        let set = CompressedSet::encode(&sorted, p);
        Ok((
            Sender {
                config,
                values,
                sorted,
                receiver_size: na,
            },
            Response {
                public_key: (RISTRETTO_BASEPOINT_TABLE * &beta).compress().to_bytes(),
                count: na as u32,
                evaluated,
                set,
            },
        ))
    }

    /// Finishes: in mode both and cardinality from the receiver's reveal,
    /// in receiver-only mode with `None`.
    pub fn finish(self, reveal: Option<&Reveal>) -> Result<SenderOutput, PsiError> {
        let cap = self.receiver_size.min(self.values.len());
        match (self.config.mode, reveal) {
            (Mode::ReceiverOnly, None) => Ok(SenderOutput {
                intersection: None,
                size: None,
                receiver_size: self.receiver_size,
            }),
            (Mode::Cardinality, Some(Reveal::Size(n))) => {
                let n = *n as usize;
                if n > cap {
                    return Err(PsiError::Malformed {
                        what: "reveal.size",
                        detail: format!("{n} is more than the smaller set's {cap} elements"),
                    });
                }
                Ok(SenderOutput {
                    intersection: None,
                    size: Some(n),
                    receiver_size: self.receiver_size,
                })
            }
            (Mode::Both, Some(Reveal::Matches { count, bits })) => {
                let d = self.sorted.len();
                if *count as usize != d {
                    return Err(PsiError::Malformed {
                        what: "reveal.matches",
                        detail: format!("{count} bits for a set of {d} values"),
                    });
                }
                if bits.len() != d.div_ceil(8) {
                    return Err(PsiError::WrongLength {
                        what: "reveal.matches",
                        expected: d.div_ceil(8),
                        got: bits.len(),
                    });
                }
                if !d.is_multiple_of(8) && bits.last().is_some_and(|b| b >> (d % 8) != 0) {
                    return Err(PsiError::Malformed {
                        what: "reveal.matches",
                        detail: "bits set past the end of the set".into(),
                    });
                }
                let mut mine = Vec::new();
                for (k, v) in self.sorted.iter().enumerate() {
                    if bits[k / 8] >> (k % 8) & 1 == 1 {
                        let start = self.values.partition_point(|e| e.0 < *v);
                        mine.extend(
                            self.values[start..]
                                .iter()
                                .take_while(|e| e.0 == *v)
                                .map(|e| e.1),
                        );
                    }
                }
                if mine.len() > self.receiver_size {
                    return Err(PsiError::Malformed {
                        what: "reveal.matches",
                        detail: format!(
                            "{} matches for a receiver of {} elements",
                            mine.len(),
                            self.receiver_size
                        ),
                    });
                }
                mine.sort_unstable();
                mine.dedup();
                let size = mine.len();
                Ok(SenderOutput {
                    intersection: Some(mine),
                    size: Some(size),
                    receiver_size: self.receiver_size,
                })
            }
            (mode, got) => Err(PsiError::Malformed {
                what: "reveal",
                detail: format!(
                    "mode {mode} expects {}, got {}",
                    match mode {
                        Mode::ReceiverOnly => "no reveal",
                        Mode::Both => "a matches reveal",
                        Mode::Cardinality => "a size reveal",
                    },
                    match got {
                        None => "none",
                        Some(Reveal::Matches { .. }) => "a matches reveal",
                        Some(Reveal::Size(_)) => "a size reveal",
                    }
                ),
            }),
        }
    }
}
