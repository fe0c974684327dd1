//! Version and capability negotiation.

use crate::ProtoError;

/// Protocol major version: peers of different majors refuse each other.
pub const MAJOR: u32 = 1;
/// Protocol minor version: peers of different minors work together where
/// their capabilities overlap.
pub const MINOR: u32 = 33;

/// What this build can do.
///
/// - `chunked-tensors` (1.0): parameters and updates travel in chunks.
/// - `agreement` (1.0): the data layout is agreed from offers.
/// - `evaluation-histograms` (1.0): evaluations carry score histograms.
/// - `scaffold` (1.1): control variates in tasks and updates, with the
///   outcome of the previous update in each task header.
/// - `heartbeat` (1.1): participants report that they are at work.
/// - `secure-aggregation` (1.1): SecAgg+ rounds through `SecureAggregation`.
/// - `compression` (1.2): a task names the update's codec; the update's
///   delta travels as its compact encoding.
/// - `compressed-models` (1.2): a task's model may come as the encoded change
///   from the model the participant holds. With these, one capability per codec
///   stage this build encodes and decodes: `codec-topk`, `codec-randk`,
///   `codec-fp16`, `codec-q8`, `codec-q4`, `codec-q2`.
/// - `gossip` (1.3): the `Gossip` service between peers of a run with no
///   coordinator.
/// - `withdraw` (1.4): a participant or aggregator leaves a round without an
///   update (`Withdraw`), so the round stops waiting for it.
/// - `secure-aggregation-signed` (1.5): SecAgg+ against a malicious
///   coordinator: signed keys, certificates relayed with the parameters,
///   the consistency check (stage numbers change; a 1.5 coordinator with
///   secure aggregation requires it).
/// - `declared-rows` (1.6): a site's levels offer declares its training and
///   test row counts, which bound every count it reports for the run (a 1.6
///   coordinator requires it).
/// - `instructions` (1.7): a fit task carries the strategy's instructions to
///   the participant as one arm per kind (a 1.7 coordinator requires it for
///   every strategy newer than 1.7).
/// - `gossip-rejoin` (1.8): a gossip peer restarted after a crash asks its
///   neighbours to take it back (`Gossip.Rejoin`) and adopts a neighbour's
///   current model.
/// - `site-evaluations` (1.9): an aggregator's evaluation carries the
///   evaluation of each site below it, so the root reports per site.
/// - `external-learners` (1.10): a site whose model lives outside Tessera
///   agrees with one `ExternalOffer` (its row counts and initial
///   parameters) instead of kinds, levels and statistics (a 1.10
///   coordinator requires it for a plan whose model is external).
/// - `analytics-queries` (1.11): a site answers analytics queries
///   (`TASK_KIND_ANALYZE`) through a secure round of their own after the
///   last training round (a 1.11 coordinator requires it when the plan
///   keeps sites for queries, `[analytics] serve_seconds`).
/// - `join-relay` (1.11): the coordinator relays the signed messages of a
///   plan's secure joins between the sites (`PostJoinMessage`,
///   `PollJoinMessages`).
/// - `analytics-per-site` (1.12): a site answers a PER SITE query (the
///   plan's `[analytics] per_site = true`) with its own noised answer
///   (`SubmitSiteAnswer`) besides its masked input (a 1.12 coordinator
///   requires it when the plan keeps sites for queries and allows PER SITE).
/// - `cross-silo` (1.13): the coordinator relays the sites' noisy-membership
///   conversations of a plan's `[data.cross_silo]` feature (`cross-silo/I-J`
///   through `PostJoinMessage`, `PollJoinMessages`), and charges the
///   feature to every site in its ledger.
/// - `personal-models` (1.14): a site follows the personalized strategies'
///   instructions (`Ditto`, `FedPer`), keeps its personal model and never
///   sends it (a 1.14 coordinator requires it for those strategies).
/// - `fedrep` (1.15): a site follows FedRep's instructions (its head trained
///   with the body held, then the body with the head held; a 1.15
///   coordinator requires it for `fedrep`, besides `personal-models`).
/// - `perfedavg` (1.16): a site follows Per-FedAvg's instructions (its local
///   training takes first-order meta steps with the task's inner step size;
///   a 1.16 coordinator requires it for `perfedavg`).
/// - `apfl` (1.16): a site follows APFL's instructions (FedAvg's update,
///   its personal model and mixing weight kept beside it; a 1.16
///   coordinator requires it for `apfl`, besides `personal-models`).
/// - `regional-model` (1.17): a site tells an evaluation of its
///   aggregator's last regional model (`TaskHeader.regional_model`) from a
///   global model's, keeps it apart and fine-tunes from it (a 1.17
///   coordinator or aggregator requires it when a hierarchical plan
///   fine-tunes).
/// - `initial-model-digest` (1.18): the coordinator's reply to a levels
///   offer names the run's initial model by its SHA-256
///   (`Agreement.initial_model_sha256`), which a site continuing from a
///   model of its own (`--continue-from`) checks.
/// - `ifca` (1.19): a site follows IFCA's instructions (the task's model
///   stacks the cluster models; the site trains the one of the lowest loss
///   on its rows and sends the stacked change; a 1.19 coordinator requires
///   it for `ifca`, besides `personal-models`).
/// - `canary` (1.20): a site takes part in a rollout of a registered model
///   (`Welcome.rollout`): a canary site scores the candidate and production
///   model files on its test rows (`TASK_KIND_CANARY`), every site keeps and
///   serves the version decided (`TASK_KIND_SERVE`); its `Hello` says
///   whether it opted in and what it serves (a 1.20 coordinator requires it
///   in a rollout).
/// - `canary-secure` (1.22): in a rollout under a plan whose site metrics
///   are sums only, a canary site masks its comparison (rows, rows
///   production got right, rows each model alone got right) in SecAgg+
///   round `candidate | ROLLOUT_ROUND` (the task's round), and the
///   coordinator unmasks only the canaries' sum (noised with `"dp"`); a
///   1.22 coordinator requires it in such a rollout.
/// - `multitask` (1.23): a site follows multi-task instructions (the task's
///   model stacks a shared body and one head per task; the site trains the
///   body and its own task's head, sends the stacked change, and evaluates
///   and keeps its task's model); a 1.23 coordinator requires it of every
///   site of a plan with `[multitask]`.
/// - `qffl` (1.24): a site follows q-FFL's instructions (plain training,
///   the loss of the round's model on its training rows measured first and
///   sent as the update header's `start_loss`); a 1.24 coordinator
///   requires it for `qffl`.
/// - `train-seconds` (1.25): a site sends the seconds its local training
///   took in the update's header (`train_seconds`), for the coordinator's
///   participation table; nothing requires it.
/// - `attribution` (1.26): under a plan with `[contribution]`, a site sends
///   with each update the mean gradient of its test loss at the round's
///   start over its first `rows_per_site` test rows (`test_rows`, chunks
///   of set 2), and where the plan has no DP its released data quality
///   score (`quality`), for the coordinator's first-order attribution and
///   reputation; a 1.26 coordinator requires it of every site of such a
///   plan.
/// - `gossip-tracing` (1.27): a gossip peer's welcome carries the nonce it
///   drew at start (`trace_nonce`); the peers derive each round's trace id
///   from all of them, so a round is one trace across the peers; nothing
///   requires it.
/// - `secure-buffers` (1.28): in an asynchronous run under secure
///   aggregation a site joins a buffer with its update's model version
///   (`SecAggBufferJoin`), is seated in the full buffer's SecAgg+ round
///   with its staleness (`SecAggSeat`), discounts its update by it and
///   masks it there; a 1.28 coordinator requires it of every site of such
///   a run.
/// - `homomorphic-aggregation` (1.29): under `secure_aggregation.scheme =
///   "homomorphic"` a site takes part in multiparty-BFV rounds (key shares,
///   commitments, reveals, answers: `HeKeyShare` and the messages after it)
///   as a contributor and, named in `key_holders`, as a key holder; a 1.29
///   coordinator requires it of every site of such a plan.
/// - `long-poll` (1.30): a secure-aggregation poll (`poll`, `he_holder`,
///   a repeated `buffer` join) that would be answered `wait` is held until the federation changes or
///   up to a second (at most the heartbeat interval), and answered
///   `wait = false` when nothing came: the participant polls again at once
///   (at most every 20 ms; after `wait = true`, a 20 ms pause); nothing
///   requires it.
/// - `he-ntt-wire` (1.31): a homomorphic round's ciphertexts (contributions
///   and decryption shares) travel in Tessera's encoding: two polynomials in
///   the NTT representation, each modulus's 4,096 coefficients below it at
///   36 bits, 73,728 bytes a ciphertext (key shares keep fhe.rs's); a 1.31
///   coordinator requires it of every site of a homomorphic plan, and a
///   1.31 participant leaves a homomorphic run whose coordinator lacks it.
/// - `he-one-modulus` (1.32): homomorphic rounds use one 62-bit ciphertext
///   modulus instead of two of 36 bits (half the transforms and arithmetic
///   of encrypting, summing and decrypting), so a ciphertext's polynomials
///   travel as 4,096 coefficients at 62 bits, 63,488 bytes a ciphertext; a
///   1.32 coordinator requires it of every site of a homomorphic plan, and
///   a 1.32 participant leaves a homomorphic run whose coordinator lacks it.
/// - `he-half-fetch` (1.33): a key holder fetches each contribution's second
///   polynomials with the SHA-256 of each first one (which the commitment
///   binds: a ciphertext's digest is its two polynomials'), half the bytes,
///   and answers with one polynomial a ciphertext, `c1 s_i + e`, signed
///   with the digest of the summed second polynomials (a decryption share
///   depends on nothing else); a 1.33 coordinator requires it of every site
///   of a homomorphic plan, and a 1.33 participant leaves a homomorphic run
///   whose coordinator lacks it.
pub const CAPABILITIES: &[&str] = &[
    "chunked-tensors",
    "agreement",
    "evaluation-histograms",
    "scaffold",
    "heartbeat",
    "secure-aggregation",
    "compression",
    "compressed-models",
    "codec-topk",
    "codec-randk",
    "codec-fp16",
    "codec-q8",
    "codec-q4",
    "codec-q2",
    "gossip",
    "withdraw",
    "secure-aggregation-signed",
    "declared-rows",
    "instructions",
    "gossip-rejoin",
    "site-evaluations",
    "external-learners",
    "analytics-queries",
    "join-relay",
    "analytics-per-site",
    "cross-silo",
    "personal-models",
    "fedrep",
    "perfedavg",
    "apfl",
    "regional-model",
    "initial-model-digest",
    "ifca",
    "canary",
    "feature-flags",
    "canary-secure",
    "multitask",
    "qffl",
    "train-seconds",
    "attribution",
    "gossip-tracing",
    "secure-buffers",
    "homomorphic-aggregation",
    "long-poll",
    "he-ntt-wire",
    "he-one-modulus",
    "he-half-fetch",
];

