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
//! This crate does no I/O, spawns no threads and knows nothing about networks.
#![deny(missing_docs)]

mod error;
mod id;
mod params;
mod rng;
mod term;
mod text;
mod time;
mod update;

pub use error::CoreError;
pub use id::ParticipantId;
pub use params::{ParameterSet, Tensor, varint_len};
pub use rng::{SeededRng, derive_key, derive_seed, tag};
pub use term::GradientTerm;
pub use text::{cut, number, one_line, shown, value};
pub use time::{Timestamp, duration_from_secs};
pub use update::{FitStats, Update};
