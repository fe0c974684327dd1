//! Intersection-sum, in the shape of Google's Private Join and Compute: the
//! receiver (party A) holds identifiers, the sender (party B) identifiers
//! with a bounded non-negative value each; A learns the size of the
//! intersection and the sum of B's values over it, B only A's set size.
//!
//! # Flow
//!
//! 1. A → B, [`SumQuery`]: `alpha * H(a)` for A's elements, sorted by
//!    encoding.
//! 2. B → A, [`SumResponse`]: B's ElGamal public key `Y`; the points of 1
//!    raised to `beta`, sorted by encoding (so A cannot tell which of its
//!    elements each one came from); and for each of B's elements the pair
//!    `(beta * H(b), Enc_Y(v))`, sorted by the point's encoding.
//! 3. A raises B's points to `alpha`, finds the pairs whose
//!    `alpha * beta * H(b)` is among the values of 2, adds their
//!    ciphertexts, re-randomises the total with a fresh `Enc_Y(0)`, and
//!    sends its first component `c1` alone, [`DecryptRequest`].
//! 4. B → A, [`DecryptShare`]: `x * c1`.
//! 5. A computes `sum * G = c2 - x c1` and the sum by baby-step giant-step
//!    within `count * max_value`; the mean over shared identifiers is
//!    `sum / count`.
//!
//! # The homomorphic tool
//!
//! Exponential ElGamal on ristretto255: the same group and library as the
//! PSI, IND-CPA under DDH (the assumption the PSI already rests on), 64-byte
//! ciphertexts, additions are point additions. Its cost is the bounded
//! decryption: [`MAX_SUM_BITS`] caps `max_elements * max_value` at 2^40, a
//! search of at most 2^21 group operations. Paillier (as in Private Join
//! and Compute) would decrypt any sum but needs a 3072-bit modulus, bignum
//! arithmetic and a new dependency for no gain at these bounds.
//!
//! # What each party learns (semi-honest parties)
//!
//! - A: B's set size, the intersection size and the sum. The values of 2
//!   come sorted, so linking one to an element of A's means deciding DDH;
//!   B's points and ciphertexts are pseudorandom and IND-CPA to A. A learns
//!   which of B's (shuffled) pairs matched, which is the count again.
//! - B: A's set size. `c1` is uniformly random (re-randomised), and B never
//!   learns which of the doubly-blinded points it computed and sent (sorted,
//!   out of its reach once sent) match its entries: that needs `alpha`, so
//!   it learns neither the intersection nor its size nor the sum.
//! - The functionality itself gives single values away: a query of one
//!   identifier returns B's value for it when it is shared, and two runs
//!   whose queries differ in one identifier give that identifier's value by
//!   difference. [`SumConfig::min_receiver_elements`] makes both parties
//!   refuse a smaller query (B checks the count it receives); it cannot stop
//!   differencing across runs, which only a limit on runs (or noise on the
//!   sum) does.
//! - A checks what it receives against its own query: as many
//!   doubly-blinded points as it sent, no identity point and no point
//!   twice in either list, and every entry's ciphertext decoded before any
//!   is matched (so whether A answers does not depend on the intersection).
//!   A dishonest B can still put guessed identifiers or wrong values in its
//!   own entries, as any intersection-sum allows.
//! - Against a malicious A this is not enough: A could send the `c1` of one
//!   ciphertext and learn one value. B answers one request per run (the
//!   state is consumed); stronger guarantees need proofs, not provided.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::Identity;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

use crate::elgamal::{bounded_log, encrypt_all};
use crate::group::{
    POINT_BYTES, blind_points, blind_tokens, check_distinct_points, check_distinct_tokens,
    check_packed, decode, random_scalar, random_seed, sort_packed, validate_points,
};
#[cfg(any(test, feature = "test-seeds"))]
use crate::group::{seeded_bytes, seeded_scalar};
use crate::wire::{Reader, Writer};
use crate::{PsiError, Token};

/// The largest `max_elements * max_value`, as a power of two.
pub const MAX_SUM_BITS: u32 = 40;

/// Bytes of one of B's entries: a point and a ciphertext.
pub const ENTRY_BYTES: usize = 3 * POINT_BYTES;

/// What both parties agree before a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumConfig {
    /// The most elements either side may hold.
    pub max_elements: usize,
    /// The largest value of one identifier (after adding repeated rows).
    pub max_value: u64,
    /// The fewest elements the receiver may query with (0: no minimum).
    /// A query of one element, or two queries that differ in one, reveals
    /// one of the sender's values; a minimum makes that cost a guess of
    /// that many identifiers. Both sides refuse a smaller set.
    #[serde(default)]
    pub min_receiver_elements: usize,
}