/// Each capability of [`CAPABILITIES`] with the minor version that brought
/// it (in the same order): a Tessera build of protocol `1.m` has exactly
/// those of minor `m` or less ([`capabilities_at`]).
pub const CAPABILITY_SINCE: &[(&str, u32)] = &[
    ("chunked-tensors", 0),
    ("agreement", 0),
    ("evaluation-histograms", 0),
    ("scaffold", 1),
    ("heartbeat", 1),
    ("secure-aggregation", 1),
    ("compression", 2),
    ("compressed-models", 2),
    ("codec-topk", 2),
    ("codec-randk", 2),
    ("codec-fp16", 2),
    ("codec-q8", 2),
    ("codec-q4", 2),
    ("codec-q2", 2),
    ("gossip", 3),
    ("withdraw", 4),
    ("secure-aggregation-signed", 5),
    ("declared-rows", 6),
    ("instructions", 7),
    ("gossip-rejoin", 8),
    ("site-evaluations", 9),
    ("external-learners", 10),
    ("analytics-queries", 11),
    ("join-relay", 11),
    ("analytics-per-site", 12),
    ("cross-silo", 13),
    ("personal-models", 14),
    ("fedrep", 15),
    ("perfedavg", 16),
    ("apfl", 16),
    ("regional-model", 17),
    ("initial-model-digest", 18),
    ("ifca", 19),
    ("canary", 20),
    ("feature-flags", 21),
    ("canary-secure", 22),
    ("multitask", 23),
    ("qffl", 24),
    ("train-seconds", 25),
    ("attribution", 26),
    ("gossip-tracing", 27),
    ("secure-buffers", 28),
    ("homomorphic-aggregation", 29),
    ("long-poll", 30),
    ("he-ntt-wire", 31),
    ("he-one-modulus", 32),
    ("he-half-fetch", 33),
];

