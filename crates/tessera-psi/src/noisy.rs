//! Noisy membership: a receiving site R learns, for each of its own
//! identifiers, whether the sending site S holds it *plus Gaussian noise*
//! that S draws, never the exact bit. Summed over the other sites this is a
//! cross-silo feature (for example "at how many other sites is this patient
//! known") that training may use under differential privacy.
//!
//! # Flow
//!
//! 1. R → S, [`MembershipQuery`]: `alpha H(x)` for each of R's tokens,
//!    padded with uniformly random points to [`NoisyConfig::padded_len`]
//!    (the next power of two of R's count, at least `min_query`), in an
//!    order shuffled with R's secret.
//! 2. S → R, [`MembershipOffer`]: `beta H(y)` for each of S's tokens,
//!    sorted by encoding; S keeps `beta` times each query point, by
//!    position.
//! 3. R → S, [`Reblinded`]: `alpha` times each offered point, sorted by
//!    encoding (a shuffle S cannot undo: linking `alpha beta H(y)` to
//!    `beta H(y)` is deciding DDH).
//! 4. S compares: query position `i` matches when `beta alpha H(x_i)` is
//!    among the reblinded points. S → R, [`NoisyAnswers`]: for each query
//!    position, `1{match} + N(0, sigma^2)`, the noise from S's own secret.
//! 5. R reads the answers at the positions of its real tokens.
//!
//! # What each party learns (semi-honest parties)
//!
//! - S: the number of query points (R's count up to a factor of two, or
//!   `min_query`) and the intersection size `|R ∩ S|` (the number of
//!   positions that match): the documented leak. Not *which* of R's
//!   identifiers match (positions are shuffled by R and real points are
//!   indistinguishable from dummies under DDH), and not which of its own
//!   (the reblinded points come sorted).
//! - R: `|S|` and one noisy value per query position. S's offered points
//!   are pseudorandom to R; R cannot evaluate `beta` on a guess, so it
//!   learns nothing about S's set beyond the noisy answers.
//! - Differential privacy for S's patients: S's tokens are distinct (a
//!   patient is one identifier, however many rows it has), R's query points
//!   are distinct (S refuses repeats), so adding or removing one of S's
//!   patients changes at most one answer by one: the Gaussian mechanism
//!   with L2 sensitivity 1, noise multiplier `sigma`, one release. The
//!   caller charges it to S's ledger as
//!   `DpEvent { sampling_rate: 1, noise_multiplier: sigma, steps: 1 }`.
//!   A sum of several sites' answers is post-processing of each site's own
//!   release.
//! - A relaying coordinator sees pseudorandom points and the noisy
//!   answers, the same as R learns at most.
//!
//! # Beyond semi-honest
//!
//! A malicious R can put guessed identifiers in its query (any PSI allows
//! it; here each guess gets only a noisy answer). It can also reblind
//! dishonestly: S checks that the reblinded list has exactly `|S|`
//! distinct valid points, but cannot check that they are `alpha` times its
//! own, so R could spend entries on one of S's patients (under different
//! blindings) and learn about it from several answers, at the cost of the
//! entries it drops; one patient could then count up to `|S|` times. A
//! proof of a correct shuffle would close this; none is provided. A
//! malicious S can answer anything (its answers are its data), and it can
//! choose its set: offering only guessed identifiers, the exact match count
//! tells it whether R holds them. The intersection size is the one thing
//! here *not* under differential privacy (it is a count over R's patients,
//! exact, at S); where that matters, a fix that keeps the shape: S also
//! sends `Y = beta G`, and R, which knows the discrete logarithm `r` of each
//! dummy point, adds `r Y` (a point S cannot tell from a real match) to the
//! reblinded list for a number of dummies drawn from a truncated discrete
//! Laplace distribution, so that S sees `|R ∩ S|` plus DP noise (R drops
//! those answers). Not implemented. Every computation of the feature is a
//! new release of S's data: R averaging answers over runs is what the
//! ledger charges for, so a deployment must charge each run (or keep the
//! answers). The noise
//! is Box–Muller in `f64` from a SHA-256 counter stream keyed with S's
//! secret; like `tessera-privacy`'s sampler it does not claim to close the
//! floating-point side channel (Mironov 2012).

use std::collections::HashSet;

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_TABLE;
use curve25519_dalek::scalar::Scalar;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};

