//! The orchestrator: what happens around the round engine, written once for
//! simulation and deployment.
//!
//! Each piece is a plain state machine in the same form as
//! [`tessera_engine::RoundEngine`]: it takes the time ([`Timestamp`]) and an
//! event, changes its state and returns the [`Effect`]s its driver carries
//! out (persist, audit, metric, wake, fatal). It never reads a clock, sleeps,
//! opens a socket or touches a database. The simulator drives the pieces
//! with in-process events on its virtual clock; the coordinator and the
//! aggregators drive them with gRPC calls and their store.

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
pub use roster::{Expected, Roster};
pub use steps::{ClosedStep, StepEvaluations};
pub use tessera_core::Timestamp;
pub use traffic::{RoundTraffic, Traffic};