impl SumConfig {
    fn check_receiver_size(&self, what: &'static str, n: usize) -> Result<(), PsiError> {
        if n < self.min_receiver_elements {
            return Err(PsiError::TooFewElements {
                what,
                got: n,
                min: self.min_receiver_elements,
            });
        }
        Ok(())
    }

    fn check(&self) -> Result<(), PsiError> {
        let product = (self.max_elements as u128) * u128::from(self.max_value);
        if self.max_elements == 0 || self.max_elements > u32::MAX as usize {
            return Err(PsiError::Config(format!(
                "max_elements {} must lie in 1..=2^32-1",
                self.max_elements
            )));
        }
        if self.min_receiver_elements > self.max_elements {
            return Err(PsiError::Config(format!(
                "min_receiver_elements {} exceeds max_elements {}",
                self.min_receiver_elements, self.max_elements
            )));
        }
        if product > 1u128 << MAX_SUM_BITS {
            return Err(PsiError::Config(format!(
                "max_elements * max_value = {product} exceeds 2^{MAX_SUM_BITS}: lower the value bound (scale values down) or split the run"
            )));
        }
        Ok(())
    }
}

/// Message 1, A to B.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumQuery {
    /// The number of points.
    pub count: u32,
    /// `alpha * H(a)`, 32 bytes each, sorted.
    pub points: Vec<u8>,
}

/// Message 2, B to A.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumResponse {
    /// B's ElGamal public key.
    pub public_key: [u8; 32],
    /// The number of doubly-blinded points.
    pub doubly_count: u32,
    /// `beta * alpha * H(a)`, 32 bytes each, sorted.
    pub doubly: Vec<u8>,
    /// The number of B's entries.
    pub entry_count: u32,
    /// `beta * H(b) || c1 || c2`, 96 bytes each, sorted.
    pub entries: Vec<u8>,
}

/// Message 3, A to B: the first component of the re-randomised total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecryptRequest {
    /// `c1`.
    pub c1: [u8; 32],
}

/// Message 4, B to A.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecryptShare {
    /// `x * c1`.
    pub share: [u8; 32],
}

const TAG_QUERY: u8 = 0x61;
const TAG_RESPONSE: u8 = 0x62;
const TAG_REQUEST: u8 = 0x63;
const TAG_SHARE: u8 = 0x64;

impl SumQuery {
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        Writer::new(TAG_QUERY, self.points.len() + 16)
            .u32(self.count)
            .bytes(&self.points)
            .finish()
    }
    /// Parses the framing (the contents are checked when used).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        let mut r = Reader::new("sum query", TAG_QUERY, bytes)?;
        let out = SumQuery {
            count: r.u32()?,
            points: r.bytes()?,
        };
        r.end()?;
        Ok(out)
    }
}

impl SumResponse {
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        Writer::new(TAG_RESPONSE, self.doubly.len() + self.entries.len() + 64)
            .bytes(&self.public_key)
            .u32(self.doubly_count)
            .bytes(&self.doubly)
            .u32(self.entry_count)
            .bytes(&self.entries)
            .finish()
    }
    /// Parses the framing (the contents are checked when used).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        let mut r = Reader::new("sum response", TAG_RESPONSE, bytes)?;
        let key = r.bytes()?;
        let public_key: [u8; 32] =
            key.as_slice()
                .try_into()
                .map_err(|_| PsiError::WrongLength {
                    what: "sum response.public_key",
                    expected: 32,
                    got: key.len(),
                })?;
        let out = SumResponse {
            public_key,
            doubly_count: r.u32()?,
            doubly: r.bytes()?,
            entry_count: r.u32()?,
            entries: r.bytes()?,
        };
        r.end()?;
        Ok(out)
    }
}

impl DecryptRequest {
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        Writer::new(TAG_REQUEST, 32).bytes(&self.c1).finish()
    }
    /// Parses the framing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        let mut r = Reader::new("decrypt request", TAG_REQUEST, bytes)?;
        let c1 = r.array32_field("decrypt request.c1")?;
        r.end()?;
        Ok(DecryptRequest { c1 })
    }
}

impl DecryptShare {
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        Writer::new(TAG_SHARE, 32).bytes(&self.share).finish()
    }
    /// Parses the framing.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        let mut r = Reader::new("decrypt share", TAG_SHARE, bytes)?;
        let share = r.array32_field("decrypt share.share")?;
        r.end()?;
        Ok(DecryptShare { share })
    }
}

/// What A ends up holding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SumOutput {
    /// The size of the intersection.
    pub intersection_size: usize,
    /// The sum of B's values over the intersection.
    pub sum: u64,
    /// B's set size.
    pub sender_size: usize,
}

impl SumOutput {
    /// The mean of B's values over the shared identifiers; `None` when none
    /// are shared.
    pub fn mean(&self) -> Option<f64> {
        (self.intersection_size > 0).then(|| self.sum as f64 / self.intersection_size as f64)
    }
}