use crate::group::{
    POINT_BYTES, blind_points, blind_tokens, check_distinct_points, check_distinct_tokens,
    check_packed, random_seed, sort_packed,
};
use crate::wire::{Reader, Writer};
use crate::{PsiError, Token};

const TAG_QUERY: u8 = 0x71;
const TAG_OFFER: u8 = 0x72;
const TAG_REBLINDED: u8 = 0x73;
const TAG_ANSWERS: u8 = 0x74;

const SECRET_DOMAIN: &[u8] = b"tessera-psi/noisy-membership/v1\0";

/// What both sites agree before a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoisyConfig {
    /// The most elements either side may hold (and the longest query).
    pub max_elements: usize,
    /// The fewest query points: R pads to at least this many, S refuses
    /// fewer (so a small site's count is hidden below it).
    pub min_query: usize,
    /// The standard deviation of the noise on each answer (the noise
    /// multiplier: the sensitivity is 1). Zero only in tests of exactness.
    pub sigma: f64,
}

impl NoisyConfig {
    /// At most 2^24 elements a side, queries of at least 64 points.
    pub fn new(sigma: f64) -> Self {
        NoisyConfig {
            max_elements: 1 << 24,
            min_query: 64,
            sigma,
        }
    }

    fn check(&self) -> Result<(), PsiError> {
        if self.max_elements == 0 || self.max_elements > u32::MAX as usize {
            return Err(PsiError::Config(format!(
                "max_elements {} must lie in 1..=2^32-1",
                self.max_elements
            )));
        }
        if self.min_query == 0 || self.min_query > self.max_elements {
            return Err(PsiError::Config(format!(
                "min_query {} must lie in 1..=max_elements ({})",
                self.min_query, self.max_elements
            )));
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return Err(PsiError::Config(format!(
                "sigma {} must be finite and non-negative",
                self.sigma
            )));
        }
        Ok(())
    }

    /// The number of query points for `n` real tokens: the next power of
    /// two of `max(n, min_query)`, capped at `max_elements` (never below `n`).
    pub fn padded_len(&self, n: usize) -> usize {
        n.max(self.min_query)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
            .min(self.max_elements)
            .max(n)
    }
}

/// Message 1, R to S: blinded tokens and dummies, shuffled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipQuery {
    /// The number of points.
    pub count: u32,
    /// The packed 32-byte points.
    pub points: Vec<u8>,
}

/// Message 2, S to R: S's blinded tokens, sorted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipOffer {
    /// The number of points (`|S|`).
    pub count: u32,
    /// The packed 32-byte points.
    pub points: Vec<u8>,
}

/// Message 3, R to S: the offer's points reblinded by R, sorted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reblinded {
    /// The number of points.
    pub count: u32,
    /// The packed 32-byte points.
    pub points: Vec<u8>,
}

/// Message 4, S to R: one noisy membership value per query position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoisyAnswers {
    /// `1{match} + N(0, sigma^2)` per query position.
    pub values: Vec<f64>,
}

fn points_to_bytes(tag: u8, count: u32, points: &[u8]) -> Vec<u8> {
    Writer::new(tag, points.len() + 16)
        .u32(count)
        .bytes(points)
        .finish()
}

fn points_from_bytes(
    what: &'static str,
    tag: u8,
    bytes: &[u8],
) -> Result<(u32, Vec<u8>), PsiError> {
    let mut r = Reader::new(what, tag, bytes)?;
    let out = (r.u32()?, r.bytes()?);
    r.end()?;
    Ok(out)
}

macro_rules! point_message {
    ($ty:ident, $tag:expr, $what:expr) => {
        impl $ty {
            /// The message's bytes.
            pub fn to_bytes(&self) -> Vec<u8> {
                points_to_bytes($tag, self.count, &self.points)
            }
            /// Parses the framing (the contents are checked when used).
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
                let (count, points) = points_from_bytes($what, $tag, bytes)?;
                Ok($ty { count, points })
            }
        }
    };
}

point_message!(MembershipQuery, TAG_QUERY, "membership query");
point_message!(MembershipOffer, TAG_OFFER, "membership offer");
point_message!(Reblinded, TAG_REBLINDED, "reblinded offer");

