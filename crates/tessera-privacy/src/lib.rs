//! Differential privacy: the Rényi DP accountant of the Poisson-subsampled
//! Gaussian mechanism ([`RdpAccountant`], checked against Google's
//! `dp_accounting`), client-level central DP with fixed or adaptive clipping
//! ([`CentralDp`]), Gaussian noise from ChaCha20 ([`GaussianNoise`]), and the
//! [`Ledger`] that records every release and refuses those past a budget.
//!
//! Pure and transport-free: simulation and deployment use the same code. The
//! plan's `[privacy]` table is [`PrivacyConfig`].
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
