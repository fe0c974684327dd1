//! The round engine: who trains, what they receive, which updates count and
//! how they combine, as a deterministic state machine ([`RoundEngine`]) that
//! knows nothing of sockets, threads or clocks. Time is an input
//! ([`tessera_core::Timestamp`]); randomness comes from the plan's seed.
//!
//! Drivers feed it events and carry out what it asks. The simulator drives
//! it with in-memory participants on a virtual clock; the deployment
//! runtimes (the gRPC coordinator, and the aggregators of a tree) drive the
//! same engine with wall time, so that a plan and seed give the same model
//! in both.
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
//! `RoundEngine` takes `begin_round`, `submit`, `report_dropout` and
//! `poll(now)`; a restarted coordinator rebuilds it with `restore`, `replay`
//! and `reopen_round`. `with_privacy` adds central DP: clipping in `submit`,
//! noise and a ledger entry when the round closes, and the round refused in
//! `begin_round` if a budget would pass. `with_robust` gives the strategy the
//! plan's robust rule (`Strategy::robust`; `Strategy::combine` combines the
//! updates before `aggregate_fit`). `submit_sum` takes a securely aggregated
//! sum. `BufferedEngine` is FedBuff: a step every K accepted updates,
//! weights discounted by staleness, a staleness bound. `report` is the JSON
//! report both runtimes write.
//!
//! A `Site`'s strategy state moves only when the round says its update
//! counted. `Site::encode_update` compresses an update with the site's
//! error feedback (stream `COMPRESS`, so that simulation and deployment send
//! the same bytes); `Plan::secure_coordinates` is the random-k support every
//! participant of a secure round masks. `Downlink` is the model participants
//! hold under a download codec (the true model plus server-side error
//! feedback), advanced once per closed round from the run seed, so that the
//! simulator, a coordinator and a restarted coordinator hold the same bits.
//!
//! The plan's `[topology]` builds here: `Tree` (aggregators of any depth,
//! validated: every member known and placed once, no cycles;
//! `Tree::check_secure_sizes` wants at least three members at each
//! aggregator under secure aggregation, and `Tree::check_privacy_layers`
//! keeps central DP where sites are members: those aggregators have no
//! aggregator members and the root no sites), `gossip_neighbours` (ring,
//! seeded random regular, complete) and `metropolis_mix` (one averaging
//! step, shared by simulation and peers). `aggregator_engine` and
//! `upward_update` are an aggregator's round below the root and what it
//! sends up, shared by simulation and the aggregator process.
//!
//! A site's local work may be done by an [`ExternalLearner`] instead of a
//! built-in model (`Site::external`): a model that owns its rows and
//! trains itself (a Python model, say) from the global parameters and the
//! strategy's instructions in a [`FitConfig`]; the site's strategy part,
//! compression and error feedback stay the same, and every number the
//! learner returns is checked (`external`) before it becomes an update or
//! an evaluation.
//!
//! `model_file` is the self-describing model file every runtime writes
//! (model, task, feature order, vocabularies, standardisation, plan hash,
//! run, lineage; versioned, checked before anything is built), applied to
//! raw CSV rows (`ModelFile::predict`) and exported to ONNX (`to_onnx`).
//!
//! This crate never blocks, sleeps, reads the clock or opens a socket; every
//! decision (cohort, acceptance, deadline, quorum, aggregation) comes from
//! the plan, the seed and the inputs.
#![deny(missing_docs)]

pub mod attribution;
pub mod baseline;
mod buffered;
pub mod continual;
mod departments;
mod downlink;
mod dp_sgd;
mod engine;
mod error;
pub mod external;
pub mod model_file;
mod regional;
pub mod report;
mod setup;
mod site;
mod topology;

pub use buffered::{AsyncRejection, BufferedEngine, Step};
pub use departments::{Departments, Levels};
pub use downlink::Downlink;
pub use dp_sgd::{DpSgd, Private};
pub use engine::{
    EngineConfig, FitTask, Rejection, RoundEngine, RoundOutcome, RoundStart, RoundStatus,
};
pub use error::EngineError;
pub use external::{
    DpFit, EvaluateConfig, EvaluateResult, ExternalError, ExternalLearner, FitConfig, FitResult,
    Metrics,
};
pub use regional::{aggregator_engine, upward_update};
pub use setup::{DpCohort, PlanBuild, check_instructions};
pub use site::{SharedLearner, Site};
pub use tessera_plan::{
    AttributionMethod, AttributionUtility, Conflict, ContributionConfig, FailureConfig,
    FederationConfig, GossipGraph, GroupConfig, MemoryRole, Mode, MultitaskConfig, Plan, PlanError,
    Range, Selection, SimulationConfig, StalenessWeighting, TaskSpec, TopologyConfig, TopologyKind,
    Weighting, available_memory,
};
pub use topology::{Member, Node, Tree, gossip_neighbours, metropolis_mix};

pub use tessera_plan::streams;
