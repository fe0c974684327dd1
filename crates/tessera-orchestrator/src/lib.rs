//! The orchestrator: what happens around the round engine, written once for
//! simulation and deployment.
//!
//! Each piece is a plain state machine in the same form as
//! [`tessera_engine::RoundEngine`]: it takes the time ([`Timestamp`]) and an
//! event, changes its state and returns the [`Effect`]s its driver carries
//! out (persist, audit, wake, fatal; metrics are counted by the drivers
//! around them). It never reads a clock, sleeps,
//! opens a socket or touches a database. The simulator drives the pieces
//! with in-process events on its virtual clock; the coordinator and the
//! aggregators drive them with gRPC calls and their store.
//!
//! The pieces: `secure::SecureRound` runs a secure round's stages
//! (`secure::Stage`: keys, shares, masked inputs, signed views, unmasking,
//! done) around the protocol's `Server`: it waits for every member still in
//! a stage, closes the stage when all have answered or its deadline passes
//! (auditing who was missing), refuses hostile messages with a reason
//! (`secure::Refused`) and decodes the survivors' sum; nothing of it is
//! persisted. `Roster`: who is expected, who joined, who is live at a given
//! time, who counted in the last closed round. `EvaluationRound`: who
//! evaluates a closed round's model, and until when (it gives up on the
//! silent and the late); `completed`: a record's metrics from what was seen
//! of the evaluations. `StepEvaluations`: an asynchronous run's steps still
//! being evaluated, and the newest each site evaluated. `Traffic` and
//! `RoundTraffic`: bytes per site, per round and over the run. `Links` and
//! `upload_codec`: each site's adaptive upload codec, from its bandwidth and
//! the time left. `PrivacyBook`: what a run releases under differential
//! privacy, checked against the plan's budgets before anything is released.

#![deny(missing_docs)]

pub mod effect;
pub mod evaluation;
pub mod links;
pub mod privacy;
pub mod roster;
pub mod secure;
pub mod steps;
pub mod traffic;

pub use effect::{Audit, Effect};
pub use evaluation::{EvaluationRound, NotAsked, completed};
pub use links::{Links, upload_codec};
pub use privacy::{LedgerRow, LocalReport, Place, PrivacyBook};
pub use roster::{Claim, Expected, InUse, Roster};
pub use steps::{ClosedStep, StepEvaluations};
pub use tessera_core::Timestamp;
pub use traffic::{RoundTraffic, Traffic};