/// A between its query and B's response.
pub struct SumReceiver {
    config: SumConfig,
    n: usize,
    alpha: Scalar,
    rerandomise: Scalar,
}

/// A between its decryption request and B's share.
pub struct SumAwaiting {
    config: SumConfig,
    c2: RistrettoPoint,
    count: usize,
    sender_size: usize,
}

impl SumReceiver {
    /// Starts a run with secrets from the operating system's random source.
    pub fn start(config: SumConfig, tokens: &[Token]) -> Result<(SumReceiver, SumQuery), PsiError> {
        Self::start_with(config, tokens, random_scalar()?, random_scalar()?)
    }

    /// Starts with secrets derived from `seed`: for tests and simulation
    /// only.
    #[cfg(any(test, feature = "test-seeds"))]
    #[doc(hidden)]
    pub fn start_seeded_for_tests(
        config: SumConfig,
        tokens: &[Token],
        seed: u64,
    ) -> Result<(SumReceiver, SumQuery), PsiError> {
        Self::start_with(
            config,
            tokens,
            seeded_scalar(seed, b"sum receiver alpha"),
            seeded_scalar(seed, b"sum receiver rerandomise"),
        )
    }

    fn start_with(
        config: SumConfig,
        tokens: &[Token],
        alpha: Scalar,
        rerandomise: Scalar,
    ) -> Result<(SumReceiver, SumQuery), PsiError> {
        config.check()?;
        if tokens.len() > config.max_elements {
            return Err(PsiError::TooManyElements {
                what: "receiver's tokens",
                got: tokens.len(),
                bound: config.max_elements,
            });
        }
        config.check_receiver_size("receiver's tokens", tokens.len())?;
        check_distinct_tokens("receiver's tokens", tokens)?;
        let mut points = blind_tokens(tokens, &alpha);
        sort_packed::<POINT_BYTES>(&mut points);
        Ok((
            SumReceiver {
                config,
                n: tokens.len(),
                alpha,
                rerandomise,
            },
            SumQuery {
                count: tokens.len() as u32,
                points,
            },
        ))
    }

    /// Matches B's entries, adds the matching ciphertexts and asks B for
    /// the decryption share of the re-randomised total.
    pub fn combine(
        self,
        response: &SumResponse,
    ) -> Result<(SumAwaiting, DecryptRequest), PsiError> {
        let bound = self.config.max_elements;
        let public = decode("sum response.public_key", &response.public_key, 0)?;
        if public == RistrettoPoint::identity() {
            return Err(PsiError::Malformed {
                what: "sum response.public_key",
                detail: "the identity is not a public key".into(),
            });
        }
        let n = check_packed(
            "sum response.doubly",
            &response.doubly,
            response.doubly_count,
            POINT_BYTES,
            bound,
        )?;
        if n != self.n {
            return Err(PsiError::Malformed {
                what: "sum response.doubly",
                detail: format!("{n} points answer a query of {}", self.n),
            });
        }
        validate_points("sum response.doubly", &response.doubly)?;
        check_distinct_points::<POINT_BYTES>("sum response.doubly", &response.doubly)?;
        let nb = check_packed(
            "sum response.entries",
            &response.entries,
            response.entry_count,
            ENTRY_BYTES,
            bound,
        )?;
        // Every entry is decoded before any is matched: a refusal must not
        // depend on which entries match, or it would tell the sender.
        let ciphertexts = response
            .entries
            .par_chunks(ENTRY_BYTES)
            .enumerate()
            .map(|(j, e)| {
                let c1 = decode("sum response.entries (c1)", &e[32..64], j)?;
                let c2 = decode("sum response.entries (c2)", &e[64..96], j)?;
                Ok((c1, c2))
            })
            .collect::<Result<Vec<_>, PsiError>>()?;
        let b_points: Vec<u8> = response
            .entries
            .chunks_exact(ENTRY_BYTES)
            .flat_map(|e| e[..POINT_BYTES].iter().copied())
            .collect();
        let raised = blind_points("sum response.entries (point)", &b_points, &self.alpha)?;
        check_distinct_points::<ENTRY_BYTES>("sum response.entries", &response.entries)?;
        let doubly: HashSet<&[u8]> = response.doubly.chunks_exact(POINT_BYTES).collect();
        let matched: Vec<usize> = raised
            .chunks_exact(POINT_BYTES)
            .enumerate()
            .filter(|(_, c)| doubly.contains(c))
            .map(|(j, _)| j)
            .collect();
        let sums = matched.par_iter().map(|&j| ciphertexts[j]).reduce(
            || (RistrettoPoint::identity(), RistrettoPoint::identity()),
            |a, b| (a.0 + b.0, a.1 + b.1),
        );
        let c1 = sums.0 + RISTRETTO_BASEPOINT_TABLE * &self.rerandomise;
        let c2 = sums.1 + public * self.rerandomise;
        Ok((
            SumAwaiting {
                config: self.config,
                c2,
                count: matched.len(),
                sender_size: nb,
            },
            DecryptRequest {
                c1: c1.compress().to_bytes(),
            },
        ))
    }
}

