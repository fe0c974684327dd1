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
//! Also here: what a [`Plan`] builds ([`PlanBuild`]: the model, the strategy,
//! central DP; `RoundEngine::protected`, `Site::of_plan`, `Downlink::of_plan`;
//! the plan itself, its schema and validation, is `tessera-plan`'s, re-exported
//! here) and [`Site`], the participant's side of a round (local training
//! turned into an [`tessera_core::Update`]), which simulation and deployment
//! share.
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
pub use regional::{aggregator_engine, upward_update};
pub use setup::{DpCohort, PlanBuild};
pub use site::Site;
pub use tessera_plan::{
    Conflict, FailureConfig, FederationConfig, GossipGraph, GroupConfig, MemoryRole, Mode, Plan,
    PlanError, Range, SimulationConfig, StalenessWeighting, TopologyConfig, TopologyKind,
    Weighting, available_memory,
};
pub use topology::{Member, Node, Tree, gossip_neighbours, metropolis_mix};

pub use tessera_plan::streams;