/// The capabilities a Tessera build of protocol `1.minor` sends.
pub fn capabilities_at(minor: u32) -> Vec<&'static str> {
    CAPABILITY_SINCE
        .iter()
        .filter(|(_, since)| *since <= minor)
        .map(|(name, _)| *name)
        .collect()
}

/// The oldest minor version of this major that has every one of `needed`
/// (`None` where one of them is unknown).
pub fn oldest_with(needed: &[&str]) -> Option<u32> {
    needed.iter().try_fold(0, |oldest, c| {
        CAPABILITY_SINCE
            .iter()
            .find(|(name, _)| name == c)
            .map(|(_, since)| oldest.max(*since))
    })
}

/// The strategies older peers can follow without the `instructions`
/// capability (their instructions have fields of their own before 1.7).
/// Frozen: every later strategy requires `instructions`.
const BEFORE_INSTRUCTIONS: &[&str] = &[
    "fedavg",
    "fedavgm",
    "fedprox",
    "scaffold",
    "fedadam",
    "fedyogi",
    "fedadagrad",
];

/// The strategies whose sites keep personal models (1.14).
const PERSONAL: &[&str] = &["ditto", "fedper", "fedrep", "apfl", "ifca"];

/// The capabilities a participant needs to send updates with `codec`.
pub fn codec_capabilities(codec: &tessera_compress::Codec) -> Vec<&'static str> {
    let mut needed = stage_capabilities(codec);
    if !needed.is_empty() {
        needed.insert(0, "compression");
    }
    needed
}

