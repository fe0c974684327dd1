//! Private set intersection and intersection-sum between sites.
//!
//! A pure library (no sockets, no clock, no async runtime): every protocol
//! is a short sequence of messages, plain structs with `to_bytes` and
//! `from_bytes` (and serde), that any transport can carry. Everything a
//! party receives is checked before use: declared counts against the agreed
//! bound (before allocating), byte lengths against the counts, point
//! encodings, coded sets, and the mode; refusals name the field and what is
//! wrong ([`PsiError`]).
//!
//! # Identifiers
//!
//! [`ident`]: identifiers are normalised (case, whitespace, separators),
//! hashed with HMAC-SHA256 under a [`MatchingKey`] the matching sites share
//! and the coordinator never sees, and deduplicated. Raw identifiers never
//! enter a protocol.
//!
//! # ECDH-PSI ([`psi`])
//!
//! On ristretto255 (curve25519-dalek; where the processor has AVX-512
//! IFMA, the many multiplications by one secret scalar run eight points at
//! a time in a multi-buffer engine that gives curve25519-dalek's bytes and
//! refusals exactly: see [`engine_name`]). `H` hashes a token to the group
//! (SHA-512, then `from_uniform_bytes`). The sender B holds a secret scalar
//! `beta` (public key `Y = beta G`), the receiver A a blinding secret; both
//! are fresh per run from the operating system's random source.
//!
//! 1. A → B, [`Query`]: A's elements blinded, 32 bytes each: in modes both
//!    and receiver-only `2 (H(a) + r_a G)` with a fresh mask `r_a` per
//!    element (additive blinding: both of A's multiplications have a fixed
//!    base and use precomputed tables), in cardinality mode
//!    `alpha H(a)` with one secret `alpha`.
//! 2. B → A, [`Response`]: `Y`; those points multiplied by `beta` (32
//!    bytes each; in A's order, or sorted by encoding in cardinality mode);
//!    and B's own elements as `F(b) = PRF(4 beta H(b))`, a SHA-256 of the
//!    point's encoding reduced into `[0, |B| 2^p)`, sent sorted as a
//!    Golomb-Rice coded set (about `p + 1.6` bits each) with
//!    `p = ceil(log2 |A|) + fp_bits`.
//! 3. A removes its blinding (subtracting `2 r_a Y`, or multiplying by
//!    `2 alpha^-1`), which leaves `2 beta H(a)`, computes `F(a)` and looks
//!    it up in B's set. In mode both A then sends [`Reveal`] (one bit per
//!    value of B's set), in cardinality mode the count.
//!
//! False positives: each of A's elements falsely matches with probability
//! below `2^-p`, so a run reports a false match with probability below
//! `2^-fp_bits` (default 20, about one in a million runs).
//!
//! Bytes: `32 |A|` + `32 |A|` + about `(p + 1.6) / 8 · |B|` (+ `|B| / 8` in
//! mode both): for `|A| = |B| = 10^6` and `fp_bits = 20`, about 69.3
//! bytes per element (counting each side's element once, that is total
//! bytes over `n` for an `n x n` run).
//!
//! ## What each mode reveals (semi-honest parties)
//!
//! | mode | A learns | B learns |
//! |---|---|---|
//! | [`Mode::Both`] | which of its elements are shared, `|B|` | which of its elements are shared, `|A|` |
//! | [`Mode::ReceiverOnly`] | which of its elements are shared, `|B|` | `|A|` |
//! | [`Mode::Cardinality`] | `|A ∩ B|`, `|B|` | `|A ∩ B|`, `|A|` |
//!
//! Beyond these, the messages are pseudorandom to the party receiving them
//! under the decisional Diffie-Hellman assumption in ristretto255, with `H`
//! and the PRF modelled as random oracles: B sees A's blinded points,
//! uniformly random whatever `a` is (additive blinding) or `alpha H(a)`
//! (pseudorandom under DDH); A sees `beta` times its own points and `F(b)`, and cannot evaluate
//! `F` on a guess without B (this is the 2HashDH oblivious PRF). In
//! cardinality mode the points of step 2 come back sorted by their own
//! encoding, so linking one to an element of A's means telling
//! `beta alpha H(a_i)` from the others, which is DDH.
//! The adversary is semi-honest (follows the protocol, tries to learn more
//! from what it sees); a malicious party can, for instance, put guessed
//! identifiers in its set, which any PSI allows, or lie in its reveal.
//! A coordinator that relays a two-party run sees pseudorandom points and
//! coded pseudorandom values: it learns the set sizes (from the lengths)
//! and, in mode both and cardinality mode, the intersection size (from the
//! reveal), nothing about identifiers, since it never holds the matching
//! key or a scalar. Carried over mutual TLS between the sites, it learns
//! only the lengths, which still give both set sizes (not the intersection
//! size: no message's length depends on it). For several sites, [`multi`]
//! states what the lengths of its rounds give away.
//!
//! The receiver refuses the identity as the sender's public key (with
//! `Y = O` removing the blinding does nothing, and a sender holding none of
//! the receiver's identifiers could make any of them match), and both
//! parties refuse a list of tokens with a repeat (a repeated token gives
//! equal points in cardinality mode, showing the sender where the
//! receiver's repeats are).
//!
//! The `*_seeded_for_tests` constructors exist only with the `test-seeds`
//! feature (the crate's own tests enable it) and are hidden from the docs.
//!
//! # Several sites ([`multi`])
//!
//! A leader runs receiver-only rounds along a chain, then a round in mode
//! both with each site; the chain queries are padded to the leader's set
//! size, so their lengths do not give the running intersection sizes away.
//! See the module for what each party, and a relaying coordinator, learns.
//!
//! # Intersection-sum ([`sum`])
//!
//! Private Join and Compute's shape with exponential ElGamal on
//! ristretto255: A learns `|A ∩ B|` and the sum (hence the mean) of B's
//! values over the intersection; B learns `|A|`. The module documents the
//! choice of scheme, the bounds and the adversary.
//!
//! # Noisy membership ([`noisy`])
//!
//! For cross-silo features under differential privacy: a receiving site
//! learns, for each of its identifiers, whether another site holds it plus
//! Gaussian noise that site draws from its own secret (never the exact
//! bit); the holding site learns only the intersection size and the
//! padded query length. The module states the threat model and the DP
//! accounting (sensitivity 1 per patient of the holding site).

