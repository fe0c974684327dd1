//! The simulator: N in-process participants drive the same [`RoundEngine`]
//! that deployment uses. Each participant has a seeded profile (compute
//! speed, latency, chance of dropping out) on a virtual clock, so straggler
//! and dropout experiments are faithful and reproducible; local training runs
//! in parallel across cores with rayon. Baselines (local-only and pooled)
//! train on the same splits.
//!
//! Key design decision: the virtual clock decides *which* updates count (by
//! their arrival times, known before training), threads only decide *when*
//! they are computed. Updates are trained in windows of arrival order and fed
//! to the engine in that order, so memory stays bounded by the window, and
//! because the engine's sums are exact, the result does not depend on the
//! number of threads.
//!
//! [`RoundEngine`]: tessera_engine::RoundEngine
#![deny(missing_docs)]

mod asynchronous;
mod attack;
mod baselines;
mod gossip;
mod hierarchy;
mod profile;
mod run;
mod secure;

pub use attack::{Attack, AttackKind};
pub use baselines::run_baselines;
pub use profile::Profile;
pub use run::{SimError, SimOptions, initial_model, simulate, simulation_noise_key};
pub use tessera_engine::report::{
    Baselines, Communication, FinalMetrics, LocalBaseline, PooledBaseline, PrivacyReport,
    RobustnessReport, RoundRecord, RunReport, SiteMetrics, Timing,
};
