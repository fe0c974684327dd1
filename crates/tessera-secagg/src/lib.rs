//! Secure aggregation in the SecAgg+ family (Bell et al. 2020): the server
//! learns the sum of the surviving participants' vectors and nothing else,
//! and the sum is recovered exactly however many participants drop out, at
//! any stage, as long as every participant keeps `threshold` of its
//! neighbours.
//!
//! One round, with the server relaying every message:
//!
//! 1. **Advertise keys.** Each participant draws two X25519 key pairs: `c`
//!    (to encrypt shares) and `s` (to agree pairwise masks).
//! 2. **Share keys.** Each participant draws a self-mask seed `b` and
//!    Shamir-shares `b` and its secret key `s` (threshold `t`) among its
//!    `k` neighbours on a public random Harary graph (`k = O(log n)`), each
//!    share encrypted with AES-256-GCM under a key derived (HKDF-SHA256) from
//!    the `c` key agreement with that neighbour.
//! 3. **Masked input.** Each participant quantises its vector into
//!    `Z_2^32` (clipping range `[-R, R]`, `32 - ceil(log2 n)` bits, so that
//!    the sum of `n` values never wraps) and adds a ChaCha20 self mask from
//!    `b` and, per neighbour, a pairwise mask from the `s` agreement (added
//!    for one of the pair, subtracted for the other). An update's training
//!    metadata (example count, train loss, step count) is appended to the
//!    quantised vector as 16-bit limbs before masking
//!    ([`Client::masked_update`], [`encode_metadata`]), so that the server
//!    learns only the survivors' sums of it too ([`split_sum`]).
//! 4. **Consistency check.** The server names the survivors and the
//!    dropped; each survivor signs that view (Bonawitz et al. 2017, active
//!    variant).
//! 5. **Unmask.** The server relays the survivors' signatures; each survivor
//!    checks that at least `t` survivors signed exactly the view it signed,
//!    and that no relayed signature is of another view, then returns its
//!    share of `b` for survivors and of `s` for the dropped, never both for
//!    the same participant, and answers once a round.
//!
//! The server then removes self masks (from `b`) and the dropped
//! participants' pairwise masks (from their `s`); survivors' pairwise masks
//! cancel. What the server can compute about any strict subset of the
//! survivors still carries the pairwise masks of the edges leaving it, so
//! while the survivors' graph is connected it learns only the total
//! ([`Server::survivor_graph_is_connected`]).
//!
//! Threat model of secure aggregation: the coordinator may be malicious. It may
//! lie about who dropped, show different participants different survivor sets,
//! withhold or replay messages, substitute keys, lower the threshold or reshape
//! the cohort, keep everything it relays across rounds, and collude with fewer
//! than `t` of any participant's neighbours; the other participants follow the
//! protocol. Against it, key advertisements and each survivor's view of the
//! round are signed with the site's certificate key and checked by the other
//! sites against the federation CA; participants check the round's parameters
//! against the plan (and, with `--expect-plan`, the plan against the one they
//! agreed to); the threshold is more than half the neighbours, so no
//! coordinator can collect enough shares of both a participant's self-mask seed
//! and its mask key; a participant masks only when the shares of at least `t`
//! neighbours reached it, and neither signs nor reveals for a view in which
//! fewer than `t` of its neighbours survive, so its pairwise masks cannot be
//! stripped by calling its partners dropped; a consistency check makes an
//! equivocating coordinator's round abort before any share is revealed; mask
//! keys are fresh every round and shares are encrypted under them, so a key
//! rebuilt when a participant drops unmasks nothing of its earlier rounds and a
//! replayed round decrypts nothing; and a site takes part in each secure round
//! number once. Not covered: a coordinator that leaves honest participants out
//! of a cohort (it learns the sum of those it keeps, at least `t`), or that
//! asks for sums of two cohorts over the same model in different rounds
//! (without local DP their difference can be one input), inputs out of range,
//! sparse neighbour graphs (above about 200 sites), where the check on
//! surviving neighbours guards each participant's own view only, and
//! deployments without TLS, where nothing is signed and the protection holds
//! against an honest-but-curious coordinator only. With central DP on top, the
//! coordinator unmasks the exact sum and adds the noise itself.
//!
//! (The same words stand in README and docs/PROTOCOL.md.) The pieces:
//! [`Signer`] and [`Verifier`] for signatures, [`RoundParams::check`] for
//! the parameters, [`Client::sign_view`] and [`Client::unmask`] for the
//! consistency check, [`KeyRing`] for fresh mask keys.
//!
//! `Client` and `Server` play one round. `KeyRing` keeps the encryption pair
//! between rounds and draws the mask pair fresh every round. `RoundParams`
//! holds the neighbour graph (Harary, `k` from `max_dropout`; the complete
//! graph up to about 200 sites), the threshold (`k/2 + 1`, at least 2) and
//! the quantisation (`32 - ceil(log2 n)` bits), and `RoundParams::check`
//! holds them against the plan's `Expected`. `Signer` and `Verifier` are
//! Ed25519 in simulation, certificate keys in deployment, and
//! `Unauthenticated` without TLS. The training metadata takes `METADATA_LEN`
//! (ten) 16-bit limbs after the quantised update. A test module plays a
//! malicious server against the clients.
//!
//! *Invariants:* the server's state never holds both a participant's
//! self-mask seed and its mask key; `2t > k`; a key ring answers each secure
//! round number once, only for the view it signed and `t` survivors signed,
//! never with fewer than `t` of its neighbours surviving in the view or
//! fewer than `t` neighbours' shares received, and it refuses any request
//! naming anyone both survivor and dropped.

#![deny(missing_docs)]

#[cfg(test)]
mod attacks;
mod auth;
mod client;
mod config;
mod error;
mod keys;
mod messages;
mod metadata;
mod params;
mod quantize;
mod server;

pub use auth::{
    Ed25519Directory, Ed25519Signer, Signer, Unauthenticated, Verifier, keys_message, view_message,
};
pub use client::Client;
pub use config::{MAX_KEY_HOLDERS, Scheme, SecureAggregationConfig};
pub use error::SecAggError;
pub use keys::KeyRing;
pub use messages::{
    AdvertiseKeys, MaskedInput, ShareKeys, SignedView, UnmaskRequest, UnmaskResponse,
};
pub use metadata::{
    MAX_LOSS, MAX_SUMMANDS, METADATA_LEN, Metadata, MetadataSum, decode_metadata_sum,
    encode_metadata, loss_code, masked_dimension,
};
pub use params::{
    ANALYTICS_ROUND, EVALUATION_ROUND, Expected, ROLLOUT_ROUND, RoundParams, is_rollout_round,
};
pub use quantize::{dequantize_sum, quantize, split_sum};
pub use server::Server;
