//! Schema harmonization: proposing, from privacy-safe profiles alone, how
//! each site's own columns become the federation's target schema.
//!
//! 1. The federation writes its target schema ([`TargetSchema`]): each
//!    column's name, description, unit and typical range, or its codes and
//!    what they mean. It is public.
//! 2. Each site profiles its file against it ([`profile`]): noisy counts on
//!    fixed bins, charged to the site's ledger ([`Profile::event`]); no
//!    row and no value outside the public vocabulary leaves, except levels
//!    common enough to pass a DP threshold, by name only where the site
//!    allows.
//! 3. The proposals ([`propose`]) pair target and site columns by names and
//!    values, and write each site's mapping file
//!    ([`tessera_data::mapping::Mapping`]) with the evidence beside it, for
//!    a person to review and commit. What has no good match is reported
//!    unmatched with its best candidates.

mod catalog;
mod evolve;
mod names;
mod profile;
mod propose;
mod target;

#[cfg(test)]
mod tests;

pub use catalog::{Feature, Quality, catalog};
pub use evolve::Upgrade;
pub use names::{Words, similarity, words};
pub use profile::{
    ColumnProfile, FORMAT, LevelCount, LevelRelease, MISSING_TOKENS, NumberBin, Profile,
    ProfileSettings, Spelling, WordCount, level_hash, numeric_codes, profile, vocabulary,
};
pub use propose::{DEFAULT_THRESHOLD, Match, Proposal, Transform, Unmatched, propose};
pub use target::{Change, MAX_COLUMNS, TargetColumn, TargetSchema};