impl NoisyAnswers {
    /// The message's bytes (each value as 8 little-endian bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let packed: Vec<u8> = self.values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let count = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        Writer::new(TAG_ANSWERS, packed.len() + 16)
            .u32(count)
            .bytes(&packed)
            .finish()
    }
    /// Parses the framing and the values (each must be finite).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PsiError> {
        let what = "noisy answers";
        let mut r = Reader::new(what, TAG_ANSWERS, bytes)?;
        let count = r.u32()? as usize;
        let packed = r.bytes()?;
        r.end()?;
        let expected = count.checked_mul(8).ok_or(PsiError::Malformed {
            what,
            detail: format!("{count} values overflow"),
        })?;
        if packed.len() != expected {
            return Err(PsiError::WrongLength {
                what,
                expected,
                got: packed.len(),
            });
        }
        let values = packed
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                f64::from_le_bytes(b)
            })
            .collect();
        Ok(NoisyAnswers { values })
    }
}

/// A stream of secret values derived from one 32-byte secret (SHA-256 in
/// counter mode, domain-separated by `label`).
struct Stream<'a> {
    secret: &'a [u8; 32],
    label: &'static [u8],
    counter: u64,
}

impl<'a> Stream<'a> {
    fn new(secret: &'a [u8; 32], label: &'static [u8]) -> Self {
        Stream {
            secret,
            label,
            counter: 0,
        }
    }
    fn block(&mut self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(SECRET_DOMAIN);
        h.update(self.label);
        h.update(self.secret);
        h.update(self.counter.to_le_bytes());
        self.counter += 1;
        h.finalize().into()
    }
    fn u64(&mut self) -> u64 {
        let b = self.block();
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[..8]);
        u64::from_le_bytes(x)
    }
    /// Uniform in `[0, n)` (rejection sampling, no modulo bias).
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % n.max(1));
        loop {
            let x = self.u64();
            if x < zone {
                return x % n.max(1);
            }
        }
    }
    fn scalar(&mut self) -> Scalar {
        let mut wide = [0u8; 64];
        wide[..32].copy_from_slice(&self.block());
        wide[32..].copy_from_slice(&self.block());
        let s = Scalar::from_bytes_mod_order_wide(&wide);
        if s == Scalar::ZERO { Scalar::ONE } else { s }
    }
    /// Uniform in `(0, 1]`.
    fn uniform_open(&mut self) -> f64 {
        ((self.u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Standard normal samples (Box–Muller) from a secret.
pub(crate) fn normals(secret: &[u8; 32], n: usize) -> Vec<f64> {
    let mut s = Stream::new(secret, b"noise");
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let radius = (-2.0 * s.uniform_open().ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * s.uniform_open();
        out.push(radius * angle.cos());
        out.push(radius * angle.sin());
    }
    out.truncate(n);
    out
}

fn check_local(what: &'static str, n: usize, config: &NoisyConfig) -> Result<(), PsiError> {
    if n > config.max_elements {
        return Err(PsiError::TooManyElements {
            what,
            got: n,
            bound: config.max_elements,
        });
    }
    Ok(())
}

/// The receiving site R between its query and the answers.
pub struct NoisyReceiver {
    config: NoisyConfig,
    alpha: Scalar,
    /// The query position of each of R's tokens, in token order.
    positions: Vec<usize>,
    query_len: usize,
}

impl std::fmt::Debug for NoisyReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NoisyReceiver({} tokens in {} points)",
            self.positions.len(),
            self.query_len
        )
    }
}

impl NoisyReceiver {
    /// Starts a run with a secret from the operating system's random source.
    pub fn start(
        config: NoisyConfig,
        tokens: &[Token],
    ) -> Result<(NoisyReceiver, MembershipQuery), PsiError> {
        Self::start_keyed(config, tokens, &random_seed()?)
    }

    /// Starts a run with a secret derived from `seed`: for tests and
    /// simulation only (anyone who knows the seed can undo the blinding).
    #[cfg(any(test, feature = "test-seeds"))]
    #[doc(hidden)]
    pub fn start_seeded_for_tests(
        config: NoisyConfig,
        tokens: &[Token],
        seed: u64,
    ) -> Result<(NoisyReceiver, MembershipQuery), PsiError> {
        Self::start_keyed(
            config,
            tokens,
            &crate::group::seeded_bytes(seed, b"noisy membership receiver"),
        )
    }