impl SumAwaiting {
    /// Decrypts the total with B's share.
    pub fn finish(self, share: &DecryptShare) -> Result<SumOutput, PsiError> {
        let d = decode("decrypt share", &share.share, 0)?;
        let bound = (self.count as u64).saturating_mul(self.config.max_value);
        let sum = bounded_log(&(self.c2 - d), bound).ok_or_else(|| PsiError::Malformed {
            what: "decrypt share",
            detail: format!("the decrypted total is not a sum in [0, {bound}]: the share or the ciphertexts are wrong"),
        })?;
        Ok(SumOutput {
            intersection_size: self.count,
            sum,
            sender_size: self.sender_size,
        })
    }
}

/// B after its response.
pub struct SumSender {
    secret: Scalar,
    receiver_size: usize,
}

impl SumSender {
    /// Answers A's query with secrets from the operating system's random
    /// source; `values[i]` belongs to `tokens[i]`.
    pub fn respond(
        config: SumConfig,
        tokens: &[Token],
        values: &[u64],
        query: &SumQuery,
    ) -> Result<(SumSender, SumResponse), PsiError> {
        Self::respond_with(
            config,
            tokens,
            values,
            query,
            random_scalar()?,
            random_scalar()?,
            random_seed()?,
        )
    }

    /// Answers with secrets derived from `seed`: for tests and simulation
    /// only.
    #[cfg(any(test, feature = "test-seeds"))]
    #[doc(hidden)]
    pub fn respond_seeded_for_tests(
        config: SumConfig,
        tokens: &[Token],
        values: &[u64],
        query: &SumQuery,
        seed: u64,
    ) -> Result<(SumSender, SumResponse), PsiError> {
        Self::respond_with(
            config,
            tokens,
            values,
            query,
            seeded_scalar(seed, b"sum sender beta"),
            seeded_scalar(seed, b"sum sender elgamal"),
            seeded_bytes(seed, b"sum sender nonces"),
        )
    }

    fn respond_with(
        config: SumConfig,
        tokens: &[Token],
        values: &[u64],
        query: &SumQuery,
        beta: Scalar,
        secret: Scalar,
        nonce_seed: [u8; 32],
    ) -> Result<(SumSender, SumResponse), PsiError> {
        config.check()?;
        if tokens.len() > config.max_elements {
            return Err(PsiError::TooManyElements {
                what: "sender's tokens",
                got: tokens.len(),
                bound: config.max_elements,
            });
        }
        check_distinct_tokens("sender's tokens", tokens)?;
        if values.len() != tokens.len() {
            return Err(PsiError::Config(format!(
                "{} values for {} identifiers",
                values.len(),
                tokens.len()
            )));
        }
        if let Some((index, &value)) = values
            .iter()
            .enumerate()
            .find(|(_, v)| **v > config.max_value)
        {
            return Err(PsiError::ValueTooLarge {
                index,
                value,
                bound: config.max_value,
            });
        }
        let na = check_packed(
            "sum query.points",
            &query.points,
            query.count,
            POINT_BYTES,
            config.max_elements,
        )?;
        config.check_receiver_size("sum query.points", na)?;
        let mut doubly = blind_points("sum query.points", &query.points, &beta)?;
        sort_packed::<POINT_BYTES>(&mut doubly);
        let public = RISTRETTO_BASEPOINT_TABLE * &secret;
        let points = blind_tokens(tokens, &beta);
        let ciphertexts = encrypt_all(&public, values, &nonce_seed);
        let mut entries = Vec::with_capacity(tokens.len() * ENTRY_BYTES);
        for (p, c) in points.chunks_exact(POINT_BYTES).zip(&ciphertexts) {
            entries.extend_from_slice(p);
            entries.extend_from_slice(c);
        }
        sort_packed::<ENTRY_BYTES>(&mut entries);
        Ok((
            SumSender {
                secret,
                receiver_size: na,
            },
            SumResponse {
                public_key: public.compress().to_bytes(),
                doubly_count: na as u32,
                doubly,
                entry_count: tokens.len() as u32,
                entries,
            },
        ))
    }

    /// A's set size: all B learns.
    pub fn receiver_size(&self) -> usize {
        self.receiver_size
    }

    /// Answers A's one decryption request.
    pub fn decrypt(self, request: &DecryptRequest) -> Result<DecryptShare, PsiError> {
        let c1 = decode("decrypt request.c1", &request.c1, 0)?;
        Ok(DecryptShare {
            share: (c1 * self.secret).compress().to_bytes(),
        })
    }
}
