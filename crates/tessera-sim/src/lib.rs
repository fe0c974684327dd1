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
//! `simulate(plan, data, options, observer)` gives the `RunReport` (the
//! engine's report type). It draws each site's `Profile`, computes arrival
//! and dropout times on the virtual clock *before* training, trains in
//! windows (eight updates per thread) of arrival order, feeds the engine in
//! that order, evaluates every site each round and runs the baselines. Flat
//! rounds are in `run.rs`; by the plan's topology and mode, `hierarchy.rs`,
//! `asynchronous.rs` or `gossip.rs` runs instead. A plan whose models cannot
//! fit in memory is refused before round 1 (`simulation.max_memory_gb`).
//!
//! `simulate_with_learners(plan, sites, observer)` runs the same synchronous
//! flat rounds with an external learner at every site (a model that holds
//! its own rows, `tessera_engine::ExternalLearner`), the layout learned from
//! the first site's parameters.
//!
//! `load_data(plan, base_dir, source)` reads the plan's data; with
//! `[data.cross_silo]` (`cross_silo.rs`) it runs `tessera-psi`'s noisy
//! membership between every ordered pair of sites in process, charges each
//! answering site's ledger first, and adds the feature to every site's rows.
//!
//! `tune.rs` searches a plan's settings by successive halving, the
//! objective each site's held-out validation rows.
//!
//! `multitask.rs` runs a plan's `[multitask]`: one body shared by every
//! site, a head per task trained by that task's sites, beside each task's
//! own federation and every site alone.
//!
//! `Attack` makes chosen sites malicious (sign flip, scaling, Gaussian noise,
//! label flip). `secure.rs` plays each cohort's members of a SecAgg+ round in
//! process against the orchestrator's `secure::SecureRound`, the
//! coordinator's side; `homomorphic.rs` plays a round of the homomorphic
//! scheme instead (`tessera-he`: key holders, encrypted contributions, the
//! sum decrypted by the key holders together). With `[compression]`: each
//! site's upload codec (fixed, or the ladder's choice for its profile's
//! bandwidth), transfer times on the virtual clock, and with a download codec the model every site holds (the
//! true model plus server-side error feedback), sent once a round; per-site
//! traffic is in each round's record. `hierarchy.rs` runs a tree of round
//! engines, one per aggregator (FedAvg at server rate 1 below the root, the
//! plan's strategy at the root); every member gets the instructions of the
//! engine that asks it, an aggregator's being the plan's strategy's, as in
//! deployment (`aggregator_engine`); aggregators run their SecAgg+ round in
//! process over sites and aggregators alike, and those that hold sites
//! carry their central DP mechanism and ledger from round to round.
//! `gossip.rs` runs decentralised averaging with no engine at all.
//!
//! *Invariant:* the simulator has no transport and does not re-implement
//! engine decisions: it only asks the engine. Its tests hold the algorithms
//! to independent computations: FedAvg against a plain-loop `f64` FedAvg
//! (`tests/reference.rs`), benchmark B1 against FLamby's own result files
//! (`tests/b1.rs`).
//!
//! [`RoundEngine`]: tessera_engine::RoundEngine
#![deny(missing_docs)]

mod asynchronous;
mod attack;
mod attribution;
mod baselines;
pub mod continual;
mod cross_silo;
mod external;
mod gossip;
mod hierarchy;
mod homomorphic;
pub mod multitask;
mod personal;
mod profile;
mod round_traffic;
mod run;
mod secure;
mod sites;
mod summary;
pub mod tune;

pub use attack::{Attack, AttackKind};
pub use baselines::run_baselines;
pub use continual::{Continuation, accuracy, importance, simulate_continued, site_importance};
pub use cross_silo::{CrossSiloReport, load_data, load_data_with};
pub use external::simulate_with_learners;
pub use hierarchy::{Shard, ShardRound};
pub use multitask::{MultitaskData, MultitaskReport, load_multitask, simulate_multitask};
pub use profile::Profile;
pub use run::{SimError, SimOptions, initial_model, simulate, simulation_noise_key};
pub use tessera_engine::continual::check_continuable;
pub use tessera_engine::report::{
    Baselines, Communication, FinalMetrics, LocalBaseline, PooledBaseline, PrivacyReport,
    RobustnessReport, RoundRecord, RunReport, SiteMetrics, Timing,
};
