//! Differential privacy: the Rényi DP accountant of the Poisson-subsampled
//! Gaussian mechanism ([`RdpAccountant`], checked against Google's
//! `dp_accounting`), client-level central DP with fixed or adaptive clipping
//! ([`CentralDp`]), Gaussian noise from ChaCha20 ([`GaussianNoise`]), and the
//! [`Ledger`] that records every release and refuses those past a budget.
//!
//! Pure and transport-free: simulation and deployment use the same code. The
//! plan's `[privacy]` table is [`PrivacyConfig`].
//!
//! Where the randomness comes from is the caller's choice, and decides what a
//! run's epsilon means. The simulator derives noise keys (and DP-SGD's batch
//! sampling) from the printed run seed: reproducible, so a simulation is an
//! experiment, not a release, since anyone with the seed can subtract the
//! noise. In deployment every key comes from the operating system at the
//! party that adds the noise and never leaves it (each site for DP-SGD, the
//! coordinator for central DP, which keeps its key in memory only). With
//! secure aggregation plus central DP the coordinator unmasks the exact sum
//! of the clipped updates and adds the noise itself: [`CentralDp`] protects
//! the released model against everyone but the coordinator.
#![deny(missing_docs)]

mod accountant;
mod central;
mod config;
mod error;
mod ledger;
mod noise;
pub mod rdp;

pub use accountant::{DpEvent, RdpAccountant, calibrate_noise_multiplier, epsilon_of};
pub use central::{AdaptiveClipping, CentralDp, CentralRelease, clip_to_norm};
pub use config::{PrivacyConfig, PrivacyMode};
pub use error::PrivacyError;
pub use ledger::{Budgets, Ledger, LedgerEntry};
pub use noise::GaussianNoise;