#![deny(missing_docs)]

/// Which engine does this process's ristretto255 arithmetic: `"ifma"`
/// (eight points at a time on AVX-512 IFMA), `"dalek"` (curve25519-dalek,
/// one point at a time) or `"lanes"` (the eight-lane logic on plain
/// integers, for tests). dalek unless `TESSERA_PSI_ENGINE=ifma` (opt-in
/// until measured on IFMA hardware) or `=lanes`.
pub fn engine_name() -> &'static str {
    match mb::engine() {
        mb::Engine::Ifma => "ifma",
        mb::Engine::Dalek => "dalek",
        mb::Engine::Lanes => "lanes",
    }
}

/// The batch operations behind the protocols, for benchmarks only (not a
/// stable interface).
#[doc(hidden)]
pub mod bench {
    use curve25519_dalek::scalar::Scalar;

    /// `compress(2 k P)` for every packed 32-byte point, with this
    /// process's engine; `Err(i)` names the first invalid encoding.
    pub fn mul2_compress(input: &[u8], k: &Scalar, out: &mut [u8]) -> Result<(), usize> {
        crate::mb::mul2_compress(input, k, out)
    }

    /// `compress(2 k from_uniform_bytes(h))` for every `h`, with this
    /// process's engine.
    pub fn hash_mul2_compress(hashes: &[[u8; 64]], k: &Scalar, out: &mut [u8]) {
        crate::mb::hash_mul2_compress(hashes, k, out)
    }
}

pub mod agree;
mod blind;
mod elgamal;
mod error;
pub mod gcs;
mod group;
pub mod ident;
mod mb;
pub mod multi;
pub mod noisy;
pub mod psi;
pub mod sum;
pub mod visits;
mod wire;

pub use agree::KeyShare;
pub use error::PsiError;
pub use group::POINT_BYTES;
pub use ident::{
    MatchingKey, PreparedSet, PreparedValues, Token, normalise, prepare, prepare_with_values,
};
#[cfg(any(test, feature = "test-seeds"))]
#[doc(hidden)]
pub use multi::intersect_sites_seeded_for_tests;
pub use multi::{MultiOutput, intersect_sites};
pub use noisy::{
    MembershipOffer, MembershipQuery, NoisyAnswers, NoisyConfig, NoisyReceiver, NoisySender,
    Reblinded, SenderView, occurrence_token,
};
pub use psi::{
    Mode, PsiConfig, Query, Receiver, ReceiverOutput, Response, Reveal, Sender, SenderOutput,
};
pub use sum::{
    DecryptRequest, DecryptShare, SumAwaiting, SumConfig, SumOutput, SumQuery, SumReceiver,
    SumResponse, SumSender,
};
pub use visits::Visits;
