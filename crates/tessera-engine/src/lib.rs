//! The round engine: who trains, what they receive, which updates count and
//! how they combine, as a deterministic state machine ([`RoundEngine`]) that
//! knows nothing of sockets, threads or clocks. Time is an input
//! ([`tessera_core::Timestamp`]); randomness comes from the plan's seed.
//!
//! Drivers feed it events and carry out what it asks. Today the simulator
//! drives it with in-memory participants on a virtual clock; the deployment
//! runtimes (gRPC coordinator and participants) are to drive the same engine
//! with wall time, so that a plan and seed give the same model in both.
//!
//! Also here: the [`Plan`] (the TOML file that describes a federation: data,
//! model, local training, strategy, rounds) and [`Site`], the participant's
//! side of a round (local training turned into an [`tessera_core::Update`]),
//! which simulation and deployment share.
//!
//! Randomness comes from the run seed ([`streams`]) except under differential
//! privacy: DP noise and DP-SGD's Poisson batch sampling come from a key
//! ([`Site::with_local_dp`], [`RoundEngine::with_privacy`]). The simulator
//! derives those keys from the seed too, so a simulated DP run is an
//! experiment, not a release (its report's `privacy.release` is `false`);
//! deployment draws them from the operating system at the party that adds
//! the noise, so nobody with the plan and its seed can recompute them.
//!
//! This crate never blocks, sleeps, reads the clock or opens a socket.
#![deny(missing_docs)]

mod buffered;
mod downlink;
mod engine;
mod error;
mod plan;
mod regional;
pub mod report;
mod setup;
mod site;
mod topology;

pub use buffered::{AsyncRejection, BufferedEngine, Step};
pub use downlink::Downlink;
pub use engine::{
    EngineConfig, FitTask, Rejection, RoundEngine, RoundOutcome, RoundStart, RoundStatus,
};
pub use error::EngineError;
pub use plan::{
    FederationConfig, MemoryRole, Mode, Plan, PlanError, Range, SimulationConfig,
    StalenessWeighting, Weighting, available_memory,
};
pub use regional::{aggregator_engine, upward_update};
pub use setup::DpCohort;
pub use site::Site;
pub use topology::{
    FailureConfig, GossipGraph, GroupConfig, Member, Node, TopologyConfig, TopologyKind, Tree,
    gossip_neighbours, metropolis_mix,
};

/// Tags of the seed streams derived from a run seed.
pub mod streams {
    /// The initial model.
    pub const INIT: u64 = 1;
    /// Cohort sampling, per round.
    pub const COHORT: u64 = 2;
    /// Local training, per round and site (under local DP, keyed with the
    /// site's secret instead of the seed: see `Site::fit`).
    pub const FIT: u64 = 3;
    /// Simulated participant profiles, per site.
    pub const PROFILE: u64 = 4;
    /// Simulated dropouts, per round and site.
    pub const DROPOUT: u64 = 5;
    /// Baseline training.
    pub const BASELINE: u64 = 6;
    /// Simulated attacks: which sites are malicious, their noise.
    pub const ATTACK: u64 = 7;
    /// Simulation only: the key of central DP noise (deployment draws a
    /// secret key from the operating system instead).
    pub const DP_NOISE: u64 = 8;
    /// Secure aggregation: the public neighbour graph of each round (and, in
    /// simulation only, the participants' secrets).
    pub const SECAGG: u64 = 9;
    /// Update compression: stochastic rounding per round and site; random-k
    /// coordinates per round and site, or per round when shared (secure aggregation).
    pub const COMPRESS: u64 = 10;
    /// Model compression downstream, per round.
    pub const COMPRESS_DOWN: u64 = 11;
    /// Topologies: random gossip graphs.
    pub const TOPOLOGY: u64 = 12;
    /// Simulation only: the key of the noise on evaluation metrics
    /// (`site_metrics = "dp"`; deployment draws it from the operating system).
    pub const METRICS_NOISE: u64 = 13;
}