/// The capabilities a participant needs to receive models with `codec`.
pub fn model_codec_capabilities(codec: &tessera_compress::Codec) -> Vec<&'static str> {
    let mut needed = stage_capabilities(codec);
    if !needed.is_empty() {
        needed.insert(0, "compressed-models");
    }
    needed
}

fn stage_capabilities(codec: &tessera_compress::Codec) -> Vec<&'static str> {
    use tessera_compress::{Sparsifier, Values};
    let mut needed = Vec::new();
    if codec.is_identity() {
        return needed;
    }
    match codec.sparsifier {
        Some(Sparsifier::TopK(_)) => needed.push("codec-topk"),
        Some(Sparsifier::RandomK(_)) => needed.push("codec-randk"),
        None => {}
    }
    match codec.values {
        Values::F32 => {}
        Values::F16 => needed.push("codec-fp16"),
        Values::Uniform(8) => needed.push("codec-q8"),
        Values::Uniform(4) => needed.push("codec-q4"),
        Values::Uniform(_) => needed.push("codec-q2"),
    }
    needed
}

/// What two peers agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The lower of the two minor versions.
    pub minor: u32,
    /// Capabilities both sides have, sorted.
    pub capabilities: Vec<String>,
}

impl Negotiated {
    /// Whether both sides have `capability`.
    pub fn has(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

/// Capabilities a run needs from every participant, given its strategy name.
pub fn required_capabilities(strategy: &str) -> Vec<&'static str> {
    let mut required = vec!["chunked-tensors", "agreement", "declared-rows"];
    if strategy == "scaffold" {
        required.push("scaffold");
    }
    if !BEFORE_INSTRUCTIONS.contains(&strategy) {
        required.push("instructions");
    }
    if PERSONAL.contains(&strategy) {
        required.push("personal-models");
    }
    if strategy == "fedrep" {
        required.push("fedrep");
    }
    if strategy == "perfedavg" {
        required.push("perfedavg");
    }
    if strategy == "apfl" {
        required.push("apfl");
    }
    if strategy == "ifca" {
        required.push("ifca");
    }
    if strategy == "qffl" {
        required.push("qffl");
    }
    required
}

/// Agrees on what `ours` and the peer's `(major, minor, capabilities)` share;
/// refuses a different major version or a missing required capability.
pub fn negotiate(
    ours: &[&str],
    peer_major: u32,
    peer_minor: u32,
    peer_capabilities: &[String],
    required: &[&str],
) -> Result<Negotiated, ProtoError> {
    if peer_major != MAJOR {
        return Err(ProtoError::Incompatible(format!(
            "protocol {peer_major}.{peer_minor} cannot talk to {MAJOR}.{MINOR}: major versions differ"
        )));
    }
    let mut capabilities: Vec<String> = ours
        .iter()
        .filter(|c| peer_capabilities.iter().any(|p| p == *c))
        .map(|c| c.to_string())
        .collect();
    capabilities.sort();
    capabilities.dedup();
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|r| !capabilities.iter().any(|c| c == r))
        .collect();
    if !missing.is_empty() {
        return Err(ProtoError::Incompatible(format!(
            "this run needs capabilities the peer (protocol {peer_major}.{peer_minor}) lacks: {}",
            missing.join(", ")
        )));
    }
    Ok(Negotiated {
        minor: peer_minor.min(MINOR),
        capabilities,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(list: &[&str]) -> Vec<String> {
        list.iter().map(|c| c.to_string()).collect()
    }

    /// The since-table names every capability of this build once, in its
    /// order, none newer than this build, and the versions only grow.
    #[test]
    fn every_capability_has_its_version() {
        let names: Vec<&str> = CAPABILITY_SINCE.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, CAPABILITIES);
        assert!(CAPABILITY_SINCE.windows(2).all(|w| w[0].1 <= w[1].1));
        assert_eq!(CAPABILITY_SINCE.last().map(|(_, m)| *m), Some(MINOR));
        assert_eq!(capabilities_at(MINOR), CAPABILITIES);
        assert_eq!(
            capabilities_at(0),
            ["chunked-tensors", "agreement", "evaluation-histograms"]
        );
        assert_eq!(oldest_with(&["agreement"]), Some(0));
        assert_eq!(oldest_with(&["declared-rows", "scaffold"]), Some(6));
        assert_eq!(oldest_with(&["no-such"]), None);
    }

    #[test]
    fn compatibility_table() {
        // The rows of docs/PROTOCOL.md's table.
        let v1_0 = caps(&["chunked-tensors", "agreement", "evaluation-histograms"]);
        let before = |cap: &str| {
            let at = CAPABILITIES.iter().position(|c| *c == cap).unwrap();
            caps(&CAPABILITIES[..at])
        };
        let v1_5 = before("declared-rows");
        let v1_6 = before("instructions");
        let fedavg = required_capabilities("fedavg");
        let scaffold = required_capabilities("scaffold");
        // Every run needs declared row counts (1.6): earlier peers are refused.
        let err = negotiate(CAPABILITIES, 1, 0, &v1_0, &fedavg).unwrap_err();
        assert_eq!(
            err.to_string(),
            "incompatible protocol: this run needs capabilities the peer (protocol 1.0) lacks: declared-rows"
        );
        let err = negotiate(CAPABILITIES, 1, 5, &v1_5, &scaffold).unwrap_err();
        assert_eq!(
            err.to_string(),
            "incompatible protocol: this run needs capabilities the peer (protocol 1.5) lacks: declared-rows"
        );
        let n = negotiate(CAPABILITIES, 1, 6, &v1_6, &scaffold).unwrap();
        assert!(n.has("heartbeat") && n.has("scaffold") && n.has("declared-rows"));
        // A 1.6 peer follows the strategies it knows, not a later one, whose
        // instructions only travel as 1.7's arms.
        let later = required_capabilities("a-later-strategy");
        assert!(negotiate(CAPABILITIES, 1, 6, &v1_6, &fedavg).is_ok());
        let err = negotiate(CAPABILITIES, 1, 6, &v1_6, &later).unwrap_err();
        assert_eq!(
            err.to_string(),
            "incompatible protocol: this run needs capabilities the peer (protocol 1.6) lacks: instructions"
        );
        assert!(negotiate(CAPABILITIES, 1, 7, &caps(CAPABILITIES), &later).is_ok());
        // A newer minor with capabilities we do not know: the overlap is used.
        let newer = caps(&[
            "chunked-tensors",
            "agreement",
            "evaluation-histograms",
            "scaffold",
            "heartbeat",
            "declared-rows",
            "zstd",
        ]);
        let n = negotiate(CAPABILITIES, 1, MINOR + 1, &newer, &fedavg).unwrap();
        assert_eq!(n.minor, MINOR);
        assert!(!n.has("zstd"));
        // A run whose model is external needs 1.10's offer: a 1.9 peer is refused.
        let mut external = fedavg.clone();
        external.push("external-learners");
        let v1_9 = before("external-learners");
        let err = negotiate(CAPABILITIES, 1, 9, &v1_9, &external).unwrap_err();
        assert!(
            err.to_string().ends_with("lacks: external-learners"),
            "{err}"
        );
        assert!(negotiate(CAPABILITIES, 1, 10, &caps(CAPABILITIES), &external).is_ok());
        let err = negotiate(CAPABILITIES, 2, 0, &newer, &fedavg).unwrap_err();
        assert!(err.to_string().contains("major versions differ"), "{err}");
    }

    #[test]
    fn a_run_with_a_codec_needs_peers_that_decode_it() {
        let codec: tessera_compress::Codec = "topk:0.01+q8".parse().unwrap();
        let mut required = required_capabilities("fedavg");
        required.extend(codec_capabilities(&codec));
        assert_eq!(&required[3..], &["compression", "codec-topk", "codec-q8"]);
        // A 1.1 participant knows no codec: refused, naming what it lacks.
        let mut v1_1 = caps(&CAPABILITIES[..6]);
        v1_1.push("declared-rows".into());
        assert_eq!(
            model_codec_capabilities(&"fp16".parse().unwrap()),
            ["compressed-models", "codec-fp16"]
        );
        let err = negotiate(CAPABILITIES, 1, 1, &v1_1, &required).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("(protocol 1.1) lacks: compression, codec-topk, codec-q8"),
            "{err}"
        );
        let n = negotiate(CAPABILITIES, 1, 2, &caps(CAPABILITIES), &required).unwrap();
        assert!(n.has("codec-q8") && n.has("compression"));
        assert!(codec_capabilities(&tessera_compress::Codec::NONE).is_empty());
    }
}
