//! Private set intersection between sites.
//!
//! A pure library (no sockets, no clock, no async runtime).
//!
//! # Identifiers
//!
//! [`ident`]: identifiers are normalised (case, whitespace, separators),
//! hashed with HMAC-SHA256 under a [`MatchingKey`] the matching sites share
//! and the coordinator never sees, and deduplicated. Raw identifiers never
//! enter a protocol.

#![deny(missing_docs)]

mod error;
pub mod ident;

pub use error::PsiError;
pub use ident::{
    MatchingKey, PreparedSet, PreparedValues, Token, normalise, prepare, prepare_with_values,
};