    /// Starts a run with `secret` (the blinding, the dummies and the
    /// shuffle all derive from it): a simulation derives it from the run
    /// seed, an experiment and not a release; a deployed site uses
    /// [`NoisyReceiver::start`].
    pub fn start_keyed(
        config: NoisyConfig,
        tokens: &[Token],
        secret: &[u8; 32],
    ) -> Result<(NoisyReceiver, MembershipQuery), PsiError> {
        config.check()?;
        check_local("receiver tokens", tokens.len(), &config)?;
        check_distinct_tokens("receiver tokens", tokens)?;
        let alpha = Stream::new(secret, b"alpha").scalar();
        let len = config.padded_len(tokens.len());
        // Fisher–Yates over query positions: slot `order[k]` holds item `k`
        // (items below `tokens.len()` are real, the rest dummies).
        let mut order: Vec<usize> = (0..len).collect();
        let mut shuffle = Stream::new(secret, b"shuffle");
        for i in (1..len).rev() {
            let j = shuffle.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let real = blind_tokens(tokens, &alpha);
        let mut dummies = Stream::new(secret, b"dummies");
        let mut points = vec![0u8; len * POINT_BYTES];
        for (item, &slot) in order.iter().enumerate() {
            let out = &mut points[slot * POINT_BYTES..(slot + 1) * POINT_BYTES];
            if item < tokens.len() {
                out.copy_from_slice(&real[item * POINT_BYTES..(item + 1) * POINT_BYTES]);
            } else {
                let p = RISTRETTO_BASEPOINT_TABLE * &dummies.scalar();
                out.copy_from_slice(p.compress().as_bytes());
            }
        }
        let positions = order[..tokens.len()].to_vec();
        let count = u32::try_from(len).map_err(|_| PsiError::TooManyElements {
            what: "membership query",
            got: len,
            bound: config.max_elements,
        })?;
        Ok((
            NoisyReceiver {
                config,
                alpha,
                positions,
                query_len: len,
            },
            MembershipQuery { count, points },
        ))
    }

    /// Message 3: the offer's points times `alpha`, sorted by encoding.
    /// Refuses an offer over the bound, with an invalid point, the identity
    /// or a repeated point.
    pub fn reblind(&self, offer: &MembershipOffer) -> Result<Reblinded, PsiError> {
        let what = "membership offer";
        check_packed(
            what,
            &offer.points,
            offer.count,
            POINT_BYTES,
            self.config.max_elements,
        )?;
        let mut points = blind_points(what, &offer.points, &self.alpha)?;
        check_distinct_points::<POINT_BYTES>(what, &offer.points)?;
        sort_packed::<POINT_BYTES>(&mut points);
        Ok(Reblinded {
            count: offer.count,
            points,
        })
    }

    /// The noisy membership value of each of R's tokens, in token order.
    pub fn finish(self, answers: &NoisyAnswers) -> Result<Vec<f64>, PsiError> {
        if answers.values.len() != self.query_len {
            return Err(PsiError::Malformed {
                what: "noisy answers",
                detail: format!(
                    "{} values for a query of {} points",
                    answers.values.len(),
                    self.query_len
                ),
            });
        }
        if let Some(i) = answers.values.iter().position(|v| !v.is_finite()) {
            return Err(PsiError::Malformed {
                what: "noisy answers",
                detail: format!("value {i} is not finite"),
            });
        }
        Ok(self.positions.iter().map(|&p| answers.values[p]).collect())
    }
}

/// The sending site S between its offer and the reblinded points.
pub struct NoisySender {
    config: NoisyConfig,
    /// `beta` times each query point, by position.
    evaluated: Vec<u8>,
    offered: usize,
    noise: [u8; 32],
}

impl std::fmt::Debug for NoisySender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NoisySender({} offered, {} query points)",
            self.offered,
            self.evaluated.len() / POINT_BYTES
        )
    }
}

/// What S learns from a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderView {
    /// The number of query points.
    pub query_len: usize,
    /// The intersection size: how many query positions matched.
    pub matched: usize,
}

impl NoisySender {
    /// Answers a query with a secret from the operating system.
    pub fn respond(
        config: NoisyConfig,
        tokens: &[Token],
        query: &MembershipQuery,
    ) -> Result<(NoisySender, MembershipOffer), PsiError> {
        Self::respond_keyed(config, tokens, query, random_seed()?)
    }

