//! Core types every other Tessera crate speaks: named `f32` tensors grouped in a
//! [`ParameterSet`], the [`Update`] a participant returns after local training,
//! participant ids, seeded randomness ([`SeededRng`], [`derive_seed`]) and time
//! ([`Timestamp`]).
//!
//! Key design decision: parameters are plain named tensors with a fixed layout
//! (ordered names and shapes). Every algorithm (learners, strategies, privacy,
//! compression) works on this one representation, and two parameter sets can be
//! combined only when their layouts are equal, which is checked, not assumed.
//!
//! This crate does no I/O, spawns no threads, reads no clock and knows nothing
//! about networks.
//!
//! Beyond those: an `Update` carries the delta, its example count, the
//! strategy's optional auxiliary sum and training statistics (`FitStats`);
//! a `GradientTerm` is what a strategy's local part adds to every gradient,
//! a `LocalModel` the site's model as that local part drives it (`LocalDp`:
//! DP-SGD's settings for one training);
//! `SeededRng` is ChaCha8 with our own distributions, so that a stream never
//! changes when a dependency does; a `Timestamp` counts microseconds since
//! the run started. `ParameterSet::wire_len` gives the bytes of the protobuf
//! encoding that Tessera counts as traffic.
//!
//! Determinism: every random choice of a run draws from
//! `derive_seed(run seed, [stream, round, site])`, and cohorts and
//! per-participant outputs (accepted, stragglers, dropped, rejected, site
//! errors) are sorted by participant id, so that one plan and one seed give
//! the same bits. Bit equality holds on one machine: across CPU kinds,
//! matrixmultiply may pick other kernels (FMA or not) and libm's `exp` and
//! `ln` may differ in the last bit.
#![deny(missing_docs)]

mod error;
mod id;
mod local;
mod params;
mod rng;
mod term;
mod text;
mod time;
mod update;
mod utc;

pub use error::CoreError;
pub use id::ParticipantId;
pub use local::{LocalDp, LocalModel};
pub use params::{ParameterSet, Tensor, varint_len};
pub use rng::{SeededRng, derive_key, derive_seed, tag};
pub use term::GradientTerm;
pub use text::{cut, number, one_line, shown, value};
pub use time::{Timestamp, duration_from_secs};
pub use update::{FitStats, Update};
pub use utc::utc;
