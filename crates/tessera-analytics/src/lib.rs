//! Federated analytics for Tessera: SQL-shaped queries over the agreed
//! schema, answered from per-site contributions that add up (so that they
//! can be summed under secure aggregation's masks), with Gaussian noise
//! calibrated to the whole answer's sensitivity and charged to the same
//! privacy ledger as training.
//!
//! A query ([`parse`], grammar in [`query`]) is compiled against the
//! [`Schema`] ([`compile`]): numeric columns need bounds (the query's
//! `CLAMP` or the plan's `[analytics.bounds]`, never the data's), GROUP BY
//! columns are categorical and every group of their agreed vocabularies is
//! in the answer whether or not any row has it. The compiled [`Layout`] fixes
//! a vector of fixed-point slots (counts, clamped sums, sums of squares,
//! cross products, histogram bins, tree nodes, sketch cells) and its L2
//! sensitivity; each site computes its vector ([`contribute`]), adds its
//! share of the noise, and the vectors are summed ([`answer`], see `run`
//! for how summing and noise would run deployed). The sums become
//! statistics with error bars ([`estimate`]); groups whose noisy count is
//! below `min_group` are suppressed.
//!
//! Statistics: count, sum, mean, variance, stddev, histograms (fixed bins,
//! or a binary tree of bins), quantiles and noise-protected min/max (by
//! descending a tree of `2^depth` bins over the bounds, then linearly
//! within a leaf: the value at continuous rank `q (n - 1) + 0.5`; every
//! quantile, min and max of a column within the same bounds reads one tree; min and
//! max at ranks two rank-noise deviations inside the ends), correlation
//! and covariance (of two columns, or a matrix), crosstabs of two
//! categorical columns, and count-distinct (linear counting on a sketch of
//! per-cell counts, which add across sites). Rows missing any column the
//! query reads are left out (complete cases).
//!
//! **What is protected.** An answer's DP is about one row: neighbouring
//! federations differ by adding or removing one row (the sensitivity is
//! what one row adds); replacing a row is two such steps and can cost up
//! to twice the epsilon. Central DP in training protects a whole site's
//! contribution to a round. The run epsilon the ledger sums over both is
//! therefore a row-level bound only; it does not bound what the answers
//! reveal about a site as a whole. An answer with `[analytics] dp = false`
//! is no DP release: with a run store it is recorded in
//! `analytics_queries` as unprotected, never as a ledger row. Without a
//! store (`tessera analyze` without `--db`) nothing is persisted, and
//! nothing accumulates from one invocation to the next; without a budget
//! in the plan's `[privacy]` answers are charged but never refused.
//!
//! **Vocabularies are visible.** GROUP BY keys, crosstab labels and the
//! "not a level" message of a WHERE list the agreed levels of a
//! categorical column. Unless the plan's schema declares them
//! (`{ name = "cp", type = "categorical", levels = ["1", "2", "3", "4"] }`
//! in `[data]`'s columns), they are the union of the levels the sites'
//! data holds, so an answer shows, without noise, that some site has a
//! rare level. Declare the levels of every categorical column a query may
//! group or filter by: GROUP BY and crosstab refuse a column whose levels
//! are not declared unless the plan says `[analytics] public_levels = true`
//! (the WHERE message still lists the levels).
//!
//! Pure: no clock, no sockets, no files; the data comes in as
//! [`tessera_data::SiteRecords`].
#![deny(missing_docs)]

pub mod ab;
mod config;
pub mod deployed;
pub mod estimate;
mod filter;
pub mod harmonize;
pub mod join;
pub mod layout;
pub mod query;
mod run;
pub mod schema;
pub mod secure;
pub mod synthetic;

use thiserror::Error;

pub use config::{AnalyticsConfig, MAX_SERVE_SECONDS};
pub use estimate::{GroupAnswer, Statistic, estimate};
pub use join::{JoinReveal, JoinSpec, join_problems};
pub use layout::{Layout, compile, contribute};
pub use query::{Query, parse};
pub use run::{
    Answer, Release, Report, Settings, add_noise_share, answer, answer_noise_std, share_std,
    simulated_share,
};
pub use schema::{Column, ColumnKind, Schema, SiteTable, Values};

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AnalyticsError {
    /// The query does not parse.
    #[error("query, at character {position}: {token} {message}")]
    Parse {
        /// 1-based character position.
        position: usize,
        /// The token found there, quoted.
        token: String,
        /// What was wrong or expected.
        message: String,
    },
    /// The query does not fit the schema or the settings.
    #[error("query: {0}")]
    Query(String),
    /// A target schema, profile or proposal could not be used.
    #[error("harmonize: {0}")]
    Harmonize(String),
    /// The privacy ledger refused the release, or a setting is out of range.
    #[error(transparent)]
    Privacy(#[from] tessera_privacy::PrivacyError),
    /// A synthetic sample could not be released.
    #[error("synthetic: {0}")]
    Synthetic(String),
}

impl AnalyticsError {
    pub(crate) fn parse(position: usize, token: &str, message: &str) -> Self {
        Self::Parse {
            position,
            token: token.to_string(),
            message: message.to_string(),
        }
    }
}