    /// Answers with a secret derived from `seed`: for tests and simulation
    /// only (anyone who knows the seed can remove the noise).
    #[cfg(any(test, feature = "test-seeds"))]
    #[doc(hidden)]
    pub fn respond_seeded_for_tests(
        config: NoisyConfig,
        tokens: &[Token],
        query: &MembershipQuery,
        seed: u64,
    ) -> Result<(NoisySender, MembershipOffer), PsiError> {
        Self::respond_keyed(
            config,
            tokens,
            query,
            crate::group::seeded_bytes(seed, b"noisy membership sender"),
        )
    }

    /// Answers with `secret` (`beta` and the noise derive from it): a
    /// simulation derives it from the run seed, so anyone with the seed
    /// can remove the noise (an experiment, not a release); a deployed site
    /// uses [`NoisySender::respond`].
    pub fn respond_keyed(
        config: NoisyConfig,
        tokens: &[Token],
        query: &MembershipQuery,
        secret: [u8; 32],
    ) -> Result<(NoisySender, MembershipOffer), PsiError> {
        config.check()?;
        check_local("sender tokens", tokens.len(), &config)?;
        check_distinct_tokens("sender tokens", tokens)?;
        let what = "membership query";
        let n = check_packed(
            what,
            &query.points,
            query.count,
            POINT_BYTES,
            config.max_elements,
        )?;
        if n < config.min_query {
            return Err(PsiError::TooFewElements {
                what,
                got: n,
                min: config.min_query,
            });
        }
        let beta = Stream::new(&secret, b"beta").scalar();
        // Validates every point before the distinctness check reads them.
        let evaluated = blind_points(what, &query.points, &beta)?;
        check_distinct_points::<POINT_BYTES>(what, &query.points)?;
        let mut points = blind_tokens(tokens, &beta);
        sort_packed::<POINT_BYTES>(&mut points);
        let count = u32::try_from(tokens.len()).map_err(|_| PsiError::TooManyElements {
            what: "sender tokens",
            got: tokens.len(),
            bound: config.max_elements,
        })?;
        let noise = Stream::new(&secret, b"noise key").block();
        Ok((
            NoisySender {
                config,
                evaluated,
                offered: tokens.len(),
                noise,
            },
            MembershipOffer { count, points },
        ))
    }

    /// Message 4: `1{match} + N(0, sigma^2)` per query position, and what
    /// S learned. Refuses a reblinded list that does not hold exactly as
    /// many distinct valid points as S offered.
    pub fn answer(self, reblinded: &Reblinded) -> Result<(NoisyAnswers, SenderView), PsiError> {
        let what = "reblinded offer";
        let n = check_packed(
            what,
            &reblinded.points,
            reblinded.count,
            POINT_BYTES,
            self.config.max_elements,
        )?;
        if n != self.offered {
            return Err(PsiError::Malformed {
                what,
                detail: format!("{n} points for an offer of {}", self.offered),
            });
        }
        crate::group::validate_points(what, &reblinded.points)?;
        check_distinct_points::<POINT_BYTES>(what, &reblinded.points)?;
        let set: HashSet<&[u8]> = reblinded.points.chunks_exact(POINT_BYTES).collect();
        let z = normals(&self.noise, self.evaluated.len() / POINT_BYTES);
        let mut matched = 0usize;
        let values = self
            .evaluated
            .chunks_exact(POINT_BYTES)
            .zip(z)
            .map(|(p, z)| {
                let bit = if set.contains(p) {
                    matched += 1;
                    1.0
                } else {
                    0.0
                };
                bit + self.config.sigma * z
            })
            .collect::<Vec<f64>>();
        let view = SenderView {
            query_len: values.len(),
            matched,
        };
        Ok((NoisyAnswers { values }, view))
    }
}

/// Hashes a token and a counter into a new token: the `k`-th occurrence of
/// an identifier, for features that count rows (visits) rather than
/// membership. Derived from the token, so it stays keyed.
pub fn occurrence_token(token: &Token, k: u32) -> Token {
    let mut h = Sha512::new();
    h.update(SECRET_DOMAIN);
    h.update(b"occurrence");
    h.update(token.0);
    h.update(k.to_le_bytes());
    let d = h.finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&d[..32]);
    Token(out)
}
